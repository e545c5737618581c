"""Classifier networks for Meta-Weight-Net experiments.

Every model's output is exactly ``model.fc(model.forward_features(x))``: the
classifier is named ``fc``, it is the last registered submodule with parameters,
and it is the final operation of ``forward``. Code that only needs the last layer
(e.g. a "last layer" meta-gradient mode) can rely on this.

Models
------
- :class:`CifarResNet` and ``resnet20/32/44/56/110``: CIFAR ResNets with option-A
  shortcuts (ResNet-32 is the paper's network for class imbalance and flip noise).
- :class:`WideResNet` and :func:`wrn28_10`: pre-activation Wide ResNets (uniform noise).
- :class:`ResNet50` and :func:`resnet50`: torchvision ResNet-50 with offline-only
  pretrained weights (Clothing1M).
- :class:`SmallCNN` and :class:`MLP`: small networks for benchmarks and tabular data.

Use :func:`get_model` to build one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .resnet50 import ResNet50, load_resnet50_state_dict, resnet50
from .resnet_cifar import BasicBlock, CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from .small import MLP, SmallCNN
from .wide_resnet import WideBasicBlock, WideResNet, wrn28_10

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "MLP",
    "MODEL_NAMES",
    "ResNet50",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "get_model",
    "load_resnet50_state_dict",
    "model_key",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet50",
    "wrn28_10",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "wrn28_10": wrn28_10,
    "resnet50": resnet50,
    "small_cnn": SmallCNN,
    "mlp": MLP,
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted by :func:`get_model`."""


def model_key(name: str) -> str:
    """The registry spelling of a model name: lower case, ``-`` read as ``_``.

    Raises
    ------
    ValueError
        If the name is not a known model (the message lists the known names).

    Examples
    --------
    >>> model_key("WRN28-10")
    'wrn28_10'
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return key


def get_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name : str
        One of ``"resnet20"``, ``"resnet32"``, ``"resnet44"``, ``"resnet56"``,
        ``"resnet110"``, ``"wrn28_10"``, ``"resnet50"``, ``"small_cnn"``, ``"mlp"``
        (case-insensitive; ``-`` is read as ``_``).
    **kwargs
        Passed to the constructor, e.g. ``num_classes=100`` for the CNNs, or
        ``n_features=64, num_classes=10`` for ``"mlp"``.

    Returns
    -------
    torch.nn.Module
        The freshly initialised model.

    Raises
    ------
    ValueError
        If ``name`` is not a known model name (the message lists the known names).

    Examples
    --------
    >>> model = get_model("resnet32", num_classes=100)
    >>> model.fc.out_features
    100
    """
    return _REGISTRY[model_key(name)](**kwargs)
