"""The bilevel step against independent computations of Eqs. 3-5 of the paper."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mwnet_sk import MetaWeightClassifier, WeightNet
from mwnet_sk.core.bilevel import BilevelStep, NonFiniteError, select_parameter_names



def per_sample_ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


# --------------------------------------------------------------------------- oracle
def oracle_step(params, bn_state, theta, x, y, xm, ym, *, lr, momentum_wd, meta_lr, meta_opt, meta_wd, eps=1e-5,
                bn_momentum=0.1, normalize=False):
    """Eqs. 3-5 written out by hand for Linear-BN-ReLU-Linear and a 1-h-1 sigmoid weight net.

    Everything is a plain tensor; the BN running-statistics update, the SGD-with-momentum
    first step and the SGD / Adam first step of the weight net are written explicitly.
    """
    W1, b1, gamma, beta, W2, b2 = params
    rm, rv = bn_state

    def forward(w, inputs):
        W1, b1, gamma, beta, W2, b2 = w
        h = inputs @ W1.T + b1
        mu, var = h.mean(0), h.var(0, unbiased=False)
        hn = (h - mu) / torch.sqrt(var + eps) * gamma + beta
        return torch.relu(hn) @ W2.T + b2, mu, h.var(0, unbiased=True)

    def weight_fn(th, losses):
        Wa, ba, Wb, bb = th
        return torch.sigmoid(torch.relu(losses[:, None] @ Wa.T + ba) @ Wb.T + bb)[:, 0]

    w = [p.clone().requires_grad_(True) for p in params]
    th = [p.clone().requires_grad_(True) for p in theta]
    logits, mu, var_unbiased = forward(w, x)
    losses = -torch.log_softmax(logits, 1)[torch.arange(len(y)), y]
    # Eq. 3: virtual step, differentiable in Θ
    def R(v, l):  # Eq. 1, or normalised by the weights' sum
        return (v * l).sum() / v.sum() if normalize else (v * l).mean()

    V = weight_fn(th, losses.detach())
    grads = torch.autograd.grad(R(V, losses), w, create_graph=True)
    w_hat = [p - lr * g for p, g in zip(w, grads)]
    meta_logits, _, _ = forward(w_hat, xm)
    meta_loss = (-torch.log_softmax(meta_logits, 1)[torch.arange(len(ym)), ym]).mean()
    # Eq. 4: one optimizer step of Θ
    g_theta = torch.autograd.grad(meta_loss, th)
    new_theta = []
    for p, g in zip(th, g_theta):
        g = g + meta_wd * p.detach()
        if meta_opt == "sgd":  # the default: Nesterov momentum 0.9; first step: buffer = g, update = g + 0.9 g
            new_theta.append(p.detach() - meta_lr * (1 + 0.9) * g)
        else:  # Adam, first step: m̂ = g, v̂ = g², update = lr · g / (|g| + eps)
            new_theta.append(p.detach() - meta_lr * g / (g.abs() + 1e-8))
    # Eq. 5: real step with Θ_new, SGD momentum 0.9 (first step: buffer = gradient)
    V_new = weight_fn(new_theta, losses.detach()).detach()
    real_grads = torch.autograd.grad(R(V_new, losses), w)
    new_w = [p.detach() - lr * (g + momentum_wd * p.detach()) for p, g in zip(w, real_grads)]
    new_rm = (1 - bn_momentum) * rm + bn_momentum * mu.detach()
    new_rv = (1 - bn_momentum) * rv + bn_momentum * var_unbiased.detach()
    return new_w, (new_rm, new_rv), new_theta, V_new, meta_loss.detach()


class BNMLP(nn.Module):
    def __init__(self, n_features=5, num_classes=3, hidden=6):
        super().__init__()
        self.lin = nn.Linear(n_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.lin(x))))


def _tensors(model):
    return [model.lin.weight, model.lin.bias, model.bn.weight, model.bn.bias, model.fc.weight, model.fc.bias]


@pytest.mark.parametrize("meta_gradient", ["exact", "unrolled"])
@pytest.mark.parametrize("meta_opt", ["sgd", "adam"])
@pytest.mark.parametrize("normalize", [False, True])
def test_one_estimator_step_matches_independent_equations(meta_gradient, meta_opt, normalize):
    torch.manual_seed(0)
    n, m = 16, 8
    X = torch.randn(n, 5)
    y = torch.arange(n) % 3
    Xm = torch.randn(m, 5)
    ym = torch.arange(m) % 3
    model = BNMLP()
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    wnet = WeightNet(hidden_size=4)
    params0 = [p.detach().double().clone() for p in _tensors(model)]
    bn0 = (model.bn.running_mean.double().clone(), model.bn.running_var.double().clone())
    theta0 = [wnet.hidden.weight, wnet.hidden.bias, wnet.output.weight, wnet.output.bias]
    theta0 = [p.detach().double().clone() for p in theta0]

    clf = MetaWeightClassifier(
        model,
        weight_net=wnet,
        lr=0.5,
        optimizer__momentum=0.9,
        optimizer__weight_decay=5e-4,
        meta_lr=0.3,
        meta_optimizer=torch.optim.SGD if meta_opt == "sgd" else torch.optim.Adam,
        meta_optimizer__weight_decay=1e-4,
        meta_gradient=meta_gradient,
        normalize_weights=normalize,
        train_on_meta=False,
        batch_size=n,
        meta_batch_size=m,
        max_epochs=1,
        verbose=0,
    )
    clf.fit(X.numpy(), y.numpy(), meta=(Xm.numpy(), ym.numpy()))

    new_w, (rm, rv), new_theta, V_new, meta_loss = oracle_step(
        params0, bn0, theta0, X.double(), y, Xm.double(), ym,
        lr=0.5, momentum_wd=5e-4, meta_lr=0.3, meta_opt=meta_opt, meta_wd=1e-4, normalize=normalize,
    )
    for got, want in zip(_tensors(clf.module_), new_w):
        torch.testing.assert_close(got.detach().double(), want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(clf.module_.bn.running_mean.double(), rm, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(clf.module_.bn.running_var.double(), rv, atol=1e-6, rtol=1e-5)
    assert int(clf.module_.bn.num_batches_tracked) == 1  # one real forward, no more
    wn = clf.weight_net_
    for got, want in zip([wn.hidden.weight, wn.hidden.bias, wn.output.weight, wn.output.bias], new_theta):
        torch.testing.assert_close(got.detach().double(), want, atol=2e-5, rtol=1e-4)
    # the weight net actually moved, so the comparison is not vacuous
    assert max((a.double() - b).abs().max() for a, b in zip(wn.parameters(), theta0)) > 1e-3
    np.testing.assert_allclose(clf.sample_weights_, V_new.numpy(), atol=2e-5)
    np.testing.assert_allclose(clf.history[-1, "meta_loss"], meta_loss.item(), rtol=1e-5)


# --------------------------------------------------------------------------- exact vs unrolled
class DropoutBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 5 * 5, 4)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


class ScaledHead(DropoutBNNet):
    """The output is not the head's output: the head shortcut must not be taken."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class FunctionalDropoutNet(DropoutBNNet):
    """Dropout drawn inside forward (F.dropout), with no nn.Dropout module to detect."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Identity()

    def forward(self, x):
        return self.fc(F.dropout(torch.relu(self.bn(self.conv(x))), 0.3, self.training).flatten(1))


class _DropoutLinear(nn.Linear):
    def forward(self, x):
        return super().forward(F.dropout(x, 0.3, self.training))


class DropoutInHead(DropoutBNNet):
    """The head draws its own dropout mask: the head shortcut must replay it."""

    def __init__(self):
        super().__init__()
        self.fc = _DropoutLinear(4 * 5 * 5, 4)


def _run_step(net_cls, meta_gradient, meta_params="all", normalize=False, seed=0, detach=True):
    torch.manual_seed(seed)
    model = net_cls().double()
    wnet = WeightNet(8).double()
    # two parameter groups with different step sizes: α is per group
    opt = torch.optim.SGD(
        [{"params": [model.conv.weight, model.conv.bias], "lr": 0.05},
         {"params": [p for n, p in model.named_parameters() if not n.startswith("conv")]}],
        lr=0.2, momentum=0.9,
    )
    mopt = torch.optim.SGD(wnet.parameters(), lr=1.0)
    step = BilevelStep(model, wnet, per_sample_ce, opt, mopt, meta_gradient=meta_gradient,
                       meta_params=meta_params, normalize_weights=normalize, detach_weight_input=detach)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(10, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    xm = torch.randn(7, 3, 5, 5, generator=g, dtype=torch.float64)
    ym = torch.randint(0, 4, (7,), generator=g)
    torch.manual_seed(99)  # same dropout masks in every variant
    result = step.step(x, y, xm, ym)
    return model, wnet, result


@pytest.mark.parametrize("net_cls", [DropoutBNNet, ScaledHead, FunctionalDropoutNet, DropoutInHead])
@pytest.mark.parametrize("meta_params", ["all", "last", ["conv.weight", "fc.bias"]])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("detach", [True, False])
def test_exact_equals_unrolled(net_cls, meta_params, normalize, detach):
    m_exact, w_exact, r_exact = _run_step(net_cls, "exact", meta_params, normalize, detach=detach)
    m_unr, w_unr, r_unr = _run_step(net_cls, "unrolled", meta_params, normalize, detach=detach)
    for a, b in zip(w_exact.parameters(), w_unr.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(m_exact.state_dict().values(), m_unr.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(r_exact.weights, r_unr.weights)
    # and the weight net did change
    torch.manual_seed(0)
    _ = net_cls()
    fresh = WeightNet(8).double()
    assert max((a - b).abs().max() for a, b in zip(w_exact.parameters(), fresh.parameters())) > 1e-6


def test_head_shortcut_is_taken_only_when_the_head_is_the_output():
    torch.manual_seed(0)
    for cls, expect_head in [(DropoutBNNet, True), (ScaledHead, True)]:
        model = cls()
        step = BilevelStep(model, WeightNet(), per_sample_ce, torch.optim.SGD(model.parameters(), 0.1),
                           torch.optim.SGD(WeightNet().parameters(), 0.1), meta_params="last")
        assert (step.head_name == "fc") is expect_head
        forward = step.forward_train(torch.randn(4, 3, 5, 5), torch.zeros(4, dtype=torch.long), record=True)
        # identity check decides at run time: the scaled model's output is not fc's output
        assert (forward.head_input is not None) is (cls is DropoutBNNet)


@pytest.mark.parametrize("net_cls", [DropoutBNNet, FunctionalDropoutNet, DropoutInHead])
@pytest.mark.parametrize("meta_params", ["all", "last"])
def test_finite_difference_mode_close_to_exact(net_cls, meta_params):
    _, w_fd, _ = _run_step(net_cls, "finite_difference", meta_params)
    _, w_exact, _ = _run_step(net_cls, "exact", meta_params)
    for a, b in zip(w_fd.parameters(), w_exact.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("meta_gradient", ["exact", "finite_difference", "unrolled"])
def test_head_alone_forwards_leave_the_heads_running_stats_alone(meta_gradient):
    """A head with buffers (BatchNorm on the logits) taking the head shortcut."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.BatchNorm1d(3)).double()
    reference = copy.deepcopy(model)
    wnet = WeightNet(8).double()
    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=0.5),
                       torch.optim.SGD(wnet.parameters(), lr=1.0), meta_gradient=meta_gradient, meta_params="last")
    assert step.head_name == "3" or meta_gradient == "unrolled"
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    step.step(x, y, torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,)))
    reference.train()
    reference(x)  # one plain forward of the train batch
    torch.testing.assert_close(model[3].running_mean, reference[3].running_mean)
    torch.testing.assert_close(model[3].running_var, reference[3].running_var)
    assert model[3].num_batches_tracked.item() == 1


def _weight_net_after_one_step(model, meta_gradient, **kwargs):
    torch.manual_seed(0)
    wnet = WeightNet(8).double()
    if kwargs.pop("saturated", False):
        with torch.no_grad():
            wnet.output.bias.fill_(-25.0)  # every weight about 1e-11: the batch sum is tiny, not 0
    model = copy.deepcopy(model)
    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=0.5),
                       torch.optim.SGD(wnet.parameters(), lr=1.0), meta_gradient=meta_gradient, **kwargs)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 10, (8, 4), generator=g), torch.randint(0, 10, (8,), generator=g)
    xm, ym = torch.randint(0, 10, (6, 4), generator=g), torch.randint(0, 10, (6,), generator=g)
    step.step(x, y, xm, ym)
    return [p.detach().clone() for p in wnet.parameters()]


class TiedOutput(nn.Module):
    """An output layer sharing the embedding's weight (weight tying)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.mid(self.emb(x).mean(1))))


def test_meta_params_last_with_tied_weights_uses_the_canonical_names():
    torch.manual_seed(0)
    model = TiedOutput().double()
    assert select_parameter_names(model, "last") == ["emb.weight", "out.bias"]
    reference = _weight_net_after_one_step(model, "unrolled", meta_params="last")
    for mode in ("exact", "finite_difference"):
        for a, b in zip(_weight_net_after_one_step(model, mode, meta_params="last"), reference):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("detach", [True, False])
def test_normalised_weights_of_a_saturated_weight_net_are_normalised_not_clamped(detach):
    """Batch sum about 1e-10: every path divides by it (the authors' rule), so they agree."""
    torch.manual_seed(0)
    model = TiedOutput().double()
    kwargs = dict(normalize_weights=True, detach_weight_input=detach, saturated=True)
    reference = _weight_net_after_one_step(model, "unrolled", **kwargs)
    exact = _weight_net_after_one_step(model, "exact", **kwargs)
    for a, b in zip(exact, reference):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-8)


@pytest.mark.parametrize("normalize,detach", [(False, True), (True, True), (True, False), (False, False)])
def test_weight_net_gradient_matches_finite_differences(normalize, detach):
    """Central differences of Θ -> L_meta(ŵ(Θ)) against the gradient the fast path writes.

    ``detach=False, normalize=True`` is the virtual step of the authors' 2019 class-imbalance
    script: ``v = vnet(cost)`` with the loss not detached, weights divided by their sum."""
    torch.manual_seed(3)
    model = BNMLP(4, 3, 5).double()
    wnet = WeightNet(3).double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.arange(9) % 3
    xm, ym = torch.randn(6, 4, dtype=torch.float64), torch.arange(6) % 3
    lr = 0.7
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def meta_loss_of(theta_vec):
        net = copy.deepcopy(wnet)
        torch.nn.utils.vector_to_parameters(theta_vec, net.parameters())
        mdl = copy.deepcopy(model)
        logits = mdl(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        v = net((losses.detach() if detach else losses)[:, None])[:, 0]
        virtual = (v * losses).sum() / v.sum() if normalize else (v * losses).mean()
        grads = torch.autograd.grad(virtual, list(mdl.parameters()))
        with torch.no_grad():
            for p, g in zip(mdl.parameters(), grads):
                p -= lr * g
            return F.cross_entropy(mdl(xm), ym).item()

    step = BilevelStep(model, wnet, per_sample_ce, opt, torch.optim.SGD(wnet.parameters(), 0.0),
                       normalize_weights=normalize, detach_weight_input=detach)
    forward = step.forward_train(x, y, record=True)
    step.compute_meta_gradient(forward, x, y, xm, ym)
    analytic = torch.cat([p.grad.reshape(-1) for p in wnet.parameters()])

    theta = torch.nn.utils.parameters_to_vector(wnet.parameters()).detach()
    numeric = torch.zeros_like(theta)
    h = 1e-6
    for i in range(len(theta)):
        e = torch.zeros_like(theta)
        e[i] = h
        numeric[i] = (meta_loss_of(theta + e) - meta_loss_of(theta - e)) / (2 * h)
    assert analytic.abs().max() > 1e-6
    torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-4)


def test_meta_and_virtual_forwards_leave_running_stats_alone():
    torch.manual_seed(0)
    model = DropoutBNNet()
    reference = copy.deepcopy(model)
    wnet = WeightNet()
    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=0.1),
                       torch.optim.Adam(wnet.parameters(), 1e-3))
    x, y = torch.randn(8, 3, 5, 5), torch.randint(0, 4, (8,))
    step.step(x, y, torch.randn(8, 3, 5, 5) * 5 + 3, torch.randint(0, 4, (8,)))
    reference.train()
    reference(x)  # one plain forward of the train batch
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, reference.bn.running_var)
    assert model.bn.num_batches_tracked.item() == 1


def test_meta_interval_step_skips_weight_net():
    torch.manual_seed(0)
    model, wnet = DropoutBNNet(), WeightNet()
    before = copy.deepcopy(wnet.state_dict())
    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=0.1),
                       torch.optim.Adam(wnet.parameters(), 1e-2))
    r = step.step(torch.randn(8, 3, 5, 5), torch.randint(0, 4, (8,)), update_weight_net=False)
    assert r.meta_loss is None
    for k, v in wnet.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_nonfinite_loss_raises_before_any_write():
    torch.manual_seed(0)
    model, wnet = DropoutBNNet(), WeightNet()
    snapshot = copy.deepcopy((model.state_dict(), wnet.state_dict()))
    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=0.1),
                       torch.optim.Adam(wnet.parameters(), 1e-2))
    x = torch.randn(8, 3, 5, 5)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        step.step(x, torch.randint(0, 4, (8,)), torch.randn(8, 3, 5, 5), torch.randint(0, 4, (8,)))
    for k, v in wnet.state_dict().items():
        torch.testing.assert_close(v, snapshot[1][k])
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, snapshot[0][n])


def test_select_parameter_names():
    model = DropoutBNNet()
    assert select_parameter_names(model, "last") == ["fc.weight", "fc.bias"]
    assert len(select_parameter_names(model, "all")) == 6
    with pytest.raises(ValueError, match="not trainable parameters"):
        select_parameter_names(model, ["nope"])
    with pytest.raises(ValueError, match="'all', 'last'"):
        select_parameter_names(model, "first")
    for bad in (3, [1, 2]):  # not names: the same message, not a raw TypeError
        with pytest.raises(ValueError, match="'all', 'last' or a list of parameter names"):
            select_parameter_names(model, bad)


# --------------------------------------------------------------------------- class-aware weighting
@pytest.mark.parametrize("kind", ["size-groups", "class-groups", "per-class-net", "per-class-net-scaled"])
@pytest.mark.parametrize("normalize", [False, True])
def test_class_aware_weight_net_exact_equals_unrolled(normalize, kind):
    from mwnet_sk import ClassAwareWeightNet, PerClassWeightNet

    def make():
        if kind == "per-class-net":  # the default: a shared curve plus a correction per class
            return PerClassWeightNet(hidden_size=6).double()
        if kind == "per-class-net-scaled":  # reading loss / 0.25
            return PerClassWeightNet(hidden_size=6, loss_scale=0.25).double()
        # one head per class, or classes 0, 1 common; 2, 3 rare
        return ClassAwareWeightNet(n_groups=None if kind == "class-groups" else 2, hidden_size=6).double()

    per_class = kind != "size-groups"
    results = []
    for meta_gradient in ("exact", "unrolled"):
        torch.manual_seed(0)
        model = DropoutBNNet().double()
        wnet = make()
        wnet.set_class_counts([40, 30, 5, 3])
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        step = BilevelStep(model, wnet, per_sample_ce, opt, torch.optim.SGD(wnet.parameters(), lr=1.0),
                           meta_gradient=meta_gradient, normalize_weights=normalize)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(10, 3, 5, 5, generator=g, dtype=torch.float64)
        y = torch.arange(10) % 4
        xm = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
        torch.manual_seed(99)
        step.step(x, y, xm, torch.arange(8) % 4)
        results.append([p.detach().clone() for p in wnet.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # every group's head learned (the rare classes' head moved too)
    torch.manual_seed(0)
    _ = DropoutBNNet()
    fresh = make()
    fresh.set_class_counts([40, 30, 5, 3])
    heads = dict(zip([n for n, _ in fresh.named_parameters()], range(99)))["heads.weight"]
    assert results[0][heads].shape == fresh.heads.weight.shape == (4 if per_class else 2, 6)
    moved = (results[0][heads] - fresh.heads.weight).abs().amax(1)
    assert (moved > 1e-8).all()
    if per_class:  # each class's head moved its own way
        assert torch.unique(results[0][heads], dim=0).shape[0] == 4


def test_class_aware_meta_gradient_matches_finite_differences():
    from mwnet_sk import ClassAwareWeightNet

    torch.manual_seed(3)
    model = BNMLP(4, 3, 5).double()
    wnet = ClassAwareWeightNet(n_groups=2, hidden_size=3).double()
    wnet.set_class_counts([30, 4, 3])
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.arange(9) % 3
    xm, ym = torch.randn(6, 4, dtype=torch.float64), torch.arange(6) % 3
    lr = 0.7

    def meta_loss_of(theta_vec):
        net = copy.deepcopy(wnet)
        torch.nn.utils.vector_to_parameters(theta_vec, net.parameters())
        mdl = copy.deepcopy(model)
        losses = F.cross_entropy(mdl(x), y, reduction="none")
        v = net(losses.detach()[:, None], y)[:, 0]
        grads = torch.autograd.grad((v * losses).sum() / v.sum(), list(mdl.parameters()))
        with torch.no_grad():
            for p, g in zip(mdl.parameters(), grads):
                p -= lr * g
            return F.cross_entropy(mdl(xm), ym).item()

    step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), lr=lr),
                       torch.optim.SGD(wnet.parameters(), 0.0), normalize_weights=True)
    forward = step.forward_train(x, y, record=True)
    step.compute_meta_gradient(forward, x, y, xm, ym)
    analytic = torch.cat([p.grad.reshape(-1) for p in wnet.parameters()])
    theta = torch.nn.utils.parameters_to_vector(wnet.parameters()).detach()
    numeric = torch.zeros_like(theta)
    for i in range(len(theta)):
        e = torch.zeros_like(theta)
        e[i] = 1e-6
        numeric[i] = (meta_loss_of(theta + e) - meta_loss_of(theta - e)) / 2e-6
    assert analytic.abs().max() > 1e-6
    torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-4)
