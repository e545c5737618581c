"""The authors' training settings, one named preset per published script.

The three scripts of the official code share the algorithm (a plain-SGD virtual step of all
parameters with the classifier's scheduled learning rate, the weight net trained on the meta
loss at the virtual parameters, then the real step with the updated, detached weights) and
differ in how they weight the losses and train the weight net:

| preset | weight-net input | weighting | weight-net optimizer |
| --- | --- | --- | --- |
| `mwnet-2019-noise` | detached loss | Σv·l / Σv | SGD 1e-3, momentum 0.9, Nesterov, weight decay 5e-4 |
| `mwnet-2019-imbalance` | the loss, with its gradient | Σv·l / Σv | SGD 1e-5, momentum 0.9, Nesterov, weight decay 5e-4 |
| `mwnet-2020` | detached loss | mean (Eq. 1) | Adam 1e-3, weight decay 1e-4 |

``mwnet-2019-noise`` is ``train_WRN-28-10_Meta_PGC.py`` (the paper's Tables 2 and 3),
``mwnet-2019-imbalance`` the script of ``Meta-weight-net_class-imbalance`` (Table 1) and
``mwnet-2020`` the later ``MW-Net.py``. The classifier is SGD with momentum 0.9 and weight
decay 5e-4 (Nesterov in the 2019 scripts), learning rate 0.1, batch size 100 and a meta batch
of the same size; the meta set is held out of training. All three pad CIFAR images by
reflection before the random crop and normalise CIFAR-100 with the CIFAR-10 statistics
(:attr:`Protocol.augment`).

A preset is a set of :class:`~mwnet_sk.MetaWeightClassifier` keyword arguments; every setting
is explicit (the weight net's weight decay too), so a preset does not change when an
estimator default does.

Examples
--------
>>> from mwnet_sk import MetaWeightClassifier
>>> from mwnet_sk.models import resnet32
>>> from mwnet_sk.reproduce.protocols import get_protocol
>>> preset = get_protocol("mwnet-2019-noise")
>>> clf = MetaWeightClassifier(resnet32, module__num_classes=10, max_epochs=60,
...                            **preset.estimator_params)
>>> clf.normalize_weights, clf.meta_lr
(True, 0.001)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..core.weight_net import WeightNet

__all__ = ["PROTOCOLS", "Protocol", "get_protocol"]


@dataclass(frozen=True)
class Protocol:
    """The settings of one of the authors' scripts.

    Attributes
    ----------
    name : str
        Preset name, e.g. ``"mwnet-2019-noise"``.
    script : str
        The authors' script the settings are read from.
    description : str
        One line on what the script is for.
    estimator_params : mapping
        :class:`~mwnet_sk.MetaWeightClassifier` keyword arguments (read-only).
    augment : mapping
        :func:`mwnet_sk.augment.cifar_augment` keyword arguments of the script's CIFAR
        augmentation (read-only).
    """

    name: str
    script: str
    description: str
    estimator_params: Mapping[str, Any] = field(default_factory=dict)
    augment: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "estimator_params", MappingProxyType(dict(self.estimator_params)))
        object.__setattr__(self, "augment", MappingProxyType(dict(self.augment)))

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-ready values (classes by their qualified names)."""

        def plain(value):
            if isinstance(value, type):
                return f"{value.__module__}.{value.__qualname__}"
            return value

        return {
            "name": self.name,
            "script": self.script,
            "estimator_params": {k: plain(v) for k, v in self.estimator_params.items()},
            "augment": dict(self.augment),
        }


# The parts every script shares: the classifier's SGD, batch sizes, one weight-net update per
# step through every parameter, the paper's 1-100-1 weight net, the meta set held out of training,
# weighting from the first step (no warm-up), predictions that are the network's own.
_SHARED = {
    "optimizer": torch.optim.SGD,
    "lr": 0.1,
    "optimizer__momentum": 0.9,
    "optimizer__weight_decay": 5e-4,
    "batch_size": 100,
    "meta_batch_size": 100,
    "meta_interval": 1,
    "meta_params": "all",
    "weight_net": WeightNet,
    "weight_net__hidden_size": 100,
    "train_on_meta": False,
    "warmup_epochs": 0,
    "target_prior": "train",
}
# The scripts pad by reflection and normalise with the CIFAR-10 statistics, CIFAR-100 too.
_AUGMENT = {"padding_mode": "reflect", "normalize": "cifar10"}
_SGD_2019 = {
    "optimizer__nesterov": True,
    "normalize_weights": True,
    "meta_optimizer": torch.optim.SGD,
    "meta_optimizer__momentum": 0.9,
    "meta_optimizer__nesterov": True,
    "meta_optimizer__weight_decay": 5e-4,
}

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "mwnet-2019-noise",
            "xjtushujun/meta-weight-net: train_WRN-28-10_Meta_PGC.py",
            "noisy labels, the paper's Tables 2 and 3",
            {**_SHARED, **_SGD_2019, "meta_lr": 1e-3, "detach_weight_input": True},
            _AUGMENT,
        ),
        Protocol(
            "mwnet-2019-imbalance",
            "xjtushujun/Meta-weight-net_class-imbalance: meta-weight-net-class-imbalance.py",
            "long-tailed CIFAR, the paper's Table 1 (the weight net's input keeps its gradient)",
            {**_SHARED, **_SGD_2019, "meta_lr": 1e-5, "detach_weight_input": False},
            _AUGMENT,
        ),
        Protocol(
            "mwnet-2020",
            "xjtushujun/meta-weight-net: MW-Net.py",
            "the authors' later single script: mean weighting, Adam for the weight net",
            {
                **_SHARED,
                "optimizer__nesterov": False,
                "normalize_weights": False,
                "detach_weight_input": True,
                "meta_optimizer": torch.optim.Adam,
                "meta_lr": 1e-3,
                "meta_optimizer__weight_decay": 1e-4,
            },
            _AUGMENT,
        ),
    )
}
"""The presets by name."""


def get_protocol(name: str | Protocol) -> Protocol:
    """A preset by name.

    Raises
    ------
    ValueError
        Unknown name (the message lists the presets).
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
