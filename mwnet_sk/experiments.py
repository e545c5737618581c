"""The paper's experiments (Tables 1-4 of Shu et al., 2019) as named configurations, and the
runner shared by the scripts in ``examples/`` and ``mwnet-sk reproduce``.

Every row of the paper's result tables is an :class:`Experiment` in :data:`EXPERIMENTS`,
named like ``table2-cifar10-uniform-40`` (Table 2, CIFAR-10, 40% uniform noise),
``table3-cifar100-flip-20``, ``table1-cifar10-lt-100`` (imbalance factor 100) or
``clothing1m``. An experiment holds the training schedule of Section 4 of the paper (epochs,
learning-rate milestones, learning rates, optimiser, batch size, meta set, network) and the
paper's published accuracies for that row (:attr:`Experiment.paper`, copied from the paper's
tables; mean and standard deviation over 5 runs where the paper gives them).

:func:`run_experiment` trains, on the same data and under the same schedule,

* the plain baseline: a skorch ``NeuralNetClassifier`` with the cross-entropy loss on the
  biased training set (the paper's "BaseModel" / "Cross Entropy");
* optionally the baseline fine-tuned on the clean meta set (the paper's "Fine-tuning"; CIFAR
  only; the paper gives no schedule for it, ours is :data:`FINETUNE_EPOCHS` epochs at the
  final learning rate of the schedule);
* Meta-Weight-Net (:class:`~mwnet_sk.MetaWeightClassifier`, the paper's "Ours"),

and returns a JSON-ready dict with the three test accuracies, the learned weighting curve and
the weights of clean and corrupted samples. :func:`format_results` prints runs in the layout of
the paper's tables with the paper's numbers beside ours.

CIFAR runs use the fast path of the estimator: the uint8 images stay on the device
(``data_on_device=True``) and are cropped, flipped and normalised there per batch
(``batch_transform=cifar_augment(...)``); the meta set is passed as a uint8 pair so it is
augmented the same way, as in the official code.

``smoke=True`` replaces the data by a tiny generated data set in the real file format (CIFAR
python batches, or a Clothing1M folder tree with JPEGs) and the network by a narrow
:class:`~mwnet_sk.models.SmallCNN`: the whole pipeline runs in seconds on a CPU, and its
accuracies mean nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import difflib
import json
import math
import os
import pickle
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skorch.callbacks import Callback
from torch import nn

__all__ = [
    "DataNotFoundError",
    "EXPERIMENTS",
    "FINETUNE_EPOCHS",
    "Experiment",
    "EpochProgress",
    "TABLE_METHODS",
    "TensorBatchIterator",
    "WithTransform",
    "make_estimators",
    "run_many",
    "experiment_names",
    "format_results",
    "get_experiment",
    "run_experiment",
    "save_results",
    "scaled_milestones",
    "write_tiny_cifar",
    "write_tiny_clothing1m",
]

#: Epochs of the "Fine-tuning" baseline on the meta set (our choice; not given in the paper).
FINETUNE_EPOCHS = 10

#: The methods of each of the paper's tables, in the paper's column order.
TABLE_METHODS: dict[int, tuple[str, ...]] = {
    1: ("BaseModel", "Focal Loss", "Class-Balanced", "Fine-tuning", "L2RW", "Ours"),
    2: ("BaseModel", "Reed-Hard", "S-Model", "Self-paced", "Focal Loss", "Co-teaching", "D2L",
        "Fine-tuning", "MentorNet", "L2RW", "GLC", "Ours"),
    3: ("BaseModel", "Reed-Hard", "S-Model", "Self-paced", "Focal Loss", "Co-teaching", "D2L",
        "Fine-tuning", "MentorNet", "L2RW", "GLC", "Ours"),
    4: ("Cross Entropy", "Bootstrapping", "Forward", "S-adaptation", "Joint Optimization",
        "LCCN", "MLNT", "Ours"),
}  # fmt: skip

# Our three runs and the paper's column each corresponds to.
_OURS = ("plain", "finetuned", "mwnet")


def _paper_column(table: int, ours: str) -> str:
    if ours == "plain":
        return "Cross Entropy" if table == 4 else "BaseModel"
    return {"finetuned": "Fine-tuning", "mwnet": "Ours"}[ours]


def _column_title(table: int, ours: str) -> str:
    return {"plain": _paper_column(table, "plain"), "finetuned": "Fine-tuning", "mwnet": "MW-Net"}[ours]


# --------------------------------------------------------------------------- the paper's numbers
# Copied from the paper's tables (test accuracy, %). Table 1: one run per cell (no std given).
# Tables 2 and 3: (mean, std) over 5 runs; None where the paper writes "-" (the method fails).
_T1_IF = (200, 100, 50, 20, 10, 1)
_TABLE1 = {
    "cifar10": {
        "BaseModel": (65.68, 70.36, 74.81, 82.23, 86.39, 92.89),
        "Focal Loss": (65.29, 70.38, 76.71, 82.76, 86.66, 93.03),
        "Class-Balanced": (68.89, 74.57, 79.27, 84.36, 87.49, 92.89),
        "Fine-tuning": (66.08, 71.33, 77.42, 83.37, 86.42, 93.23),
        "L2RW": (66.51, 74.16, 78.93, 82.12, 85.19, 89.25),
        "Ours": (68.91, 75.21, 80.06, 84.94, 87.84, 92.66),
    },
    "cifar100": {
        "BaseModel": (34.84, 38.32, 43.85, 51.14, 55.71, 70.50),
        "Focal Loss": (35.62, 38.41, 44.32, 51.95, 55.78, 70.52),
        "Class-Balanced": (36.23, 39.60, 45.32, 52.59, 57.99, 70.50),
        "Fine-tuning": (38.22, 41.83, 46.40, 52.11, 57.44, 70.72),
        "L2RW": (33.38, 40.23, 44.44, 51.64, 53.73, 64.11),
        "Ours": (37.91, 42.09, 46.74, 54.37, 58.46, 70.37),
    },
}
_TABLE2 = {  # uniform noise, WRN-28-10; columns as TABLE_METHODS[2]
    ("cifar10", 0): ((95.60, 0.22), (94.38, 0.14), (83.79, 0.11), (90.81, 0.34), (95.70, 0.15),
                     (88.67, 0.25), (94.64, 0.33), (95.65, 0.15), (94.35, 0.42), (92.38, 0.10),
                     (94.30, 0.19), (94.52, 0.25)),
    ("cifar10", 40): ((68.07, 1.23), (81.26, 0.51), (79.58, 0.33), (86.41, 0.29), (75.96, 1.31),
                      (74.81, 0.34), (85.60, 0.13), (80.47, 0.25), (87.33, 0.22), (86.92, 0.19),
                      (88.28, 0.03), (89.27, 0.28)),
    ("cifar10", 60): ((53.12, 3.03), (73.53, 1.54), None, (53.10, 1.78), (51.87, 1.19),
                      (73.06, 0.25), (68.02, 0.41), (78.75, 2.40), (82.80, 1.35), (82.24, 0.36),
                      (83.49, 0.24), (84.07, 0.33)),
    ("cifar100", 0): ((79.95, 1.26), (64.45, 1.02), (52.86, 0.99), (59.79, 0.46), (81.04, 0.24),
                      (61.80, 0.25), (66.17, 1.42), (80.88, 0.21), (73.26, 1.23), (72.99, 0.58),
                      (73.75, 0.51), (78.76, 0.24)),
    ("cifar100", 40): ((51.11, 0.42), (51.27, 1.18), (42.12, 0.99), (46.31, 2.45), (51.19, 0.46),
                       (46.20, 0.15), (52.10, 0.97), (52.49, 0.74), (61.39, 3.99), (60.79, 0.91),
                       (61.31, 0.22), (67.73, 0.26)),
    ("cifar100", 60): ((30.92, 0.33), (26.95, 0.98), None, (19.08, 0.57), (27.70, 3.77),
                       (35.67, 1.25), (41.11, 0.30), (38.16, 0.38), (36.87, 1.47), (48.15, 0.34),
                       (50.81, 1.00), (58.75, 0.11)),
}  # fmt: skip
_TABLE3 = {  # flip noise, ResNet-32; columns as TABLE_METHODS[3]
    ("cifar10", 0): ((92.89, 0.32), (92.31, 0.25), (83.61, 0.13), (88.52, 0.21), (93.03, 0.16),
                     (89.87, 0.10), (92.02, 0.14), (93.23, 0.23), (92.13, 0.30), (89.25, 0.37),
                     (91.02, 0.20), (92.04, 0.15)),
    ("cifar10", 20): ((76.83, 2.30), (88.28, 0.36), (79.25, 0.30), (87.03, 0.34), (86.45, 0.19),
                      (82.83, 0.85), (87.66, 0.40), (82.47, 3.64), (86.36, 0.31), (87.86, 0.36),
                      (89.68, 0.33), (90.33, 0.61)),
    ("cifar10", 40): ((70.77, 2.31), (81.06, 0.76), (75.73, 0.32), (81.63, 0.52), (80.45, 0.97),
                      (75.41, 0.21), (83.89, 0.46), (74.07, 1.56), (81.76, 0.28), (85.66, 0.51),
                      (88.92, 0.24), (87.54, 0.23)),
    ("cifar100", 0): ((70.50, 0.12), (69.02, 0.32), (51.46, 0.20), (67.55, 0.27), (70.02, 0.53),
                      (63.31, 0.05), (68.11, 0.26), (70.72, 0.22), (70.24, 0.21), (64.11, 1.09),
                      (65.42, 0.23), (70.11, 0.33)),
    ("cifar100", 20): ((50.86, 0.27), (60.27, 0.76), (45.45, 0.25), (63.63, 0.30), (61.87, 0.30),
                       (54.13, 0.55), (63.48, 0.53), (56.98, 0.50), (61.97, 0.47), (57.47, 1.16),
                       (63.07, 0.53), (64.22, 0.28)),
    ("cifar100", 40): ((43.01, 1.16), (50.40, 1.01), (43.81, 0.15), (53.51, 0.53), (54.13, 0.40),
                       (44.85, 0.81), (51.83, 0.33), (46.37, 0.25), (52.66, 0.56), (50.98, 1.55),
                       (62.22, 0.62), (58.64, 0.47)),
}  # fmt: skip
_TABLE4 = {
    "Cross Entropy": 68.94, "Bootstrapping": 69.12, "Forward": 69.84, "S-adaptation": 70.36,
    "Joint Optimization": 72.23, "LCCN": 73.07, "MLNT": 73.47, "Ours": 73.72,
}  # fmt: skip

_DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "clothing1m": "Clothing1M"}
_MODEL_TITLES = {"wrn28_10": "WRN-28-10", "resnet32": "ResNet-32", "resnet50": "ResNet-50",
                 "small_cnn": "SmallCNN"}  # fmt: skip


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Experiment:
    """One row of one of the paper's result tables, with its training protocol.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"table2-cifar10-uniform-40"``.
    table : int
        The paper's table (1: long-tailed CIFAR, 2: uniform noise, 3: flip noise,
        4: Clothing1M).
    dataset : {"cifar10", "cifar100", "clothing1m"}
    corruption : {"long_tailed", "uniform", "flip2", "real"}
        How the training set is biased. The paper's flip noise sends each class to two
        randomly chosen other classes, ``r / 2`` each: ``"flip2"`` in :mod:`mwnet_sk.noise`.
    noise_rate : float or None
        Corruption probability (Tables 2 and 3).
    imbalance_factor : float or None
        Largest / smallest class size (Table 1).
    model : str
        A :func:`mwnet_sk.models.get_model` name.
    epochs : int
        Training epochs.
    milestones : tuple of int
        Epochs after which the classifier learning rate is divided by 10.
    lr, momentum, weight_decay, batch_size : float, float, float, int
        SGD of the classifier (and of the plain baseline).
    meta_lr : float
        Learning rate of the weight net (fixed; Adam, as in the official code).
    meta_size, n_meta_per_class : int or None
        Size of the clean meta set (total, split evenly over the classes) or per class.
    paper : mapping of str to float or (float, float) or None
        The paper's accuracies for this row, by method name (:data:`TABLE_METHODS`):
        ``(mean, std)`` in Tables 2-3, a single number in Tables 1 and 4, None for "-".
    notes : str
        Where a setting comes from when the paper does not state it.
    """

    name: str
    table: int
    dataset: str
    corruption: str
    model: str
    epochs: int
    milestones: tuple[int, ...]
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 100
    meta_lr: float = 1e-3
    noise_rate: float | None = None
    imbalance_factor: float | None = None
    meta_size: int | None = None
    n_meta_per_class: int | None = None
    paper: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def n_classes(self) -> int:
        return {"cifar10": 10, "cifar100": 100, "clothing1m": 14}[self.dataset]

    @property
    def dataset_title(self) -> str:
        return _DATASET_TITLES[self.dataset]

    @property
    def setting(self) -> str:
        """The row label of the paper's table: ``"40%"``, ``"IF 100"`` or ``""``."""
        if self.noise_rate is not None:
            return f"{self.noise_rate:.0%}"
        if self.imbalance_factor is not None:
            return f"IF {self.imbalance_factor:g}"
        return ""

    @property
    def title(self) -> str:
        """A one-line description, e.g. ``"Table 2: CIFAR-10, 40% uniform noise, WRN-28-10"``."""
        if self.corruption == "long_tailed":
            what = f"long-tailed, imbalance factor {self.imbalance_factor:g}"
        elif self.corruption == "real":
            what = "real-world label noise"
        else:
            what = f"{self.setting} {'uniform' if self.corruption == 'uniform' else 'flip'} noise"
        model = _MODEL_TITLES.get(self.model, self.model)
        return f"Table {self.table}: {self.dataset_title}, {what}, {model}"

    def paper_accuracy(self, method: str) -> tuple[float | None, float | None]:
        """``(mean, std)`` the paper reports for ``method`` (std None when not reported)."""
        value = self.paper.get(method)
        if value is None:
            return None, None
        if isinstance(value, tuple):
            return float(value[0]), float(value[1])
        return float(value), None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["paper"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.paper.items()}
        d["milestones"] = list(self.milestones)
        return d


def _build_registry() -> dict[str, Experiment]:
    reg: dict[str, Experiment] = {}
    lt_note = (
        "Batch size 100 and Adam for the weight net follow the official code (not stated in "
        "the paper for this table)."
    )
    for ds, methods in _TABLE1.items():
        for col, imb in enumerate(_T1_IF):
            name = f"table1-{ds}-lt-{imb}"
            reg[name] = Experiment(
                name=name, table=1, dataset=ds, corruption="long_tailed", model="resnet32",
                epochs=100, milestones=(80, 90), meta_lr=1e-5, imbalance_factor=float(imb),
                n_meta_per_class=10, paper={m: v[col] for m, v in methods.items()}, notes=lt_note,
            )  # fmt: skip
    for table, rows, corruption, tag, model, epochs, milestones in (
        (2, _TABLE2, "uniform", "uniform", "wrn28_10", 40, (36, 38)),
        (3, _TABLE3, "flip2", "flip", "resnet32", 60, (40, 50)),
    ):
        for (ds, pct), values in rows.items():
            name = f"table{table}-{ds}-{tag}-{pct}"
            reg[name] = Experiment(
                name=name, table=table, dataset=ds, corruption=corruption, model=model,
                epochs=epochs, milestones=milestones, meta_lr=1e-3, noise_rate=pct / 100,
                meta_size=1000, paper=dict(zip(TABLE_METHODS[table], values)),
                notes="Adam (weight decay 1e-4) for the weight net and a meta batch of 100 "
                "follow the official code.",
            )  # fmt: skip
    reg["clothing1m"] = Experiment(
        name="clothing1m", table=4, dataset="clothing1m", corruption="real", model="resnet50",
        epochs=10, milestones=(5,), lr=0.01, weight_decay=1e-3, batch_size=32, meta_lr=1e-3,
        n_meta_per_class=500, paper=dict(_TABLE4),
        notes="ImageNet-pretrained ResNet-50. The paper uses 'the 7k clean data' as the meta "
        "set; we take 500 images per class (14 x 500 = 7,000) from the clean validation split "
        "and evaluate on the clean test split.",
    )  # fmt: skip
    return reg


#: All experiments by name.
EXPERIMENTS: dict[str, Experiment] = _build_registry()
_ALIASES = {"table4-clothing1m": "clothing1m", "table4": "clothing1m"}


def experiment_names(table: int | None = None) -> list[str]:
    """Names of the registered experiments (optionally of one table), in table order."""
    return [n for n, e in EXPERIMENTS.items() if table is None or e.table == table]


def get_experiment(name: str | Experiment) -> Experiment:
    """Look an experiment up by name (case-insensitive; ``_`` and ``-`` are interchangeable).

    Raises
    ------
    ValueError
        Unknown name; the message suggests the closest names.
    """
    if isinstance(name, Experiment):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in EXPERIMENTS:
        return EXPERIMENTS[key]
    close = difflib.get_close_matches(key, list(EXPERIMENTS), n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown experiment {name!r}.{hint} `mwnet-sk reproduce --list` lists all "
        f"{len(EXPERIMENTS)} experiments."
    )


def scaled_milestones(milestones: Sequence[int], epochs: int, new_epochs: int) -> list[int]:
    """Milestones moved proportionally when the number of epochs is overridden.

    ``scaled_milestones((36, 38), 40, 20) == [18, 19]``; milestones stay distinct and at
    least 1 where possible.
    """
    if new_epochs == epochs:
        return list(milestones)
    out: list[int] = []
    for m in milestones:
        v = max(1, int(round(m * new_epochs / epochs)))
        if out and v <= out[-1]:
            v = out[-1] + 1
        if v < new_epochs or not out:
            out.append(min(v, max(new_epochs - 1, 1)))
    return sorted(set(out))


# --------------------------------------------------------------------------- small helpers
def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


class WithTransform(nn.Module):
    """``module(transform(x))``: a batch transform in front of a network.

    The transform follows the module's train / eval mode, so a
    :class:`~mwnet_sk.augment.BatchAugment` augments during ``fit`` and only normalises in
    ``predict``: the plain baseline gets exactly the augmentation Meta-Weight-Net gets from
    its ``batch_transform``.
    """

    def __init__(self, transform: nn.Module, module: nn.Module):
        super().__init__()
        self.transform = transform
        self.module = module

    def forward(self, x):
        return self.module(self.transform(x))


class TensorBatchIterator:
    """A skorch iterator that batches in-memory arrays by tensor indexing.

    skorch's default ``DataLoader`` indexes and collates one sample at a time; for image
    arrays that already sit on the device this iterator slices whole batches instead (the
    same thing :class:`~mwnet_sk.MetaWeightClassifier` does with ``data_on_device=True``),
    so the baseline gets the same data path. Pass it as ``iterator_train`` and
    ``iterator_valid`` of a ``NeuralNetClassifier``.
    """

    def __init__(self, dataset, batch_size: int = 128, shuffle: bool = False, **_ignored):
        self.X = dataset.X if torch.is_tensor(dataset.X) else torch.as_tensor(np.asarray(dataset.X))
        y = getattr(dataset, "y", None)
        self.y = None if y is None else (y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y)))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle

    def __len__(self):
        return -(-len(self.X) // self.batch_size)

    def __iter__(self):
        n = len(self.X)
        order = torch.randperm(n, device=self.X.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                sl = slice(start, start + self.batch_size)
                xb = self.X[sl]
                yb = self.y[sl] if self.y is not None else torch.zeros(len(xb))
            else:
                idx = order[start : start + self.batch_size]
                xb = self.X[idx]
                yb = self.y[idx] if self.y is not None else torch.zeros(len(xb))
            yield xb, yb


class EpochProgress(Callback):
    """A skorch callback showing a tqdm bar over the epochs, with the last losses as postfix.

    Parameters
    ----------
    desc : str
        Bar label (e.g. ``"MW-Net"``).
    disable : bool or None, default=None
        None hides the bar when stderr is not a terminal (tqdm's convention).
    """

    def __init__(self, desc: str = "", disable: bool | None = None):
        self.desc = desc
        self.disable = disable

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=net.max_epochs, desc=self.desc, unit="epoch", disable=self.disable,
                         leave=False, dynamic_ncols=True)  # fmt: skip

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        post = {k: f"{row[k]:.3f}" for k in ("train_loss", "meta_loss", "weight_mean") if k in row}
        self.bar_.set_postfix(post, refresh=False)
        self.bar_.update(1)

    def on_train_end(self, net, **kwargs):
        bar = getattr(self, "bar_", None)
        if bar is not None:
            bar.close()
            del self.bar_


# --------------------------------------------------------------------------- tiny data (smoke)
def _class_images(rng: np.random.RandomState, labels: np.ndarray, n_classes: int, size: int = 32) -> np.ndarray:
    """uint8 HWC images whose colour and a bright square depend on the class, plus noise."""
    n = len(labels)
    colours = np.random.RandomState(1234).randint(40, 216, size=(n_classes, 3))
    img = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, size=(n, size, size, 3)), 0, 255)
    for i, c in enumerate(labels):
        r, q = divmod(int(c) % 16, 4)
        img[i, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8, :] = 255
    return img.astype(np.uint8)


def write_tiny_cifar(
    root: str | os.PathLike, name: str = "cifar10", *, n_per_class: int = 12, n_test_per_class: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny CIFAR-10 / CIFAR-100 in the official python-batch format under ``root``.

    The images are class-coloured noise (learnable, meaningless). CIFAR-10 gets five training
    batches, ``test_batch`` and ``batches.meta``; CIFAR-100 ``train``, ``test`` and ``meta``.
    Returns the folder (``root/cifar-10-batches-py`` or ``root/cifar-100-python``).
    """
    rng = np.random.RandomState(seed)
    cifar10 = str(name).lower().replace("-", "").replace("_", "") == "cifar10"
    K = 10 if cifar10 else 100
    folder = Path(root) / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def dump(obj, fname):
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(labels, label_key):
        labels = np.asarray(labels, dtype=np.int64)
        data = _class_images(rng, labels, K).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        return {b"data": np.ascontiguousarray(data), label_key: [int(v) for v in labels]}

    y_train = rng.permutation(np.repeat(np.arange(K), n_per_class))
    y_test = np.repeat(np.arange(K), n_test_per_class)
    if cifar10:
        for b, part in enumerate(np.array_split(y_train, 5), start=1):
            dump(batch(part, b"labels"), f"data_batch_{b}")
        dump(batch(y_test, b"labels"), "test_batch")
        dump({b"label_names": [f"class{i}".encode() for i in range(K)]}, "batches.meta")
    else:
        dump(batch(y_train, b"fine_labels"), "train")
        dump(batch(y_test, b"fine_labels"), "test")
        dump({b"fine_label_names": [f"class{i}".encode() for i in range(K)]}, "meta")
    return folder


def write_tiny_clothing1m(
    root: str | os.PathLike, *, n_train_per_class: int = 6, n_val_per_class: int = 3,
    n_test_per_class: int = 2, noise_rate: float = 0.4, size: int = 36, seed: int = 0,
) -> Path:
    """Write a tiny Clothing1M tree (annotation files + ``images/x/yy/name.jpg``) under ``root``.

    Noisy training labels are the true classes with ``noise_rate`` of them redrawn uniformly;
    the clean splits carry the true classes. Returns ``root``.
    """
    from PIL import Image

    rng = np.random.RandomState(seed)
    root = Path(root)
    K = 14
    splits = {"noisy_train": n_train_per_class, "clean_val": n_val_per_class,
              "clean_test": n_test_per_class, "clean_train": 1}  # fmt: skip
    noisy_kv, clean_kv, lists = [], [], {}
    counter = 0
    for split, per_class in splits.items():
        labels = rng.permutation(np.repeat(np.arange(K), per_class))
        images = _class_images(rng, labels, K, size=size)
        keys = []
        for img, c in zip(images, labels):
            key = f"images/{counter % 10}/{counter % 100:02d}/{counter}.jpg"
            counter += 1
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, "JPEG", quality=90)
            keys.append(key)
            if split == "noisy_train":
                noisy = int(rng.randint(K)) if rng.rand() < noise_rate else int(c)
                noisy_kv.append(f"{key} {noisy}\n")
            else:
                clean_kv.append(f"{key} {int(c)}\n")
        lists[split] = keys
    (root / "noisy_label_kv.txt").write_text("".join(noisy_kv))
    (root / "clean_label_kv.txt").write_text("".join(clean_kv))
    for split, keys in lists.items():
        (root / f"{split}_key_list.txt").write_text("".join(k + "\n" for k in keys))
    from .datasets import CLOTHING1M_CLASSES

    (root / "category_names_eng.txt").write_text("\n".join(CLOTHING1M_CLASSES) + "\n")
    return root


# --------------------------------------------------------------------------- data
CIFAR_HOWTO = (
    "Get CIFAR with --download (torchvision fetches https://www.cs.toronto.edu/~kriz/"
    "cifar-10-python.tar.gz or cifar-100-python.tar.gz, about 170 MB each, into --root), or "
    "download the python version from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
    "it into --root (giving ROOT/cifar-10-batches-py or ROOT/cifar-100-python)."
)
CLOTHING1M_HOWTO = (
    "Clothing1M is not freely downloadable: request access from its authors (Xiao et al., "
    "CVPR 2015; see https://github.com/Cysu/noisy_label). Expected layout under --root: "
    "noisy_label_kv.txt, clean_label_kv.txt, noisy_train_key_list.txt, clean_train_key_list.txt, "
    "clean_val_key_list.txt, clean_test_key_list.txt, category_names_eng.txt and the images as "
    "ROOT/images/<a>/<bc>/<name>.jpg (as released; a copy without the images/ level also works). "
    "The ImageNet weights of ResNet-50 are read offline: pass --weights /path/to/resnet50.pth or "
    "put torchvision's resnet50-0676ba61.pth into the torch hub cache (see mwnet_sk.models.resnet50)."
)


class DataNotFoundError(FileNotFoundError):
    """The experiment's data are missing; the message says how to get them."""


def _cifar_data(exp: Experiment, root, seed: int, download: bool, smoke: bool):
    from .datasets import make_cifar_benchmark

    kwargs = dict(random_state=seed, download=download and not smoke, as_dataset=False)
    if exp.corruption == "long_tailed":
        kwargs.update(corruption="long_tailed", imbalance_factor=exp.imbalance_factor,
                      n_meta_per_class=2 if smoke else exp.n_meta_per_class)  # fmt: skip
    else:
        kwargs.update(corruption=exp.corruption, noise_rate=exp.noise_rate,
                      meta_size=2 * exp.n_classes if smoke else exp.meta_size)  # fmt: skip
    try:
        return make_cifar_benchmark(exp.dataset, root, **kwargs)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{err}\n\n{CIFAR_HOWTO}") from err


def _smoke_cifar_root(exp: Experiment, tmp: Path) -> Path:
    if exp.corruption == "long_tailed":
        # enough images that the smallest class keeps at least a few after the long-tail cut
        n = min(int(math.ceil(exp.imbalance_factor)) * 2 + 4, 404) if exp.dataset == "cifar10" else \
            min(int(math.ceil(exp.imbalance_factor)) + 4, 204)
        n = max(n, 12)
    else:
        n = 12  # 10 per class after the meta split: every class keeps some labels even at 60% noise
    write_tiny_cifar(tmp, exp.dataset, n_per_class=n, n_test_per_class=4 if exp.dataset == "cifar10" else 1)
    return tmp


# --------------------------------------------------------------------------- estimators
def _model(exp: Experiment, smoke: bool, weights=None):
    from .models import get_model

    if smoke:
        return get_model("small_cnn", num_classes=exp.n_classes, width=4)
    if exp.model == "resnet50":
        return get_model("resnet50", num_classes=exp.n_classes, weights=weights)
    return get_model(exp.model, num_classes=exp.n_classes)


def _schedule(exp: Experiment, epochs: int):
    from skorch.callbacks import LRScheduler

    milestones = scaled_milestones(exp.milestones, exp.epochs, epochs)
    return milestones, LRScheduler("MultiStepLR", milestones=milestones, gamma=0.1)


def make_estimators(
    exp: Experiment | str, *, epochs: int | None = None, device: str = "auto", seed: int = 0,
    smoke: bool = False, progress: bool = False, record_weights: bool = False,
    weights=None, num_workers: int = 0, verbose: int = 0,
):
    """The plain baseline and the Meta-Weight-Net estimator of an experiment, unfitted.

    Returns ``(plain, mwnet, info)``: a skorch ``NeuralNetClassifier`` (cross-entropy,
    same network, optimiser and schedule) and a :class:`~mwnet_sk.MetaWeightClassifier`;
    ``info`` records the epochs and milestones used. CIFAR estimators take uint8 image arrays
    ``(N, 32, 32, 3)``; the Clothing1M ones take torch Datasets.
    """
    from skorch import NeuralNetClassifier

    from .augment import cifar_augment
    from .estimator import MetaWeightClassifier

    exp = get_experiment(exp)
    device = _resolve_device(device)
    epochs = int(epochs or (2 if smoke else exp.epochs))
    milestones, _ = _schedule(exp, epochs)
    is_cifar = exp.dataset.startswith("cifar")
    common = dict(
        criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=exp.lr,
        optimizer__momentum=exp.momentum, optimizer__weight_decay=exp.weight_decay,
        batch_size=exp.batch_size, max_epochs=epochs, device=device, train_split=None,
        verbose=verbose,
    )  # fmt: skip
    if smoke:
        common["batch_size"] = 32 if is_cifar else 16

    # the baseline ---------------------------------------------------------------------------
    torch.manual_seed(seed)
    net = _model(exp, smoke, weights)
    plain_kwargs: dict[str, Any] = {}
    if is_cifar:
        net = WithTransform(cifar_augment(exp.dataset), net)
        plain_kwargs.update(iterator_train=TensorBatchIterator, iterator_valid=TensorBatchIterator,
                            iterator_train__shuffle=True)  # fmt: skip
    else:
        plain_kwargs.update(iterator_train__shuffle=True, iterator_train__num_workers=num_workers,
                            iterator_valid__num_workers=num_workers,
                            classes=list(range(exp.n_classes)))  # fmt: skip
    plain_cbs = [_schedule(exp, epochs)[1]]
    if progress:
        plain_cbs.append(EpochProgress("baseline"))
    plain = NeuralNetClassifier(net, callbacks=plain_cbs, **plain_kwargs, **common)

    # Meta-Weight-Net -------------------------------------------------------------------------
    torch.manual_seed(seed)
    mw_kwargs: dict[str, Any] = dict(meta_lr=exp.meta_lr, random_state=seed, record_weights=record_weights)
    if is_cifar:
        mw_kwargs.update(batch_transform=cifar_augment(exp.dataset), data_on_device=True,
                         iterator_valid__batch_size=max(500, common["batch_size"]))  # fmt: skip
    else:
        mw_kwargs.update(iterator_train__shuffle=True, iterator_train__num_workers=num_workers,
                         iterator_valid__num_workers=num_workers)  # fmt: skip
    mw_cbs = [_schedule(exp, epochs)[1]]
    if progress:
        mw_cbs.append(EpochProgress("MW-Net"))
    mwnet = MetaWeightClassifier(_model(exp, smoke, weights), callbacks=mw_cbs, **mw_kwargs, **common)
    info = {"epochs": epochs, "milestones": milestones, "device": device,
            "batch_size": common["batch_size"], "model": "small_cnn" if smoke else exp.model}  # fmt: skip
    return plain, mwnet, info


def _finetune(plain, X_meta, y_meta, exp: Experiment, epochs: int, device: str, smoke: bool, seed: int):
    """Fine-tune a copy of the fitted baseline on the meta set at the schedule's final lr."""
    from skorch import NeuralNetClassifier

    torch.manual_seed(seed)
    final_lr = exp.lr * 0.1 ** len(exp.milestones)
    ft = NeuralNetClassifier(
        copy.deepcopy(plain.module_), criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD,
        lr=final_lr, optimizer__momentum=exp.momentum, optimizer__weight_decay=exp.weight_decay,
        batch_size=min(32 if smoke else exp.batch_size, len(y_meta)), max_epochs=epochs,
        train_split=None, device=device, verbose=0, classes=list(range(exp.n_classes)),
        iterator_train=TensorBatchIterator, iterator_valid=TensorBatchIterator,
        iterator_train__shuffle=True,
    )  # fmt: skip
    X = torch.as_tensor(X_meta).to(device)
    y = torch.as_tensor(np.asarray(y_meta, dtype=np.int64)).to(device)
    ft.fit(X, y)
    return ft, final_lr


def _accuracy(clf, X, y) -> float:
    return float(np.mean(np.asarray(clf.predict(X)) == np.asarray(y)) * 100.0)


# --------------------------------------------------------------------------- the runner
def run_experiment(
    experiment: Experiment | str,
    *,
    root: str | os.PathLike = "data",
    seed: int = 0,
    epochs: int | None = None,
    device: str = "auto",
    download: bool = False,
    finetune: bool = True,
    smoke: bool = False,
    progress: bool = True,
    record_weights: bool = False,
    weights: Any = "IMAGENET1K_V1",
    num_workers: int = 4,
    meta_per_class: int | None = None,
    figures_dir: str | os.PathLike | None = None,
    verbose: int = 0,
) -> dict:
    """Train the baseline(s) and Meta-Weight-Net on one experiment; return a JSON-ready dict.

    Parameters
    ----------
    experiment : str or Experiment
        A name of :data:`EXPERIMENTS` (see :func:`experiment_names`).
    root : path, default="data"
        Folder of the data (CIFAR python batches or the Clothing1M tree). Ignored with ``smoke``.
    seed : int, default=0
        Seeds the meta split, the label noise / long-tail subsampling and both networks.
    epochs : int or None
        Override the number of epochs; the milestones are scaled proportionally
        (:func:`scaled_milestones`). None: the paper's schedule (2 epochs with ``smoke``).
    device : str, default="auto"
        ``"cuda"`` when available, else ``"cpu"``.
    download : bool, default=False
        Fetch CIFAR with torchvision when missing.
    finetune : bool, default=True
        Also fine-tune the baseline on the meta set (CIFAR only; the paper's "Fine-tuning").
    smoke : bool, default=False
        Tiny generated data in the real format and a tiny network: checks the pipeline in
        seconds; the accuracies mean nothing.
    progress : bool, default=True
        tqdm bars over epochs.
    record_weights : bool, default=False
        Keep every sample's weight after every epoch (needed for the weight-variation figure).
    weights : str, path or None, default="IMAGENET1K_V1"
        Clothing1M only: the ResNet-50 initialisation (see :func:`mwnet_sk.models.resnet50`).
    num_workers : int, default=4
        Clothing1M only: DataLoader workers.
    meta_per_class : int or None
        Clothing1M only: meta images per class taken from the clean validation split
        (None: the experiment's 500; 0: the whole split).
    figures_dir : path or None
        Write the weight-function figure (and, for noisy labels, the weight distribution of
        clean vs corrupted samples and, with ``record_weights``, the weight variation of ten
        corrupted samples) as PNGs there. Needs matplotlib.

    Returns
    -------
    dict
        ``experiment``, ``seed``, ``smoke``, ``device``, ``device_name``, ``date``,
        ``epochs``, ``milestones``, ``accuracy`` (``plain`` / ``finetuned`` / ``mwnet``, in %),
        ``seconds``, sizes, mean weights of clean and corrupted samples, the learned curve,
        the final history values and the paper's numbers for the row.

    Raises
    ------
    DataNotFoundError
        When the data are missing; the message says how to get them.
    """

    exp = get_experiment(experiment)
    device = _resolve_device(device)
    tmp = tempfile.TemporaryDirectory(prefix="mwnet-smoke-") if smoke else None
    try:
        if exp.dataset.startswith("cifar"):
            data_root = _smoke_cifar_root(exp, Path(tmp.name)) if smoke else root
            result = _run_cifar(exp, data_root, seed, epochs, device, download, finetune, smoke,
                                progress, record_weights, verbose)  # fmt: skip
        else:
            data_root = write_tiny_clothing1m(Path(tmp.name)) if smoke else root
            result = _run_clothing1m(exp, data_root, seed, epochs, device, smoke, progress,
                                     record_weights, weights, num_workers, meta_per_class, verbose)  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()
    mwnet = result.pop("_mwnet")
    noise_mask = result.pop("_noise_mask")
    result.update(
        experiment=exp.name, title=exp.title, table=exp.table, dataset=exp.dataset,
        setting=exp.setting, seed=int(seed), smoke=bool(smoke), device=device,
        device_name=_device_name(device), date=_dt.date.today().isoformat(),
        torch_version=torch.__version__, config=exp.to_dict(),
        paper={_paper_column(exp.table, o): exp.paper_accuracy(_paper_column(exp.table, o))
               for o in _OURS if _paper_column(exp.table, o) in exp.paper},
    )  # fmt: skip
    losses, w = mwnet.weight_function_.curve(0.0, 10.0 if exp.corruption != "long_tailed" else 5.0, n_points=41)
    result["curve_losses"] = [round(float(v), 4) for v in losses]
    result["curve_weights"] = [round(float(v), 5) for v in w]
    sw = mwnet.sample_weights_
    if noise_mask is not None and noise_mask.any():
        result["mean_weight_clean"] = float(np.nanmean(sw[~noise_mask]))
        result["mean_weight_noisy"] = float(np.nanmean(sw[noise_mask]))
    else:
        result["mean_weight"] = float(np.nanmean(sw))
    hist = mwnet.history[-1]
    result["final"] = {k: float(hist[k]) for k in ("train_loss", "meta_loss", "weight_mean", "weight_std") if k in hist}
    if figures_dir is not None:
        result["figures"] = _write_figures(exp, mwnet, noise_mask, figures_dir, seed, smoke)
    return result


def _run_cifar(exp, root, seed, epochs, device, download, finetune, smoke, progress, record_weights, verbose):
    bench = _cifar_data(exp, root, seed, download, smoke)
    plain, mwnet, info = make_estimators(exp, epochs=epochs, device=device, seed=seed, smoke=smoke,
                                         progress=progress, record_weights=record_weights,
                                         verbose=verbose)  # fmt: skip
    out: dict[str, Any] = dict(info, n_train=int(len(bench.y_train)), n_meta=int(len(bench.y_meta)),
                               n_test=int(len(bench.y_test)), accuracy={}, seconds={})  # fmt: skip
    if bench.noise_rate is not None:
        out["actual_noise_rate"] = bench.actual_noise_rate

    X_tr = torch.from_numpy(bench.X_train).to(device)
    y_tr = torch.from_numpy(np.asarray(bench.y_train, dtype=np.int64)).to(device)
    start = time.perf_counter()
    plain.fit(X_tr, y_tr)
    out["seconds"]["plain"] = time.perf_counter() - start
    out["accuracy"]["plain"] = _accuracy(plain, bench.X_test, bench.y_test)
    del X_tr, y_tr

    if finetune:
        ft_epochs = 2 if smoke else FINETUNE_EPOCHS
        start = time.perf_counter()
        ft, ft_lr = _finetune(plain, bench.X_meta, bench.y_meta, exp, ft_epochs, device, smoke, seed)
        out["seconds"]["finetuned"] = time.perf_counter() - start
        out["accuracy"]["finetuned"] = _accuracy(ft, bench.X_test, bench.y_test)
        out["finetune"] = {"epochs": ft_epochs, "lr": ft_lr}
        del ft
    del plain

    start = time.perf_counter()
    mwnet.fit(bench.X_train, bench.y_train, meta=(bench.X_meta, bench.y_meta))
    out["seconds"]["mwnet"] = time.perf_counter() - start
    out["accuracy"]["mwnet"] = _accuracy(mwnet, bench.X_test, bench.y_test)
    out["_mwnet"] = mwnet
    out["_noise_mask"] = bench.noise_mask if bench.noise_rate is not None else None
    return out


def _clothing1m_meta_indices(targets: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    from .noise import meta_mask

    if not per_class:
        return np.arange(len(targets))
    counts = np.bincount(targets, minlength=14)
    if counts.min() < per_class:
        raise ValueError(
            f"the clean validation split has only {counts.min()} images in its smallest class; "
            f"lower --meta-per-class (now {per_class}) or pass 0 to use the whole split"
        )
    return np.flatnonzero(meta_mask(targets, n_meta_per_class=per_class, random_state=seed))


def _run_clothing1m(exp, root, seed, epochs, device, smoke, progress, record_weights, weights, num_workers,
                    meta_per_class, verbose):  # fmt: skip
    from torch.utils.data import Subset
    from torchvision import transforms as T

    from .datasets import CLOTHING1M_MEAN, CLOTHING1M_STD, Clothing1M, clothing1m_train_transform

    if smoke:  # tiny images: 32-pixel crops instead of 224
        norm = [T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)]
        train_tf = T.Compose([T.Resize(36), T.RandomCrop(32), T.RandomHorizontalFlip(), *norm])
        eval_tf = T.Compose([T.Resize(36), T.CenterCrop(32), *norm])
    else:  # the package's ResNet-50 transforms (resize 256, crop 224, normalise)
        train_tf, eval_tf = "default", "default"
    try:
        train = Clothing1M(root, "noisy_train", transform=train_tf)
        # the meta images are augmented like the training images, as in the official code
        val = Clothing1M(root, "clean_val", transform=train_tf if smoke else clothing1m_train_transform())
        test = Clothing1M(root, "clean_test", transform=eval_tf)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{err}\n\n{CLOTHING1M_HOWTO}") from err
    per_class = 2 if smoke else (exp.n_meta_per_class if meta_per_class is None else meta_per_class)
    meta = Subset(val, _clothing1m_meta_indices(val.targets, per_class, seed).tolist())
    plain, mwnet, info = make_estimators(exp, epochs=epochs, device=device, seed=seed, smoke=smoke,
                                         progress=progress, record_weights=record_weights,
                                         weights=None if smoke else weights,
                                         num_workers=0 if smoke else num_workers, verbose=verbose)  # fmt: skip
    out: dict[str, Any] = dict(info, n_train=len(train), n_meta=len(meta), n_test=len(test), accuracy={},
                               seconds={}, meta_per_class=per_class)  # fmt: skip
    start = time.perf_counter()
    plain.fit(train, None)
    out["seconds"]["plain"] = time.perf_counter() - start
    out["accuracy"]["plain"] = _accuracy(plain, test, test.targets)
    del plain
    start = time.perf_counter()
    mwnet.fit(train, None, meta=meta)
    out["seconds"]["mwnet"] = time.perf_counter() - start
    out["accuracy"]["mwnet"] = _accuracy(mwnet, test, test.targets)
    out["_mwnet"] = mwnet
    out["_noise_mask"] = None  # the noisy training images of Clothing1M have no clean labels
    return out


# --------------------------------------------------------------------------- figures
def _write_figures(exp: Experiment, mwnet, noise_mask, out, seed: int, smoke: bool = False) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves the backend alone

    from . import plotting

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{exp.name}-seed{seed}"
    written = []
    hi = 5.0 if exp.corruption == "long_tailed" else 10.0
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    plotting.plot_weight_function(mwnet, ax=ax, loss_range=(0.0, hi))
    ax.set_title(exp.title + ("\n(SMOKE RUN: tiny generated data and network)" if smoke else ""), fontsize=8)
    written.append(_save(fig, out / f"{stem}-weight-function.png"))
    if noise_mask is not None and noise_mask.any():
        fig = Figure(figsize=(4, 3))
        plotting.plot_weight_distribution(mwnet.sample_weights_, noise_mask, ax=fig.subplots())
        written.append(_save(fig, out / f"{stem}-weight-distribution.png"))
        history = getattr(mwnet, "sample_weights_history_", None)
        if history is not None and len(history) >= 2:
            rng = np.random.RandomState(seed)
            noisy = np.flatnonzero(noise_mask)
            idx = rng.choice(noisy, size=min(10, len(noisy)), replace=False)
            fig = Figure(figsize=(4, 3))
            plotting.plot_weight_variation(history, idx, ax=fig.subplots())
            written.append(_save(fig, out / f"{stem}-weight-variation.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


# --------------------------------------------------------------------------- reporting
def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f}±{std:.2f}"


def _aggregate(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def format_results(results: Sequence[Mapping]) -> str:
    """The runs as plain-text tables in the layout of the paper, the paper's numbers first.

    Runs of the same experiment (different seeds) are aggregated to mean ± std (sample std,
    as the paper's "± std over 5 repetitions").
    """
    if not results:
        return "(no results)"
    by_table: dict[int, dict[str, list[Mapping]]] = {}
    for r in results:
        by_table.setdefault(int(r["table"]), {}).setdefault(r["experiment"], []).append(r)
    blocks = []
    for table in sorted(by_table):
        rows = by_table[table]
        first = get_experiment(next(iter(rows)))
        model = _MODEL_TITLES.get(first.model, first.model)
        head = {
            1: f"Table 1: long-tailed CIFAR, {model}",
            2: f"Table 2: CIFAR with uniform noise, {model}",
            3: f"Table 3: CIFAR with flip noise (two classes, r/2 each), {model}",
            4: f"Table 4: Clothing1M, {model}",
        }[table]
        cols = [o for o in _OURS if any(o in r["accuracy"] for rs in rows.values() for r in rs)]
        names = [_paper_column(table, o) for o in cols]
        titles = [_column_title(table, o) for o in cols]
        lines_ = []
        if table == 4:  # the paper's layout: one row per method
            runs = [r for rs in rows.values() for r in rs]
            header = ["method", "paper", "ours", "runs"]
            ours_by_paper_name = {_paper_column(4, o): o for o in cols}
            for method in TABLE_METHODS[4]:
                ours = ours_by_paper_name.get(method)
                label = "MW-Net (Ours)" if method == "Ours" else method
                mine = _fmt(*_aggregate([r["accuracy"][ours] for r in runs if ours in r["accuracy"]])) if ours else ""
                lines_.append([label, _fmt(*first.paper_accuracy(method)), mine, str(len(runs)) if ours else ""])
        else:
            setting = "imbalance" if table == 1 else "noise"
            header = ["dataset", setting] + [f"paper {n}" for n in titles] + [f"ours {n}" for n in titles] + ["runs"]
            for name, runs in rows.items():
                exp = get_experiment(name)
                row = [exp.dataset_title, exp.setting.replace("IF ", "")]
                for n in names:
                    row.append(_fmt(*exp.paper_accuracy(n)))
                for o in cols:
                    row.append(_fmt(*_aggregate([r["accuracy"][o] for r in runs if o in r["accuracy"]])))
                row.append(str(len(runs)))
                lines_.append(row)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines_)]
        fmt_row = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
        smoke = any(r.get("smoke") for rs in rows.values() for r in rs)
        devices = sorted({r.get("device_name", r.get("device", "?")) for rs in rows.values() for r in rs})
        dates = sorted({r.get("date", "?") for rs in rows.values() for r in rs})
        epochs = sorted({r.get("epochs") for rs in rows.values() for r in rs})
        block = [
            f"{head}: test accuracy (%)",
            "  'paper' = the numbers published in Shu et al., NeurIPS 2019 (MW-Net = their 'Ours')"
            + (" (mean±std over 5 runs)" if table in (2, 3) else "")
            + "; 'ours' = this run" + (" (mean±std over runs)" if any(len(v) > 1 for v in rows.values()) else ""),
            f"  ours: {', '.join(map(str, epochs))} epochs on {'; '.join(devices)}, {', '.join(dates)}",
        ]
        if smoke:
            block.append("  SMOKE RUN: tiny generated data and a tiny network; these accuracies mean nothing")
        block += ["", fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in lines_]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_results(results: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write runs as JSON (``{"results": [...], "table": <format_results text>}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"results": _jsonable(list(results)), "table": format_results(results)}
    path.write_text(json.dumps(payload, indent=2))
    return path


def run_many(
    names: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    out: str | os.PathLike | None = None,
    figures: bool = False,
    log=print,
    **kwargs,
) -> list[dict]:
    """Run several experiments and seeds one after the other; print and save as they finish.

    After every run the collected results are written to ``out/results.json`` (so an
    interrupted sweep keeps what it finished) and, at the end, the table of
    :func:`format_results` is printed. ``figures=True`` writes the figures of each run into
    ``out`` (needs matplotlib and ``out``). Other keyword arguments go to
    :func:`run_experiment`.
    """
    exps = [get_experiment(n) for n in names]
    results: list[dict] = []
    total = len(exps) * len(seeds)
    for exp in exps:
        for seed in seeds:
            log(f"[{len(results) + 1}/{total}] {exp.name} (seed {seed}): {exp.title}")
            run_kwargs = dict(kwargs)
            if figures and out is not None:  # the weight-variation figure needs the weight history
                run_kwargs.setdefault("record_weights", exp.corruption in ("uniform", "flip2"))
                run_kwargs["figures_dir"] = out
            r = run_experiment(exp, seed=seed, **run_kwargs)
            acc = ", ".join(f"{_column_title(exp.table, k)} {v:.2f}%" for k, v in r["accuracy"].items())
            log(f"    test accuracy: {acc}")
            results.append(r)
            if out is not None:
                save_results(results, Path(out) / "results.json")
    log("")
    log(format_results(results))
    if out is not None:
        log(f"\nresults written to {Path(out) / 'results.json'}")
    return results
