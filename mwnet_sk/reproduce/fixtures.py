"""Tiny data sets in the real file formats, for tests and ``--smoke`` runs.

The files are what the loaders of :mod:`mwnet_sk.datasets` read from the real data sets
(CIFAR python batches, a Clothing1M folder tree of JPEGs with its annotation files), so a
smoke run goes through every step of a real one in seconds. The images are class-coloured
noise with a bright class-dependent square: learnable and meaningless.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np

from ..datasets import CLOTHING1M_CLASSES, dataset_key

__all__ = ["smoke_data_root", "write_tiny_cifar", "write_tiny_clothing1m"]


def _class_images(rng: np.random.RandomState, labels: np.ndarray, n_classes: int, size: int = 32) -> np.ndarray:
    """uint8 HWC images whose colour and a bright square depend on the class, plus noise."""
    n = len(labels)
    colours = np.random.RandomState(1234).randint(40, 216, size=(n_classes, 3))
    img = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, size=(n, size, size, 3)), 0, 255)
    cell = size // 4
    for i, c in enumerate(labels):
        r, q = divmod(int(c) % 16, 4)
        img[i, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell, :] = 255
    return img.astype(np.uint8)


def write_tiny_cifar(
    root: str | os.PathLike, name: str = "cifar10", *, n_per_class: int = 12, n_test_per_class: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny CIFAR-10 / CIFAR-100 in the official python-batch format under ``root``.

    CIFAR-10 gets five training batches, ``test_batch`` and ``batches.meta``; CIFAR-100
    ``train``, ``test`` and ``meta``.

    Returns
    -------
    Path
        The folder: ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.

    Examples
    --------
    >>> import tempfile
    >>> from mwnet_sk.datasets import load_cifar
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_tiny_cifar(tmp, "cifar10", n_per_class=2)
    ...     X, y = load_cifar("cifar10", tmp)
    >>> X.shape
    (20, 32, 32, 3)
    """
    rng = np.random.RandomState(seed)
    cifar10 = dataset_key(name, ("cifar10", "cifar100"), "CIFAR data set") == "cifar10"
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
    the clean splits carry the true classes.

    Returns
    -------
    Path
        ``root``.
    """
    from PIL import Image

    rng = np.random.RandomState(seed)
    root = Path(root)
    K = len(CLOTHING1M_CLASSES)
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
    (root / "category_names_eng.txt").write_text("\n".join(CLOTHING1M_CLASSES) + "\n")
    return root


def smoke_data_root(dataset: str, folder: str | os.PathLike, imbalance_factor: float | None = None) -> Path:
    """Write the tiny data set a smoke run of an experiment on ``dataset`` needs into ``folder``.

    Parameters
    ----------
    dataset : {"cifar10", "cifar100", "clothing1m"}
        The data set of the experiment.
    folder : path
        Where to write (usually a temporary folder).
    imbalance_factor : float or None
        For long-tailed runs: enough images per class that the smallest class keeps a few
        after the long-tail cut.

    Returns
    -------
    Path
        The data root to read the data set from.
    """
    key = dataset_key(dataset, ("cifar10", "cifar100", "clothing1m"))
    folder = Path(folder)
    if key == "clothing1m":
        return write_tiny_clothing1m(folder)
    if imbalance_factor is not None:
        cap = 404 if key == "cifar10" else 204
        per_class = max(12, min(int(math.ceil(imbalance_factor)) * (2 if key == "cifar10" else 1) + 4, cap))
    else:
        per_class = 12  # 10 per class after the meta split: every class keeps labels even at 60% noise
    write_tiny_cifar(folder, key, n_per_class=per_class, n_test_per_class=4 if key == "cifar10" else 1)
    return folder
