"""MetaWeightClassifier: surface, meta-set forms, labels, and scikit-learn composition."""

import pickle

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.dataset import ValidSplit
from torch.utils.data import TensorDataset

from mwnet_sk import MetaWeightClassifier, PerClassWeightNet, WeightFunction

from conftest import TinyMLP


def make_clf(**kwargs):
    params = dict(module=TinyMLP, lr=0.1, optimizer__momentum=0.9, max_epochs=2, batch_size=64,
                  verbose=0, random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


@pytest.fixture(scope="module")
def small(digits):
    X, y, mask = digits
    keep = np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)[:500]]
    keep = np.random.RandomState(0).permutation(keep)  # meta rows spread over CV folds
    return X[keep], y[keep], mask[keep]


def test_initialize_exposes_components():
    clf = make_clf().initialize()
    assert isinstance(clf.module_, TinyMLP)
    assert isinstance(clf.weight_net_, PerClassWeightNet) and clf.weight_net_.hidden_size == 100
    assert isinstance(clf.optimizer_, torch.optim.SGD)
    # the default meta optimizer: SGD with Nesterov momentum 0.9 and weight decay 5e-4
    assert isinstance(clf.meta_optimizer_, torch.optim.SGD)
    group = clf.meta_optimizer_.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.9, True, 5e-4)
    # the classifier optimizer must not touch the weight net and vice versa
    cls_params = {id(p) for g in clf.optimizer_.param_groups for p in g["params"]}
    assert cls_params == {id(p) for p in clf.module_.parameters()}
    assert clf.criterion_.reduction == "none"


def test_routing_of_prefixed_parameters():
    clf = make_clf(meta_optimizer=torch.optim.SGD, meta_optimizer__weight_decay=0.0,
                   meta_optimizer__momentum=0.5, weight_net__hidden_size=7, meta_lr=0.05).initialize()
    group = clf.meta_optimizer_.param_groups[0]
    assert (group["weight_decay"], group["momentum"], group["lr"]) == (0.0, 0.5, 0.05)
    assert clf.weight_net_.hidden_size == 7
    clf.set_params(meta_lr=0.2)
    assert clf.meta_optimizer_.param_groups[0]["lr"] == 0.2
    clf.set_params(meta_optimizer__lr=0.3)
    assert clf.meta_optimizer_.param_groups[0]["lr"] == 0.3
    params = clf.get_params()
    assert params["weight_net__hidden_size"] == 7 and params["meta_lr"] == 0.2


def test_criterion_instance_keeps_its_settings(small):
    X, y, mask = small
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    clf = make_clf(criterion=crit, max_epochs=1).fit(X, y, meta=mask)
    assert clf.criterion_.label_smoothing == 0.2 and clf.criterion_.reduction == "none"
    assert crit.reduction == "mean"  # the user's object is untouched
    with pytest.raises(ValueError, match="reduction must be 'none'"):
        make_clf(criterion__reduction="mean").fit(X, y, meta=mask)


def test_criterion_must_give_per_sample_losses(small):
    X, y, mask = small

    class MeanOnly(torch.nn.Module):
        def forward(self, logits, target):
            return torch.nn.functional.cross_entropy(logits, target)

    with pytest.raises(ValueError, match="one loss per sample"):
        make_clf(criterion=MeanOnly, max_epochs=1).fit(X, y, meta=mask)


def test_fit_attributes(small):
    X, y, mask = small
    clf = make_clf().fit(X, y, meta=mask)
    assert clf.sample_weights_.shape == (len(X),)
    # by default the meta rows are trained on too, so every row has a weight
    w = clf.sample_weights_
    assert np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    assert np.isfinite(clf.sample_losses_).all() and (clf.sample_losses_ >= 0).all()
    # the recorded weights are what the learned function gives for the recorded losses
    # (at the last visit, before later weight-net updates, so only approximately)
    f = clf.weight_function_
    assert isinstance(f, WeightFunction)
    out = f(np.array([0.1, 1.0, 3.0]), [0, 4, 9])  # the default is class-aware: losses and class indices
    assert isinstance(out, np.ndarray) and out.shape == (3,) and ((out >= 0) & (out <= 1)).all()
    t = f(torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([1, 1]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (2,)
    with pytest.raises(ValueError, match="class-aware: pass the class index"):
        f(np.array([0.1]))
    rows = np.flatnonzero(np.isfinite(clf.sample_weights_))[:5]
    recorded = f(clf.sample_losses_[rows], clf.classes_.searchsorted(y[rows]))
    np.testing.assert_allclose(recorded, clf.sample_weights_[rows], atol=0.1)
    losses, weights = f.curve(0, 5, n_points=11)
    assert losses.shape == weights.shape == (11,)
    row = clf.history[-1]
    for key in ("train_loss", "meta_loss", "weight_mean", "weight_std"):
        assert np.isfinite(row[key])
    assert clf.n_steps_ == 2 * int(np.ceil(len(X) / 64))
    assert clf.weight_function_.profile().loss_range[1] > 0
    assert set(clf.predict(X)) <= set(y)
    assert clf.predict_proba(X).shape == (len(X), 10)
    assert 0.0 <= clf.score(X, y) <= 1.0


def test_mask_and_index_forms_are_identical(small):
    X, y, mask = small
    a = make_clf().fit(X, y, meta=mask)
    b = make_clf().fit(X, y, meta=np.flatnonzero(mask))
    np.testing.assert_array_equal(a.sample_weights_, b.sample_weights_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_pair_and_dataset_meta_forms(small):
    X, y, mask = small
    pair = make_clf().fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))
    ds = TensorDataset(torch.from_numpy(X[mask]), torch.from_numpy(y[mask]))
    dataset = make_clf().fit(X[~mask], y[~mask], meta=ds)
    assert pair.sample_weights_.shape == dataset.sample_weights_.shape == ((~mask).sum(),)
    # the same meta rows in another container give the same trajectory
    np.testing.assert_allclose(pair.sample_weights_, dataset.sample_weights_, atol=1e-6)


def test_dataset_as_training_input(small):
    X, y, mask = small
    train = TensorDataset(torch.from_numpy(X[~mask]), torch.from_numpy(y[~mask]))
    clf = make_clf().fit(train, None, meta=(X[mask], y[mask]))
    assert clf.sample_weights_.shape == (len(train),)
    assert np.isfinite(clf.sample_weights_).all()
    np.testing.assert_array_equal(clf.classes_, np.arange(10))


def test_string_and_noncontiguous_labels(small):
    X, y, mask = small
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    ys = names[y]
    clf = make_clf(max_epochs=3, train_split=ValidSplit(5, stratified=True)).fit(X, ys, meta=mask)
    assert clf.classes_.dtype.kind == "U" and set(clf.classes_) == set(names)
    pred = clf.predict(X)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    assert clf.score(X, ys) > 0.5
    assert clf.history[-1, "valid_acc"] > 0.5  # validation scoring works on encoded labels
    yi = y * 10 + 3  # 3, 13, ..., 93
    clf = make_clf().fit(X, yi, meta=mask)
    assert set(clf.predict(X)) <= set(yi)
    with pytest.raises(ValueError, match="not among the classes"):
        make_clf().fit(X[~mask], ys[~mask], meta=(X[mask], np.full(mask.sum(), "eleven")))


def test_module_instance_is_copied_so_clones_start_fresh(small):
    X, y, mask = small
    torch.manual_seed(0)
    module = TinyMLP()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    clf = MetaWeightClassifier(module, lr=0.1, max_epochs=1, verbose=0).fit(X, y, meta=mask)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, initial[k])  # the user's instance is untouched
    assert clf.module_ is not module
    fresh = clone(clf).initialize()
    for k, v in fresh.module_.state_dict().items():
        torch.testing.assert_close(v, initial[k])


def test_random_state_reproducible_and_partial_fit(small):
    X, y, mask = small
    a = make_clf().fit(X, y, meta=mask)
    b = clone(a).fit(X, y, meta=mask)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    steps = a.n_steps_
    a.partial_fit(X, y, meta=mask)
    assert a.n_steps_ == 2 * steps and len(a.history) == 4


def test_pickle_and_joblib_round_trip(small, tmp_path):
    X, y, mask = small
    clf = make_clf().fit(X, y, meta=mask)
    expected = clf.predict_proba(X)
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(loaded.predict_proba(X), expected)
    np.testing.assert_allclose(loaded.weight_function_(np.linspace(0, 5, 6), np.arange(6) % 2),
                               clf.weight_function_(np.linspace(0, 5, 6), np.arange(6) % 2))
    joblib.dump(clf, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_allclose(loaded.predict_proba(X), expected)
    np.testing.assert_array_equal(loaded.sample_weights_, clf.sample_weights_)
    # a loaded estimator can keep training
    loaded.partial_fit(X, y, meta=mask)
    f = pickle.loads(pickle.dumps(clf.weight_function_))
    np.testing.assert_allclose(f(np.array([1.0]), [1]), clf.weight_function_(np.array([1.0]), [1]))


def test_grid_search_over_meta_lr_in_parallel(small):
    X, y, mask = small
    grid = GridSearchCV(make_clf(max_epochs=1), {"meta_lr": [1e-4, 1e-2]}, cv=2, n_jobs=2)
    grid.fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))
    assert grid.best_params_["meta_lr"] in (1e-4, 1e-2)
    assert grid.best_estimator_.meta_optimizer_.param_groups[0]["lr"] == grid.best_params_["meta_lr"]
    assert len(grid.cv_results_["mean_test_score"]) == 2


def test_cross_validate_with_mask(small):
    X, y, mask = small
    res = cross_validate(make_clf(max_epochs=1), X, y, cv=StratifiedKFold(3), params={"meta": mask},
                         return_estimator=True)
    assert len(res["test_score"]) == 3
    for est in res["estimator"]:
        # each fold trained on its own training rows with that fold's meta rows
        n_train_rows = len(X) - len(X) // 3 - (1 if len(X) % 3 else 0)
        assert abs(len(est.sample_weights_) - n_train_rows) <= 1


def test_pipeline_with_mask(small):
    X, y, mask = small
    pipe = make_pipeline(StandardScaler(), make_clf())
    pipe.fit(X * 3 + 1, y, metaweightclassifier__meta=mask)
    assert pipe.score(X * 3 + 1, y) > 0.3
    assert pipe[-1].sample_weights_.shape == (len(X),)


def test_metadata_routing(small):
    X, y, mask = small
    with sklearn.config_context(enable_metadata_routing=True):
        clf = make_clf(max_epochs=1).set_fit_request(meta=True)
        res = cross_validate(clf, X, y, cv=StratifiedKFold(2), params={"meta": mask})
        assert len(res["test_score"]) == 2
        grid = GridSearchCV(clf, {"meta_lr": [1e-3, 1e-2]}, cv=2)
        grid.fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))
        assert hasattr(grid, "best_estimator_")


def test_fit_params_are_not_sent_to_forward(small):
    X, y, mask = small
    with pytest.raises(TypeError, match="does not pass fit parameters"):
        make_clf().fit(X, y, meta=mask, extra=np.ones(len(X)))


@pytest.mark.parametrize("mode", [dict(meta_interval=3), dict(meta_params="last"),
                                  dict(meta_gradient="unrolled"), dict(meta_gradient="finite_difference"),
                                  dict(normalize_weights=True), dict(record_weights=True)])
def test_modes_train(small, mode):
    X, y, mask = small
    clf = make_clf(**mode).fit(X, y, meta=mask)
    assert np.isfinite(clf.history[-1, "train_loss"])
    if mode.get("record_weights"):
        assert clf.sample_weights_history_.shape == (2, len(X))
        np.testing.assert_array_equal(clf.sample_weights_history_[-1], clf.sample_weights_.astype(np.float32))


def test_learned_weight_function_decreases_under_label_noise(digits):
    """The paper's Fig. 1(e): with 40% uniform noise the learned curve decreases with the loss
    and noisy samples get smaller weights than clean ones (after the lr step, see DESIGN.md)."""
    from skorch.callbacks import LRScheduler

    X, y, mask = digits
    rng = np.random.RandomState(1)
    y_noisy = y.copy()
    redraw = (rng.rand(len(y)) < 0.4) & ~mask
    y_noisy[redraw] = rng.randint(0, 10, redraw.sum())
    corrupted = y_noisy != y
    from mwnet_sk.models import MLP

    clf = make_clf(module=MLP, module__n_features=64, module__num_classes=10, max_epochs=30,
                   batch_size=100, meta_lr=1e-2,
                   callbacks=[LRScheduler("MultiStepLR", milestones=[24], gamma=0.1)])
    clf.fit(X, y_noisy, meta=mask)
    losses, weights = clf.weight_function_.curve(0.05, 5.0, n_points=12)
    assert weights[0] > weights[-1] + 0.3
    assert np.all(np.diff(weights) < 1e-3)  # non-increasing on the grid
    w = clf.sample_weights_
    assert np.nanmean(w[corrupted]) < np.nanmean(w[~corrupted & ~mask]) - 0.2
    assert clf.score(X[~mask], y[~mask]) > 0.85  # measured against the true labels


def test_meta_dataset_loaded_by_workers_gives_the_same_run(small):
    X, y, mask = small
    ds = TensorDataset(torch.from_numpy(X[mask]), torch.from_numpy(y[mask]))
    serial = make_clf(meta_batch_size=16).fit(X[~mask], y[~mask], meta=ds)
    workers = make_clf(meta_batch_size=16, iterator_meta__num_workers=2).fit(X[~mask], y[~mask], meta=ds)
    np.testing.assert_array_equal(serial.sample_weights_, workers.sample_weights_)
    a, b = serial.training_state_.meta_position, workers.training_state_.meta_position
    assert a["offset"] == b["offset"] and torch.equal(a["generator"], b["generator"])


def test_fast_jvp_switch_gives_the_same_fit(small):
    X, y, mask = small
    fast = make_clf(max_epochs=1).fit(X, y, meta=mask)
    generic = make_clf(max_epochs=1, fast_jvp=False).fit(X, y, meta=mask)
    np.testing.assert_allclose(fast.sample_weights_, generic.sample_weights_, atol=1e-5)


def test_option_changes_between_fits_take_effect_and_routed_meta_optimizer_settings_win():
    from mwnet_sk.models import MLP

    rng = np.random.RandomState(0)
    X = rng.randn(200, 4).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    mask = np.zeros(200, bool)
    mask[:20] = True

    def make(**kw):
        return MetaWeightClassifier(MLP, module__n_features=4, module__num_classes=2, max_epochs=1, verbose=0,
                                    warmup_epochs=0, random_state=0, **kw)

    clf = make().fit(X, y, meta=mask)
    clf.set_params(record_weights=True, warm_start=True).fit(X, y, meta=mask)  # turned on between fits
    assert clf.sample_weights_history_.shape == (1, 200)
    # momentum 0 routed: the default's Nesterov gives way instead of torch refusing it
    assert make(meta_optimizer__momentum=0).fit(X, y, meta=mask).meta_optimizer_.defaults["nesterov"] is False
    # the weight net learns at its effective rate: a routed lr counts, not only meta_lr
    routed = make(meta_lr=0, meta_optimizer__lr=0.1).fit(X, y, meta=mask)
    assert np.isfinite(routed.history[-1, "meta_loss"])
