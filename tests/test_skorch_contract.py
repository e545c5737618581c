"""skorch's contract, item by item, with skorch's own semantics as the reference: callbacks,
scorers, datasets, learnable criteria, forward, fit parameters, Freezer, compile, closure
optimizers, trimming, dict inputs, EarlyStopping."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, EarlyStopping, EpochScoring, Freezer, InputShapeSetter
from skorch.dataset import ValidSplit
from skorch.exceptions import SkorchTrainingImpossibleError
from torch import nn

from mwnet_sk import MetaWeightClassifier

from conftest import TinyMLP


@pytest.fixture(scope="module")
def data(digits):
    X, y, mask = digits
    keep = np.random.RandomState(4).permutation(np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)[:400]])
    return X[keep], y[keep], mask[keep]


def make_clf(**kwargs):
    params = dict(module=TinyMLP, lr=0.1, optimizer__momentum=0.9, max_epochs=3, batch_size=64, verbose=0,
                  random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


class Spy(Callback):
    def initialize(self):
        self.seen_ = {}
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.seen_["X"], self.seen_["y"] = X, y

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        self.seen_.setdefault("batch_y", batch[1])
        self.seen_.setdefault("batch_x", batch[0])


class InputMLP(nn.Module):
    def __init__(self, input_dim=3, num_classes=10):
        super().__init__()
        self.lin = nn.Linear(input_dim, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.lin(x)))


def test_callbacks_see_the_users_data_and_a_rebuilt_module_is_trained(data):
    X, y, mask = data
    spy = Spy()
    names = np.array(list("abcdefghij"))[y]
    clf = make_clf(module=InputMLP, module__input_dim=3, callbacks=[InputShapeSetter(), spy])
    clf.fit(X, names, meta=mask)  # InputShapeSetter rebuilds the module in on_train_begin
    assert spy.seen_["X"] is X and spy.seen_["y"] is names
    assert spy.seen_["batch_y"].dtype.kind == "U"  # labels in the user's label space
    assert isinstance(spy.seen_["batch_x"], torch.Tensor) and spy.seen_["batch_x"].shape[1] == 64
    assert clf.module_.lin.in_features == 64
    assert clf.score(X, names) > 0.6  # the rebuilt module is the one that was trained


@pytest.mark.parametrize("use_caching", [True, False])
def test_scorers_see_labels_consistent_with_predict(data, use_caching):
    X, y, mask = data
    labels = np.where(y < 5, 3, 7)
    scoring = EpochScoring("accuracy", name="acc", on_train=True, use_caching=use_caching)
    clf = make_clf(callbacks=[scoring], module__num_classes=2).fit(X, labels, meta=mask)
    assert clf.history[-1, "acc"] > 0.7  # not 0.0 from comparing codes 0/1 with labels 3/7
    valid = make_clf(train_split=ValidSplit(4, stratified=True), module__num_classes=2).fit(X, labels, meta=mask)
    assert valid.history[-1, "valid_acc"] > 0.7


def test_dataset_parameter_is_used(data):
    from skorch.dataset import Dataset

    X, y, mask = data
    built = []

    class Doubling(Dataset):
        def __init__(self, X, y=None, factor=1.0):
            built.append(factor)
            super().__init__(X * factor, y)

    make_clf(dataset=Doubling, dataset__factor=2.0, max_epochs=1).fit(X, y, meta=mask)
    assert built == [2.0]


class LearnableTemperature(nn.Module):
    def __init__(self, reduction="none"):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))
        self.reduction = reduction

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits / self.log_t.exp(), y, reduction=self.reduction)


def test_a_learnable_criterion_is_trained(data):
    X, y, mask = data
    clf = make_clf(criterion=LearnableTemperature).fit(X, y, meta=mask)
    assert clf.criterion_.log_t.item() != 0.0
    assert any(p is clf.criterion_.log_t for g in clf.optimizer_.param_groups for p in g["params"])
    assert not any(p is q for g in clf.optimizer_.param_groups for p in g["params"]
                   for q in clf.weight_net_.parameters())


def test_forward_in_training_mode_after_fit(data):
    X, y, mask = data
    clf = make_clf(max_epochs=1).fit(X, y, meta=mask)
    out = clf.forward(X, training=True)
    assert out.shape == (len(X), 10)


def test_fit_params_reach_train_split_cut_to_the_training_rows(data):
    from sklearn.model_selection import GroupKFold

    X, y, mask = data
    groups = np.arange(len(X)) % 7
    seen = []

    class GroupSplit(ValidSplit):
        def __call__(self, dataset, y=None, groups=None):
            seen.append(len(groups))
            return super().__call__(dataset, y, groups=groups)

    clf = make_clf(train_split=GroupSplit(GroupKFold(4)), train_on_meta=False, max_epochs=1)
    clf.fit(X, y, meta=mask, groups=groups)
    assert seen == [(~mask).sum()]
    with pytest.raises(TypeError, match="go to train_split, but train_split is None"):
        make_clf().fit(X, y, meta=mask, groups=groups)


def test_freezer_changes_the_parameters_of_the_virtual_step(data):
    X, y, mask = data
    clf = make_clf(callbacks=[Freezer("body.*")]).fit(X, y, meta=mask)
    fresh = make_clf().initialize()
    for name, p in clf.module_.named_parameters():
        moved = not torch.equal(p, dict(fresh.module_.named_parameters())[name])
        assert moved is name.startswith("fc"), name
    assert clf.history[-1, "meta_loss"] > 0


@pytest.mark.parametrize("meta_gradient", ["exact", "unrolled"])
def test_compile_trains_and_predicts(data, meta_gradient):
    X, y, mask = data
    clf = make_clf(compile=True, compile__backend="aot_eager", meta_gradient=meta_gradient, max_epochs=1)
    clf.fit(X, y, meta=mask)
    eager = make_clf(meta_gradient=meta_gradient, max_epochs=1).fit(X, y, meta=mask)
    np.testing.assert_allclose(clf.predict_proba(X), eager.predict_proba(X), atol=1e-4)


def test_closure_optimizer(data):
    X, y, mask = data
    clf = MetaWeightClassifier(TinyMLP, optimizer=torch.optim.LBFGS, lr=0.5, optimizer__max_iter=3,
                               batch_size=256, max_epochs=2, verbose=0, random_state=0)
    evaluations = []

    class Count(Callback):
        def on_grad_computed(self, net, named_parameters, batch=None, training=False, **kwargs):
            evaluations.append(1)

    clf.set_params(callbacks=[Count()]).fit(X, y, meta=mask)
    assert np.isfinite(clf.history[:, "train_loss"]).all()
    assert len(evaluations) > clf.n_steps_  # LBFGS re-evaluated the closure within steps
    assert clf.score(X, y) > 0.3


def test_trimmed_estimator_refuses_to_train(data):
    X, y, mask = data
    clf = make_clf(max_epochs=1).fit(X, y, meta=mask)
    clf.trim_for_prediction()
    assert clf.predict(X).shape == (len(X),)
    with pytest.raises(SkorchTrainingImpossibleError, match="trimmed for prediction"):
        clf.partial_fit(X, y, meta=mask)


class TwoInputs(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.a = nn.Linear(32, 16)
        self.b = nn.Linear(32, 16)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, left, right):
        return self.fc(torch.cat([torch.relu(self.a(left)), torch.relu(self.b(right))], 1))


@pytest.mark.parametrize("meta_form", ["mask", "pair"])
def test_dict_inputs_for_a_multi_input_module(data, meta_form):
    X, y, mask = data
    as_dict = lambda A: {"left": A[:, :32], "right": A[:, 32:]}  # noqa: E731
    clf = make_clf(module=TwoInputs)
    if meta_form == "mask":
        clf.fit(as_dict(X), y, meta=mask)
    else:
        clf.fit(as_dict(X[~mask]), y[~mask], meta=(as_dict(X[mask]), y[mask]))
    assert clf.predict(as_dict(X)).shape == (len(X),)
    assert clf.score(as_dict(X), y) > 0.5


def test_early_stopping_with_the_default_split(data):
    X, y, mask = data
    with pytest.raises(ValueError, match="monitors 'valid_loss'.*monitor='meta_loss'"):
        make_clf(callbacks=[EarlyStopping()]).fit(X, y, meta=mask)
    clf = make_clf(max_epochs=30, lr=1.0, callbacks=[EarlyStopping(monitor="meta_loss", patience=2)])
    clf.fit(X, y, meta=mask)
    assert len(clf.history) < 30
