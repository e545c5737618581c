"""The learned weighting with the library's defaults, a transferred weighting function, and
class-aware weighting (CMW-Net) on a long tail."""

import pickle
import warnings

import numpy as np
import pytest
from skorch.callbacks import LRScheduler

from mwnet_sk import ClassAwareWeightNet, MetaWeightClassifier, plain_counterpart
from mwnet_sk.callbacks import WeightCollapseWarning
from mwnet_sk.models import MLP
from mwnet_sk.noise import make_long_tailed, make_noisy_labels, meta_mask


def noisy_digits(seed, rate=0.4):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    mask = meta_mask(y_tr, n_meta_per_class=10, random_state=seed)
    y_noisy = y_tr.copy()
    y_noisy[~mask] = make_noisy_labels(y_tr[~mask], rate, random_state=seed)
    return X_tr, y_noisy, y_tr, mask, X_te, y_te


def defaults(epochs=30, **kwargs):
    """The library's defaults on the study's recipe (MLP, SGD 0.1 momentum 0.9, lr / 10 at 80%)."""
    return MetaWeightClassifier(MLP, module__n_features=64, module__num_classes=10, lr=0.1, optimizer__momentum=0.9,
                                batch_size=100, max_epochs=epochs, verbose=0,
                                callbacks=[LRScheduler("MultiStepLR", milestones=[int(0.8 * epochs)], gamma=0.1)],
                                **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_learn_a_decreasing_function_on_noisy_digits(seed):
    X, y_noisy, y_true, mask, X_test, y_test = noisy_digits(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightCollapseWarning)  # a healthy run: no collapse warning
        clf = defaults(random_state=seed).fit(X, y_noisy, meta=mask)
    profile = clf.weight_function_.profile()
    assert profile.trend == "decreasing" and profile.spread > 0.5, profile
    corrupted = y_noisy != y_true
    assert clf.sample_weights_[corrupted].mean() < 0.5 * clf.sample_weights_[~corrupted & ~mask].mean()


def test_a_transferred_weighting_function_needs_no_meta_set():
    X, y_noisy, y_true, mask, X_test, y_test = noisy_digits(0)
    source = defaults(random_state=0).fit(X, y_noisy, meta=mask)
    # another noisy data set without any clean rows: reuse the learned function, frozen
    X2, y2_noisy, y2_true, _, X2_test, y2_test = noisy_digits(1)
    target = defaults(random_state=1, weight_net=source.weight_function_, meta_lr=0, warmup_epochs=0)
    target.fit(X2, y2_noisy)
    corrupted = y2_noisy != y2_true
    assert target.sample_weights_[corrupted].mean() < target.sample_weights_[~corrupted].mean()
    for p, q in zip(target.weight_net_.parameters(), source.weight_net_.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())  # frozen
    plain = plain_counterpart(target).fit(X2, y2_noisy)
    assert target.score(X2_test, y2_test) > plain.score(X2_test, y2_test)


def test_class_aware_weighting_on_a_long_tail():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    mask = meta_mask(y, n_meta_per_class=10, random_state=0)
    X_lt, y_lt = make_long_tailed(X[~mask], y[~mask], imbalance_factor=20, random_state=0)
    X_all, y_all = np.concatenate([X[mask], X_lt]), np.concatenate([y[mask], y_lt])
    meta = np.arange(len(y_all)) < mask.sum()
    clf = defaults(epochs=15, random_state=0, weight_net=ClassAwareWeightNet).fit(X_all, y_all, meta=meta)
    groups = clf.weight_net_.class_groups.numpy()
    counts = np.bincount(y_all)
    assert groups[np.argmax(counts)] == 2 and groups[np.argmin(counts)] == 0  # common vs rare classes
    f = clf.weight_function_
    assert f.uses_labels
    weights = f(np.array([0.5, 0.5]), [np.argmin(counts), np.argmax(counts)])
    assert weights.shape == (2,) and np.isfinite(weights).all()
    with pytest.raises(ValueError, match="class-aware: pass the class index"):
        f(np.array([0.5]))
    assert np.isfinite(clf.history[:, "weight_fn_spread"]).all()
    assert pickle.loads(pickle.dumps(f))(np.array([1.0]), [0]).shape == (1,)
