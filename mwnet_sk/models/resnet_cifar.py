"""CIFAR ResNets (He et al., 2016) as used by the official Meta-Weight-Net code.

The networks follow Section 4.2 of "Deep Residual Learning for Image Recognition":
a 3x3 stem convolution with 16 channels, three stages of ``n`` BasicBlocks with
widths 16/32/64 (stride 2 at the start of stages 2 and 3), global average pooling
and a linear classifier, for a depth of ``6n + 2`` layers. Shortcuts that change
shape use *option A*: the input is subsampled with stride 2 (``x[:, :, ::2, ::2]``)
and the missing channels are zero-padded, so shortcuts carry no parameters.
Convolutions and the classifier are initialised with Kaiming-normal weights.

Every model ends with ``self.fc(self.forward_features(x))``: ``fc`` is the last
registered submodule with parameters and its output is the model output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._head import FcHead

__all__ = [
    "CifarResNet",
    "BasicBlock",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


class _ShortcutA(nn.Module):
    """Parameter-free option-A shortcut: strided subsampling plus channel zero-padding.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels (``>= in_planes``).
    stride : int
        Spatial subsampling factor.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError("option-A shortcut cannot reduce the number of channels")
        self.stride = int(stride)
        pad = planes - in_planes
        self.pad_front = pad // 2
        self.pad_back = pad - pad // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` spatially and zero-pad its channels.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, in_planes, H, W)``.

        Returns
        -------
        torch.Tensor
            Tensor of shape ``(N, planes, ceil(H / stride), ceil(W / stride))``.
        """
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_front or self.pad_back:
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels.
    stride : int, default=1
        Stride of the first convolution (and of the shortcut's subsampling).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, in_planes, H, W)``.

        Returns
        -------
        torch.Tensor
            Output of shape ``(N, planes, H / stride, W / stride)``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FcHead, nn.Module):
    """ResNet of depth ``6n + 2`` for 32x32 images (He et al., 2016, option-A shortcuts).

    Parameters
    ----------
    depth : int, default=32
        Number of weighted layers; must be of the form ``6n + 2`` (20, 32, 44, 56,
        110, ...).
    num_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Number of input image channels.

    Attributes
    ----------
    fc : torch.nn.Linear
        The classifier, ``Linear(64, num_classes)``; the output of :meth:`forward`
        is exactly ``self.fc(self.forward_features(x))``.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 2`` with ``n >= 1``.

    Notes
    -----
    Any input size works (global average pooling is adaptive); the architecture is
    designed for 32x32 inputs. ResNet-32 with 10 classes has 464,154 parameters.
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CifarResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110); got {depth!r}"
            )
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self._in_planes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the penultimate (pooled) features.

        Parameters
        ----------
        x : torch.Tensor
            Float images of shape ``(N, in_channels, H, W)``.

        Returns
        -------
        torch.Tensor
            Features of shape ``(N, 64)``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(self.avgpool(out), 1)


def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (3 x 3 BasicBlocks, ~0.27M parameters).

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    **kwargs
        Passed to :class:`CifarResNet` (e.g. ``in_channels``).

    Returns
    -------
    CifarResNet
        A freshly initialised network.
    """
    return CifarResNet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (3 x 5 BasicBlocks, 464,154 parameters for 10 classes).

    This is the network of the Meta-Weight-Net paper's class-imbalance and
    flip-noise experiments.

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    **kwargs
        Passed to :class:`CifarResNet` (e.g. ``in_channels``).

    Returns
    -------
    CifarResNet
        A freshly initialised network.
    """
    return CifarResNet(32, num_classes, **kwargs)


def resnet44(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (3 x 7 BasicBlocks, ~0.66M parameters).

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    **kwargs
        Passed to :class:`CifarResNet` (e.g. ``in_channels``).

    Returns
    -------
    CifarResNet
        A freshly initialised network.
    """
    return CifarResNet(44, num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (3 x 9 BasicBlocks, ~0.85M parameters).

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    **kwargs
        Passed to :class:`CifarResNet` (e.g. ``in_channels``).

    Returns
    -------
    CifarResNet
        A freshly initialised network.
    """
    return CifarResNet(56, num_classes, **kwargs)


def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (3 x 18 BasicBlocks, ~1.7M parameters).

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    **kwargs
        Passed to :class:`CifarResNet` (e.g. ``in_channels``).

    Returns
    -------
    CifarResNet
        A freshly initialised network.
    """
    return CifarResNet(110, num_classes, **kwargs)
