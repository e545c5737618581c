"""MetaWeightRefit: learned weights handed to any scikit-learn classifier, and its composition
with scikit-learn (clone, pickle, Pipeline, GridSearchCV, cross_validate, metadata routing)."""

import pickle

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch.utils.data import TensorDataset

from mwnet_sk import MetaWeightClassifier, PlainClassifier
from mwnet_sk.models import MLP
from mwnet_sk.refit import MetaWeightRefit, default_weighter

TRUSTED, DISTRUSTED = 0.4, 0.04  # a stand-in weighter's two weights (relative: 1 and 0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


class RuleWeighter(ClassifierMixin, BaseEstimator):
    """A stand-in weighter with known weights: ``trusted`` for rows whose label agrees with
    ``x0 > 0``, ``distrusted`` otherwise; ``meta_weight`` (if given) for the rows of a meta mask.
    It records what fit received."""

    def __init__(self, trusted=TRUSTED, distrusted=DISTRUSTED, meta_weight=None):
        self.trusted = trusted
        self.distrusted = distrusted
        self.meta_weight = meta_weight

    def fit(self, X, y, meta=None):
        X, y = np.asarray(X), np.asarray(y)
        agree = y == (X[:, 0] > 0).astype(int)
        weights = np.where(agree, self.trusted, self.distrusted).astype(float)
        if self.meta_weight is not None and isinstance(meta, np.ndarray) and meta.dtype == bool:
            weights[np.asarray(meta)] = self.meta_weight
        self.sample_weights_ = weights
        self.sample_losses_ = np.where(agree, 0.1, 2.0) + 1e-3 * np.arange(len(y))
        self.meta_seen_ = meta
        self.n_rows_seen_ = len(y)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return (np.asarray(X)[:, 0] > 0).astype(int)


class Recorder(ClassifierMixin, BaseEstimator):
    """Records the rows, labels and sample weights its fit received."""

    def fit(self, X, y, sample_weight=None):
        self.X_fit_, self.y_fit_, self.sample_weight_ = np.asarray(X), np.asarray(y), sample_weight
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


class RecorderWithoutWeights(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.X_fit_, self.y_fit_ = np.asarray(X), np.asarray(y)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


@pytest.fixture(scope="module")
def rule_data():
    """200 rows, 5 features; labels x0 > 0 with 30% of the non-meta rows flipped; a mask of 10
    meta rows per class (clean)."""
    rng = np.random.RandomState(0)
    X = rng.randn(200, 5)
    y_true = (X[:, 0] > 0).astype(int)
    meta = np.zeros(200, dtype=bool)
    for c in (0, 1):
        meta[rng.choice(np.flatnonzero(y_true == c), 10, replace=False)] = True
    flip = (rng.rand(200) < 0.3) & ~meta
    y = np.where(flip, 1 - y_true, y_true)
    return X, y, meta, flip


@pytest.fixture(scope="module")
def noisy_digits():
    """400 digits in [0, 1], 40% uniform noise outside a mask of 5 meta rows per class."""
    from sklearn.datasets import load_digits

    from mwnet_sk.noise import make_noisy_labels, meta_mask

    X, y = load_digits(return_X_y=True)
    X, y = (X[:400] / 16).astype(np.float32), y[:400]
    meta = meta_mask(y, n_meta_per_class=5, random_state=0)
    y_noisy = np.where(meta, y, make_noisy_labels(y, 0.4, random_state=0))
    return X, y_noisy, meta


def small_weighter(**kwargs):
    params = dict(module__n_features=64, module__num_classes=10, module__hidden=(32,), lr=0.1, max_epochs=2,
                  batch_size=100, verbose=0, random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(MLP, **params)


# --------------------------------------------------------------------------- how the weights are used
def test_weights_are_divided_by_the_largest_and_meta_rows_count_fully(rule_data):
    X, y, meta, flip = rule_data
    refit = MetaWeightRefit(Recorder(), weighter=RuleWeighter(meta_weight=0.0)).fit(X, y, meta=meta)
    assert refit.mode_ == "weight"
    expected = np.where(flip, DISTRUSTED / TRUSTED, 1.0)
    expected[meta] = 1.0  # the weighter gave the meta rows 0: their verified labels count fully anyway
    np.testing.assert_allclose(refit.sample_weights_, expected)
    np.testing.assert_allclose(refit.estimator_.sample_weight_, expected)
    np.testing.assert_array_equal(refit.estimator_.X_fit_, X)
    np.testing.assert_array_equal(refit.estimator_.y_fit_, y)
    assert refit.rows_kept_.all()
    np.testing.assert_array_equal(refit.meta_mask_, meta)
    np.testing.assert_array_equal(refit.classes_, [0, 1])


def test_drop_mode_keeps_the_rows_at_the_threshold_and_the_meta_rows(rule_data):
    X, y, meta, flip = rule_data
    weighter = RuleWeighter(distrusted=0.2, meta_weight=0.0)  # relative 0.5 for the distrusted rows
    kept_all = MetaWeightRefit(Recorder(), weighter=weighter, mode="drop", threshold=0.5).fit(X, y, meta=meta)
    assert kept_all.rows_kept_.all()  # 0.5 >= 0.5
    refit = MetaWeightRefit(Recorder(), weighter=weighter, mode="drop", threshold=0.6).fit(X, y, meta=meta)
    assert refit.mode_ == "drop"
    np.testing.assert_array_equal(refit.rows_kept_, ~flip | meta)
    np.testing.assert_array_equal(refit.estimator_.X_fit_, X[~flip | meta])
    assert refit.estimator_.sample_weight_ is None


def test_auto_mode_drops_rows_for_an_estimator_without_sample_weight(rule_data):
    X, y, meta, flip = rule_data
    refit = MetaWeightRefit(RecorderWithoutWeights(), weighter=RuleWeighter()).fit(X, y, meta=meta)
    assert refit.mode_ == "drop"
    np.testing.assert_array_equal(refit.estimator_.y_fit_, y[~flip])
    knn = MetaWeightRefit(KNeighborsClassifier(3), weighter=RuleWeighter()).fit(X, y, meta=meta)
    assert knn.mode_ == "drop" and knn.score(X, (X[:, 0] > 0).astype(int)) > 0.85
    with pytest.raises(ValueError, match="sample_weight.*mode='drop'"):
        MetaWeightRefit(KNeighborsClassifier(), weighter=RuleWeighter(), mode="weight").fit(X, y, meta=meta)


def test_a_separate_meta_set_is_appended_with_weight_one(rule_data):
    X, y, meta, flip = rule_data
    X_meta, y_meta = X[:7] + 10.0, np.array([0, 1, 0, 1, 0, 1, 1])
    refit = MetaWeightRefit(Recorder(), weighter=RuleWeighter()).fit(X, y, meta=(X_meta, y_meta))
    fitted = refit.estimator_
    np.testing.assert_array_equal(fitted.X_fit_, np.concatenate([X, X_meta]))
    np.testing.assert_array_equal(fitted.y_fit_, np.concatenate([y, y_meta]))
    np.testing.assert_allclose(fitted.sample_weight_[-7:], 1.0)
    assert refit.sample_weights_.shape == (200,) and not refit.meta_mask_.any()
    # a torch Dataset of (x, y) is appended the same way
    dataset = TensorDataset(torch.as_tensor(X_meta), torch.as_tensor(y_meta))
    refit = MetaWeightRefit(Recorder(), weighter=RuleWeighter(), mode="drop").fit(X, y, meta=dataset)
    np.testing.assert_allclose(refit.estimator_.X_fit_[-7:], X_meta)
    np.testing.assert_array_equal(refit.estimator_.y_fit_[-7:], y_meta)
    assert len(refit.estimator_.y_fit_) == (~flip).sum() + 7


def test_a_pipeline_estimator_gets_the_weights_on_its_last_step(rule_data):
    X, y, meta, flip = rule_data
    refit = MetaWeightRefit(make_pipeline(StandardScaler(), Recorder()), weighter=RuleWeighter()).fit(X, y, meta=meta)
    assert refit.mode_ == "weight"
    np.testing.assert_allclose(refit.estimator_[-1].sample_weight_, refit.sample_weights_)


def test_a_dataframe_keeps_its_columns(rule_data):
    pd = pytest.importorskip("pandas")
    X, y, meta, flip = rule_data
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    refit = MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter()).fit(frame, y, meta=(frame[:4], y[:4]))
    np.testing.assert_array_equal(refit.feature_names_in_, frame.columns)
    assert refit.n_features_in_ == 5
    assert refit.predict(frame[:3]).shape == (3,)


# --------------------------------------------------------------------------- delegation
def test_prediction_methods_are_delegated_when_the_estimator_has_them(rule_data):
    X, y, meta, _ = rule_data
    refit = MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter()).fit(X, y, meta=meta)
    est = refit.estimator_
    np.testing.assert_array_equal(refit.predict(X), est.predict(X))
    np.testing.assert_allclose(refit.predict_proba(X), est.predict_proba(X))
    np.testing.assert_allclose(refit.predict_log_proba(X), est.predict_log_proba(X))
    np.testing.assert_allclose(refit.decision_function(X), est.decision_function(X))
    assert refit.score(X, y) == est.score(X, y)
    weights = np.linspace(0, 1, len(y))
    assert refit.score(X, y, sample_weight=weights) == est.score(X, y, sample_weight=weights)
    svc = MetaWeightRefit(LinearSVC(), weighter=RuleWeighter())
    assert hasattr(svc, "decision_function") and not hasattr(svc, "predict_proba")
    assert not hasattr(MetaWeightRefit(KNeighborsClassifier()), "decision_function")
    with pytest.raises(NotFittedError):
        MetaWeightRefit(LogisticRegression()).predict(X)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("params", [{"mode": "soft"}, {"threshold": 0}, {"threshold": 1.5}, {"estimator": "lr"},
                                    {"weighter": 3}, {"random_state": "seed"}])
def test_bad_parameters_are_refused(rule_data, params):
    X, y, meta, _ = rule_data
    kwargs = {"estimator": LogisticRegression(), "weighter": RuleWeighter(), **params}
    with pytest.raises(InvalidParameterError):
        MetaWeightRefit(**kwargs).fit(X, y, meta=meta)


def test_bad_input_is_refused(rule_data):
    X, y, meta, _ = rule_data
    refit = MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter())
    with pytest.raises(ValueError, match="200 samples but y has 199"):
        refit.fit(X, y[:-1], meta=meta)
    with pytest.raises(ValueError, match="mask has length 10"):
        refit.fit(X, y, meta=meta[:10])
    with pytest.raises(TypeError, match="array-like"):
        refit.fit(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), y, meta=meta)
    with pytest.raises(ValueError, match="collapsed"):
        MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter(0.0, 0.0)).fit(X, y, meta=meta)
    with pytest.raises(ValueError, match="only one class"):  # every row of class 0 distrusted and dropped
        MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter(), mode="drop").fit(X, np.ones_like(y))
    with pytest.raises(TypeError, match="must be a MetaWeightClassifier"):
        MetaWeightRefit(LogisticRegression(), weighter=LogisticRegression()).fit(X, y, meta=meta)
    with pytest.raises(TypeError, match="must be a fitted MetaWeightClassifier"):  # fit takes meta, learns no weights
        MetaWeightRefit(LogisticRegression(), weighter=PlainClassifier(MLP, module__n_features=5,
                                                                       module__num_classes=2, max_epochs=1,
                                                                       verbose=0)).fit(X.astype(np.float32), y)


def test_a_frozen_weighter_must_have_been_fitted_on_the_same_rows(rule_data):
    X, y, meta, _ = rule_data
    frozen = FrozenEstimator(RuleWeighter().fit(X[:100], y[:100]))
    with pytest.raises(ValueError, match="fitted on 100 rows but X has 200"):
        MetaWeightRefit(LogisticRegression(), weighter=frozen).fit(X, y, meta=meta)


@parametrize_with_checks([MetaWeightRefit(LogisticRegression(), weighter=RuleWeighter())])
def test_scikit_learn_estimator_checks(estimator, check):
    # with a stand-in weighter, so the checks exercise the meta-estimator's own contract quickly
    check(estimator)


# --------------------------------------------------------------------------- with the real weighter
def test_the_real_weighter_clones_and_pickles(noisy_digits):
    X, y, meta = noisy_digits
    weighter = small_weighter()
    estimator = LogisticRegression(max_iter=300)
    refit = MetaWeightRefit(estimator, weighter=weighter).fit(X, y, meta=meta)
    # the parameters are clones' templates: never fitted themselves
    assert not hasattr(estimator, "coef_") and not weighter.initialized_
    assert refit.weighter_ is not weighter and refit.weighter_.sample_weights_.shape == (400,)
    assert np.isfinite(refit.sample_weights_).all() and refit.sample_weights_.max() == 1.0
    again = pickle.loads(pickle.dumps(refit))
    np.testing.assert_allclose(again.predict_proba(X), refit.predict_proba(X))
    np.testing.assert_allclose(again.weighter_.predict_proba(X), refit.weighter_.predict_proba(X))
    fresh = clone(refit)
    assert not hasattr(fresh, "estimator_") and fresh.get_params()["weighter__max_epochs"] == 2
    # the same seeds give the same fit
    np.testing.assert_allclose(fresh.fit(X, y, meta=meta).sample_weights_, refit.sample_weights_)


def test_a_frozen_weighter_is_reused_without_refitting(noisy_digits):
    X, y, meta = noisy_digits
    first = MetaWeightRefit(LogisticRegression(max_iter=300), weighter=small_weighter()).fit(X, y, meta=meta)
    steps = first.weighter_.n_steps_
    frozen = FrozenEstimator(first.weighter_)
    second = MetaWeightRefit(LogisticRegression(C=0.5, max_iter=300), weighter=frozen).fit(X, y, meta=meta)
    assert second.weighter_ is frozen and first.weighter_.n_steps_ == steps
    np.testing.assert_allclose(second.sample_weights_, first.sample_weights_)
    # drop mode (no sample_weight) reads each row against its label's most trusted rows
    third = MetaWeightRefit(KNeighborsClassifier(), weighter=frozen).fit(X, y, meta=meta)
    assert third.mode_ == "drop"
    from mwnet_sk.refit import relative_weights

    expected = relative_weights(first.weighter_.sample_weights_, labels=y)
    expected[meta] = 1.0
    np.testing.assert_allclose(third.sample_weights_, expected)


def test_cross_validate_a_pipeline_with_a_meta_mask(noisy_digits):
    X, y, meta = noisy_digits
    pipe = make_pipeline(StandardScaler(), MetaWeightRefit(LogisticRegression(max_iter=300), weighter=small_weighter(
        max_epochs=1)))
    result = cross_validate(pipe, X, y, params={"metaweightrefit__meta": meta}, cv=3, return_estimator=True,
                            return_indices=True)
    assert np.isfinite(result["test_score"]).all()
    for fitted, train in zip(result["estimator"], result["indices"]["train"]):
        refit = fitted[-1]
        # each training fold got the part of the mask that falls into it: its own meta rows
        np.testing.assert_array_equal(refit.meta_mask_, meta[train])
        np.testing.assert_allclose(refit.sample_weights_[meta[train]], 1.0)
        assert refit.weighter_.sample_weights_.shape == (len(train),)


def test_grid_search_over_the_refit_and_the_weighter(noisy_digits):
    X, y, meta = noisy_digits
    refit = MetaWeightRefit(LogisticRegression(max_iter=300), weighter=small_weighter(max_epochs=1))
    grid = {"mode": ["weight", "drop"], "weighter__meta_lr": [1e-3, 1e-2]}
    search = GridSearchCV(refit, grid, cv=2).fit(X, y, meta=meta)
    assert len(search.cv_results_["params"]) == 4 and np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_estimator_
    assert best.weighter_.meta_lr == search.best_params_["weighter__meta_lr"]
    assert best.mode_ == search.best_params_["mode"]


def test_metadata_routing_requests_the_meta_set(noisy_digits):
    X, y, meta = noisy_digits
    with sklearn.config_context(enable_metadata_routing=True):
        refit = MetaWeightRefit(LogisticRegression(max_iter=300), weighter=small_weighter(max_epochs=1))
        with pytest.raises(sklearn.exceptions.UnsetMetadataPassedError):
            make_pipeline(StandardScaler(), refit).fit(X, y, meta=meta)
        pipe = make_pipeline(StandardScaler(), refit.set_fit_request(meta=True))
        result = cross_validate(pipe, X, y, params={"meta": meta}, cv=2, return_estimator=True)
        assert np.isfinite(result["test_score"]).all()
        assert all(fitted[-1].meta_mask_.sum() > 0 for fitted in result["estimator"])


# --------------------------------------------------------------------------- the default weighter
def test_the_default_weighter_is_sized_and_scaled_from_X():
    rng = np.random.RandomState(0)
    X = np.c_[rng.rand(50, 3) * 1000.0 - 500.0, np.full(50, 7.0)]
    weighter = default_weighter(X, ["a", "b", "c"], random_state=3)
    assert weighter.module__n_features == 4 and weighter.module__num_classes == 3
    assert list(weighter.classes) == ["a", "b", "c"] and weighter.random_state == 3
    scaled = weighter.batch_transform(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(scaled[:, :3].min(0), 0, atol=1e-6)
    np.testing.assert_allclose(scaled[:, :3].max(0), 1, atol=1e-6)
    np.testing.assert_array_equal(scaled[:, 3], 0)  # a constant feature


@pytest.mark.filterwarnings("ignore::mwnet_sk.callbacks.WeightCollapseWarning")  # clean labels: a flat weighting
def test_refit_with_the_default_weighter_on_unscaled_features():
    # features in the hundreds: the default weighter scales them, so its SGD at lr 0.1 trains
    rng = np.random.RandomState(0)
    X = rng.randn(120, 4) * 300.0
    y = (X[:, 0] > 0).astype(int)
    meta = np.zeros(120, dtype=bool)
    meta[np.flatnonzero(y == 0)[:5]] = meta[np.flatnonzero(y == 1)[:5]] = True
    refit = MetaWeightRefit(LogisticRegression(), random_state=0).fit(X, y, meta=meta)
    assert refit.weighter_.module__n_features == 4 and refit.weighter_.max_epochs == 60
    assert np.isfinite(refit.sample_weights_).all()
    assert refit.weighter_.score(X, y) > 0.9


def test_string_labels_and_a_meta_pair_with_the_real_weighter(noisy_digits):
    X, y, meta = noisy_digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    labels = names[y]
    refit = MetaWeightRefit(Recorder(), weighter=small_weighter()).fit(X[~meta], labels[~meta],
                                                                       meta=(X[meta], labels[meta]))
    assert set(refit.classes_) == set(names) and refit.weighter_.meta_sample_weights_.shape == (meta.sum(),)
    fitted = refit.estimator_
    np.testing.assert_array_equal(fitted.y_fit_, np.concatenate([labels[~meta], labels[meta]]))
    np.testing.assert_allclose(fitted.sample_weight_[-meta.sum():], 1.0)
    assert refit.sample_weights_.shape == ((~meta).sum(),)


def test_relative_weights_within_each_label():
    from mwnet_sk.refit import relative_weights

    # class "b" is weighted lower as a whole (a class-aware function's level); within it, one row is distrusted
    weights = np.array([0.9, 0.85, 0.05, 0.3, 0.28, 0.02, np.nan, 0.0])
    labels = np.array(["a", "a", "a", "b", "b", "b", "b", "c"])
    overall = relative_weights(weights)
    np.testing.assert_allclose(overall[:6], weights[:6] / 0.9)
    assert (overall[3:5] < 0.5).all()  # read overall, the trusted rows of "b" look distrusted
    within = relative_weights(weights, labels=labels)
    np.testing.assert_allclose(within[:6], [1.0, 0.85 / 0.9, 0.05 / 0.9, 1.0, 0.28 / 0.3, 0.02 / 0.3])
    assert np.isnan(within[6]) and within[7] == 0.0  # NaN stays NaN; a class all at 0 stays 0
    with pytest.raises(ValueError, match="every row weight 0"):
        relative_weights(np.zeros(3), labels=[0, 1, 1])


def test_float_meta_rows_next_to_an_integer_X_are_not_truncated():
    from mwnet_sk.refit import _append_rows

    X = np.array([[1, 2], [3, 4]])
    rows = _append_rows(X, np.array([[0.5, 7.25]]))
    assert rows.dtype.kind == "f" and rows[-1].tolist() == [0.5, 7.25]
