"""The weighting-function monitor, meta-set scoring with best-epoch keeping, and training on
the meta rows."""

import warnings

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch.utils.data import TensorDataset

from mwnet_sk import MetaWeightClassifier, WeightNet
from mwnet_sk.callbacks import MetaScoring, WeightCollapseWarning, WeightMonitor
from mwnet_sk.core.weight_net import weight_profile

from conftest import TinyMLP


def make_clf(**kwargs):
    params = dict(module=TinyMLP, lr=0.1, optimizer__momentum=0.9, max_epochs=3, batch_size=64,
                  verbose=0, random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


@pytest.fixture(scope="module")
def noisy(digits):
    from mwnet_sk.noise import make_noisy_labels

    X, y, mask = digits
    y_noisy = y.copy()
    y_noisy[~mask] = make_noisy_labels(y[~mask], 0.4, random_state=0)
    return X, y_noisy, y, mask


class ConstantWeights(WeightNet):
    """A weight net whose output ignores the loss: a collapsed weighting function."""

    def __init__(self, hidden_size=4):
        super().__init__(hidden_size)
        with torch.no_grad():
            self.hidden.weight.zero_()


def test_weight_profile_shapes():
    assert weight_profile(lambda l: np.exp(-l), 0, 4).trend == "decreasing"
    assert weight_profile(lambda l: 1 - np.exp(-l), 0.1, 4).trend == "increasing"
    assert weight_profile(lambda l: 0.5 + 0 * l, 0, 4).trend == "flat"
    bump = weight_profile(lambda l: np.exp(-(l - 2) ** 2), 0, 4)
    assert bump.trend == "non-monotonic" and bump.spread > 0.9
    with pytest.raises(ValueError, match="finite"):
        weight_profile(np.exp, 0, np.nan)


def test_collapse_warning_fires_on_a_collapsed_run(noisy):
    X, y_noisy, _, mask = noisy
    # a constant weight net that can hardly move: the function stays flat every epoch
    clf = make_clf(weight_net=ConstantWeights, meta_lr=1e-12, warmup_epochs=0,
                   callbacks__weight_monitor__patience=2)
    with pytest.warns(WeightCollapseWarning, match="nearly constant for 2 epochs"):
        clf.fit(X, y_noisy, meta=mask)
    assert clf.history[:, "weight_fn_trend"] == ["flat"] * 3
    assert clf.history[:, "weight_collapsed"] == [False, True, True]
    assert clf.weight_function_.profile().trend == "flat"
    assert "flat" in repr(clf.weight_function_)


class VanishingWeights(ConstantWeights):
    """A constant weight net whose sigmoid sits at about 1e-13: every weight has vanished."""

    def __init__(self, hidden_size=4):
        super().__init__(hidden_size)
        with torch.no_grad():
            self.output.bias.fill_(-30.0)


def test_vanished_weights_are_recorded_and_warned(noisy):
    X, y_noisy, _, mask = noisy
    clf = make_clf(weight_net=VanishingWeights, meta_lr=1e-12, warmup_epochs=0)
    with pytest.warns(WeightCollapseWarning, match="fallen to nearly zero") as record:
        clf.fit(X, y_noisy, meta=mask)
    assert sum("fallen to nearly zero" in str(w.message) for w in record) == 1  # once per fit
    assert clf.history[:, "weights_vanished"] == [True] * 3
    assert clf.history[-1, "weight_mean"] < 1e-12  # what it reads, whatever the spread says


def test_healthy_weights_have_not_vanished(noisy):
    X, y_noisy, _, mask = noisy
    clf = make_clf(warmup_epochs=1, max_epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightCollapseWarning)
        clf.fit(X, y_noisy, meta=mask)
    # the warm-up epoch has no meta step and says nothing; the others are recorded
    assert [row.get("weights_vanished") for row in clf.history] == [None, False, False]


def test_collapse_warning_says_when_every_row_is_fit():
    from skorch.history import History

    from mwnet_sk.core.weight_net import WeightFunction

    def monitor_warning(loss_high):
        class Net:  # what the monitor reads: the history, the losses seen, the live function
            history = History()
            classes_inferred_ = np.arange(10)

            def _observed_loss_range(self):
                return (0.0, loss_high)

            def _live_weight_function(self):
                return WeightFunction(ConstantWeights())

        net, monitor = Net(), WeightMonitor(patience=1).initialize()
        with pytest.warns(WeightCollapseWarning, match="nearly constant") as record:
            net.history.new_epoch()
            net.history.record("meta_loss", 0.1)
            monitor.on_epoch_end(net)
        return str(record[0].message)

    # a tenth of log(10) = 0.23: below it every row counts as fit
    assert "reach only 0.05: the classifier fits every row" in monitor_warning(0.05)
    assert "fits every row" not in monitor_warning(2.0)


def test_meta_stall_is_recorded_and_warned_once():
    from skorch.history import History

    class Net:  # what the monitor reads: the history (no loss buffer: no function profile)
        history = History()

    monitor = WeightMonitor(meta_patience=2).initialize()
    meta_losses = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]
    with pytest.warns(WeightCollapseWarning, match="not improved for 2 epochs") as record:
        for loss in meta_losses:
            Net.history.new_epoch()
            Net.history.record("meta_loss", loss)
            monitor.on_epoch_end(Net)
    assert len(record) == 1  # once per fit
    assert Net.history[:, "meta_stalled"] == [False, False, False, True, True, False]
    restored = WeightMonitor().initialize()
    restored.load_state_dict(monitor.state_dict())
    assert restored.best_meta_loss_ == 0.7 and restored.best_meta_epoch_ == 6


def test_meta_divergence_is_recorded_and_warned_once():
    from skorch.history import History

    class Net:  # ten classes: predicting every class alike costs log(10) = 2.3
        history = History()
        classes_inferred_ = np.arange(10)

    monitor = WeightMonitor(meta_patience=None).initialize()
    # a high loss that stays under ten times log(10) is not a divergence; 1063 is
    meta_losses = [2.2, 0.04, 20.0, 1063.0, 1146.0]
    with pytest.warns(WeightCollapseWarning, match="diverged: 1063 at epoch 4.*best 0.04 at epoch 2") as record:
        for loss in meta_losses:
            Net.history.new_epoch()
            Net.history.record("meta_loss", loss)
            monitor.on_epoch_end(Net)
    assert len(record) == 1
    assert Net.history[:, "meta_diverged"] == [False, False, False, True, True]


def test_monitor_can_be_switched_off(noisy):
    X, y_noisy, _, mask = noisy
    clf = make_clf(weight_net=ConstantWeights, meta_lr=1e-12, callbacks__weight_monitor=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightCollapseWarning)
        clf.fit(X, y_noisy, meta=mask)
    assert "weight_fn_spread" not in clf.history[-1]


class StateLog(Callback):
    def initialize(self):
        self.states_ = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.states_.append({k: v.clone() for k, v in net.module_.state_dict().items()})


@pytest.mark.parametrize("kind", ["ours", "skorch"])
def test_meta_scoring_restores_the_best_epoch(noisy, kind):
    X, y_noisy, _, mask = noisy
    log = StateLog()
    if kind == "ours":
        net = make_clf(max_epochs=6, lr=0.5, callbacks=[("log", log), ("meta", MetaScoring())])
        net.fit(X, y_noisy, meta=mask)
    else:
        net = NeuralNetClassifier(TinyMLP, lr=0.5, max_epochs=6, train_split=None, verbose=0,
                                  callbacks=[("log", log), ("meta", MetaScoring(X[mask], y_noisy[mask]))])
        torch.manual_seed(0)
        net.fit(X[~mask], y_noisy[~mask].astype(np.int64))
    scores = net.history[:, "meta_score"]
    best = int(np.argmax(scores))
    assert net.history[:, "meta_score_best"][best]
    assert best < len(scores) - 1 or scores[-1] == max(scores)
    restored = net.module_.state_dict()
    for key, value in log.states_[best].items():
        torch.testing.assert_close(restored[key], value)
    # and the score is the accuracy on the meta rows
    meta_acc = (net.predict(X[mask]) == y_noisy[mask]).mean()
    assert meta_acc == pytest.approx(scores[best])


def test_meta_scoring_needs_a_meta_set_with_plain_skorch(digits):
    X, y, _ = digits
    net = NeuralNetClassifier(TinyMLP, max_epochs=1, train_split=None, verbose=0, callbacks=[MetaScoring()])
    with pytest.raises(TypeError, match="pass MetaScoring"):
        net.fit(X[:100], y[:100].astype(np.int64))
    with pytest.raises(ValueError, match="both X_meta and y_meta"):
        net.set_params(callbacks=[MetaScoring(X_meta=X[:5])]).initialize()


def test_train_on_meta_mask_keeps_the_meta_rows(noisy):
    X, y_noisy, _, mask = noisy
    held_out = make_clf(max_epochs=1, train_on_meta=False).fit(X, y_noisy, meta=mask)
    assert np.isnan(held_out.sample_weights_[mask]).all()
    both = make_clf(max_epochs=1, train_on_meta=True).fit(X, y_noisy, meta=mask)
    assert np.isfinite(both.sample_weights_).all()
    assert not hasattr(both, "meta_sample_weights_")


@pytest.mark.parametrize("form", ["pair", "dataset"])
def test_train_on_meta_appends_a_separate_meta_set(noisy, form):
    X, y_noisy, _, mask = noisy
    X_meta, y_meta = X[mask], y_noisy[mask]
    meta = (X_meta, y_meta) if form == "pair" else TensorDataset(torch.from_numpy(X_meta), torch.from_numpy(y_meta))
    steps = []

    class Count(Callback):
        def on_batch_end(self, net, batch=None, training=False, **kwargs):
            if training:
                steps.append(len(batch[1]))

    clf = make_clf(max_epochs=1, train_on_meta=True, callbacks=[("count", Count())])
    clf.fit(X[~mask], y_noisy[~mask], meta=meta)
    assert sum(steps) == len(X)  # every training row and every meta row once
    assert clf.sample_weights_.shape == ((~mask).sum(),) and np.isfinite(clf.sample_weights_).all()
    assert clf.meta_sample_weights_.shape == (mask.sum(),) and np.isfinite(clf.meta_sample_weights_).all()
