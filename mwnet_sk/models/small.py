"""Small networks for fast benchmarks, tests and tabular data.

Both models end with ``self.fc(self.forward_features(x))`` and cast their input to
the dtype of their parameters, so float64 arrays coming from scikit-learn work
directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._head import FcHead

__all__ = ["SmallCNN", "MLP"]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(FcHead, nn.Module):
    """A small conv-BN-ReLU network for small images (32x32, but any size works).

    Architecture: ``[conv-BN-ReLU](w) -> maxpool -> [conv-BN-ReLU](2w) -> maxpool ->
    [conv-BN-ReLU](4w) -> [conv-BN-ReLU](4w) -> adaptive avg-pool -> fc``.

    Parameters
    ----------
    num_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Number of input channels.
    width : int, default=32
        Base width ``w``.

    Attributes
    ----------
    fc : torch.nn.Linear
        The classifier ``Linear(4 * width, num_classes)``.

    Notes
    -----
    Inputs of another dtype (e.g. float64) are cast to the parameters' dtype. Images
    must already be scaled/normalised floats (see :class:`mwnet_sk.augment.BatchAugment`).
    The two max-pools need inputs of at least 4x4 pixels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        w = int(width)
        self.num_classes = num_classes
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.fc = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the pooled features.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, H, W)``.

        Returns
        -------
        torch.Tensor
            Features of shape ``(N, 4 * width)``.
        """
        return self.features(x.to(self.fc.weight.dtype))


class MLP(FcHead, nn.Module):
    """Multi-layer perceptron for tabular data (e.g. scikit-learn's digits, 64 features).

    Each hidden layer is ``Linear -> [BatchNorm1d] -> ReLU -> [Dropout]``, followed by
    the classifier ``fc``.

    Parameters
    ----------
    n_features : int
        Number of input features. Inputs with more than two dimensions are
        flattened from dimension 1, so e.g. ``(N, 8, 8)`` images work with
        ``n_features=64``.
    num_classes : int
        Number of output logits.
    hidden : int or sequence of int, default=(128,)
        Hidden layer sizes; ``()`` gives multinomial logistic regression.
    dropout : float, default=0.0
        Dropout probability after each hidden activation.
    batchnorm : bool, default=False
        Whether to insert ``BatchNorm1d`` after each hidden linear layer.

    Attributes
    ----------
    fc : torch.nn.Linear
        The classifier ``Linear(hidden[-1] or n_features, num_classes)``.

    Notes
    -----
    Inputs of another dtype (e.g. float64 numpy arrays) are cast to the parameters'
    dtype.
    """

    def __init__(
        self,
        n_features: int,
        num_classes: int,
        hidden: int | Sequence[int] = (128,),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(hidden, int):
            hidden = (hidden,)
        hidden = tuple(int(h) for h in hidden)
        self.n_features = int(n_features)
        self.num_classes = int(num_classes)
        layers: list[nn.Module] = [nn.Flatten(1)]
        d = self.n_features
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(d, self.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the last hidden representation.

        Parameters
        ----------
        x : torch.Tensor
            Inputs of shape ``(N, n_features)`` (or anything flattening to it).

        Returns
        -------
        torch.Tensor
            Features of shape ``(N, hidden[-1])`` (``(N, n_features)`` if no hidden layers).
        """
        return self.features(x.to(self.fc.weight.dtype))

