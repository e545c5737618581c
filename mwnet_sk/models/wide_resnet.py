"""Wide residual networks (Zagoruyko & Komodakis, 2016), pre-activation variant.

This is the WRN used by the Meta-Weight-Net paper's uniform-noise experiments
(WRN-28-10). Blocks are BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with an identity
shortcut, or a 1x1 convolution shortcut (no bias) on the pre-activated input when
the shape changes. The network ends with BN-ReLU, global average pooling and the
linear classifier ``fc``; its output is exactly ``self.fc(self.forward_features(x))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._head import FcHead

__all__ = ["WideResNet", "WideBasicBlock", "wrn28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels.
    stride : int
        Stride of the first convolution and of the shortcut.
    dropout : float, default=0.0
        Dropout probability between the two convolutions.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, in_planes, H, W)``.

        Returns
        -------
        torch.Tensor
            Output of shape ``(N, planes, H / stride, W / stride)``.
        """
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        residual = x if self.shortcut is None else self.shortcut(act)
        return out + residual


class WideResNet(FcHead, nn.Module):
    """Pre-activation Wide ResNet WRN-``depth``-``widen_factor`` for 32x32 images.

    Parameters
    ----------
    depth : int, default=28
        Total depth; must satisfy ``(depth - 4) % 6 == 0`` (16, 22, 28, 40, ...).
    widen_factor : int, default=10
        Width multiplier ``k``; stage widths are ``16k, 32k, 64k``.
    num_classes : int, default=10
        Number of output logits.
    dropout : float, default=0.0
        Dropout probability inside each block.
    in_channels : int, default=3
        Number of input image channels.

    Attributes
    ----------
    fc : torch.nn.Linear
        The classifier, ``Linear(64 * widen_factor, num_classes)``.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 4`` with ``n >= 1``.

    Notes
    -----
    WRN-28-10 with 10 classes has 36,479,194 parameters; WRN-16-2 has 691,674.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 16, 28, 40); got {depth!r}")
        if int(widen_factor) < 1:
            raise ValueError(f"widen_factor must be a positive integer; got {widen_factor!r}")
        n = (depth - 4) // 6
        k = int(widen_factor)
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.depth = depth
        self.widen_factor = k
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._make_layer(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._make_layer(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._make_layer(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
                for i in range(n)
            ]
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the penultimate (pooled) features.

        Parameters
        ----------
        x : torch.Tensor
            Float images of shape ``(N, in_channels, H, W)``.

        Returns
        -------
        torch.Tensor
            Features of shape ``(N, 64 * widen_factor)``.
        """
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        return torch.flatten(self.avgpool(out), 1)


def wrn28_10(num_classes: int = 10, dropout: float = 0.0, **kwargs) -> WideResNet:
    """WRN-28-10 (36.5M parameters), the paper's network for uniform label noise.

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    dropout : float, default=0.0
        Dropout probability inside each block.
    **kwargs
        Passed to :class:`WideResNet` (e.g. ``in_channels``).

    Returns
    -------
    WideResNet
        A freshly initialised network.
    """
    return WideResNet(depth=28, widen_factor=10, num_classes=num_classes, dropout=dropout, **kwargs)
