"""mwnet_sk.plotting: the paper's figures draw on the Agg backend and return their Axes."""

import sys

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from mwnet_sk import MetaWeightClassifier, WeightFunction, WeightNet  # noqa: E402
from mwnet_sk.plotting import (  # noqa: E402
    plot_weight_distribution,
    plot_weight_function,
    plot_weight_variation,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted(digits):
    X, y, mask = digits
    rng = np.random.RandomState(0)
    y_noisy = y.copy()
    flip = (rng.rand(len(y)) < 0.3) & ~mask
    y_noisy[flip] = (y[flip] + 1 + rng.randint(0, 9, flip.sum())) % 10
    clf = MetaWeightClassifier(
        torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
        lr=0.1, max_epochs=3, batch_size=256, meta_lr=1e-2, record_weights=True, verbose=0, random_state=0,
    )  # fmt: skip
    clf.fit(X, y_noisy, meta=mask)
    return clf, y_noisy != y


def _png_ok(ax, path):
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_weight_function_from_estimator_and_alternatives(fitted, tmp_path):
    clf, _ = fitted
    ax = plot_weight_function(clf, loss_range=(0, 5), show_losses=True)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "training loss" and ax.get_ylabel() == "weight"
    x, w = ax.lines[0].get_data()
    np.testing.assert_allclose(x, np.linspace(0, 5, 200))
    f = clf.weight_function_  # the default is class-aware: the mean of the classes' curves
    classes = [f(x, [k]) for k in range(f.n_classes)]
    np.testing.assert_allclose(w, np.mean(classes, axis=0), rtol=1e-6)
    _png_ok(ax, tmp_path / "wf.png")
    ax_classes = plot_weight_function(clf, loss_range=(0, 5), per_class=True)
    assert len(ax_classes.lines) == 1 + f.n_classes
    np.testing.assert_allclose(ax_classes.lines[-1].get_ydata(), classes[-1], rtol=1e-6)

    # a WeightFunction, a module and a plain callable on a given Axes, with a legend
    fig, ax2 = plt.subplots()
    assert plot_weight_function(WeightFunction(WeightNet()), ax=ax2, label="init") is ax2
    plot_weight_function(WeightNet(), ax=ax2, loss_range=(0, 2), n_points=11)
    plot_weight_function(lambda loss: np.exp(-loss), ax=ax2, label="exp(-loss)", color="k")
    assert len(ax2.lines) == 3 and ax2.get_legend() is not None
    np.testing.assert_allclose(ax2.lines[2].get_ydata(), np.exp(-np.linspace(0, 10, 200)))


def test_weight_function_errors():
    with pytest.raises(ValueError, match="increasing"):
        plot_weight_function(WeightNet(), loss_range=(2, 1))
    with pytest.raises(TypeError, match="expected a fitted MetaWeightClassifier"):
        plot_weight_function(42)
    with pytest.raises(ValueError, match="show_losses"):
        plot_weight_function(WeightNet(), show_losses=True)
    with pytest.raises(ValueError, match="per_class=True needs a class-aware"):
        plot_weight_function(WeightNet(), per_class=True)


def test_weight_distribution(fitted, tmp_path):
    clf, noisy = fitted
    ax = plot_weight_distribution(clf.sample_weights_, noisy)
    assert isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    meta = np.isnan(clf.sample_weights_)
    assert labels == [f"clean ({(~noisy & ~meta).sum()})", f"noisy ({(noisy & ~meta).sum()})"]
    # counts of the two histograms add up to the finite weights of each group
    heights = [sum(p.get_height() for p in c) for c in ax.containers]
    assert heights == [(~noisy & ~meta).sum(), (noisy & ~meta).sum()]
    _png_ok(ax, tmp_path / "dist.png")
    # the estimator itself, 0/1 masks, density
    ax = plot_weight_distribution(clf, noisy.astype(int), density=True, bins=10)
    assert ax.get_ylabel() == "density"


def test_weight_distribution_errors():
    with pytest.raises(ValueError, match="entries"):
        plot_weight_distribution(np.ones(5), np.zeros(4, bool))
    with pytest.raises(ValueError, match="boolean"):
        plot_weight_distribution(np.ones(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="no finite"):
        plot_weight_distribution(np.full(3, np.nan), np.zeros(3, bool))


def test_weight_variation(fitted, tmp_path):
    clf, noisy = fitted
    history = clf.sample_weights_history_
    assert history.shape == (3, len(noisy))
    rows = np.flatnonzero(noisy & ~np.isnan(clf.sample_weights_))[:10]
    ax = plot_weight_variation(history, rows)
    assert isinstance(ax, Axes)
    x, mean = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, [2, 3])
    np.testing.assert_allclose(mean, np.diff(history[:, rows], axis=0).mean(axis=1), rtol=1e-6)
    _png_ok(ax, tmp_path / "var.png")
    # the estimator and a boolean mask
    mask = np.zeros(len(noisy), bool)
    mask[rows] = True
    ax = plot_weight_variation(clf, mask, color="tab:red")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean, rtol=1e-6)


def test_weight_variation_by_hand():
    history = np.array([[0.5, 0.5, np.nan], [0.6, 0.4, np.nan], [0.6, 0.2, 0.3]])
    ax = plot_weight_variation(history, [0, 1])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.0, -0.1])
    band = ax.collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1].max(), 0.1) and np.isclose(band[:, 1].min(), -0.2)
    with pytest.raises(ValueError, match="two epochs"):
        plot_weight_variation(history[:1], [0])
    with pytest.raises(ValueError, match="2-d"):
        plot_weight_variation(np.ones(3), [0])
    with pytest.raises(IndexError):
        plot_weight_variation(history, [5])
    with pytest.raises(ValueError, match="no samples"):
        plot_weight_variation(history, [])


def test_weight_variation_marks_the_learning_rate_drops():
    history = np.linspace(0, 1, 12).reshape(6, 2)
    ax = plot_weight_variation(history, [0, 1], lr_drops=[4, 2])
    drops = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in drops) == [2.5, 4.5]  # between epoch m and m + 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("learning rate lowered") == 1
    plain = plot_weight_variation(history, [0, 1])
    assert not [line for line in plain.lines if line.get_linestyle() == "--"]


def test_unfitted_estimator_is_reported():
    clf = MetaWeightClassifier(torch.nn.Linear(2, 2), record_weights=True).initialize()
    with pytest.raises(ValueError, match="fit it first"):
        plot_weight_function(clf)
    with pytest.raises(ValueError, match="record_weights"):
        plot_weight_variation(clf, [0])


def test_missing_matplotlib_message(monkeypatch):
    from mwnet_sk import plotting

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"mwnet-sk\[plot\]"):
        plotting.plot_weight_function(WeightNet())


def test_an_unfitted_estimator_is_refused_with_fit_it_first():
    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.models import MLP
    from mwnet_sk.plotting import plot_weight_distribution, plot_weight_function

    clf = MetaWeightClassifier(MLP, module__n_features=4, module__num_classes=2)
    with pytest.raises(ValueError, match="MetaWeightClassifier has no weight_function_: fit it first"):
        plot_weight_function(clf)
    with pytest.raises(ValueError, match="MetaWeightClassifier has no sample_weights_: fit it first"):
        plot_weight_distribution(clf, np.zeros(3, bool))
