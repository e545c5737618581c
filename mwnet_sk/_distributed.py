"""Data-parallel training: the process group, the sharding of batches, and the sums across
processes. The only module of the package that imports ``torch.distributed``.

A script launched by ``torchrun`` (or ``accelerate launch``, which runs torchrun) has
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment. ``fit`` then joins the process
group those describe (initialising it with gloo on CPU and NCCL on CUDA, each process on its
``LOCAL_RANK`` GPU, unless the script did so itself) and trains data-parallel: every process
holds a replica and its part of each batch; :class:`Reducer` adds the quantities the exact
meta-gradient needs over the processes (see :mod:`mwnet_sk.core.bilevel`), so the run equals a
single process with the global batch.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["GlobalBatchNorm", "Reducer", "current_reducer", "global_batch_norm", "join_launched_group",
           "shard_slicer"]


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join_launched_group(device) -> "Reducer | None":
    """Join (initialising when needed) the process group the launcher describes; None in a
    single process. On CUDA each process uses its ``LOCAL_RANK`` GPU."""
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched():
            return None
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current_reducer()


def current_reducer() -> "Reducer | None":
    """The reducer of the active process group, or None in a single process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return Reducer()


class Reducer:
    """Sums and means over the processes of the default group, coalesced per dtype and device
    (one collective per call and dtype instead of one per tensor)."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensors):
        """Add every tensor of the list over the processes, in place."""
        groups: dict = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n
        return tensors

    def mean_(self, tensors):
        self.sum_(tensors)
        for t in tensors:
            t.div_(self.world_size)
        return tensors

    def broadcast_(self, tensors, src: int = 0):
        """Every process gets ``src``'s values, in place."""
        for t in tensors:
            dist.broadcast(t, src)
        return tensors

    def broadcast_int(self, value: int, src: int = 0) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.broadcast(t, src)
        return int(t.item())

    def barrier(self):
        dist.barrier()


def shard_slicer(rank: int, world_size: int):
    """Positions of a global batch -> this process's part: every ``world_size``-th item from
    ``rank`` on (``DistributedSampler``'s rule, applied within each global batch)."""

    def slicer(positions):
        return positions[rank::world_size]

    return slicer


# ---------------------------------------------------------------------- global batch norm
class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes, differentiable in both modes.

    With y = Σ_s x_s on every process and the objective Σ_r L_r(y), the gradient of x_s is
    Σ_r ∂L_r/∂y: the sum of the incoming gradients over the processes (what torch's
    SyncBatchNorm does in its backward). The tangent of y is the sum of the tangents.
    """

    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad)  # itself differentiable (second-order gradients)

    @staticmethod
    def jvp(ctx, tangent):
        tangent = tangent.clone()
        dist.all_reduce(tangent)
        return tangent


_BATCH_NORM_PARAMS = list(inspect.signature(F.batch_norm).parameters)


class GlobalBatchNorm(TorchFunctionMode):
    """Training-mode batch norm with the statistics of the global batch (all processes).

    Every ``nn.BatchNorm*d`` reaches torch-function modes as ``F.batch_norm``; in training mode
    this mode computes the per-channel mean and (biased) variance over every process's part of
    the batch with two all-reduces (the first carries the row count), normalises with them, and updates the running statistics
    with the global mean and the unbiased global variance, as one process with the whole batch
    does. It is built from differentiable operations and :class:`_AllReduceSum`, so the
    backward (the real and the virtual step), the meta gradient at the virtual weights, and the
    forward-mode JVP of the exact meta-gradient all see the global statistics. Unlike torch's
    ``SyncBatchNorm`` it runs on CPU (gloo) as well as CUDA (NCCL). Evaluation-mode batch norm
    (running statistics) is left to torch.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        bound = dict(zip(_BATCH_NORM_PARAMS, args), **kwargs)
        if not bound.get("training", False):  # evaluation mode: running statistics, torch's kernel
            return func(*args, **kwargs)
        x, running_mean, running_var = bound["input"], bound.get("running_mean"), bound.get("running_var")
        weight, bias = bound.get("weight"), bound.get("bias")
        momentum, eps = bound.get("momentum", 0.1), bound.get("eps", 1e-5)
        # half precision accumulates in float32, as torch's kernels do
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        dims = [d for d in range(x.ndim) if d != 1]
        shape = [1, -1] + [1] * (x.ndim - 2)
        # the row count rides with the sums: one all-reduce and no host synchronisation
        count = xf.new_full((1,), float(x.numel() // x.shape[1]))
        total = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        # two passes (mean, then the centred squares), as exact as one process's kernel
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + eps).view(shape)
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        return out.to(x.dtype)


def global_batch_norm(enabled: bool):
    """:class:`GlobalBatchNorm` while a data-parallel fit with ``sync_batchnorm=True`` runs a
    training step; a no-op context otherwise (one process has the global batch anyway)."""
    if enabled and current_reducer() is not None:
        return GlobalBatchNorm()
    return contextlib.nullcontext()
