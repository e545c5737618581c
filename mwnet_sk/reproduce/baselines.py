"""The baselines of the paper's tables: plain training and plain training fine-tuned on the meta set.

Both are built by :func:`make_plain_baseline`, the one place that says what plain training is
(a skorch ``NeuralNetClassifier`` with the cross-entropy loss on the biased training data,
the paper's "BaseModel" / "Cross Entropy"). In-memory arrays and tensors are batched by
tensor indexing with the library's :class:`mwnet_sk._data.BatchIterator`, the data path of
:class:`~mwnet_sk.MetaWeightClassifier`, so timings of the two compare like with like.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from skorch import NeuralNetClassifier
from torch import nn
from torch.utils.data import Dataset

from .._data import INPUT_KEY, ArrayDataset, BatchIterator, is_array_like

__all__ = ["finetune", "make_plain_baseline"]


class _Transformed(nn.Module):
    """``module(transform(x))``; the transform follows the module's train / eval mode.

    With a :class:`~mwnet_sk.augment.BatchAugment` the baseline is augmented during ``fit``
    and only normalised in ``predict``, exactly as Meta-Weight-Net with ``batch_transform``.
    """

    def __init__(self, transform: nn.Module, module: nn.Module):
        super().__init__()
        self.transform = transform
        self.module = module

    def forward(self, x):
        return self.module(self.transform(x))


class _PlainClassifier(NeuralNetClassifier):
    """skorch's classifier with the library's tensor-indexed batches for in-memory data."""

    def __init__(self, module, *, random_state: int | None = None, **kwargs):
        self.random_state = random_state
        super().__init__(module, **kwargs)

    def initialize(self):
        super().initialize()
        # the training order has its own generator: fits repeat, and torch's global one is untouched
        self.shuffle_generator_ = torch.Generator()
        if self.random_state is not None:
            self.shuffle_generator_.manual_seed(int(self.random_state))
        else:
            self.shuffle_generator_.seed()
        return self

    def get_dataset(self, dataset, y=None):
        if isinstance(dataset, Dataset) or not is_array_like(dataset):
            return super().get_dataset(dataset, y)
        X = dataset if isinstance(dataset, torch.Tensor) else torch.as_tensor(np.asarray(dataset))
        if y is not None:
            y = y.long() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, dtype=np.int64))
            y = y.to(X.device)
        return ArrayDataset(X, y)

    def get_iterator(self, dataset, training=False):
        kwargs = self.get_params_for("iterator_train" if training else "iterator_valid")
        batch_size = kwargs.pop("batch_size", self.batch_size)
        batch_size = len(dataset) if batch_size == -1 else batch_size
        shuffle = kwargs.pop("shuffle", training)  # training batches are shuffled by default
        generator = self.shuffle_generator_ if training else None
        if BatchIterator.supports(dataset) and not kwargs:
            return BatchIterator(dataset, batch_size, shuffle=shuffle, generator=generator)
        iterator = self.iterator_train if training else self.iterator_valid
        kwargs.setdefault("generator", generator)
        return iterator(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def infer(self, x, **fit_params):
        if isinstance(x, dict) and INPUT_KEY in x:  # a BatchIterator batch: inputs and row numbers
            x = x[INPUT_KEY]
        return super().infer(x, **fit_params)


def make_plain_baseline(
    module: nn.Module,
    *,
    n_classes: int,
    batch_transform: nn.Module | None = None,
    random_state: int | None = None,
    **params: Any,
) -> NeuralNetClassifier:
    """Plain training: cross-entropy on the biased training data (the tables' baseline).

    Parameters
    ----------
    module : torch.nn.Module
        The network (an instance; trained in place).
    n_classes : int
        Number of classes; labels are the integers ``0 .. n_classes - 1``.
    batch_transform : torch.nn.Module or None
        Applied to every input batch in front of the network, in the network's train / eval
        mode (e.g. :func:`mwnet_sk.augment.cifar_augment`).
    random_state : int or None
        Seeds the order of the training batches.
    **params
        skorch ``NeuralNetClassifier`` parameters (``lr``, ``optimizer``, ``optimizer__*``,
        ``batch_size``, ``max_epochs``, ``device``, ``callbacks``, ``iterator_train__*``, ...).

    Returns
    -------
    skorch.NeuralNetClassifier
        Unfitted. ``fit`` takes arrays or tensors (batched by tensor indexing, on the
        tensors' device) or a torch ``Dataset``.
    """
    if batch_transform is not None:
        module = _Transformed(batch_transform, module)
    params.setdefault("train_split", None)
    return _PlainClassifier(
        module,
        criterion=nn.CrossEntropyLoss,
        classes=list(range(int(n_classes))),
        random_state=random_state,
        **params,
    )


def finetune(
    baseline: NeuralNetClassifier,
    X_meta,
    y_meta,
    *,
    epochs: int,
    lr: float,
    optimizer_params: Mapping[str, Any],
    batch_size: int,
    device: str,
    random_state: int | None = None,
) -> NeuralNetClassifier:
    """The paper's "Fine-tuning": a copy of the fitted baseline trained on the clean meta set.

    The paper gives no schedule; the reproduction uses ``epochs`` epochs at a fixed ``lr``
    (the final learning rate of the training schedule), with the baseline's optimizer
    settings and its augmentation (part of the copied module).

    Returns
    -------
    skorch.NeuralNetClassifier
        The fitted copy; the baseline itself is unchanged.
    """
    tuned = make_plain_baseline(
        copy.deepcopy(baseline.module_),
        n_classes=len(baseline.classes),
        random_state=random_state,
        lr=lr,
        batch_size=min(int(batch_size), len(y_meta)),
        max_epochs=int(epochs),
        device=device,
        verbose=0,
        **dict(optimizer_params),
    )
    return tuned.fit(X_meta, y_meta)
