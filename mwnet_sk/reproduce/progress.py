"""Moved: :class:`~mwnet_sk.callbacks.EpochProgress` lives in :mod:`mwnet_sk.callbacks`.

This module keeps ``from mwnet_sk.reproduce.progress import EpochProgress`` (which earlier
examples used) working, with a ``DeprecationWarning``.
"""

import warnings

from ..callbacks import EpochProgress

__all__ = ["EpochProgress"]

warnings.warn(
    "mwnet_sk.reproduce.progress is deprecated: import EpochProgress from mwnet_sk.callbacks",
    DeprecationWarning,
    stacklevel=2,
)
