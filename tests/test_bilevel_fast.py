"""The exact meta-gradient's fast JVP path (mwnet_sk.core._fast_jvp, used by bilevel) against torch's generic forward AD
and against the unrolled oracle: custom batch-norm rule, reuse of the real forward's
convolution and max-pool outputs, fallbacks."""

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as fwAD

from mwnet_sk import WeightNet
from mwnet_sk.core import bilevel
from mwnet_sk.core.bilevel import BilevelStep


def per_sample_ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


class ResPoolNet(nn.Module):
    """Conv-BN-ReLU(inplace), a residual ``+=``, max pools (one returning indices), dropout,
    BatchNorm1d and an affine-free BN: the layer zoo the fast path has to get right."""

    def __init__(self, inplace_on_conv=False):
        super().__init__()
        self.inplace_on_conv = inplace_on_conv
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.pool = nn.MaxPool2d(2)
        self.pool_idx = nn.MaxPool2d(2, return_indices=True)
        self.drop = nn.Dropout(0.25)
        self.bn3 = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv1(x)
        if self.inplace_on_conv:
            h += 0.25  # an in-place change of a recorded output: the replay must notice
        h = F.relu(self.bn1(h), inplace=True)
        h = self.pool(h)
        r = self.bn2(self.conv2(h))
        r += h  # residual, in place
        h, _ = self.pool_idx(F.relu(r))
        h = self.drop(h.mean((2, 3)))
        return self.fc(F.relu(self.bn3(h)))


class Spy(bilevel._FastJvp):
    log: ClassVar[list] = []

    def __exit__(self, *exc):
        Spy.log.append((self.replayed, len(self.records)))
        return super().__exit__(*exc)


def _step(meta_gradient, fast_jvp=True, meta_params="all", seed=0, **model_kwargs):
    torch.manual_seed(seed)
    model = ResPoolNet(**model_kwargs).double()
    wnet = WeightNet(8).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    mopt = torch.optim.SGD(wnet.parameters(), lr=1.0)
    step = BilevelStep(model, wnet, per_sample_ce, opt, mopt, meta_gradient=meta_gradient,
                       meta_params=meta_params, fast_jvp=fast_jvp)  # fmt: skip
    g = torch.Generator().manual_seed(7)
    for _ in range(2):
        x = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (12,), generator=g)
        xm = torch.randn(9, 3, 8, 8, generator=g, dtype=torch.float64)
        ym = torch.randint(0, 3, (9,), generator=g)
        step.step(x, y, xm, ym)
    # nothing of a step's activations is kept on the step object
    assert not any(isinstance(v, (list, torch.Tensor)) and v is not None and k.startswith("_record")
                   for k, v in vars(step).items())
    return model, wnet


@pytest.mark.parametrize("meta_params", ["all", ["conv1.weight", "bn1.bias", "fc.weight"], ["conv2.bias", "fc.bias"]])
@pytest.mark.parametrize("inplace_on_conv", [False, True])
def test_fast_jvp_equals_generic_and_unrolled(monkeypatch, meta_params, inplace_on_conv):
    monkeypatch.setattr(bilevel, "_FastJvp", Spy)
    Spy.log.clear()
    fast = _step("exact", True, meta_params, inplace_on_conv=inplace_on_conv)
    log = list(Spy.log)
    generic = _step("exact", False, meta_params, inplace_on_conv=inplace_on_conv)
    oracle = _step("unrolled", True, meta_params, inplace_on_conv=inplace_on_conv)
    for other in (generic, oracle):
        for a, b in zip(fast[1].parameters(), other[1].parameters()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
        for a, b in zip(fast[0].state_dict().values(), other[0].state_dict().values()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # Recorded: 2 convolutions, 3 batch norms (statistics only, CPU), 2 max pools; conv1's
    # output is changed in place after the real forward when inplace_on_conv: recomputed.
    expected = 6 if inplace_on_conv else 7
    assert log == [(expected, 7), (expected, 7)]


def test_weight_net_moves():
    _, wnet = _step("exact")
    torch.manual_seed(0)
    ResPoolNet()
    fresh = WeightNet(8).double()
    assert max((a - b).abs().max() for a, b in zip(wnet.parameters(), fresh.parameters())) > 1e-6


@pytest.mark.parametrize("shape", [(7, 5), (6, 4, 9), (5, 3, 4, 6), "channels_last"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_rule_matches_torch(shape, affine):
    g = torch.Generator().manual_seed(0)
    channels_last = shape == "channels_last"
    shape = (5, 3, 4, 6) if channels_last else shape
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2
    x_t = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x, x_t = x.contiguous(memory_format=torch.channels_last), x_t.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, w_t, b, b_t = (torch.randn(c, generator=g, dtype=torch.float64) for _ in range(4))
    outs = []
    for mode in (bilevel._FastJvp(), None):
        with fwAD.dual_level():
            args = [fwAD.make_dual(x, x_t)]
            if affine:
                args += [fwAD.make_dual(w, w_t), fwAD.make_dual(b, b_t)]
            else:
                args += [None, None]
            if mode is None:
                out = F.batch_norm(args[0], None, None, args[1], args[2], training=True, eps=1e-3)
            else:
                with mode:
                    out = F.batch_norm(args[0], None, None, args[1], args[2], training=True, eps=1e-3)
            primal, tangent = fwAD.unpack_dual(out)
            outs.append((primal.clone(), tangent.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-10, rtol=1e-8)


def test_recording_only_for_exact_full_jvp():
    torch.manual_seed(0)
    for meta_gradient, meta_params, fast, expect in [
        ("exact", "all", True, True),
        ("exact", "all", False, False),
        ("exact", "last", True, False),  # the head shortcut needs no full JVP
        ("finite_difference", "all", True, False),
        ("unrolled", "all", True, False),
    ]:
        model = ResPoolNet()
        wnet = WeightNet()
        step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), 0.1),
                           torch.optim.SGD(wnet.parameters(), 0.1), meta_gradient=meta_gradient,
                           meta_params=meta_params, fast_jvp=fast)  # fmt: skip
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
        assert (step.forward_train(x, y, record=True).primals is not None) is expect
        assert step.forward_train(x, y).primals is None  # record defaults to False


class Moody(ResPoolNet):
    """Crops its input on every third call (the JVP's): the replay must notice and step aside."""

    calls = 0

    def forward(self, x):
        Moody.calls += 1
        return super().forward(x[..., :-1, :] if Moody.calls % 3 == 0 else x)


def test_replay_out_of_step_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(bilevel, "_FastJvp", Spy)
    results = []
    for fast in (True, False):
        Spy.log.clear()
        Moody.calls = 0
        torch.manual_seed(0)
        model, wnet = Moody().double(), WeightNet(8).double()
        step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), 0.3),
                           torch.optim.SGD(wnet.parameters(), 1.0), fast_jvp=fast)  # fmt: skip
        g = torch.Generator().manual_seed(3)
        x, xm = (torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
        y, ym = (torch.randint(0, 3, (10,), generator=g) for _ in range(2))
        step.step(x, y, xm, ym)
        results.append(wnet)
        if fast:
            assert Spy.log == [(0, 0)]  # the first convolution's input differs: nothing reused
    for a, b in zip(results[0].parameters(), results[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_channels_last_fast_path_is_exact(monkeypatch):
    monkeypatch.setattr(bilevel, "_FastJvp", Spy)
    wnets = []
    for meta_gradient in ("exact", "unrolled"):
        Spy.log.clear()
        torch.manual_seed(0)
        model = ResPoolNet().double().to(memory_format=torch.channels_last)
        wnet = WeightNet(8).double()
        step = BilevelStep(model, wnet, per_sample_ce, torch.optim.SGD(model.parameters(), 0.3),
                           torch.optim.SGD(wnet.parameters(), 1.0), meta_gradient=meta_gradient)  # fmt: skip
        g = torch.Generator().manual_seed(5)
        x, xm = (torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last) for _ in range(2))  # fmt: skip
        y, ym = (torch.randint(0, 3, (10,), generator=g) for _ in range(2))
        step.step(x, y, xm, ym)
        wnets.append(wnet)
        if meta_gradient == "exact":
            assert Spy.log == [(7, 7)]
    for a, b in zip(*(w.parameters() for w in wnets)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
