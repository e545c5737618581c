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
(the authors' 2019 class-imbalance script) c_j also carries V's slope, V'(L_j) L_j/n. Either way
the chain rule through step 1 gives Eq. 6 of the paper in first-order terms:

    ∇_Θ L^meta(ŵ) = −Σ_j s_j ∇_Θ c_j(Θ),   s_j = Σ_k α_k ⟨∇_{w_k} L^meta(ŵ), ∇_{w_k} L_j(w)⟩,

(with detached input, −∇_Θ R(V(L; Θ), s)), and the vector s is one forward-mode
Jacobian-vector product of the per-sample loss vector at w along u = α ⊙ ∇L^meta(ŵ). No second-order graph is ever built; this is
``meta_gradient="exact"``. ``"unrolled"`` differentiates through step 1 with
``create_graph=True`` (the paper's code) and is kept as the reference oracle;
``"finite_difference"`` approximates s by central differences along u.

BatchNorm: only the forward of the train batch at w runs on the module itself and updates its
running statistics; every other forward (meta batch at ŵ, JVP, finite differences) runs
through :func:`torch.func.functional_call` on copies of the buffers, in train mode (batch
statistics, like the paper's code), so the real running statistics after a step are exactly
those one forward of the train batch produces. Dropout masks of the train batch are replayed
for the JVP by restoring the RNG state, so the exact path equals the unrolled one.

Speed (all exact; docs/performance.md has the measurements). An exact step costs the real
forward, the virtual backward, the meta forward and backward, the JVP and the real backward.
The JVP is the one part torch does wastefully, so ``fast_jvp`` (default) makes it cheaper:
its primal values are the real forward's, so convolution and max-pool outputs recorded there
are reused and only tangents are computed, and training-mode batch norm gets a fused tangent
rule (both in :mod:`mwnet_sk.core._fast_jvp`). When only a head that ends the model takes the virtual step
(``meta_params="last"``), the JVP and the finite differences run the head alone on its
captured input; the meta forward records graph only from the head on (frozen parameters enter
detached).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from ._fast_jvp import _FastJvp, _PrimalRecorder

__all__ = [
    "BilevelStep",
    "StepResult",
    "NonFiniteError",
    "META_GRADIENTS",
    "weighted_loss",
    "select_parameter_names",
    "PRECISIONS",
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


def weighted_loss(weights: torch.Tensor, losses: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """R(v, l): the batch mean of v·l (Eq. 1), or sum(v·l)/sum(v) when ``normalize``."""
    if normalize:
        return (weights * losses).sum() / weights.sum().clamp_min(1e-8)
    return (weights * losses).mean()


def select_parameter_names(module: nn.Module, meta_params) -> list[str]:
    """Resolve ``meta_params`` ("all", "last", or names) to parameter names of ``module``.

    ``"last"`` is every trainable parameter of the last registered submodule that owns
    trainable parameters directly (the classifier head in most architectures).
    """
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the module has no trainable parameters")
    if meta_params is None or (isinstance(meta_params, str) and meta_params == "all"):
        return trainable
    if isinstance(meta_params, str) and meta_params == "last":
        owner = None
        for mod_name, mod in module.named_modules():
            if any(p.requires_grad for p in mod.parameters(recurse=False)):
                owner = mod_name
        prefix = f"{owner}." if owner else ""
        last = [
            prefix + n
            for n, p in module.get_submodule(owner).named_parameters(recurse=False)
            if p.requires_grad
        ]
        return last
    if isinstance(meta_params, str):
        raise ValueError(
            f"meta_params must be 'all', 'last' or a list of parameter names, got {meta_params!r}"
        )
    names = list(meta_params)
    unknown = [n for n in names if n not in trainable]
    if unknown:
        raise ValueError(
            f"meta_params names {unknown} are not trainable parameters of the module; "
            f"available: {trainable}"
        )
    if not names:
        raise ValueError("meta_params is an empty list")
    return names


@dataclass
class StepResult:
    """What one step produced (all tensors detached)."""

    logits: torch.Tensor
    losses: torch.Tensor
    weights: torch.Tensor
    loss: torch.Tensor
    meta_loss: torch.Tensor | None


class BilevelStep:
    """Performs Meta-Weight-Net steps on a classifier, a weight net and their optimizers.

    Built once per fit; it resolves parameter names and the classifier-head shortcut once so
    that a step has little Python overhead.

    Parameters
    ----------
    module : nn.Module
        The classifier f(x; w), returning logits.
    weight_net : nn.Module
        V(loss; Θ), mapping ``(n, 1)`` losses to ``(n, 1)`` weights.
    criterion : callable
        ``criterion(logits, y)`` returning the per-sample loss vector of shape ``(n,)``.
    optimizer : torch.optim.Optimizer
        The classifier's optimizer; its current per-group ``lr`` is the α of Eq. 3.
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
        Raise :class:`NonFiniteError` before any parameter is written with a non-finite value.
    fast_jvp : bool, default=True
        For ``meta_gradient="exact"``: use cheaper forward-mode rules for training-mode
        batch norm, and reuse the real forward's convolution and max-pool outputs in the JVP
        forward instead of recomputing them (only the tangents are computed). Exact either
        way; ``False`` uses torch's generic forward AD throughout (slower; for comparison or
        for a model the fast path would not suit).
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
        self._records = None

        named = dict(module.named_parameters())
        self.virtual_names = select_parameter_names(module, meta_params)
        self.virtual_params = [named[n] for n in self.virtual_names]
        virtual = set(self.virtual_names)
        self.frozen_names = [n for n in named if n not in virtual]
        self._frozen_params = [named[n] for n in self.frozen_names]
        self._group_of = self._map_parameter_groups(optimizer, self.virtual_names, self.virtual_params)
        self.has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())
        self.head_name, self.head = self._find_head(module, self.virtual_names)
        if self.head is not None:
            prefix = self.head_name + "."
            self._head_keys = [n[len(prefix):] for n in self.virtual_names]
        self._captured = None
        self._weight_dtype = next(weight_net.parameters()).dtype

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _map_parameter_groups(optimizer, names, params):
        group_of = []
        index = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
        for name, p in zip(names, params):
            if id(p) not in index:
                raise ValueError(
                    f"parameter {name!r} takes the virtual step but is not updated by the "
                    "classifier optimizer, so its step size α is undefined"
                )
            group_of.append(index[id(p)])
        return group_of

    @staticmethod
    def _find_head(module, virtual_names):
        """The submodule whose parameters are exactly the virtual ones, if any (e.g. ``fc``).

        A head with dropout inside is not used: the shortcuts below feed it a captured input
        and would not replay its dropout masks.
        """
        if len(virtual_names) == len(list(module.parameters())):
            return None, None
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in virtual_names}
        if len(owners) != 1:
            return None, None
        owner = owners.pop()
        if owner == "":
            return None, None
        head = module.get_submodule(owner)
        own = {f"{owner}.{n}" for n, p in head.named_parameters() if p.requires_grad}
        if own != set(virtual_names):
            return None, None
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in head.modules()):
            return None, None
        return owner, head

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
        """Full parameter names of the head -> the head's own (unprefixed) names."""
        return {k: params[n] for k, n in zip(self._head_keys, self.virtual_names)}

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

    def _weights(self, losses: torch.Tensor, detach: bool = True) -> torch.Tensor:
        inputs = (losses.detach() if detach else losses).unsqueeze(1).to(self._weight_dtype)
        return self.weight_net(inputs).squeeze(1).to(losses.dtype)

    def _loss_coefficients(self, losses: torch.Tensor) -> torch.Tensor:
        """c(Θ) = ∂R(V(l; Θ), l)/∂l at l = L(w), with a graph to Θ (see the module docstring)."""
        point = losses.detach().requires_grad_(True)
        with torch.enable_grad():
            weights = self._weights(point, detach=self.detach_weight_input)
            objective = weighted_loss(weights, point, self.normalize_weights)
            (coefficients,) = torch.autograd.grad(objective, point, create_graph=True)
        return coefficients

    def _rng_state(self, device):
        if not self.has_dropout:
            return None
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

    # ------------------------------------------------------------------ the step
    def _capture_head(self, _module, inputs, output):
        if len(inputs) == 1:
            self._captured = (inputs[0], output)

    def _uses_head_shortcut(self) -> bool:
        # The unrolled oracle always takes the plain path, so tests compare two independent
        # computations.
        return self.head is not None and self.meta_gradient != "unrolled"

    def _records_primals(self) -> bool:
        """Whether the real forward should record outputs for the JVP to reuse.

        Only the exact mode's full-model JVP uses them (with the head shortcut the JVP
        differentiates the head alone). Under autocast the fast path is left to torch.
        """
        return (
            self.fast_jvp
            and self.meta_gradient == "exact"
            and self.head is None
            and self.autocast_dtype is None
        )

    def forward_train(self, x, y, *, record: bool = False):
        """The one real forward at w: logits and per-sample losses (with graph).

        ``record=True`` (used by :meth:`step` when the weight net is updated) keeps the
        convolution and max-pool outputs for the JVP of the exact meta-gradient to reuse.
        """
        device = y.device
        self._rng_before = self._rng_state(device)
        hook = None
        self._captured = None
        self._records = None
        if self._uses_head_shortcut():
            hook = self.head.register_forward_hook(self._capture_head)
        recorder = _PrimalRecorder() if record and self._records_primals() else None
        try:
            with self._autocast(device), (recorder or contextlib.nullcontext()):
                logits = self.module(x)
            losses = self._per_sample(logits, y)
        finally:
            if hook is not None:
                hook.remove()
        if recorder is not None:
            self._records = recorder.records
        return logits, losses

    def _head_input(self, logits):
        """The train batch's (detached) head input when the head's output is the model's output."""
        captured, self._captured = self._captured, None
        if captured is not None and captured[1] is logits:
            return captured[0].detach()
        return None

    def meta_gradient_(self, x, y, logits, losses, x_meta, y_meta):
        """Compute ∇_Θ L^meta(ŵ(Θ)) into the weight net's ``.grad``; return the meta loss.

        ``logits``/``losses`` come from :meth:`forward_train` on ``(x, y)`` and keep their graph.
        """
        device = y.device
        lrs = self._learning_rates()
        if self.meta_gradient == "unrolled":
            return self._unrolled(losses, x_meta, y_meta, lrs, device)

        head_input = self._head_input(logits)
        # ∇_w R = Σ_j c_j ∇L_j: the virtual step needs c's value, the meta-gradient its graph to Θ.
        coefficients = self._loss_coefficients(losses)
        virtual = (coefficients.detach() * losses).sum()
        # retain_graph: the same train graph serves the real step's backward (no third forward).
        grads = torch.autograd.grad(virtual, self.virtual_params, retain_graph=True, allow_unused=True)
        w_hat = {}
        with torch.no_grad():
            for name, p, g, lr in zip(self.virtual_names, self.virtual_params, grads, lrs):
                # one fused kernel for p − α·g (instead of a product then a difference)
                w_hat[name] = (torch.add(p, g, alpha=-lr) if g is not None else p.detach().clone()).requires_grad_(True)
        meta_loss = self._meta_loss(w_hat, x_meta, y_meta, device)
        meta_grads = torch.autograd.grad(meta_loss, list(w_hat.values()), allow_unused=True)
        with torch.no_grad():
            tangents = {
                name: (g * lr if g is not None else torch.zeros_like(w_hat[name]))
                for name, g, lr in zip(self.virtual_names, meta_grads, lrs)
            }
        del meta_grads, w_hat
        rng_after = self._rng_state(device)
        self._set_rng_state(self._rng_before, device)
        try:
            if self.meta_gradient == "exact":
                similarity = self._jvp(x, y, head_input, tangents, device)
            else:
                similarity = self._finite_difference(x, y, head_input, tangents, device)
        finally:
            self._set_rng_state(rng_after, device)

        surrogate = -(coefficients * similarity.detach()).sum()
        self.meta_optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        return meta_loss.detach()

    def _meta_loss(self, w_hat, x_meta, y_meta, device):
        # With meta_params="last" (or any subset) the frozen parameters enter detached, so the
        # meta forward records autograd graph only from the first virtual parameter on: the
        # frozen body runs graph-free already. (Running the body under no_grad and redoing the
        # head on a hooked input measured no faster on a CPU, so the simple path stays.)
        state = {**self._frozen(), **w_hat, **self._buffer_copies()}
        with self._autocast(device):
            meta_logits = functional_call(self.module, state, (x_meta,))
        return self._per_sample(meta_logits, y_meta).mean()

    def _jvp(self, x, y, head_input, tangents, device):
        # no_grad: forward-mode AD does not need (or build) a reverse graph.
        with warnings.catch_warnings(), torch.no_grad(), fwAD.dual_level():
            # torch loads its forward-AD decompositions through the deprecated torch.jit.script
            # on first use; that warning is torch's, not the user's business.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            duals = {
                n: fwAD.make_dual(p.detach(), tangents[n])
                for n, p in zip(self.virtual_names, self.virtual_params)
            }
            if head_input is not None:
                # The head's output is the model's output: differentiate the head alone.
                with self._autocast(device):
                    out = functional_call(self.head, self._head_state(duals), (head_input,))
            else:
                state = {**self._frozen(), **duals, **self._buffer_copies()}
                records, self._records = self._records, None
                fast = _FastJvp(records) if self.fast_jvp else contextlib.nullcontext()
                with self._autocast(device), fast:
                    out = functional_call(self.module, state, (x,))
            losses = self._per_sample(out, y)
            tangent = fwAD.unpack_dual(losses).tangent
        if tangent is None:  # the losses do not depend on the virtual parameters
            return torch.zeros_like(losses)
        return tangent

    def _finite_difference(self, x, y, head_input, tangents, device):
        norm = torch.sqrt(sum((t.float() ** 2).sum() for t in tangents.values()))
        params = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.virtual_params))
        eps = self.fd_epsilon * (params.clamp_min(1.0) / norm.clamp_min(1e-12))
        rng = self._rng_state(device)
        outs = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                shifted = {
                    n: p.detach() + sign * eps * tangents[n]
                    for n, p in zip(self.virtual_names, self.virtual_params)
                }
                with self._autocast(device):
                    if head_input is not None:  # only the head moves: forward the head alone
                        out = functional_call(self.head, self._head_state(shifted), (head_input,))
                    else:
                        self._set_rng_state(rng, device)
                        state = {**self._frozen(), **shifted, **self._buffer_copies()}
                        out = functional_call(self.module, state, (x,))
                outs.append(self._per_sample(out, y))
        return (outs[0] - outs[1]) / (2 * eps)

    def _unrolled(self, losses, x_meta, y_meta, lrs, device):
        self._captured = None
        weights = self._weights(losses, detach=self.detach_weight_input)
        virtual = weighted_loss(weights, losses, self.normalize_weights)
        grads = torch.autograd.grad(
            virtual, self.virtual_params, create_graph=True, retain_graph=True, allow_unused=True
        )
        w_hat = {
            name: (p - lr * g if g is not None else p)
            for name, p, g, lr in zip(self.virtual_names, self.virtual_params, grads, lrs)
        }
        meta_loss = self._meta_loss(w_hat, x_meta, y_meta, device)
        theta = [p for p in self.weight_net.parameters() if p.requires_grad]
        theta_grads = torch.autograd.grad(meta_loss, theta, allow_unused=True)
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(theta, theta_grads):
            p.grad = torch.zeros_like(p) if g is None else g.detach()
        return meta_loss.detach()

    def step(
        self,
        x,
        y,
        x_meta=None,
        y_meta=None,
        *,
        update_weight_net: bool = True,
        on_grad_computed: Callable[[], None] | None = None,
    ) -> StepResult:
        """One step of Algorithm 1 (steps 5-7); with ``update_weight_net=False`` only Eq. 5.

        Parameters
        ----------
        x, y : Tensor
            Train batch (already on the device); ``y`` holds class indices.
        x_meta, y_meta : Tensor
            Meta batch; required when ``update_weight_net``.
        update_weight_net : bool, default=True
            Whether to do the virtual step and weight-net update (``meta_interval``).
        on_grad_computed : callable, optional
            Called after the classifier gradient is computed and before the optimizer steps
            (for gradient clipping and similar hooks).
        """
        if update_weight_net and (x_meta is None or y_meta is None):
            raise ValueError("a meta batch is required to update the weight net")
        self.module.train()
        self.weight_net.train()
        logits, losses = self.forward_train(x, y, record=update_weight_net)
        meta_loss = None
        if update_weight_net:
            try:
                meta_loss = self.meta_gradient_(x, y, logits, losses, x_meta, y_meta)
            finally:
                self._records = None  # never keep activations past the meta-gradient
            theta_grads = [p.grad for p in self.weight_net.parameters() if p.grad is not None]
            self._raise_if_nonfinite({
                "train loss": losses.detach(),
                "meta loss": meta_loss,
                "weight-net gradient": torch.stack(torch._foreach_norm(theta_grads)),
            })
            self.meta_optimizer.step()
        self._captured = None
        with torch.no_grad():
            weights = self._weights(losses)
        loss = weighted_loss(weights, losses, self.normalize_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.check_finite:
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            self._raise_if_nonfinite({
                "train loss": losses.detach(),
                "sample weights": weights,
                "classifier gradient": torch.stack(torch._foreach_norm(grads)) if grads else loss.detach(),
            })
        if on_grad_computed is not None:
            on_grad_computed()
        self.optimizer.step()
        return StepResult(
            logits=logits.detach(),
            losses=losses.detach(),
            weights=weights,
            loss=loss.detach(),
            meta_loss=meta_loss,
        )

