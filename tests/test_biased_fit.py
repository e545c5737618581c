"""MetaWeightClassifier on the biased data sets the toolkit makes (issue: biased-data toolkit)."""

import numpy as np
import pytest

from mwnet_sk import MetaWeightClassifier
from mwnet_sk.augment import cifar_augment
from mwnet_sk.datasets import make_cifar_benchmark
from mwnet_sk.models import MLP, SmallCNN
from mwnet_sk.noise import make_long_tailed, train_meta_split

from test_datasets import write_cifar10


def test_long_tailed_digits_learn_an_increasing_weight_function(digits):
    """The paper's Fig. 1(d): under class imbalance the curve increases with the loss and the
    rare classes (larger losses) get larger weights. This is the paper's recipe (Adam on the
    weight net, raw weights, no warm-up, no meta rows in training); with the library's defaults
    the curve ends nearly flat on long tails, which the robustness study measured as no gain
    either way (docs/user-guide/choosing-a-method.md)."""
    import torch

    X, y, _ = digits
    X_train, X_meta, y_train, y_meta = train_meta_split(X, y, n_meta_per_class=10, random_state=0)
    X_lt, y_lt = make_long_tailed(X_train, y_train, imbalance_factor=20, random_state=0)
    counts = np.bincount(y_lt)
    assert counts[0] / counts[-1] >= 19
    clf = MetaWeightClassifier(MLP, module__n_features=64, module__num_classes=10, lr=0.1,
                               optimizer__momentum=0.9, max_epochs=30, batch_size=100, meta_lr=1e-2,
                               meta_optimizer=torch.optim.Adam, normalize_weights=False,
                               train_on_meta=False, warmup_epochs=0, verbose=0, random_state=0)
    clf.fit(X_lt, y_lt, meta=(X_meta, y_meta))
    _, weights = clf.weight_function_.curve(0.0, 5.0, n_points=6)
    assert weights[-1] > weights[0] + 0.5
    per_class = np.array([np.nanmean(clf.sample_weights_[y_lt == c]) for c in range(10)])
    assert per_class[-3:].mean() > 2 * per_class[:3].mean()


@pytest.fixture
def cifar_like(tmp_path):
    write_cifar10(tmp_path)
    return make_cifar_benchmark("cifar10", tmp_path, corruption="uniform", noise_rate=0.4,
                                n_meta_per_class=2, random_state=0)


def test_noisy_cifar_benchmark_datasets_as_x_and_meta(cifar_like):
    bench = cifar_like
    clf = MetaWeightClassifier(SmallCNN, module__num_classes=10, module__width=4, lr=0.05, max_epochs=1,
                               batch_size=16, verbose=0, random_state=0)
    clf.fit(bench.train, None, meta=bench.meta)
    assert clf.sample_weights_.shape == (len(bench.train),)
    assert np.isfinite(clf.sample_weights_).all()
    assert clf.predict(bench.test).shape == (len(bench.test),)
    # the labels the estimator trained on are the noisy ones the benchmark reports
    np.testing.assert_array_equal(np.asarray(bench.train.targets), bench.y_train)


def test_noisy_cifar_uint8_arrays_with_device_augmentation(cifar_like):
    bench = cifar_like
    clf = MetaWeightClassifier(SmallCNN, module__num_classes=10, module__width=4, lr=0.05, max_epochs=2,
                               batch_size=16, verbose=0, random_state=0,
                               batch_transform=cifar_augment("cifar10"), data_on_device=True)
    clf.fit(bench.X_train, bench.y_train, meta=(bench.X_meta, bench.y_meta))
    assert bench.X_train.dtype == np.uint8
    assert np.isfinite(clf.sample_weights_).all()
    proba = clf.predict_proba(bench.X_test)
    assert proba.shape == (len(bench.X_test), 10)
    # prediction uses the transform in eval mode: deterministic
    np.testing.assert_array_equal(proba, clf.predict_proba(bench.X_test))


def test_long_tailed_cifar_benchmark_fits(tmp_path):
    write_cifar10(tmp_path)
    bench = make_cifar_benchmark("cifar10", tmp_path, corruption="long_tailed", imbalance_factor=5,
                                 n_meta_per_class=1, random_state=0)
    clf = MetaWeightClassifier(SmallCNN, module__num_classes=10, module__width=4, lr=0.05, max_epochs=1,
                               batch_size=8, meta_lr=1e-5, verbose=0, random_state=0)
    clf.fit(bench.train, None, meta=bench.meta)
    assert np.isfinite(clf.sample_weights_).all()
    counts = np.bincount(bench.y_train, minlength=10)
    assert counts.max() > counts.min()


@pytest.mark.parametrize("options", [dict(precision="bf16"), dict(channels_last=True),
                                     dict(precision="bf16", channels_last=True, meta_params="last")])
def test_precision_and_memory_format_options_track_fp32(cifar_like, options):
    """bf16 autocast and channels_last (CUDA options) run on CPU and stay close to fp32."""
    bench = cifar_like

    def fit(**kw):
        clf = MetaWeightClassifier(SmallCNN, module__num_classes=10, module__width=4, lr=0.05, max_epochs=1,
                                   batch_size=16, verbose=0, random_state=0,
                                   batch_transform=cifar_augment("cifar10"), **kw)
        return clf.fit(bench.X_train, bench.y_train, meta=(bench.X_meta, bench.y_meta))

    reference, other = fit(), fit(**options)
    assert abs(reference.history[-1, "train_loss"] - other.history[-1, "train_loss"]) < 0.05
    assert abs(reference.history[-1, "meta_loss"] - other.history[-1, "meta_loss"]) < 0.05
    assert other.predict_proba(bench.X_test).dtype == np.float32
