"""No silent wrong results: NaN batches leave no trace, loader workers end with fit, and every
input mistake gets a clear error (or is converted as scikit-learn converts it)."""

import multiprocessing

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn
from torch.utils.data import TensorDataset

from mwnet_sk import MetaWeightClassifier, TrainingDivergedError, WeightNet

from conftest import TinyMLP


@pytest.fixture(scope="module")
def data(digits):
    X, y, mask = digits
    keep = np.random.RandomState(3).permutation(np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)[:300]])
    return X[keep], y[keep], mask[keep]


def make_clf(**kwargs):
    params = dict(module=TinyMLP, lr=0.1, optimizer__momentum=0.9, max_epochs=2, batch_size=64, verbose=0,
                  random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


# --------------------------------------------------------------------------- NaN leaves no trace
SENTINEL = 0.987654


class NaNBeforeBatchNorm(nn.Module):
    """NaN appears inside the module, before a BatchNorm, for batches holding the sentinel row."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.lin(x)
        if bool((x[:, 0] == SENTINEL).any()):
            h = h * float("nan")
        return self.fc(torch.relu(self.bn(h)))


def _poison(X, rows):
    X = X.copy()
    X[rows, 0] = SENTINEL
    return X


def test_skipped_batch_leaves_batchnorm_statistics_clean(data):
    X, y, mask = data
    Xp = _poison(X, [np.flatnonzero(~mask)[4]])
    clf = make_clf(module=NaNBeforeBatchNorm, nan_policy="skip", max_epochs=3).fit(Xp, y, meta=mask)
    assert clf.history[:, "batches_skipped"] == [1, 1, 1]
    for name, buffer in clf.module_.named_buffers():
        assert torch.isfinite(buffer.float()).all(), name
    assert np.isfinite(clf.predict_proba(X)).all()
    assert len(set(clf.predict(X))) > 1


def test_an_epoch_of_skipped_batches_raises(data):
    X, y, mask = data
    Xp = X.copy()
    Xp[:, 0] = SENTINEL  # every batch is poisoned
    with pytest.raises(TrainingDivergedError, match="every batch of epoch 1 was skipped"):
        make_clf(module=NaNBeforeBatchNorm, nan_policy="skip").fit(Xp, y, meta=mask)


def test_after_divergence_the_estimator_holds_its_last_finite_state(data):
    X, y, mask = data
    rows = np.flatnonzero(~mask)
    Xp = _poison(X, [rows[100]])
    snapshots = []

    class Snapshot(Callback):
        def on_batch_begin(self, net, batch=None, training=False, **kwargs):
            if training:
                snapshots.append({k: v.clone() for k, v in net.module_.state_dict().items()})

    clf = make_clf(module=NaNBeforeBatchNorm, callbacks=[Snapshot()], max_epochs=1)
    with pytest.raises(TrainingDivergedError, match="nothing of this batch was applied"):
        clf.fit(Xp, y, meta=mask)
    for key, value in clf.module_.state_dict().items():
        assert torch.equal(value, snapshots[-1][key]), key  # exactly the state before the failing batch
    assert np.isfinite(clf.predict_proba(X)).all()


# --------------------------------------------------------------------------- no leaks
def test_meta_loader_workers_end_with_fit_and_work_in_parallel_grid_search(data):
    from sklearn.model_selection import GridSearchCV

    X, y, mask = data
    meta = TensorDataset(torch.from_numpy(X[mask]), torch.from_numpy(y[mask]))
    clf = make_clf(max_epochs=1, iterator_meta__num_workers=2)
    # joblib's reusable loky workers from earlier tests may be alive; fit must add none
    before = set(multiprocessing.active_children())
    for _ in range(2):
        clf.fit(X[~mask], y[~mask], meta=meta)
        assert set(multiprocessing.active_children()) - before == set()
    grid = GridSearchCV(clf, {"meta_lr": [1e-3, 1e-2]}, cv=2, n_jobs=2)
    grid.fit(X[~mask], y[~mask], meta=meta)
    assert set(grid.cv_results_["param_meta_lr"]) == {1e-3, 1e-2}


# --------------------------------------------------------------------------- inputs
def test_integer_and_boolean_features_become_float(data):
    X, y, mask = data
    Xi = (X * 16).astype(np.int64)
    clf = make_clf().fit(Xi, y, meta=mask)
    assert clf.score(Xi, y) > 0.3
    make_clf().fit(Xi > 4, y, meta=mask).predict(Xi > 4)


def test_integer_images_stay_integer_for_a_batch_transform(data):
    X, y, mask = data
    seen = []

    class Scale(nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x.float() / 255

    Xu = (X * 255).astype(np.uint8)
    make_clf(batch_transform=Scale(), max_epochs=1).fit(Xu, y, meta=mask)
    assert set(seen) == {torch.uint8}


@pytest.mark.parametrize("width", [12, 9])
def test_module_output_width_must_match_the_classes(data, width):
    X, y, mask = data
    with pytest.raises(ValueError, match=f"returns {width} logits per sample but there are 10 classes"):
        make_clf(module__num_classes=width).fit(X, y, meta=mask)


def test_dataframe_columns_are_checked_at_predict(data):
    pd = pytest.importorskip("pandas")
    X, y, mask = data
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    clf = make_clf().fit(df, y, meta=mask)
    assert list(clf.feature_names_in_) == list(df.columns)
    clf.predict(df)
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(df[df.columns[::-1]])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        clf.predict(X)


def test_classes_in_any_order(data):
    X, y, mask = data
    order = np.array([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    clf = make_clf(classes=order, max_epochs=4).fit(X, y, meta=mask)
    np.testing.assert_array_equal(clf.classes_, order)
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), order[proba.argmax(1)])
    assert clf.score(X, y) > 0.5  # the columns really are in the given order
    with pytest.raises(ValueError, match="classes is empty"):
        make_clf(classes=[]).fit(X, y, meta=mask)


def test_batchnorm_never_sees_a_batch_of_one(data):
    X, y, mask = data
    n = 64 * 3 + 1
    sizes = []

    class Sizes(Callback):
        def on_batch_begin(self, net, batch=None, training=False, **kwargs):
            if training:
                sizes.append(len(batch[1]))

    make_clf(callbacks=[Sizes()], max_epochs=1, train_on_meta=False).fit(
        X[:n + mask[:n].sum()], y[:n + mask[:n].sum()], meta=mask[:n + mask[:n].sum()])
    assert min(sizes) > 1 and sum(sizes) == (~mask[:n + mask[:n].sum()]).sum()
    with pytest.raises(ValueError, match="meta set has 1 row.*BatchNorm"):
        make_clf().fit(X[~mask], y[~mask], meta=(X[mask][:1], y[mask][:1]))
    with pytest.raises(ValueError, match="meta_batch_size=1"):
        make_clf(meta_batch_size=1).fit(X, y, meta=mask)


class Flat(WeightNet):
    def forward(self, losses):
        return super().forward(losses).reshape(-1)


class Negative(WeightNet):
    def forward(self, losses):
        return super().forward(losses) - 2.0


class NoParameters(nn.Module):
    def forward(self, losses):
        return torch.ones_like(losses)


@pytest.mark.parametrize("weight_net,match", [
    (Flat, r"must map a \(n, 1\) tensor of losses to \(n, 1\) weights"),
    (Negative, r"must return weights in \[0, 1\]"),
    (NoParameters, "has no trainable parameters"),
])
def test_weight_net_contract_is_checked(data, weight_net, match):
    X, y, mask = data
    with pytest.raises(ValueError, match=match):
        make_clf(weight_net=weight_net).fit(X, y, meta=mask)


def test_fixed_weight_function_needs_no_meta_set(data):
    X, y, mask = data
    clf = make_clf(weight_net=NoParameters, meta_lr=0).fit(X, y)
    assert clf.meta_optimizer_ is None and np.allclose(clf.sample_weights_, 1.0)


def test_criterion_must_be_a_loss_module(data):
    X, y, mask = data
    with pytest.raises(TypeError, match="wrap a function"):
        make_clf(criterion=torch.nn.functional.cross_entropy).fit(X, y, meta=mask)


def test_lists_fit_and_predict(data):
    X, y, mask = data
    clf = make_clf().fit(X.tolist(), y.tolist(), meta=mask)
    assert clf.predict(X[:5].tolist()).shape == (5,)


def test_mixed_label_types_are_refused(data):
    X, y, mask = data
    mixed = np.array([int(v) if i % 2 else str(v) for i, v in enumerate(y)], dtype=object)
    with pytest.raises(ValueError, match="mixes label types"):
        make_clf().fit(X, mixed, meta=mask)


def test_float64_meta_dataset_is_converted(data):
    X, y, mask = data
    meta = TensorDataset(torch.from_numpy(X[mask].astype(np.float64)), torch.from_numpy(y[mask]))
    clf = make_clf().fit(X[~mask], y[~mask], meta=meta)
    assert np.isfinite(clf.sample_weights_).all()


# --------------------------------------------------------------------------- review fixes (2026-12-02)
class _SeenLabels(Callback):
    def initialize(self):
        self.labels = []
        return self

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.labels.append(np.asarray(batch[1]))


def test_y_given_beside_a_dataset_is_what_the_model_trains_on(data):
    X, y, mask = data
    rows = np.flatnonzero(~mask)
    clean = TensorDataset(torch.from_numpy(X[rows]), torch.zeros(len(rows), dtype=torch.long))  # labels ignored
    seen = _SeenLabels()
    make_clf(max_epochs=1, train_on_meta=False, callbacks=[("seen", seen)]).fit(
        clean, y[rows], meta=(X[mask], y[mask]))
    np.testing.assert_array_equal(np.bincount(np.concatenate(seen.labels), minlength=10),
                                  np.bincount(y[rows], minlength=10))


class _NumpyItems(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.targets = X.astype(np.float64), y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], int(self.targets[i])


def test_a_dataset_of_numpy_items_trains_beside_the_meta_rows(data):
    """train_on_meta=True concatenates the user's numpy items with tensor items: they must collate."""
    X, y, mask = data
    rows = np.flatnonzero(~mask)
    for X_fit, y_fit, meta in [(X[rows], y[rows], _NumpyItems(X[mask], y[mask])),
                               (_NumpyItems(X[rows], y[rows]), None, (X[mask], y[mask]))]:
        clf = make_clf(max_epochs=1).fit(X_fit, y_fit, meta=meta)
        assert np.isfinite(clf.history[-1, "train_loss"])


def test_a_meta_tuple_of_three_and_an_integer_mask_are_refused_with_the_fix(data):
    X, y, mask = data
    with pytest.raises(ValueError, match=r"got a tuple of 3 arrays: pass exactly \(X_meta, y_meta\)"):
        make_clf().fit(X, y, meta=(X[mask], y[mask], y[mask]))
    with pytest.raises(ValueError, match=r"for a mask pass booleans: meta=mask.astype\(bool\)"):
        make_clf().fit(X, y, meta=mask.astype(int))


def test_meta_dataframe_columns_must_be_X_columns_in_order(data):
    pd = pytest.importorskip("pandas")
    X, y, mask = data
    cols = [f"px{i}" for i in range(64)]
    df, meta = pd.DataFrame(X[~mask], columns=cols), pd.DataFrame(X[mask], columns=cols)
    with pytest.raises(ValueError, match=r"X_meta's columns .* are not X's .* pass X_meta\[X.columns\]"):
        make_clf().fit(df, y[~mask], meta=(meta[cols[::-1]], y[mask]))
    make_clf(max_epochs=1).fit(df, y[~mask], meta=(meta, y[mask]))


def test_a_numpy_float_warm_up_is_a_fraction(data):
    clf = make_clf(max_epochs=10, warmup_epochs=np.float32(0.5))
    assert clf._warmup() == 5 and make_clf(max_epochs=10, warmup_epochs=np.int64(3))._warmup() == 3


def test_partial_fit_on_chunks_of_other_sizes_keeps_counting_steps(data):
    X, y, mask = data
    clf = make_clf(max_epochs=1, batch_size=50, classes=np.arange(10))
    clf.partial_fit(X[:150], y[:150], meta=mask[:150])
    assert clf.n_steps_ == 3
    clf.partial_fit(X[150:200], y[150:200], meta=mask[150:200])
    assert clf.n_steps_ == 4


def test_predicting_for_no_sample_is_a_clear_error(data):
    X, y, mask = data
    clf = make_clf(max_epochs=1).fit(X, y, meta=mask)
    for empty in (X[:0], X[:0].tolist(), torch.from_numpy(X[:0])):
        with pytest.raises(ValueError, match="X has 0 samples"):
            clf.predict(empty)
