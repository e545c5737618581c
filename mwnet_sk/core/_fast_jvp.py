"""Cheaper forward-mode rules for the JVP of the exact meta-gradient (pure torch).

The exact meta-gradient (:mod:`mwnet_sk.core.bilevel`) needs one Jacobian-vector product of the
per-sample losses at the current weights. torch's generic forward AD recomputes every primal
value and uses a composite rule for batch norm; these torch-function modes make the same JVP
cheaper and stay exact:

- :class:`_PrimalRecorder`, active during the real forward, keeps the outputs of convolutions
  and max pools (and, on CPU, batch-norm statistics);
- :class:`_FastJvp`, active during the JVP forward, replays them so that only tangents are
  computed, and uses :class:`_BatchNormTrainJvp` for training-mode batch norm.

Every replayed op is checked against its record; at the first mismatch the rest of the forward
falls back to torch's own forward AD, so an unusual model is slower, never wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as fwAD
from torch.overrides import TorchFunctionMode

# ---------------------------------------------------------------------- cheaper BatchNorm JVP
def _batch_norm_variance(invstd, eps):
    """σ² such that (σ² + ε)^(-1/2) = r: eval-mode batch norm then normalises like training."""
    return invstd.reciprocal().square_().sub_(eps)


def _batch_norm_tangent(x, x_t, weight, weight_t, bias_t, mean, invstd, var, eps):
    """Tangent of training-mode batch norm (see :class:`_BatchNormTrainJvp`)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    count = x.numel() // x.shape[1]
    if x_t is None:
        x_t = torch.zeros_like(x)
    _, sum_t_xhat, sum_t = torch.ops.aten.native_batch_norm_backward(
        x_t, x, weight, None, None, mean, invstd, True, eps, [False, True, True]
    )
    a = invstd if weight is None else weight * invstd
    b = a * sum_t_xhat * (-1.0 / count)
    c = a * sum_t * (-1.0 / count)
    if weight_t is not None:
        b = b + weight_t
    if bias_t is not None:
        c = c + bias_t
    out = torch.native_batch_norm(x, b, c, mean, var, False, 0.0, eps)[0]
    return out.addcmul_(x_t, a.view(shape))


class _BatchNormTrainJvp(torch.autograd.Function):
    """Training-mode batch norm whose forward-mode derivative costs a few fused passes.

    torch's generic forward-AD formula for ``native_batch_norm`` is a composite of about ten
    full-size elementwise ops (centre, square, products, broadcasts); on a CPU it cost about as
    much as the convolutions of the JVP forward. With x̂ = (x − μ)·r, r = (σ² + ε)^(-1/2), the
    tangent of y = γ·x̂ + β along (ẋ, γ̇, β̇) is, per channel,

        ẏ = a·ẋ + b·x̂ + c,   a = γ·r,   b = γ̇ − a·mean(ẋ·x̂),   c = β̇ − a·mean(ẋ),

    which needs two per-channel reductions (one fused pass of ``native_batch_norm_backward``,
    which returns Σẋ·x̂ and Σẋ as its weight/bias gradients), one pass for b·x̂ + c (an
    eval-mode batch norm with the batch statistics: it recomputes x̂ = (x − μ)·r itself, so
    there is no cancellation from expanding x̂) and one in-place ``addcmul_``. The primal is
    the fused kernel. Only used under :class:`_FastJvp`, inside the JVP, where no
    reverse-mode graph is needed and the (copied) running statistics are discarded anyway.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_forward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, _eps_t):
        x, weight, mean, invstd = ctx.saved_tensors
        var = _batch_norm_variance(invstd, ctx.eps)
        return _batch_norm_tangent(x, x_t, weight, weight_t, bias_t, mean, invstd, var, ctx.eps)

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the JVP runs without a reverse graph
        raise RuntimeError("_BatchNormTrainJvp is forward-mode only")


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_CONVS = (F.conv1d, F.conv2d, F.conv3d)
# nn.MaxPool2d reaches torch-function modes as F.max_pool2d, or with return_indices=True as
# F.max_pool2d_with_indices.
_MAX_POOLS = (F.max_pool2d, F.max_pool2d_with_indices)


def _bind(names, args, kwargs):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


@dataclass
class _Primal:
    """One expensive op of the real forward whose output the JVP forward can reuse."""

    func: object
    signature: tuple  # what must match at replay: shapes, the weight's storage, the options
    out: torch.Tensor | None  # convolution, max pool: the output (batch norm: not kept)
    version: int = 0  # out._version when recorded: a later in-place change disqualifies it
    indices: torch.Tensor | None = None  # max pooling: argmax positions, for the tangent
    stats: tuple | None = None  # batch norm: batch mean, inverse std and variance of the real forward


def _batched(func, bound) -> bool:
    """Only batched inputs are recorded and replayed (the tangent code assumes (N, C, ...))."""
    x = bound["input"]
    if func in _CONVS:
        return isinstance(x, torch.Tensor) and x.ndim == bound["weight"].ndim
    return isinstance(x, torch.Tensor) and x.ndim == 4


def _conv_signature(func, bound):
    x, w = bound["input"], bound["weight"]
    options = tuple(repr(bound.get(k)) for k in _CONV_ARGS[3:])
    return (func, tuple(x.shape), x.dtype, w.data_ptr(), w._version, tuple(w.shape), options)


def _batch_norm_fast(bound) -> bool:
    """Training-mode batch norm that the cheaper rule handles (same test at record and replay)."""
    x, weight, bias = bound["input"], bound.get("weight"), bound.get("bias")
    return (
        bool(bound.get("training", False))
        and isinstance(x, torch.Tensor)
        and x.device.type in ("cpu", "cuda")
        and x.ndim >= 2
        and x.numel() > x.shape[1]  # more than one value per channel (else torch raises)
        and all(t is None or t.dtype == x.dtype for t in (weight, bias))
    )


def _batch_norm_recorded(bound) -> bool:
    """Whether the real forward records this batch norm's statistics (and the JVP looks for them).

    CPU only: there F.batch_norm is native_batch_norm, which the recorder can call itself; on
    CUDA torch picks cuDNN, which is left alone.
    """
    return (
        _batch_norm_fast(bound)
        and bound["input"].device.type == "cpu"
        and isinstance(bound.get("momentum", 0.1), (int, float))
    )


def _batch_norm_signature(bound):
    x, w = bound["input"], bound.get("weight")
    weight = None if w is None else (w.data_ptr(), w._version)
    return (tuple(x.shape), x.dtype, weight, float(bound.get("eps", 1e-5)))


def _pool_signature(bound):
    x = bound["input"]
    options = tuple(repr(bound.get(k)) for k in _MAX_POOL_ARGS[1:6])
    return (tuple(x.shape), x.dtype, options)


class _PrimalRecorder(TorchFunctionMode):
    """Active during the real forward: keeps the outputs of convolutions and max pools and (on
    a CPU) the batch statistics of training-mode batch norms.

    The JVP forward of the exact meta-gradient evaluates the model at the same w, on the same
    batch, with the same batch statistics and dropout masks, so its primal values are the real
    forward's. Recording the expensive ones lets :class:`_FastJvp` skip recomputing them (on a
    small BN CNN on a CPU: a third of the JVP's convolutions, all of its max pools and batch
    statistics). Convolution and pool outputs are the next layer's input, which autograd keeps
    for the backward anyway, so they cost no memory; batch norms keep per-channel statistics only.
    Max pools are asked for their indices, which the autograd graph computes anyway, so the
    pooled tangent is a gather, as in torch's own rule.
    """

    def __init__(self):
        super().__init__()
        self.records: list[_Primal] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS and _batched(func, bound := _bind(_CONV_ARGS, args, kwargs)):
            signature = _conv_signature(func, bound)
            out = func(*args, **kwargs)
            self.records.append(_Primal(func, signature, out, out._version))
            return out
        if func is F.batch_norm and _batch_norm_recorded(bound := _bind(_BATCH_NORM_ARGS, args, kwargs)):
            # On a CPU, F.batch_norm is native_batch_norm (same kernel, same autograd node, same
            # running-statistics update); calling it directly also yields the batch statistics.
            # Only those are kept: the output is usually not saved by autograd (ReLU keeps its
            # own output) and is often changed in place, so keeping it would cost an activation
            # of memory, while normalising with known statistics is the cheap part.
            eps = float(bound.get("eps", 1e-5))
            out, mean, invstd = torch.native_batch_norm(
                bound["input"], bound.get("weight"), bound.get("bias"), bound.get("running_mean"),
                bound.get("running_var"), True, float(bound.get("momentum", 0.1)), eps,
            )  # fmt: skip
            stats = (mean, invstd, _batch_norm_variance(invstd, eps))
            self.records.append(_Primal(F.batch_norm, _batch_norm_signature(bound), None, stats=stats))
            return out
        if func in _MAX_POOLS and _batched(func, bound := _bind(_MAX_POOL_ARGS, args, kwargs)):
            want_indices = func is F.max_pool2d_with_indices or bool(bound.get("return_indices", False))
            bound["return_indices"] = True
            out, indices = F.max_pool2d_with_indices(**bound)
            self.records.append(_Primal(F.max_pool2d, _pool_signature(bound), out, out._version, indices))
            return (out, indices) if want_indices else out
        return func(*args, **kwargs)


class _FastJvp(TorchFunctionMode):
    """Active during the JVP forward: cheaper forward-mode rules for the common layers.

    - training-mode ``F.batch_norm`` (every ``nn.BatchNorm*d``): the fused tangent of
      :class:`_BatchNormTrainJvp`;
    - with ``records`` from :class:`_PrimalRecorder`: convolutions and max pools take their
      primal output from the real forward and compute only the tangent; batch norms (CPU)
      normalise with the recorded batch statistics instead of reducing again.

    Replay is by call order, and each call is checked against its record (function, input
    shape and dtype, the weight's storage and version, the options). At the first mismatch the
    records are abandoned and torch's generic forward AD takes over for the rest of the
    forward, so a model this does not understand is slower, never wrong. Anything else (eval
    mode, mixed dtypes under autocast) falls through to torch unchanged.
    """

    def __init__(self, records=None):
        super().__init__()
        self.records = records or []
        self.position = 0
        self.replayed = 0

    def _next(self, func, signature):
        """The next record if it is this call's, else None (and no reuse from here on).

        A record whose output was changed in place after it was made (e.g. by a ReLU with
        ``inplace=True``, or a residual ``+=``) is consumed but not reused: the same in-place
        change happens in this forward too, so the value must be computed afresh.
        """
        if self.position >= len(self.records):
            return None
        rec = self.records[self.position]
        if rec.func is not func or rec.signature != signature:
            self.records = []  # out of step with the real forward: stop reusing
            return None
        self.position += 1
        if rec.out is not None and rec.out._version != rec.version:
            return None
        self.replayed += 1
        return rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _bind(_BATCH_NORM_ARGS, args, kwargs)
            if _batch_norm_fast(bound):
                x, x_t = fwAD.unpack_dual(bound["input"])
                eps = float(bound.get("eps", 1e-5))
                rec = None
                if self.records and _batch_norm_recorded(bound):
                    w = bound.get("weight")
                    primal_w = None if w is None else fwAD.unpack_dual(w)[0]
                    rec = self._next(F.batch_norm, _batch_norm_signature({**bound, "input": x, "weight": primal_w}))
                if rec is None:
                    return _BatchNormTrainJvp.apply(bound["input"], bound.get("weight"), bound.get("bias"), eps)
                weight, weight_t = fwAD.unpack_dual(bound["weight"]) if bound.get("weight") is not None else (None, None)
                bias, bias_t = fwAD.unpack_dual(bound["bias"]) if bound.get("bias") is not None else (None, None)
                mean, invstd, var = rec.stats
                # the primal with the real forward's batch statistics: one pass, no reductions
                primal = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
                if x_t is None and weight_t is None and bias_t is None:
                    return primal
                tangent = _batch_norm_tangent(x, x_t, weight, weight_t, bias_t, mean, invstd, var, eps)
                return fwAD.make_dual(primal, tangent)
        elif func in _CONVS and self.records and _batched(func, bound := _bind(_CONV_ARGS, args, kwargs)):
            x, x_t = fwAD.unpack_dual(bound["input"])
            w, w_t = fwAD.unpack_dual(bound["weight"])
            b_t = None if bound.get("bias") is None else fwAD.unpack_dual(bound["bias"])[1]
            rec = self._next(func, _conv_signature(func, {**bound, "input": x, "weight": w}))
            if rec is not None:
                # conv is bilinear: d conv(x, w) + b = conv(ẋ, w) + conv(x, ẇ) + ḃ
                options = {k: bound[k] for k in _CONV_ARGS[3:] if k in bound}
                tangent = None if x_t is None else func(x_t, w, None, **options)
                if w_t is not None:
                    term = func(x, w_t, b_t, **options)
                    tangent = term if tangent is None else tangent.add_(term)
                elif b_t is not None:
                    shape = (1, -1) + (1,) * (x.ndim - 2)
                    tangent = (b_t.view(shape) if tangent is None else tangent + b_t.view(shape)).expand_as(rec.out)
                primal = rec.out.detach()
                return primal if tangent is None else fwAD.make_dual(primal, tangent)
        elif func in _MAX_POOLS and self.records and _batched(func, bound := _bind(_MAX_POOL_ARGS, args, kwargs)):
            x, x_t = fwAD.unpack_dual(bound["input"])
            rec = self._next(F.max_pool2d, _pool_signature({**bound, "input": x}))
            if rec is not None:
                primal = rec.out.detach()
                if x_t is not None:
                    tangent = x_t.flatten(2).gather(2, rec.indices.flatten(2)).view(primal.shape)
                    primal = fwAD.make_dual(primal, tangent)
                if func is F.max_pool2d_with_indices or bound.get("return_indices", False):
                    return primal, rec.indices
                return primal
        return func(*args, **kwargs)
