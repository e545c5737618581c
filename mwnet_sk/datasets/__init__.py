"""Data sets of the Meta-Weight-Net experiments.

* CIFAR-10 / CIFAR-100 from the official python batches (:func:`load_cifar`), the standard
  transforms and the paper's noisy / long-tailed benchmarks (:func:`make_cifar_benchmark`).
* CIFAR-10N / CIFAR-100N human noisy labels (:func:`load_cifar_n`).
* Clothing1M (:class:`Clothing1M`).
* :class:`ImageArrayDataset`, a picklable torch ``Dataset`` over uint8 image arrays.
* :data:`NORMALIZATION`, the one table of per-channel statistics, and :func:`dataset_key`,
  the one rule for spelling data-set names.

Every dataset returns ``(x, y)`` pairs with an int ``y`` and exposes ``.targets``.
"""

from ._catalog import NORMALIZATION, dataset_key, normalization
from ._utils import ImageArrayDataset
from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFARBenchmark,
    cifar_test_transform,
    cifar_train_transform,
    load_cifar,
    make_cifar_benchmark,
)
from .cifar_n import CIFAR10N_KEYS, CIFAR100N_KEYS, load_cifar_n
from .clothing1m import (
    CLOTHING1M_CLASSES,
    CLOTHING1M_MEAN,
    CLOTHING1M_STD,
    Clothing1M,
    clothing1m_eval_transform,
    clothing1m_paper_transform,
    clothing1m_train_transform,
)

__all__ = [
    "CIFAR10N_KEYS",
    "CIFAR100N_KEYS",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFARBenchmark",
    "CLOTHING1M_CLASSES",
    "CLOTHING1M_MEAN",
    "CLOTHING1M_STD",
    "Clothing1M",
    "ImageArrayDataset",
    "NORMALIZATION",
    "dataset_key",
    "normalization",
    "cifar_test_transform",
    "cifar_train_transform",
    "clothing1m_eval_transform",
    "clothing1m_paper_transform",
    "clothing1m_train_transform",
    "load_cifar",
    "load_cifar_n",
    "make_cifar_benchmark",
]
