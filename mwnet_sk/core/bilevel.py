"""One Meta-Weight-Net training step (Algorithm 1 of Shu et al., 2019), in plain PyTorch.

Notation, per step: train batch (x, y) of size n, meta batch (x_m, y_m), classifier weights w,
per-sample train losses L_j(w), weight net V(.; Θ), step size α (the classifier optimizer's
current learning rate, per parameter group).

1. virtual step (Eq. 3):  ŵ(Θ) = w − α · ∇_w R(V(L(w); Θ), L(w))
2. weight-net step (Eq. 4): Θ ← meta_optimizer step on ∇_Θ mean_i L_i^meta(ŵ(Θ))
3. real step (Eq. 5):     w ← optimizer step on R(V(L(w); Θ_new), L(w))

where R(v, l) = mean(v · l) (Eq. 1), or sum(v · l) / sum(v) when ``normalize_weights``.

The virtual gradient is a combination of the per-sample gradients, ∇_w R = Σ_j c_j ∇_w L_j with
c_j(Θ) = ∂R(V(l; Θ), l)/∂l_j at l = L(w). With the weight net's input detached (Eq. 3 as
written; the default) c_j = V_j/n, or V_j/ΣV when normalised. With ``detach_weight_input=False``
(the authors' 2019 class-imbalance script) c_j also carries V's slope. Either way the chain rule
through step 1 gives Eq. 6 of the paper in first-order terms:

    ∇_Θ L^meta(ŵ) = −∇_Θ Σ_j s_j c_j(Θ),   s_j = Σ_k α_k ⟨∇_{w_k} L^meta(ŵ), ∇_{w_k} L_j(w)⟩,

(with detached input, −∇_Θ R(V(L; Θ), s)), and the vector s is one forward-mode
Jacobian-vector product of the per-sample loss vector at w along u = α ⊙ ∇L^meta(ŵ). No
second-order graph is ever built; this is ``meta_gradient="exact"``. ``"unrolled"``
differentiates through step 1 with ``create_graph=True`` (the paper's code) and is kept as the
reference oracle; ``"finite_difference"`` approximates s by central differences along u.

Writing R = P/S with P = Σ V_j l_j and S = Σ V_j (or S = n), Σ_j s_j c_j = Q_A/S − P·Q_B/S² with
Q_A = Σ s_j ∂P/∂l_j and Q_B = Σ s_j ∂S/∂l_j. All four are sums over the batch, so the gradient
splits into per-part terms given the totals (:meth:`BilevelStep._surrogate`): a data-parallel
run adds the totals over processes (the ``reducer``) and each process differentiates its own
part, which is exactly the single-process gradient of the global batch.

BatchNorm: only the forward of the train batch at w runs on the module itself and updates its
running statistics; every other forward (meta batch at ŵ, JVP, finite differences) runs
through :func:`torch.func.functional_call` on copies of the buffers, in train mode (batch
statistics, like the paper's code), so the real running statistics after a step are exactly
those one forward of the train batch produces. The random draws of the train forward (dropout,
as a module or as ``F.dropout`` inside ``forward``, stochastic depth, any layer that draws from
torch's generator) are replayed for the JVP and the finite differences by restoring the RNG
state recorded before it (before the head's own forward for the head shortcut), so the exact
path equals the unrolled one.

Non-finite values: every loss, weight and gradient is checked before it is applied. A step
that meets one raises :class:`NonFiniteError` and leaves no trace: the classifier, its
buffers (BatchNorm running statistics), the weight net and both optimizers are as before.

Speed (all exact; docs/performance.md has the measurements). An exact step costs the real
forward, the virtual backward, the meta forward and backward, the JVP and the real backward.
The JVP is the one part torch does wastefully, so ``fast_jvp`` (default) makes it cheaper:
its primal values are the real forward's, so convolution and max-pool outputs recorded there
are reused and only tangents are computed, and training-mode batch norm gets a fused tangent
rule (both in :mod:`mwnet_sk.core._fast_jvp`). When only a head that ends the model takes the
virtual step (``meta_params="last"``), the JVP and the finite differences run the head alone on
its captured input; the meta forward records graph only from the head on.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from ._fast_jvp import _FastJvp, _PrimalRecorder
from ._params import find_head, parameter_groups, select_parameter_names

__all__ = [
    "BilevelStep",
    "StepResult",
    "TrainForward",
    "NonFiniteError",
    "META_GRADIENTS",
    "PRECISIONS",
    "weighted_loss",
    "select_parameter_names",
]

META_GRADIENTS = ("exact", "unrolled", "finite_difference")

#: ``precision`` names and the autocast dtype each one runs forwards under (None: no autocast).
PRECISIONS = {None: None, "32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteError(FloatingPointError):
    """A loss, weight or gradient became NaN or infinite during a step.

    Attributes
    ----------
    stage : str
        Which quantity was non-finite ("train loss", "meta loss", "weight-net gradient",
        "sample weights", "classifier gradient").
    """

    def __init__(self, stage: str, message: str | None = None):
        self.stage = stage
        super().__init__(message or f"non-finite {stage}")


def batch_total(total: torch.Tensor) -> torch.Tensor:
    """The divisor of the batch-sum normalisation: the sum itself, or 1 when it is 0 (every
    weight 0), as the authors' code does. Not a clamp at a small value: that would shrink the
    step of a nearly saturated weight net instead of normalising it, and would cut the sum's
    gradient in the unrolled reference but not in the exact surrogate."""
    return torch.where(total > 0, total, torch.ones_like(total))


def weighted_loss(weights: torch.Tensor, losses: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """R(v, l): the batch mean of v·l (Eq. 1), or sum(v·l)/sum(v) when ``normalize``."""
    if normalize:
        return (weights * losses).sum() / batch_total(weights.sum())
    return (weights * losses).mean()


def call_module(module, x, state=None):
    """``module(x)``, ``module(**x)`` for a dict input; with ``state``, a functional call."""
    if state is None:
        return module(**x) if isinstance(x, Mapping) else module(x)
    if isinstance(x, Mapping):
        return functional_call(module, state, (), dict(x))
    return functional_call(module, state, (x,))


def _n_items(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


@dataclass
class TrainForward:
    """What the real forward at w hands to the meta-gradient (explicit, nothing hidden).

    Attributes
    ----------
    logits, losses : torch.Tensor
        The train batch's logits and per-sample losses, with their autograd graph.
    rng_state : dict or None
        The RNG state before the forward (to replay its random draws, e.g. dropout masks);
        None when the forward was not recorded for a meta-gradient.
    head_input : torch.Tensor or None
        The head's (detached) input when the head shortcut applies.
    head_rng_state : dict or None
        The RNG state just before the head's forward (the head shortcut replays from there).
    primals : list or None
        Convolution / pool outputs recorded for the fast JVP.
    """

    logits: torch.Tensor
    losses: torch.Tensor
    rng_state: dict | None = None
    head_input: torch.Tensor | None = None
    primals: list | None = None
    head_rng_state: dict | None = None


@dataclass
class StepResult:
    """What one step produced (all tensors detached)."""

    logits: torch.Tensor
    losses: torch.Tensor
    weights: torch.Tensor
    loss: torch.Tensor
    meta_loss: torch.Tensor | None
    n: torch.Tensor | int = 0  # items of the (global) batch


class BilevelStep:
    """Performs Meta-Weight-Net steps on a classifier, a weight net and their optimizers.

    Built once per fit (and again when the classifier, its optimizer or the set of trainable
    parameters changes); it resolves parameter names and the head shortcut once so that a step
    has little Python overhead.

    Parameters
    ----------
    module : nn.Module
        The classifier f(x; w), returning logits; a dict input is passed as keywords.
    weight_net : nn.Module
        V(loss; Θ), mapping ``(n, 1)`` losses to ``(n, 1)`` weights. A weight net with
        ``uses_labels = True`` is called as ``weight_net(losses, labels)`` (class-aware).
    criterion : callable
        ``criterion(logits, y)`` returning the per-sample loss vector of shape ``(n,)``.
    optimizer : torch.optim.Optimizer
        The classifier's optimizer; its current per-group ``lr`` is the α of Eq. 3. Optimizers
        that evaluate a closure several times (LBFGS) get one that recomputes the weighted loss
        at the current weights with the step's weights fixed (the objective of Eq. 5).
    meta_optimizer : torch.optim.Optimizer
        The weight net's optimizer (Eq. 4).
    meta_gradient : {"exact", "unrolled", "finite_difference"}, default="exact"
        How ∇_Θ L^meta is computed (see module docstring).
    meta_params : "all", "last" or list of str, default="all"
        Parameters that take the virtual step. With a subset, the meta-gradient flows only
        through those parameters (a FaMUS-like approximation); "all" is the paper.
    normalize_weights : bool, default=False
        Use sum(v·l)/sum(v) instead of the batch mean of Eq. 1.
    detach_weight_input : bool, default=True
        Feed the weight net the detached loss in the virtual step (Eq. 3 as written). False
        lets the virtual gradient flow through V's input too, as the authors' 2019
        class-imbalance script does. The real step always uses detached weights.
    autocast_dtype : torch.dtype or None
        Run forwards under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
    fd_epsilon : float, default=1e-3
        Relative step for ``meta_gradient="finite_difference"``.
    check_finite : bool, default=True
        Raise :class:`NonFiniteError`, leaving no trace, when a value is not finite.
    fast_jvp : bool, default=True
        For ``meta_gradient="exact"``: cheaper forward-mode rules for training-mode batch norm,
        and reuse of the real forward's convolution and max-pool outputs in the JVP. Exact
        either way; ``False`` uses torch's generic forward AD throughout.
    forward_module : callable or None, default=None
        Runs the real forward instead of ``module`` (e.g. ``torch.compile(module)``); every
        other forward is a functional call of ``module``.
    reducer : object or None, default=None
        For data-parallel training: ``sum_(tensors)`` adds a list of tensors over the
        processes in place, ``mean_(tensors)`` averages them (see :mod:`mwnet_sk._distributed`).
    """

    def __init__(
        self,
        module: nn.Module,
        weight_net: nn.Module,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        meta_optimizer: torch.optim.Optimizer,
        *,
        meta_gradient: str = "exact",
        meta_params="all",
        normalize_weights: bool = False,
        detach_weight_input: bool = True,
        autocast_dtype: torch.dtype | None = None,
        fd_epsilon: float = 1e-3,
        check_finite: bool = True,
        fast_jvp: bool = True,
        forward_module=None,
        reducer=None,
    ):
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient must be one of {META_GRADIENTS}, got {meta_gradient!r}")
        self.module = module
        self.weight_net = weight_net
        self.criterion = criterion
        self.optimizer = optimizer
        self.meta_optimizer = meta_optimizer
        self.meta_gradient = meta_gradient
        self.normalize_weights = bool(normalize_weights)
        self.detach_weight_input = bool(detach_weight_input)
        self.autocast_dtype = autocast_dtype
        self.fd_epsilon = float(fd_epsilon)
        self.check_finite = bool(check_finite)
        self.fast_jvp = bool(fast_jvp)
        self.forward_module = forward_module
        self.reducer = reducer

        named = dict(module.named_parameters())
        self.virtual_names = select_parameter_names(module, meta_params)
        self.virtual_params = [named[n] for n in self.virtual_names]
        virtual = set(self.virtual_names)
        self.frozen_names = [n for n in named if n not in virtual]
        self._frozen_params = [named[n] for n in self.frozen_names]
        self._group_of = parameter_groups(optimizer, self.virtual_names, self.virtual_params)
        # Hooks on the real forward (head capture, primal recording) need the eager module.
        eager = forward_module is None
        self.head_name, self.head = find_head(module, self.virtual_names) if eager else (None, None)
        if self.head is not None:
            prefix = self.head_name + "."
            self._head_keys = [n[len(prefix):] for n in self.virtual_names]
        self._weight_params = [p for p in weight_net.parameters() if p.requires_grad]
        first = next(weight_net.parameters(), None)
        self._weight_dtype = first.dtype if first is not None else torch.float32
        self.uses_labels = bool(getattr(weight_net, "uses_labels", False))
        self._multi_call = isinstance(optimizer, torch.optim.LBFGS)
        self._buffer_snapshot = None

    # ------------------------------------------------------------------ small utilities
    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _learning_rates(self):
        groups = self.optimizer.param_groups
        return [groups[g]["lr"] for g in self._group_of]

    def _buffer_copies(self):
        # Every forward other than the real one runs on copies, so running statistics (and
        # any other buffer a module updates in place) see exactly one forward per step.
        return {n: b.clone() for n, b in self.module.named_buffers()}

    def _frozen(self):
        return {n: p.detach() for n, p in zip(self.frozen_names, self._frozen_params)}

    def _head_state(self, params: dict):
        """The head's parameters (full names -> its own unprefixed names) and copies of its
        buffers: the head-alone forwards must not update its running statistics."""
        state = {n: b.clone() for n, b in self.head.named_buffers()}
        state.update({k: params[n] for k, n in zip(self._head_keys, self.virtual_names)})
        return state

    def _reduce_sum(self, tensors):
        if self.reducer is not None:
            self.reducer.sum_(tensors)
        return tensors

    def _per_sample(self, logits, y):
        losses = self.criterion(logits, y)
        if losses.ndim != 1 or losses.shape[0] != logits.shape[0]:
            raise ValueError(
                "the criterion must return one loss per sample (reduction='none'); got shape "
                f"{tuple(losses.shape)} for a batch of {logits.shape[0]}"
            )
        # Reduced-precision losses (autocast) are promoted so weights and similarities are
        # accumulated in full precision.
        if losses.dtype in (torch.float16, torch.bfloat16):
            losses = losses.float()
        return losses

    def weights(self, losses: torch.Tensor, y: torch.Tensor, detach: bool = True) -> torch.Tensor:
        """V(L; Θ) per sample; the input is the loss (detached unless ``detach=False``) and,
        for a class-aware weight net, the labels."""
        inputs = (losses.detach() if detach else losses).unsqueeze(1).to(self._weight_dtype)
        out = self.weight_net(inputs, y) if self.uses_labels else self.weight_net(inputs)
        return out.reshape(-1).to(losses.dtype)

    def _rng_state(self, device):
        # Always recorded: a random draw need not come from an nn.Dropout module (F.dropout in
        # forward, stochastic depth), and a replay that misses one gives a wrong gradient
        # without any error. The state is a few kilobytes.
        state = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
        return state

    def _set_rng_state(self, state, device):
        if state is None:
            return
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)

    def _raise_if_nonfinite(self, named_tensors: dict):
        """One device sync for all checks; name the culprit only when something failed."""
        if not self.check_finite:
            return
        flags = [torch.isfinite(t).all() for t in named_tensors.values()]
        if bool(torch.stack(flags).all()):
            return
        bad = [name for name, ok in zip(named_tensors, flags) if not bool(ok)]
        raise NonFiniteError(bad[0], "non-finite " + ", ".join(bad))

    # ------------------------------------------------------------------ the real forward
    def _uses_head_shortcut(self) -> bool:
        # The unrolled oracle always takes the plain path, so tests compare two independent
        # computations.
        return self.head is not None and self.meta_gradient != "unrolled"

    def _records_primals(self) -> bool:
        """Whether the real forward records outputs for the JVP to reuse (exact mode's
        full-model JVP, eager, full precision)."""
        return (self.fast_jvp and self.meta_gradient == "exact" and self.head is None
                and self.autocast_dtype is None and self.forward_module is None)

    def _real_forward(self, x):
        return call_module(self.module if self.forward_module is None else self.forward_module, x)

    def _compiled_context(self):
        """A compiled backward may not donate buffers here: the train graph serves two backward
        passes (retain_graph), which donated buffers would break. The setting is read when the
        backward is compiled, so it covers the whole step."""
        config = getattr(getattr(torch, "_functorch", None), "config", None)
        if self.forward_module is None or config is None or not hasattr(config, "donated_buffer"):
            return contextlib.nullcontext()
        return config.patch(donated_buffer=False)

    def forward_train(self, x, y, *, record: bool = False) -> TrainForward:
        """The one real forward at w: logits and per-sample losses (with graph).

        ``record=True`` (used when the weight net is updated) keeps what the meta-gradient
        reuses: the head's input for the head shortcut, convolution and pool outputs for the
        fast JVP, the RNG state for replaying dropout.
        """
        device = y.device
        rng_state = self._rng_state(device) if record else None
        captured, head_rng = [], []
        hooks = []
        if record and self._uses_head_shortcut():
            hooks.append(self.head.register_forward_pre_hook(lambda _m, _inputs: head_rng.append(self._rng_state(device))))
            hooks.append(self.head.register_forward_hook(
                lambda _m, inputs, output: captured.append((inputs[0], output, head_rng[-1])) if len(inputs) == 1 else None
            ))
        recorder = _PrimalRecorder() if record and self._records_primals() else None
        try:
            with self._autocast(device), (recorder or contextlib.nullcontext()):
                logits = self._real_forward(x)
            losses = self._per_sample(logits, y)
        finally:
            for hook in hooks:
                hook.remove()
        head_input = head_rng_state = None
        if captured and captured[-1][1] is logits:  # the head's output is the model's output
            head_input, head_rng_state = captured[-1][0].detach(), captured[-1][2]
        return TrainForward(logits, losses, rng_state, head_input, None if recorder is None else recorder.records,
                            head_rng_state)

    # ------------------------------------------------------------------ the meta-gradient
    def _surrogate(self, losses, y, similarity):
        """Returns (c, T): the virtual-step coefficients c_j (values) and a function of Θ whose
        gradient is Σ_j s_j ∇_Θ c_j(Θ) (see the module docstring); ``similarity`` is a
        callable c -> s, called once c is known (the virtual step needs c, s needs ŵ)."""
        point = losses.detach()
        with torch.enable_grad():
            if self.detach_weight_input:
                # V does not see l as a variable: ∂P/∂l_j = V_j and ∂S/∂l_j = 0, no autograd needed
                v = self.weights(point, y)
                P, A, B = (v * point).sum(), v, None
            else:
                point.requires_grad_(True)
                v = self.weights(point, y, detach=False)
                P, B = (v * point).sum(), None
                (A,) = torch.autograd.grad(P, point, create_graph=True)
            if self.normalize_weights:
                S = v.sum()
                if not self.detach_weight_input:
                    B = torch.autograd.grad(S, point, create_graph=True, allow_unused=True)[0]
                    B = torch.zeros_like(point) if B is None else B
        if not self.normalize_weights:
            (count,) = self._reduce_sum([torch.tensor(float(len(point)), device=point.device, dtype=A.dtype)])
            coefficients = (A / count).detach()
            s = similarity(coefficients)
            return coefficients, (s * A).sum() / count
        totals = torch.stack([P.detach(), S.detach()])
        self._reduce_sum([totals])
        P_all, S_all = totals[0], batch_total(totals[1])
        if B is None:  # S does not depend on the losses: the P and Q_B terms vanish
            coefficients = (A / S_all).detach()
            s = similarity(coefficients)
            q_A = (s * A).sum()
            (Q_A,) = self._reduce_sum([q_A.detach()])
            return coefficients, q_A / S_all - (Q_A / S_all**2) * S
        coefficients = (A / S_all - P_all * B / S_all**2).detach()
        s = similarity(coefficients)
        q_A, q_B = (s * A).sum(), (s * B).sum()
        q = torch.stack([q_A.detach(), q_B.detach()])
        self._reduce_sum([q])
        Q_A, Q_B = q[0], q[1]
        surrogate = (q_A / S_all - (Q_A / S_all**2) * S - (Q_B / S_all**2) * P
                     - (P_all / S_all**2) * q_B + (2 * P_all * Q_B / S_all**3) * S)
        return coefficients, surrogate

    def compute_meta_gradient(self, forward: TrainForward, x, y, x_meta, y_meta):
        """Write ∇_Θ L^meta(ŵ(Θ)) into the weight net's ``.grad``; return the meta loss.

        ``forward`` is :meth:`forward_train`'s record of ``(x, y)`` (its graph is kept for the
        real step's backward).
        """
        device = y.device
        lrs = self._learning_rates()
        if self.meta_gradient == "unrolled":
            return self._unrolled(forward.losses, y, x_meta, y_meta, lrs, device)

        state = {}

        def similarity(coefficients):
            # ∇_w R = Σ_j c_j ∇L_j: one backward through the kept train graph (retain_graph:
            # the same graph serves the real step's backward, no third forward).
            virtual = (coefficients * forward.losses).sum()
            grads = list(torch.autograd.grad(virtual, self.virtual_params, retain_graph=True, allow_unused=True))
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.virtual_params, grads)]
            self._reduce_sum(grads)
            with torch.no_grad():
                # one fused kernel for p − α·g (instead of a product then a difference)
                w_hat = {name: torch.add(p, g, alpha=-lr).requires_grad_(True)
                         for name, p, g, lr in zip(self.virtual_names, self.virtual_params, grads, lrs)}
            del grads
            meta_loss = self._meta_loss(w_hat, x_meta, y_meta, device)
            if self.reducer is not None:
                # this process's share of the global mean: its sum over the global count (meta
                # shards may differ in size; a mean of per-process means would weight them equally)
                n_local = float(y_meta.shape[0])
                (n_all,) = self._reduce_sum([torch.tensor([n_local], device=device, dtype=meta_loss.dtype)])
                meta_loss = meta_loss * (n_local / n_all[0])
            meta_grads = list(torch.autograd.grad(meta_loss, list(w_hat.values()), allow_unused=True))
            meta_grads = [torch.zeros_like(w_hat[n]) if g is None else g for n, g in zip(self.virtual_names, meta_grads)]
            if self.reducer is not None:
                self.reducer.sum_(meta_grads + [meta_loss.detach().reshape(1)])
            state["meta_loss"] = meta_loss.detach()
            with torch.no_grad():
                tangents = {name: g * lr for name, g, lr in zip(self.virtual_names, meta_grads, lrs)}
            del meta_grads, w_hat
            rng_after = self._rng_state(device)
            self._set_rng_state(forward.rng_state, device)
            try:
                if self.meta_gradient == "exact":
                    s = self._jvp(x, y, forward, tangents, device)
                else:
                    s = self._finite_difference(x, y, forward, tangents, device)
            finally:
                self._set_rng_state(rng_after, device)
            return s.detach()

        _, surrogate = self._surrogate(forward.losses, y, similarity)
        self.meta_optimizer.zero_grad(set_to_none=True)
        (-surrogate).backward()
        self._reduce_weight_net_grads()
        return state["meta_loss"]

    def _reduce_weight_net_grads(self):
        if self.reducer is None:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._weight_params]
        self.reducer.sum_(grads)
        for p, g in zip(self._weight_params, grads):
            p.grad = g

    def _meta_loss(self, w_hat, x_meta, y_meta, device):
        # With meta_params="last" (or any subset) the frozen parameters enter detached, so the
        # meta forward records autograd graph only from the first virtual parameter on.
        state = {**self._frozen(), **w_hat, **self._buffer_copies()}
        with self._autocast(device):
            meta_logits = call_module(self.module, x_meta, state)
        return self._per_sample(meta_logits, y_meta).mean()

    def _jvp(self, x, y, forward, tangents, device):
        # no_grad: forward-mode AD does not need (or build) a reverse graph.
        with warnings.catch_warnings(), torch.no_grad(), fwAD.dual_level():
            # torch loads its forward-AD decompositions through the deprecated torch.jit.script
            # on first use; that warning is torch's, not the user's business.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            duals = {n: fwAD.make_dual(p.detach(), tangents[n]) for n, p in zip(self.virtual_names, self.virtual_params)}
            if forward.head_input is not None:
                # The head's output is the model's output: differentiate the head alone.
                self._set_rng_state(forward.head_rng_state, device)
                with self._autocast(device):
                    out = functional_call(self.head, self._head_state(duals), (forward.head_input,))
            else:
                state = {**self._frozen(), **duals, **self._buffer_copies()}
                fast = _FastJvp(forward.primals) if self.fast_jvp else contextlib.nullcontext()
                with self._autocast(device), fast:
                    out = call_module(self.module, x, state)
            losses = self._per_sample(out, y)
            tangent = fwAD.unpack_dual(losses).tangent
        forward.primals = None  # never keep activations past the meta-gradient
        if tangent is None:  # the losses do not depend on the virtual parameters
            return torch.zeros_like(losses)
        return tangent

    def _finite_difference(self, x, y, forward, tangents, device):
        norm = torch.sqrt(sum((t.float() ** 2).sum() for t in tangents.values()))
        params = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.virtual_params))
        eps = self.fd_epsilon * (params.clamp_min(1.0) / norm.clamp_min(1e-12))
        outs = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                shifted = {n: p.detach() + sign * eps * tangents[n] for n, p in zip(self.virtual_names, self.virtual_params)}
                with self._autocast(device):
                    if forward.head_input is not None:  # only the head moves: forward the head alone
                        self._set_rng_state(forward.head_rng_state, device)
                        out = functional_call(self.head, self._head_state(shifted), (forward.head_input,))
                    else:
                        self._set_rng_state(forward.rng_state, device)
                        out = call_module(self.module, x, {**self._frozen(), **shifted, **self._buffer_copies()})
                outs.append(self._per_sample(out, y))
        return (outs[0] - outs[1]) / (2 * eps)

    def _unrolled(self, losses, y, x_meta, y_meta, lrs, device):
        weights = self.weights(losses, y, detach=self.detach_weight_input)
        virtual = weighted_loss(weights, losses, self.normalize_weights)
        grads = torch.autograd.grad(virtual, self.virtual_params, create_graph=True, retain_graph=True, allow_unused=True)
        w_hat = {name: (p - lr * g if g is not None else p)
                 for name, p, g, lr in zip(self.virtual_names, self.virtual_params, grads, lrs)}
        meta_loss = self._meta_loss(w_hat, x_meta, y_meta, device)
        theta_grads = torch.autograd.grad(meta_loss, self._weight_params, allow_unused=True)
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self._weight_params, theta_grads):
            p.grad = torch.zeros_like(p) if g is None else g.detach()
        return meta_loss.detach()

    # ------------------------------------------------------------------ the step
    def _snapshot(self, update_weight_net: bool):
        """What a step may change before its last check: restored if a check fails."""
        buffers = [b for b in self.module.buffers()]
        if buffers:
            if self._buffer_snapshot is None:
                self._buffer_snapshot = [b.clone() for b in buffers]
            else:  # one fused copy into storage kept from step to step
                torch._foreach_copy_(self._buffer_snapshot, buffers)
        snap = {"buffers": self._buffer_snapshot}
        if update_weight_net:
            # the weight net is small: plain clones of its parameters and optimizer state
            snap["weight_net"] = [p.detach().clone() for p in self.weight_net.parameters()]
            snap["meta_optimizer"] = {
                p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                for p, st in self.meta_optimizer.state.items()
            }
        if self._multi_call:  # a closure optimizer changes the weights between its evaluations
            snap["module"] = {n: p.detach().clone() for n, p in self.module.named_parameters()}
            snap["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        return snap

    def _restore(self, snap):
        with torch.no_grad():
            if snap["buffers"]:
                torch._foreach_copy_(list(self.module.buffers()), snap["buffers"])
            if "module" in snap:
                for n, p in self.module.named_parameters():
                    p.copy_(snap["module"][n])
        if "weight_net" in snap:
            with torch.no_grad():
                for p, saved in zip(self.weight_net.parameters(), snap["weight_net"]):
                    p.copy_(saved)
            self.meta_optimizer.state.clear()
            self.meta_optimizer.state.update(snap["meta_optimizer"])
            self.meta_optimizer.zero_grad(set_to_none=True)
        if "optimizer" in snap:
            self.optimizer.load_state_dict(snap["optimizer"])
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, x, y, x_meta=None, y_meta=None, *, update_weight_net: bool = True, uniform: bool = False,
             on_grad_computed: Callable[[], None] | None = None) -> StepResult:
        """One step of Algorithm 1 (steps 5-7); with ``update_weight_net=False`` only Eq. 5.

        Parameters
        ----------
        x, y : Tensor (x may be a dict of tensors)
            Train batch (already on the device); ``y`` holds class indices.
        x_meta, y_meta : Tensor
            Meta batch; required when ``update_weight_net``.
        update_weight_net : bool, default=True
            Whether to do the virtual step and weight-net update (``meta_interval``).
        uniform : bool, default=False
            Weight every sample 1 (plain training, e.g. during a warm-up); implies no
            weight-net update.
        on_grad_computed : callable, optional
            Called after the classifier gradient is computed and before the optimizer steps
            (for gradient clipping and similar hooks).
        """
        update_weight_net = update_weight_net and not uniform
        if update_weight_net and (x_meta is None or y_meta is None):
            raise ValueError("a meta batch is required to update the weight net")
        self.module.train()
        self.weight_net.train()
        snap = self._snapshot(update_weight_net) if self.check_finite else None
        try:
            with self._compiled_context():
                return self._step(x, y, x_meta, y_meta, update_weight_net, uniform, on_grad_computed)
        except NonFiniteError:
            if snap is not None:
                self._restore(snap)
            raise

    def _step(self, x, y, x_meta, y_meta, update_weight_net, uniform, on_grad_computed):
        forward = self.forward_train(x, y, record=update_weight_net)
        meta_loss = None
        if update_weight_net:
            meta_loss = self.compute_meta_gradient(forward, x, y, x_meta, y_meta)
            theta_grads = [p.grad for p in self._weight_params if p.grad is not None]
            self._raise_if_nonfinite({
                "train loss": forward.losses.detach(),
                "meta loss": meta_loss,
                "weight-net gradient": torch.stack(torch._foreach_norm(theta_grads)) if theta_grads else meta_loss,
            })
            self.meta_optimizer.step()
        with torch.no_grad():
            weights = torch.ones_like(forward.losses) if uniform else self.weights(forward.losses, y)
        # The real step's objective Σ_j c_j L_j(w) with c fixed from Θ_new (Eq. 5); its
        # coefficients are normalised over the whole (global) batch.
        with torch.no_grad():
            if self.normalize_weights:
                (total,) = self._reduce_sum([weights.sum().reshape(1)])
                coefficients = weights / batch_total(total)
            else:
                (count,) = self._reduce_sum([torch.tensor([float(len(weights))], device=weights.device)])
                coefficients = weights / count
        calls = [0]
        first = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            if calls[0] == 0:
                losses = forward.losses  # the first evaluation reuses the train graph
            else:  # LBFGS-like optimizers re-evaluate at the moved weights
                with self._autocast(y.device):
                    losses = self._per_sample(self._real_forward(x), y)
            calls[0] += 1
            loss = (coefficients * losses).sum()
            loss.backward()
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            value = torch.stack([loss.detach().float(), torch.tensor(float(len(losses)), device=loss.device)])
            if self.reducer is not None:  # the gradient and the loss of the global batch
                self.reducer.sum_(grads + [value])
            first.setdefault("value", value)
            if self.check_finite:
                self._raise_if_nonfinite({
                    "train loss": losses.detach(),
                    "sample weights": weights,
                    "classifier gradient": torch.stack(torch._foreach_norm(grads)) if grads else loss.detach(),
                })
            if on_grad_computed is not None:
                on_grad_computed()
            # the global batch's loss: a line search (LBFGS) must decide the same on every process
            return value[0] if self.reducer is not None else loss.detach()

        self.optimizer.step(closure)
        loss, n = first["value"]
        return StepResult(logits=forward.logits.detach(), losses=forward.losses.detach(), weights=weights,
                          loss=loss, meta_loss=meta_loss, n=n)
