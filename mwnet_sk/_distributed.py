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

import os

import torch
import torch.distributed as dist

__all__ = ["Reducer", "current_reducer", "join_launched_group", "shard_slicer"]


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
