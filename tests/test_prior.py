"""Class-prior correction of predictions (``target_prior``): the math against an independent
computation, where the priors come from, persistence, bad input, and that it helps where it
should (a long tail scored on balanced data)."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import TensorDataset

from mwnet_sk import MetaWeightClassifier, plain_counterpart
from mwnet_sk.baselines import PlainClassifier
from mwnet_sk.callbacks import MetaScoring
from mwnet_sk.core.prior import class_prior, logit_shift
from mwnet_sk.models import MLP
from mwnet_sk.noise import make_long_tailed, meta_mask


def _long_tail(seed=0):
    X, y = make_blobs(n_samples=1600, centers=4, n_features=4, cluster_std=2.0, center_box=(-4, 4),
                      random_state=seed)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    X_test, y_test, X, y = X[:800], y[:800], X[800:], y[800:]
    meta = meta_mask(y, n_meta_per_class=10, random_state=seed)
    X_rest, y_rest = make_long_tailed(X[~meta], y[~meta], imbalance_factor=20, random_state=seed)
    X_tr = np.concatenate([X[meta], X_rest])
    y_tr = np.concatenate([y[meta], y_rest])
    return X_tr, y_tr, np.arange(len(y_tr)) < meta.sum(), X_test, y_test


def _net(cls=MetaWeightClassifier, **params):
    params = {"max_epochs": 3, "random_state": 0, **params}
    return cls(MLP, module__n_features=4, module__num_classes=4, module__hidden=(16,), lr=0.1,
               batch_size=64, verbose=0, **params)


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def test_class_prior_and_logit_shift_by_hand():
    assert np.allclose(class_prior([3, 1]), [0.75, 0.25])
    assert np.allclose(class_prior([3, 1, 0]), [3 / 5, 1 / 5, 1 / 5])  # a class without rows counts as one
    assert np.allclose(logit_shift([0.75, 0.25], [0.5, 0.5]), [np.log(0.5 / 0.75), np.log(0.5 / 0.25)])
    assert np.allclose(logit_shift([0.5, 0.5], [2, 6]), np.log([0.25 / 0.5, 0.75 / 0.5]))  # target normalised
    assert logit_shift([0.5, 0.5], [1, 0])[1] == -np.inf
    with pytest.raises(ValueError, match="non-negative counts"):
        class_prior([1, -1])
    with pytest.raises(ValueError, match="positive"):
        logit_shift([1.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="differ in length"):
        logit_shift([0.5, 0.5], [1 / 3] * 3)


def test_predictions_are_bayes_rule_for_the_meta_prior():
    X, y, meta, X_test, _ = _long_tail()
    clf = _net().fit(X, y, meta=meta)
    counts = np.bincount(y, minlength=4)  # every row is trained on (train_on_meta=True)
    train = counts / counts.sum()
    target = np.bincount(y[meta], minlength=4) / meta.sum()
    assert np.allclose(clf.train_prior_, train) and np.allclose(clf.target_prior_, target)
    logits = clf.forward(X_test).numpy().astype(np.float64)
    # independent: p(y|x) * q(y) / p_train(y), renormalised
    expected = _softmax(logits) * target / train
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(clf.predict_proba(X_test), expected, atol=1e-5)
    assert np.array_equal(clf.predict(X_test), expected.argmax(1))
    assert clf.score(X_test, clf.predict(X_test)) == 1.0
    # the paper's behaviour is one setting away: the network's own probabilities
    raw = _net(target_prior="train").fit(X, y, meta=meta)
    assert np.allclose(raw.target_prior_, raw.train_prior_)
    assert np.allclose(raw.predict_proba(X_test), _softmax(logits), atol=1e-5)


def test_priors_follow_the_meta_form_and_train_on_meta():
    X, y, meta, _, _ = _long_tail()
    frequencies = lambda labels: np.bincount(labels, minlength=4) / len(labels)  # noqa: E731
    held_out = _net(train_on_meta=False).fit(X, y, meta=meta)
    assert np.allclose(held_out.train_prior_, frequencies(y[~meta]))
    assert np.allclose(held_out.target_prior_, frequencies(y[meta]))
    pair = _net().fit(X[~meta], y[~meta], meta=(X[meta], y[meta]))  # the meta rows are appended
    assert np.allclose(pair.train_prior_, frequencies(np.concatenate([y[~meta], y[meta]])))
    dataset = TensorDataset(torch.from_numpy(X[meta]), torch.from_numpy(y[meta]))
    from_dataset = _net(train_on_meta=False).fit(X[~meta], y[~meta], meta=dataset)
    assert np.allclose(from_dataset.target_prior_, frequencies(y[meta]))
    # no meta set (a frozen function): predictions are the network's own
    frozen = _net(meta_lr=0, weight_net=held_out.weight_function_).fit(X[~meta], y[~meta])
    assert np.array_equal(frozen.target_prior_, frozen.train_prior_)


def test_plain_training_predicts_as_trained_unless_asked():
    X, y, meta, X_test, _ = _long_tail()
    mw = _net()
    plain = plain_counterpart(mw).fit(X, y, meta=meta)
    assert plain.target_prior == "train" and np.array_equal(plain.target_prior_, plain.train_prior_)
    corrected = plain_counterpart(mw, target_prior="meta").fit(X, y, meta=meta)
    # the same training; only the predictions differ
    assert np.allclose(corrected.forward(X_test), plain.forward(X_test))
    assert not np.allclose(corrected.predict_proba(X_test), plain.predict_proba(X_test))


def test_an_explicit_prior_is_normalised_and_bad_ones_fail_before_training():
    X, y, meta, X_test, _ = _long_tail()
    clf = _net(target_prior=[1, 1, 2, 4]).fit(X, y, meta=meta)
    assert np.allclose(clf.target_prior_, [0.125, 0.125, 0.25, 0.5])
    for bad in ([0.5, 0.5], [1, -1, 1, 1], [0, 0, 0, 0], [1, np.nan, 1, 1]):
        net = _net(target_prior=bad)
        with pytest.raises(ValueError, match="one non-negative frequency per class"):
            net.fit(X, y, meta=meta)
        assert not net.initialized_
    with pytest.raises(ValueError, match="target_prior"):
        _net(target_prior="balanced").fit(X, y, meta=meta)


def test_priors_survive_saving_loading_and_pickling(tmp_path):
    X, y, meta, X_test, _ = _long_tail()
    clf = _net().fit(X, y, meta=meta)
    expected = clf.predict_proba(X_test)
    clf.save_params(f_params=tmp_path / "p.pt", f_weight_net=tmp_path / "w.pt",
                    f_training_state=tmp_path / "s.pt")
    fresh = _net().initialize()
    fresh.load_params(f_params=tmp_path / "p.pt", f_weight_net=tmp_path / "w.pt",
                      f_training_state=tmp_path / "s.pt")
    assert np.allclose(fresh.predict_proba(X_test), expected, atol=1e-6)
    assert np.allclose(pickle.loads(pickle.dumps(clf)).predict_proba(X_test), expected, atol=1e-6)
    clf.trim_for_prediction()
    assert np.allclose(clf.predict_proba(X_test), expected, atol=1e-6)


def test_meta_scoring_scores_the_corrected_predictions():
    X, y, meta, _, _ = _long_tail()
    clf = _net(train_on_meta=False, callbacks=[MetaScoring(keep_best=False)]).fit(X, y, meta=meta)
    assert clf.history[-1, "meta_score"] == pytest.approx(np.mean(clf.predict(X[meta]) == y[meta]))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_meta_prior_helps_a_long_tail_on_balanced_data(seed):
    # the same trained network (the shift changes predictions only), scored on a balanced test set
    X, y, meta, X_test, y_test = _long_tail(seed)
    params = dict(max_epochs=20, random_state=seed)
    own = _net(PlainClassifier, **params).fit(X, y, meta=meta)
    corrected = _net(PlainClassifier, target_prior="meta", **params).fit(X, y, meta=meta)
    assert balanced_accuracy_score(y_test, corrected.predict(X_test)) > \
        balanced_accuracy_score(y_test, own.predict(X_test)) + 0.01


# --------------------------------------------------------------------------- review fixes (2026-12-02)
def test_parameters_loaded_without_the_priors_refuse_to_predict_for_the_meta_prior(tmp_path):
    """Loading parameters alone (with classes=) would silently drop the correction."""
    X, y, meta, X_test, _ = _long_tail()
    clf = _net(target_prior="meta").fit(X, y, meta=meta)
    clf.save_params(f_params=tmp_path / "p.pt")
    fresh = _net(target_prior="meta", classes=np.arange(4)).initialize()
    fresh.load_params(f_params=tmp_path / "p.pt")
    with pytest.raises(Exception, match=r"predicts for target_prior='meta', but the class frequencies it was "
                                        r"trained on are unknown.*f_training_state"):
        fresh.predict(X_test)
    fresh.set_params(target_prior="train")  # the fix the message names: the network's own prior
    assert fresh.predict(X_test).shape == (len(X_test),)


def test_the_training_prior_counts_every_fit_and_only_the_rows_trained_on():
    from skorch.dataset import ValidSplit

    X, y, meta, _, _ = _long_tail()
    order = np.random.RandomState(0).permutation(len(y))  # meta rows in both halves
    X, y, meta = X[order], y[order], meta[order]
    n = np.bincount(y, minlength=4)
    clf = _net(max_epochs=1, classes=np.arange(4))
    half = len(y) // 2
    clf.partial_fit(X[:half], y[:half], meta=meta[:half])
    clf.partial_fit(X[half:], y[half:], meta=meta[half:])  # another class mix
    np.testing.assert_array_equal(clf.train_counts_, n)  # both chunks, not the last one
    np.testing.assert_allclose(clf.train_prior_, class_prior(n))
    # rows a validation split holds out are not trained on, so not counted
    split = _net(max_epochs=1, train_split=ValidSplit(0.25, stratified=False, random_state=0)).fit(X, y, meta=meta)
    assert split.train_counts_.sum() < len(y) and split.train_counts_.sum() == np.isfinite(split.sample_weights_).sum()


def test_meta_scoring_keeps_the_best_epoch_of_the_current_fit_and_rows_start_unweighted():
    from skorch.dataset import ValidSplit

    X, y, meta, _, _ = _long_tail()
    scoring = MetaScoring(X_meta=X[meta], y_meta=y[meta])
    clf = _net(max_epochs=2, warm_start=True, callbacks=[scoring],
               train_split=ValidSplit(0.25, stratified=False, random_state=0)).fit(X, y, meta=meta)
    first = clf.train_counts_.sum()
    clf.set_params(train_split=ValidSplit(0.25, stratified=False, random_state=1))
    clf.fit(X, y, meta=meta)  # a warm-start fit: its own best epoch, its own held-out rows
    assert scoring.best_epoch_ in (3, 4)  # not fit 1's epoch, whatever the scores
    # rows this fit held out are NaN, not the first fit's values; the trained ones are counted
    assert np.isfinite(clf.sample_weights_).sum() == clf.train_counts_.sum() - first


def test_plain_counterpart_trains_on_every_labelled_row():
    assert plain_counterpart(_net(train_on_meta=False)).train_on_meta is True


def test_target_prior_set_after_fit_applies_at_once_and_bad_ones_fail():
    X, y, meta, X_test, _ = _long_tail()
    clf = _net(target_prior="train").fit(X, y, meta=meta)
    raw = clf.predict_proba(X_test)
    clf.set_params(target_prior="meta")
    np.testing.assert_allclose(clf.target_prior_, clf.meta_prior_)
    shifted = _softmax(np.log(raw) + logit_shift(clf.train_prior_, clf.meta_prior_))
    np.testing.assert_allclose(clf.predict_proba(X_test), shifted, atol=1e-5)
    for bad in ([1.0, 2.0], {"a": 1.0}):
        with pytest.raises(ValueError, match="target_prior must be 'meta', 'train', or one non-negative frequency"):
            clf.set_params(target_prior=bad)
    assert clf.target_prior == "meta"  # a refused value changes nothing
