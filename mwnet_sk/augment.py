"""Vectorised, device-side batch augmentation for image tensors.

When the whole (uint8) training set lives on the accelerator and batches are
indexed from it, augmentation has to run per batch on the device, without any
per-sample Python. :class:`BatchAugment` does the standard CIFAR recipe that way:

- ``train()`` mode: random crop from the padded image (one random offset per
  sample) and random horizontal flip (one coin per sample), both done by a single
  advanced-indexing gather; then conversion to float and normalisation.
- ``eval()`` mode: conversion to float and normalisation only (plus a centre crop
  when ``crop_size`` is smaller than the image).

Padding is applied to the *raw* pixels, before normalisation: zeros by default, exactly
like ``torchvision.transforms.RandomCrop(32, padding=4)`` on a PIL image followed by
``ToTensor()`` and ``Normalize(mean, std)``; or a mirror image of the border
(``padding_mode="reflect"``), as the official Meta-Weight-Net code pads.

The statistics come from the one table of the package, :data:`mwnet_sk.datasets.NORMALIZATION`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets._catalog import NORMALIZATION, dataset_key

__all__ = [
    "BatchAugment",
    "cifar_augment",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

CIFAR10_MEAN, CIFAR10_STD = NORMALIZATION["cifar10"]
"""CIFAR-10 per-channel mean and standard deviation over all training pixels, as in the
official MW-Net code: ``(125.3, 123.0, 113.9) / 255`` and ``(63.0, 62.1, 66.7) / 255``
(the true pixel statistics, not the frequently copied ``(0.2023, 0.1994, 0.2010)``).
"""
CIFAR100_MEAN, CIFAR100_STD = NORMALIZATION["cifar100"]
"""CIFAR-100 per-channel mean and standard deviation of the training images."""
IMAGENET_MEAN, IMAGENET_STD = NORMALIZATION["imagenet"]
"""ImageNet statistics (torchvision's pretrained models)."""

_LAYOUTS = ("auto", "NCHW", "NHWC")
_PADDING_MODES = ("constant", "reflect")
_CIFAR = ("cifar10", "cifar100")


def _is_int(value) -> bool:
    """An integer (Python or numpy), not a bool or a float that ``int()`` would truncate."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2 or not all(_is_int(v) and v >= 1 for v in value):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints; got {value!r}")
    return tuple(int(v) for v in value)


class BatchAugment(nn.Module):
    """Random crop + horizontal flip + normalisation of a whole batch, on its device.

    Parameters
    ----------
    mean : float or sequence of float
        Per-channel mean in [0, 1] units (one value per channel, or a single
        value for all channels).
    std : float or sequence of float
        Per-channel standard deviation in [0, 1] units.
    crop_padding : int, default=4
        Padding added on each side before the random crop (train mode only).
    padding_mode : {"constant", "reflect"}, default="constant"
        ``"constant"`` pads with black pixels (zeros before normalisation), like
        torchvision's ``RandomCrop(padding=4)``; ``"reflect"`` mirrors the image at its border
        without repeating the edge pixel (``torch.nn.functional.pad(..., mode="reflect")``),
        as the official Meta-Weight-Net code does. Reflection needs ``crop_padding`` smaller
        than the image.
    flip : bool, default=True
        Whether to flip each sample horizontally with probability 1/2 (train mode only).
    crop_size : int or (int, int), default=None
        Output spatial size ``(h, w)``; ``None`` keeps the input size. In train mode
        the crop window is drawn uniformly among all positions inside the padded
        image; in eval mode a centre crop is taken (no padding).
    layout : {"auto", "NCHW", "NHWC"}, default="auto"
        Layout of the input batch. ``"auto"`` reads the input as NHWC when its last
        dimension equals the number of channels ``C`` and its dimension 1 does not,
        and as NCHW otherwise. ``C`` is ``len(mean)`` when several values are
        given, else 1 or 3. Pass the layout explicitly when images can be ambiguous
        (e.g. 3x3 images with 3 channels). A 3-d input ``(N, H, W)`` is read as
        single-channel.
    generator : torch.Generator, default=None
        Source of randomness; must live on the device of the batches. ``None`` uses
        torch's default generator for that device, so results are reproducible
        under ``torch.manual_seed``.
    dtype : torch.dtype, default=torch.float32
        Output floating dtype.

    Notes
    -----
    Input: uint8 batches are scaled by 1/255; floating batches are assumed to be in
    [0, 1] already. Output: a contiguous ``(N, C, h, w)`` tensor of ``dtype``, on the
    input's device, equal to ``(x / 255 - mean) / std``.

    The random crop and the flip are one gather with per-sample index arithmetic:
    a row index ``dy_n + i`` and a column index ``dx_n + j`` (or ``dx_n + w - 1 - j``
    for flipped samples) into the padded image are built for every sample ``n``, and
    the pixels are picked by advanced indexing (zero padding pads the batch once;
    reflection maps the indices back into the image instead). Per call the
    module draws, in this order, ``N`` row offsets, ``N`` column offsets and ``N``
    flip coins. There is no Python loop over samples.

    Examples
    --------
    >>> aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD)
    >>> x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)  # NHWC, as in CIFAR files
    >>> aug(x).shape
    torch.Size([8, 3, 32, 32])
    >>> aug.eval()(x).shape
    torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        crop_padding: int = 4,
        flip: bool = True,
        crop_size: int | tuple[int, int] | None = None,
        layout: str = "auto",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        padding_mode: str = "constant",
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ValueError(f"mean and std have different lengths ({mean_t.numel()} vs {std_t.numel()})")
        if (std_t <= 0).any():
            raise ValueError("std must be positive")
        if not _is_int(crop_padding) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0; got {crop_padding!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}; got {layout!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}; got {padding_mode!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype; got {dtype}")
        self.crop_padding = int(crop_padding)
        self.padding_mode = padding_mode
        self.flip = bool(flip)
        self.crop_size = _pair(crop_size, "crop_size")
        self.layout = layout
        self.generator = generator
        self.dtype = dtype
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    @property
    def num_channels(self) -> int | None:
        """int or None : Number of channels implied by ``mean``/``std`` (None if scalar)."""
        n = max(self.mean.numel(), self.std.numel())
        return n if n > 1 else None

    def extra_repr(self) -> str:
        return (
            f"mean={tuple(round(v, 4) for v in self.mean.tolist())}, "
            f"std={tuple(round(v, 4) for v in self.std.tolist())}, crop_padding={self.crop_padding}, "
            f"padding_mode={self.padding_mode!r}, flip={self.flip}, crop_size={self.crop_size}, "
            f"layout={self.layout!r}"
        )

    def _to_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """Return a (possibly non-contiguous) NHWC view of ``x``."""
        if x.dim() == 3:
            return x.unsqueeze(-1)
        if x.dim() != 4:
            raise ValueError(f"expected a batch of shape (N, C, H, W), (N, H, W, C) or (N, H, W); got {tuple(x.shape)}")
        layout = self.layout
        if layout == "auto":
            c = self.num_channels
            if c is None:
                nhwc = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
            else:
                nhwc = x.shape[-1] == c and x.shape[1] != c
            layout = "NHWC" if nhwc else "NCHW"
        return x if layout == "NHWC" else x.permute(0, 2, 3, 1)

    def _randint(self, high: int, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, high, (n,), device=device, generator=self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (train mode) or just convert (eval mode) a batch.

        Parameters
        ----------
        x : torch.Tensor
            uint8 (0-255) or floating ([0, 1]) batch, ``(N, C, H, W)``, ``(N, H, W, C)``
            or ``(N, H, W)``, on any device.

        Returns
        -------
        torch.Tensor
            Normalised batch of shape ``(N, C, h, w)`` and dtype ``self.dtype``.

        Raises
        ------
        ValueError
            If the input's shape, channel count or size does not fit the settings.
        """
        x = self._to_nhwc(x)
        n, h, w, c = x.shape
        if self.num_channels is not None and c != self.num_channels:
            raise ValueError(f"input has {c} channels but mean/std have {self.num_channels}")
        ch, cw = self.crop_size if self.crop_size is not None else (h, w)
        device = x.device
        if self.training and (self.crop_padding > 0 or self.flip or (ch, cw) != (h, w)):
            p = self.crop_padding
            if ch > h + 2 * p or cw > w + 2 * p:
                raise ValueError(f"crop_size {(ch, cw)} exceeds the padded image size {(h + 2 * p, w + 2 * p)}")
            reflect = self.padding_mode == "reflect" and p > 0
            if reflect and (p >= h or p >= w):
                raise ValueError(f"reflect padding of {p} needs images larger than {p} pixels; got {(h, w)}")
            if p > 0 and not reflect:
                x = F.pad(x, (0, 0, p, p, p, p))  # NHWC: pad W then H, not C
            dy = self._randint(h + 2 * p - ch + 1, n, device)
            dx = self._randint(w + 2 * p - cw + 1, n, device)
            rows = dy[:, None] + torch.arange(ch, device=device)  # (N, ch), padded coordinates
            cols = torch.arange(cw, device=device).expand(n, cw)  # (N, cw)
            if self.flip:
                flipped = self._randint(2, n, device).bool()
                cols = torch.where(flipped[:, None], cw - 1 - cols, cols)
            cols = dx[:, None] + cols
            if reflect:  # padded coordinates -> the mirrored pixel of the unpadded image
                rows = _reflect(rows - p, h)
                cols = _reflect(cols - p, w)
            batch = torch.arange(n, device=device)[:, None, None]
            x = x[batch, rows[:, :, None], cols[:, None, :]]  # (N, ch, cw, C)
        elif (ch, cw) != (h, w):
            if ch > h or cw > w:
                raise ValueError(f"crop_size {(ch, cw)} exceeds the image size {(h, w)} in eval mode")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, top : top + ch, left : left + cw, :]
        out = x.permute(0, 3, 1, 2)
        if out.dtype == torch.uint8:
            out = out.to(self.dtype) / 255.0
        else:
            out = out.to(self.dtype)
        mean = self.mean.to(device=device, dtype=self.dtype)[:, None, None]
        std = self.std.to(device=device, dtype=self.dtype)[:, None, None]
        return ((out - mean) / std).contiguous()


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices in ``[-size + 1, 2 * size - 2]`` into ``[0, size)`` (edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def cifar_augment(dataset: str = "cifar10", *, normalize: str | None = None, **kwargs) -> BatchAugment:
    """Standard CIFAR training augmentation: pad-4 random crop, flip, normalise.

    Parameters
    ----------
    dataset : {"cifar10", "cifar100"}, default="cifar10"
        The data set, which selects the normalisation statistics of
        :data:`mwnet_sk.datasets.NORMALIZATION` (CIFAR-10: the official MW-Net code's
        ``(125.3, 123.0, 113.9) / 255`` and ``(63.0, 62.1, 66.7) / 255``).
    normalize : {"cifar10", "cifar100"} or None, default=None
        Normalise with another data set's statistics: the official code normalises
        CIFAR-100 with the CIFAR-10 values (``normalize="cifar10"``).
    **kwargs
        Passed to :class:`BatchAugment` (e.g. ``padding_mode="reflect"`` as in the
        official code, ``crop_padding``, ``flip``, ``layout``, ``generator``).

    Returns
    -------
    BatchAugment
        In train mode by default; call ``.eval()`` for test-time conversion.

    Raises
    ------
    ValueError
        If ``dataset`` or ``normalize`` is not a CIFAR data set.

    Examples
    --------
    >>> aug = cifar_augment("cifar100", normalize="cifar10", padding_mode="reflect")
    >>> aug.padding_mode
    'reflect'
    """
    key = dataset_key(dataset, _CIFAR, "dataset")
    stats = dataset_key(normalize, _CIFAR, "normalize") if normalize is not None else key
    mean, std = NORMALIZATION[stats]
    return BatchAugment(mean, std, **kwargs)
