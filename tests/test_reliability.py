"""Resumable runs, reproducibility, interrupted runs, bad input, and NaN safety."""

import pickle

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.dataset import ValidSplit

from mwnet_sk import MetaWeightClassifier, TrainingDivergedError
from mwnet_sk.callbacks import Checkpoint, LoadInitState

from conftest import TinyMLP


@pytest.fixture(scope="module")
def data(digits):
    X, y, mask = digits
    keep = np.random.RandomState(1).permutation(np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)[:400]])
    return X[keep], y[keep], mask[keep]


def make_clf(**kwargs):
    params = dict(module=TinyMLP, module__dropout=0.2, lr=0.1, optimizer__momentum=0.9, max_epochs=4,
                  batch_size=64, verbose=0, random_state=0, meta_interval=2)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


class StopAfterEpoch(Callback):
    """Simulates Ctrl-C right after epoch ``epoch`` ended (and was checkpointed)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


class StopAtBatch(Callback):
    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, net, training=False, **kwargs):
        if training and len(net.history) == self.epoch and len(net.history[-1, "batches"]) == self.batch:
            raise KeyboardInterrupt


def _assert_same_run(a, b):
    for (name, p), q in zip(a.module_.state_dict().items(), b.module_.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(a.weight_net_.state_dict().values(), b.weight_net_.state_dict().values()):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(a.sample_weights_, b.sample_weights_)
    assert a.history[:, "train_loss"] == b.history[:, "train_loss"]
    # meta_loss is NaN in warm-up epochs (no meta step); NaN equals NaN here, numbers exactly
    np.testing.assert_array_equal(a.history[:, "meta_loss"], b.history[:, "meta_loss"])
    assert np.isfinite(a.history[-1, "meta_loss"])
    assert a.n_steps_ == b.n_steps_


def test_resumed_run_is_bit_identical(data, tmp_path):
    X, y, mask = data

    def schedule():
        return LRScheduler("MultiStepLR", milestones=[3], gamma=0.1)  # the decay falls after the restart

    full = make_clf(callbacks=[schedule()]).fit(X, y, meta=mask)

    cp = Checkpoint(dirname=str(tmp_path / "run"))
    first = make_clf(callbacks=[schedule(), cp, LoadInitState(cp), StopAfterEpoch(2)])
    first.fit(X, y, meta=mask)
    assert len(first.history) == 2  # the "crash"

    cp = Checkpoint(dirname=str(tmp_path / "run"))
    resumed = make_clf(callbacks=[schedule(), cp, LoadInitState(cp)])
    resumed.fit(X, y, meta=mask)  # the same line resumes
    assert len(resumed.history) == 4
    _assert_same_run(full, resumed)


def test_load_init_state_without_checkpoint_starts_fresh(data, tmp_path):
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "empty"))
    clf = make_clf(max_epochs=1, callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)
    assert len(clf.history) == 1
    unit = tmp_path / "empty" / "checkpoint-000001"
    for part in ("training_state.pt", "weight_net.pt", "meta_optimizer.pt", "params.pt", "manifest.json"):
        assert (unit / part).exists(), part


def test_training_state_is_loaded_safely(data, tmp_path):
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    # an attacker who can write the folder can also rewrite the manifest's checksums: the
    # loader must still refuse to run code
    import hashlib
    import json

    unit = tmp_path / "run" / "checkpoint-000001"
    with open(unit / "training_state.pt", "wb") as f:
        pickle.dump({"n_steps": Evil()}, f, protocol=2)
    manifest = json.loads((unit / "manifest.json").read_text())
    payload = (unit / "training_state.pt").read_bytes()
    manifest["parts"]["training_state"].update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    (unit / "manifest.json").write_text(json.dumps(manifest))
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    with pytest.raises(pickle.UnpicklingError):
        make_clf(callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)


def test_random_state_survives_clone_and_grid_search(data):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    X, y, mask = data
    a = make_clf(max_epochs=2).fit(X, y, meta=mask)
    b = clone(a).fit(X, y, meta=mask)
    _assert_same_run(a, b)
    c = make_clf(max_epochs=2, random_state=1).fit(X, y, meta=mask)
    assert not np.array_equal(a.sample_weights_, c.sample_weights_)
    grid = GridSearchCV(make_clf(max_epochs=2), {"meta_lr": [1e-3]}, cv=2)
    grid.fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))
    direct = make_clf(max_epochs=2, meta_lr=1e-3).fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))
    _assert_same_run(grid.best_estimator_, direct)


def test_ctrl_c_leaves_a_usable_estimator(data):
    X, y, mask = data
    clf = make_clf(callbacks=[StopAtBatch(epoch=2, batch=3)]).fit(X, y, meta=mask)
    assert len(clf.history) == 2
    steps_per_epoch = int(np.ceil(len(X) / 64))  # the meta rows are trained on too
    assert clf.n_steps_ == steps_per_epoch + 3
    assert np.isfinite(clf.sample_weights_).all()
    assert clf.predict(X).shape == (len(X),)
    assert np.isfinite(clf.weight_function_(np.array([0.5, 3.0]), [0, 1])).all()
    clf.partial_fit(X, y, meta=mask)  # and it can go on training


def test_early_stopping_leaves_a_usable_estimator(data):
    X, y, mask = data
    clf = make_clf(max_epochs=30, train_split=ValidSplit(4, stratified=True), lr=2.0,
                   callbacks=[EarlyStopping(patience=1, threshold=0.5)])
    clf.fit(X, y, meta=mask)
    assert len(clf.history) < 30
    assert hasattr(clf, "weight_function_") and clf.predict(X).shape == (len(X),)
    # rows held out for validation were never visited
    visited = np.isfinite(clf.sample_weights_)
    assert 0 < visited.sum() < (~mask).sum()


# --------------------------------------------------------------------------- bad input
def _bad_cases(X, y, mask):
    X_nan = X.copy()
    X_nan[5, 3] = np.nan
    Xm_inf = X[mask].copy()
    Xm_inf[0, 0] = np.inf
    one_class = y[~mask] * 0
    return {
        "nan in X": ((X_nan, y), dict(meta=mask), ValueError, "X contains NaN"),
        "inf in meta": ((X[~mask], y[~mask]), dict(meta=(Xm_inf, y[mask])), ValueError, "X_meta contains NaN or inf"),
        "no meta": ((X, y), dict(), ValueError, "requires a clean meta set"),
        "empty meta pair": ((X, y), dict(meta=(X[:0], y[:0])), ValueError, "is empty"),
        "empty meta mask": ((X, y), dict(meta=np.zeros(len(X), bool)), ValueError, "meta set is empty"),
        "meta labels unknown": ((X[~mask], y[~mask]), dict(meta=(X[mask], y[mask] + 100)), ValueError, "not among the classes"),
        "meta shape": ((X[~mask], y[~mask]), dict(meta=(X[mask][:, :10], y[mask])), ValueError, "meta features have shape"),
        "mask length": ((X, y), dict(meta=mask[:-1]), ValueError, "mask has length"),
        "index out of range": ((X, y), dict(meta=np.array([0, len(X) + 5])), ValueError, "outside"),
        "X y lengths": ((X, y[:-1]), dict(meta=mask), ValueError, "but y has"),
        "single class": ((X[~mask], one_class), dict(meta=(X[mask], y[mask] * 0)), ValueError, "contain 1 class"),
        "2-d labels": ((X, np.c_[y, y]), dict(meta=mask), ValueError, "1-dimensional"),
    }


BAD_CASES = ["nan in X", "inf in meta", "no meta", "empty meta pair", "empty meta mask", "meta labels unknown",
             "meta shape", "mask length", "index out of range", "X y lengths", "single class", "2-d labels"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_before_training(data, case):
    X, y, mask = data
    (Xa, ya), kwargs, exc, match = _bad_cases(X, y, mask)[case]
    clf = make_clf()
    with pytest.raises(exc, match=match):
        clf.fit(Xa, ya, **kwargs)
    assert not clf.initialized_  # nothing was built, let alone trained


@pytest.mark.parametrize("param", [dict(lr=float("nan")), dict(lr=-0.1), dict(lr=0), dict(meta_lr=float("inf")),
                                   dict(meta_lr=-1e-3), dict(optimizer__lr=-1.0), dict(meta_interval=0),
                                   dict(batch_size=0), dict(meta_gradient="second-order"), dict(nan_policy="ignore")])
def test_bad_hyperparameters(data, param):
    X, y, mask = data
    clf = make_clf(**param)
    with pytest.raises(ValueError, match=next(iter(param)).split("__")[-1] if "lr" not in next(iter(param)) else "lr"):
        clf.fit(X, y, meta=mask)
    assert not clf.initialized_


SENTINEL = 0.123456


class NaNOnSentinel(torch.nn.Module):
    """A classifier whose output is NaN for any batch holding the sentinel row."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.net = TinyMLP(dropout=dropout)

    def forward(self, x):
        out = self.net(x)
        if bool((x[:, 0] == SENTINEL).any()):
            out = out * float("nan")
        return out


@pytest.fixture
def poisoned(data):
    X, y, mask = data
    X = X.copy()
    X[np.flatnonzero(~mask)[7], 0] = SENTINEL
    return X, y, mask


def test_nan_during_training_names_epoch_and_batch(poisoned):
    X, y, mask = poisoned
    clf = make_clf(module=NaNOnSentinel, meta_interval=1)
    with pytest.raises(TrainingDivergedError, match=r"non-finite train loss in epoch 1, batch \d+"):
        clf.fit(X, y, meta=mask)
    assert np.isfinite(clf.weight_function_(np.linspace(0, 5, 11), [0])).all()
    for p in clf.module_.parameters():
        assert torch.isfinite(p).all()


def test_nan_policy_skip_continues(poisoned):
    X, y, mask = poisoned
    clf = make_clf(module=NaNOnSentinel, meta_interval=1, nan_policy="skip").fit(X, y, meta=mask)
    assert len(clf.history) == 4
    assert clf.history[:, "batches_skipped"] == [1, 1, 1, 1]  # exactly the poisoned batch, every epoch
    assert all(np.isfinite(clf.history[:, "train_loss"]))
    assert np.isfinite(clf.weight_function_(np.array([1.0]), [0])).all()
    for p in clf.module_.parameters():
        assert torch.isfinite(p).all()
