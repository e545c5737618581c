"""The per-class weighting function (the default weight net): its heads, its saving and
loading, its profile, and what it does under flip noise."""

import pickle
import warnings

import numpy as np
import pytest
import torch

from mwnet_sk import ClassAwareWeightNet, MetaWeightClassifier, PerClassWeightNet, WeightNet
from mwnet_sk.core.weight_net import WeightFunction, weight_profile


def test_one_head_per_class_copied_from_the_first_and_the_same_parameters():
    torch.manual_seed(0)
    net = PerClassWeightNet(hidden_size=5)
    assert net.heads.weight.shape == (1, 5) and net.n_groups is None
    weight, bias = net.heads.weight, net.heads.bias
    first = weight.detach().clone()
    state = torch.random.get_rng_state()
    net.set_class_counts([7, 3, 0, 9])
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing random drawn
    assert net.heads.weight is weight and net.heads.bias is bias  # an optimizer over them keeps working
    assert weight.shape == (4, 5) and torch.equal(weight, first.repeat(4, 1))
    assert net.class_groups.tolist() == [0, 1, 2, 3]
    losses = torch.tensor([[0.2], [0.2], [3.0]])
    out = net(losses, torch.tensor([0, 3, 1]))
    assert out.shape == (3, 1) and out[0] == out[1]  # every class starts from the same function
    with pytest.raises(ValueError, match="n_groups"):
        ClassAwareWeightNet(n_groups=0)
    net.set_class_counts([1, 2, 3, 4])  # the same classes again (a refit, a transfer): unchanged
    assert net.heads.weight is weight and weight.shape == (4, 5)
    with pytest.raises(ValueError, match="one head per class for 4 classes .* the data has 3"):
        net.set_class_counts([5, 5, 5])


@pytest.mark.parametrize("make", [PerClassWeightNet, lambda: ClassAwareWeightNet(n_groups=2)])
def test_a_saved_class_aware_net_loads_into_a_fresh_one(make):
    torch.manual_seed(0)
    trained = make()
    trained.set_class_counts([50, 40, 5, 2, 30])
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    fresh = make()  # before any class counts: another shape
    fresh.load_state_dict(trained.state_dict())
    losses, labels = torch.rand(20, 1) * 4, torch.arange(20) % 5
    torch.testing.assert_close(fresh(losses, labels), trained(losses, labels), rtol=0, atol=0)
    assert fresh.class_groups.tolist() == trained.class_groups.tolist()


def test_profile_of_a_class_aware_function_reads_every_class():
    # opposite curves: their mean is flat, but the function is anything but
    decreasing, increasing = lambda l: np.exp(-l), lambda l: 1 - np.exp(-l)
    profile = weight_profile(lambda l, k: (decreasing if k == 0 else increasing)(l), 0.1, 4, labels=[0, 1])
    assert profile.trend == "class-dependent" and profile.spread > 0.9
    assert profile.class_trends == ("decreasing", "increasing")
    assert str(profile).startswith("class-dependent (1 decreasing, 1 increasing), weights")
    assert weight_profile(lambda l, k: np.exp(-l) * (k + 1), 0, 4, labels=range(3)).trend == "decreasing"
    levels = weight_profile(lambda l, k: 0.2 + 0.6 * k + 0 * l, 0, 4, labels=[0, 1])  # rebalancing only
    assert levels.trend == "class-dependent" and levels.class_trends == ("flat", "flat")
    assert weight_profile(lambda l, k: 0.5 + 0 * l, 0, 4, labels=[0, 1]).trend == "flat"

    net = PerClassWeightNet(hidden_size=4)
    net.set_class_counts([10, 10])
    with torch.no_grad():
        net.hidden.weight.fill_(1.0)
        net.hidden.bias.zero_()
        net.heads.weight.copy_(torch.tensor([[-3.0] * 4, [3.0] * 4]))
        net.heads.bias.zero_()
        net.output.weight.zero_()  # no shared curve: only the classes' own
        net.output.bias.zero_()
    f = WeightFunction(net, loss_range=(0.05, 3.0))
    assert f.profile().trend == "class-dependent"
    assert f.profile(label=0).trend == "decreasing" and f.profile(label=1).trend == "increasing"
    assert pickle.loads(pickle.dumps(f)).profile().class_trends == ("decreasing", "increasing")


def _study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness_study.py"
    spec = importlib.util.spec_from_file_location("robustness_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_weight_net_is_per_class_and_the_paper_one_is_a_setting_away():
    from mwnet_sk.models import MLP

    assert MetaWeightClassifier(MLP).weight_net is PerClassWeightNet
    X, y_noisy, y_true, meta, _, _ = _study().make_data("digits-flip", 0)
    common = dict(module__n_features=64, module__num_classes=10, max_epochs=2, warmup_epochs=0, verbose=0,
                  random_state=0)
    clf = MetaWeightClassifier(MLP, **common).fit(X, y_noisy, meta=meta)
    assert clf.weight_net_.heads.weight.shape[0] == 10 and clf.weight_function_.uses_labels
    assert clf.weight_function_.n_classes == 10
    assert len(clf.weight_function_.profile().class_trends) == 10
    paper = MetaWeightClassifier(MLP, weight_net=WeightNet, **common).fit(X, y_noisy, meta=meta)
    assert not paper.weight_function_.uses_labels and paper.weight_function_.profile().class_trends is None


def test_under_flip_noise_the_per_class_net_gains_where_a_loss_only_net_did_not():
    """The study's digits-flip seed 3: with the loss-only net Meta-Weight-Net ended at plain
    training's accuracy (+0.2 points), its weights ranking corrupted rows above clean ones
    (AUC 0.36). The default net separates them and gains."""
    from sklearn.metrics import roc_auc_score

    from mwnet_sk import plain_counterpart

    study = _study()
    X, y_noisy, y_true, meta, X_test, y_test = study.make_data("digits-flip", 3)
    corrupted = (y_noisy != y_true)[~meta]

    def fit(**params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return study.make_mwnet(X.shape[1], 3, study.EPOCHS, **params).fit(X, y_noisy, meta=meta)

    default, loss_only = fit(), fit(weight_net=WeightNet)
    plain = plain_counterpart(study.make_mwnet(X.shape[1], 3, study.EPOCHS)).fit(X, y_noisy, meta=meta)
    accuracy = {name: est.score(X_test, y_test) for name, est in
                [("default", default), ("loss_only", loss_only), ("plain", plain)]}
    auc = {name: roc_auc_score(~corrupted, est.sample_weights_[~meta]) for name, est in
           [("default", default), ("loss_only", loss_only)]}
    assert auc["loss_only"] < 0.5 < 0.65 < auc["default"], auc
    assert accuracy["default"] > accuracy["plain"] + 0.03 and accuracy["default"] > accuracy["loss_only"] + 0.03, accuracy


def test_size_groups_uses_every_group_and_puts_the_rarest_classes_first():
    from mwnet_sk.core.weight_net import size_groups

    # most classes one size: quantiles of all counts would start two centres together
    groups = size_groups([100] * 8 + [1, 2, 5], 3)
    assert sorted(set(groups.tolist())) == [0, 1, 2]
    assert groups[8] == 0 and groups[0] == 2
    assert size_groups([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 3).tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0, 0]
    assert size_groups([7, 7, 30], 3).tolist() == [0, 0, 1]  # fewer sizes than groups: one group per size


def test_weight_function_refuses_class_indices_outside_the_classes_and_reversed_ranges():
    net = PerClassWeightNet()
    net.set_class_counts(np.array([5, 3, 2]))
    f = WeightFunction(net)
    assert f(np.array([0.5, 1.0]), [2, 0]).shape == (2,)
    for bad in ([-1, 0], [0, 3]):
        with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
            f(np.array([0.5, 1.0]), bad)
    with pytest.raises(ValueError, match="low <= high"):
        f.profile(2.0, 1.0)


def test_a_weight_net_rebuilt_between_fit_and_partial_fit_gets_its_classes():
    from mwnet_sk.models import MLP

    rng = np.random.RandomState(0)
    X = rng.randn(240, 4).astype(np.float32)
    y = rng.randint(0, 3, 240)
    mask = np.zeros(240, bool)
    mask[:30] = True
    clf = MetaWeightClassifier(MLP, module__n_features=4, module__num_classes=3, max_epochs=1, verbose=0,
                               warmup_epochs=0, random_state=0).fit(X, y, meta=mask)
    clf.set_params(weight_net__hidden_size=11)  # a new PerClassWeightNet, without class groups
    clf.partial_fit(X, y, meta=mask)
    assert clf.weight_net_.class_groups.tolist() == [0, 1, 2]


@pytest.mark.parametrize("make", [lambda **kw: WeightNet(4, **kw), lambda **kw: PerClassWeightNet(4, **kw),
                                  lambda **kw: ClassAwareWeightNet(2, 4, **kw)])
def test_loss_scale_divides_the_input_and_1_is_the_raw_loss_bit_for_bit(make):
    losses = torch.tensor([[0.0], [0.013], [0.7], [2.5]])
    labels = torch.tensor([0, 1, 0, 1])

    def weights(net, x):
        if getattr(net, "uses_labels", False):
            net.set_class_counts([30, 3])
            return net(x, labels)
        return net(x)

    torch.manual_seed(0)
    raw = make()
    torch.manual_seed(0)
    scaled = make(loss_scale=0.1)
    assert raw.loss_scale == 1.0 and scaled.loss_scale == 0.1
    torch.testing.assert_close(weights(scaled, losses), weights(raw, losses * 10.0))
    # 1.0 changes nothing: the paper's net, as it was before the option existed
    hidden = raw._features(losses) if hasattr(raw, "_features") else raw.relu(raw.hidden(losses))
    assert torch.equal(hidden, raw.relu(raw.hidden(losses)))
    # a net pickled before the option existed reads the raw loss
    del raw.__dict__["loss_scale"]
    old = pickle.loads(pickle.dumps(raw))
    assert old.loss_scale == 1.0
    assert torch.equal(weights(old, losses), weights(raw, losses))


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "big", True, None])
def test_loss_scale_must_be_positive_and_finite(bad):
    for cls in (WeightNet, PerClassWeightNet):
        with pytest.raises(ValueError, match="loss_scale must be a positive, finite number"):
            cls(loss_scale=bad)


def test_loss_scale_routes_through_the_estimator_and_reaches_the_weighting_function():
    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = np.arange(60) % 3
    clf = MetaWeightClassifier(
        torch.nn.Linear, module__in_features=3, module__out_features=3, max_epochs=2, batch_size=20,
        warmup_epochs=0, weight_net__loss_scale=0.1, random_state=0, verbose=0,
    ).fit(X, y, meta=np.arange(60) < 15)
    assert clf.weight_net_.loss_scale == 0.1
    assert clf.weight_function_.weight_net.loss_scale == 0.1
    # a routed setting like any other (clone, GridSearchCV, the checkpoint's settings read get_params)
    assert clf.get_params()["weight_net__loss_scale"] == 0.1
    with pytest.raises(ValueError, match="loss_scale"):
        clf.set_params(weight_net__loss_scale=0).fit(X, y, meta=np.arange(60) < 15)
