"""Clothing1M (Xiao et al., CVPR 2015): 1M web images of clothes with noisy labels.

Reads the official annotation files: ``noisy_label_kv.txt`` and ``clean_label_kv.txt``
(lines ``images/x/yy/name.jpg label``), the split key lists ``noisy_train_key_list.txt``,
``clean_train_key_list.txt``, ``clean_val_key_list.txt``, ``clean_test_key_list.txt`` and
``category_names_eng.txt`` (14 classes). Images may be under ``root/images/...`` (as
released) or in copies where the ``images/`` level was stripped or the folder flattened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ._catalog import NORMALIZATION
from ._utils import inside_root

__all__ = [
    "CLOTHING1M_CLASSES",
    "CLOTHING1M_MEAN",
    "CLOTHING1M_SPLITS",
    "CLOTHING1M_STD",
    "Clothing1M",
    "clothing1m_eval_transform",
    "clothing1m_paper_transform",
    "clothing1m_train_transform",
]

CLOTHING1M_MEAN, CLOTHING1M_STD = NORMALIZATION["clothing1m"]
"""Clothing1M channel statistics (see :data:`mwnet_sk.datasets.NORMALIZATION`)."""
N_CLASSES = 14

CLOTHING1M_CLASSES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
"""Class names in label order (used when ``category_names_eng.txt`` is absent)."""

CLOTHING1M_SPLITS = {
    "noisy_train": ("noisy_train_key_list.txt", "noisy_label_kv.txt"),
    "clean_train": ("clean_train_key_list.txt", "clean_label_kv.txt"),
    "clean_val": ("clean_val_key_list.txt", "clean_label_kv.txt"),
    "clean_test": ("clean_test_key_list.txt", "clean_label_kv.txt"),
}
"""split name -> (key list file, label file)"""
_TRAIN_SPLITS = ("noisy_train", "clean_train")
_CATEGORY_FILE = "category_names_eng.txt"


def _then_normalised(*steps) -> T.Compose:
    """``steps``, then ``ToTensor`` and ``Normalize`` with the Clothing1M statistics."""
    return T.Compose([*steps, T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)])


def clothing1m_train_transform() -> T.Compose:
    """ResNet-50 training transform for Clothing1M.

    ``Resize(256)`` + ``RandomCrop(224)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
    ``Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)``.

    Returns
    -------
    torchvision.transforms.Compose
        Picklable transform from an RGB ``PIL.Image`` to a normalised float tensor (3, 224, 224).

    Examples
    --------
    >>> from mwnet_sk.datasets import clothing1m_train_transform
    >>> t = clothing1m_train_transform()
    """
    return _then_normalised(T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip())


def clothing1m_paper_transform() -> T.Compose:
    """The Meta-Weight-Net paper's Clothing1M preprocessing (Shu et al. 2019, Sec. 4.3): "we
    resize the image to 256×256, crop the middle 224×224 as input, and perform normalization".

    ``Resize((256, 256))`` (both sides, aspect ratio not kept) + ``CenterCrop(224)`` +
    ``ToTensor`` + ``Normalize``, the same for training, meta and test images, no random
    augmentation. ``mwnet-sk reproduce clothing1m`` uses it; :func:`clothing1m_train_transform`
    is the augmented recipe common in later work.

    Returns
    -------
    torchvision.transforms.Compose
        Picklable transform from an RGB ``PIL.Image`` to a normalised float tensor (3, 224, 224).

    Examples
    --------
    >>> from mwnet_sk.datasets import clothing1m_paper_transform
    >>> t = clothing1m_paper_transform()
    """
    return _then_normalised(T.Resize((256, 256)), T.CenterCrop(224))


def clothing1m_eval_transform() -> T.Compose:
    """ResNet-50 evaluation transform for Clothing1M.

    ``Resize(256)`` + ``CenterCrop(224)`` + ``ToTensor`` + ``Normalize``.

    Returns
    -------
    torchvision.transforms.Compose
        Picklable transform from an RGB ``PIL.Image`` to a normalised float tensor (3, 224, 224).

    Examples
    --------
    >>> from mwnet_sk.datasets import clothing1m_eval_transform
    >>> t = clothing1m_eval_transform()
    """
    return _then_normalised(T.Resize(256), T.CenterCrop(224))


def _require(root: Path, fname: str) -> Path:
    path = root / fname
    if not path.is_file():
        raise FileNotFoundError(
            f"Clothing1M annotation file not found: {path}. The annotation files "
            "(noisy_label_kv.txt, clean_label_kv.txt, *_key_list.txt, category_names_eng.txt) "
            "must be directly in root."
        )
    return inside_root(path, root, "pass the folder the annotation files really are in as root")


_DRIVE = re.compile(r"^[A-Za-z]:")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file; an undecodable line is named."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}, line {lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                    f"column {err.start + 1})."
                ) from None


def _normalize_key(key: str, path: Path, lineno: int) -> str:
    """Key without a leading ``./`` or ``images/`` (how labels and lists are matched).

    A key must name a file below the data root: absolute paths, drive letters and ``..``
    components are refused, naming the file and line they came from.
    """
    posix = key.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in posix.split("/"):
        raise ValueError(
            f"{path}, line {lineno}: image path {key!r} leaves the data root; keys must be "
            "relative paths without '..'."
        )
    while posix.startswith("./"):
        posix = posix[2:]
    if posix.startswith("images/"):
        posix = posix[len("images/") :]
    return posix


def _read_label_file(path: Path) -> dict[str, int]:
    labels: dict[str, int] = {}
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(
                f"{path}, line {lineno}: expected '<image path> <label>', got {line.strip()!r}."
            )
        key, label_str = parts
        try:
            label = int(label_str)
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: label {label_str!r} is not an integer.") from None
        if not 0 <= label < N_CLASSES:
            raise ValueError(f"{path}, line {lineno}: label {label} is outside [0, {N_CLASSES - 1}].")
        labels[_normalize_key(key, path, lineno)] = label
    return labels


def _read_key_list(
    path: Path, labels: dict[str, int], label_file: Path
) -> tuple[list[str], np.ndarray]:
    keys: list[str] = []
    targets: list[int] = []
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            raise ValueError(
                f"{path}, line {lineno}: expected one image path per line, got {line.strip()!r}."
            )
        key = _normalize_key(parts[0], path, lineno)
        label = labels.get(key)
        if label is None:
            raise ValueError(
                f"{path}, line {lineno}: image {parts[0]!r} has no label in {label_file.name}."
            )
        keys.append(key)
        targets.append(label)
    return keys, np.asarray(targets, dtype=np.int64)


def _read_class_names(root: Path) -> list[str]:
    path = root / _CATEGORY_FILE
    if not path.is_file():
        return list(CLOTHING1M_CLASSES)
    inside_root(path, root, "pass the folder the annotation files really are in as root")
    names = [line.strip() for _, line in _lines(path) if line.strip()]
    if len(names) != N_CLASSES:
        raise ValueError(f"{path}: expected {N_CLASSES} class names, found {len(names)}.")
    return names


class Clothing1M(torch.utils.data.Dataset):
    """Clothing1M as a torch ``Dataset`` of ``(image, label)`` pairs.

    Parameters
    ----------
    root : str or path
        Directory with the annotation files (and, by default, the images).
    split : {"noisy_train", "clean_train", "clean_val", "clean_test"}, default="noisy_train"
        ``noisy_train`` labels come from ``noisy_label_kv.txt``, the clean splits from
        ``clean_label_kv.txt``. (The paper's meta set is "the 7k clean data"; a clean
        split, usually ``clean_val``, or a subset of it, provides it.)
    transform : "default", None or callable, default="default"
        ``"default"``: :func:`clothing1m_train_transform` for the train splits,
        :func:`clothing1m_eval_transform` for ``clean_val`` / ``clean_test``. ``None``: the
        RGB image converted to a float tensor in [0, 1], original size. A callable receives
        the RGB ``PIL.Image``.
    target_transform : callable or None, default=None
        Applied to the int label.
    image_root : str or path or None, default=None
        Where the images are, if not under ``root``.

    Attributes
    ----------
    keys : list of str
        Image keys of the split, without the leading ``images/``.
    targets : ndarray of int64
        Labels of the split.
    classes : list of str
        The 14 class names (from ``category_names_eng.txt`` when present).

    Notes
    -----
    Keys are matched between the key lists and the label files without any leading
    ``images/``. Image paths are resolved per image, trying ``<base>/images/<key>`` (the
    released layout), ``<base>/<key>`` (``images/`` level stripped) and finally the
    flattened ``<base>/images/<file name>`` and ``<base>/<file name>``, for ``base`` =
    ``image_root`` (if given) and then ``root``; the layout that worked last is tried first.
    In a label file, a key listed twice keeps its last label. Keys are stored as a compact
    byte-string array (no per-key Python objects), which keeps DataLoader workers from
    copying them.

    Raises
    ------
    FileNotFoundError
        Missing annotation file (named), or, when an item is read, an image found nowhere.
    ValueError
        Malformed or non-UTF-8 line, an image path that leaves the data root (absolute, with
        ``..``, or through a symbolic link), or a listed key without a label; the message
        names the file and line.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> from mwnet_sk.datasets import Clothing1M
    >>> meta = Clothing1M("data/clothing1m", split="clean_val")  # doctest: +SKIP
    >>> len(meta), meta.classes[0]  # doctest: +SKIP
    (14313, 'T-Shirt')
    >>> loader = DataLoader(meta, batch_size=32, num_workers=4)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "noisy_train",
        transform: str | Callable | None = "default",
        target_transform: Callable | None = None,
        image_root: str | os.PathLike | None = None,
    ) -> None:
        if split not in CLOTHING1M_SPLITS:
            raise ValueError(
                f"Unknown Clothing1M split {split!r}; expected one of {list(CLOTHING1M_SPLITS)}."
            )
        self.root = Path(root).expanduser()
        self.image_root = Path(image_root).expanduser() if image_root is not None else None
        self.split = split
        if isinstance(transform, str):
            if transform != "default":
                raise ValueError(
                    f"transform must be 'default', None or a callable, got {transform!r}."
                )
            if split in _TRAIN_SPLITS:
                transform = clothing1m_train_transform()
            else:
                transform = clothing1m_eval_transform()
        self.transform = transform
        self.target_transform = target_transform

        key_file, label_file = CLOTHING1M_SPLITS[split]
        key_path = _require(self.root, key_file)
        label_path = _require(self.root, label_file)
        self.classes = _read_class_names(self.root)
        labels = _read_label_file(label_path)
        keys, self.targets = _read_key_list(key_path, labels, label_path)
        del labels
        self._keys = np.array([k.encode("utf-8") for k in keys], dtype=np.bytes_)

    def __len__(self) -> int:
        return int(self._keys.shape[0])

    @property
    def keys(self) -> list[str]:
        """Image keys of the split (without a leading ``images/``)."""
        return [k.decode("utf-8") for k in self._keys.tolist()]

    def _candidates(self, key: str) -> list[tuple[Path, Path]]:
        """(base, path) pairs in the order they are tried: the exact layouts of every base
        before any flattened one, so an item's file never depends on which items were read
        before it."""
        name = key.rsplit("/", 1)[-1]
        bases = [self.image_root, self.root] if self.image_root is not None else [self.root]
        exact = [(base, base / "images" / key) for base in bases] + [(base, base / key) for base in bases]
        flat = [(base, base / "images" / name) for base in bases] + [(base, base / name) for base in bases]
        return exact + flat

    def image_path(self, index: int) -> Path:
        """Resolve the file of item ``index`` (see Notes of the class)."""
        key = self._keys[index].decode("utf-8")
        candidates = self._candidates(key)
        for base, path in candidates:
            if path.is_file():
                return inside_root(path, base, "pass image_root=<the folder the images really are in>")
        tried = ", ".join(str(path) for _, path in candidates)
        raise FileNotFoundError(f"Clothing1M image {key!r} not found; tried {tried}.")

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        with Image.open(self.image_path(index)) as im:
            img = im.convert("RGB")
        x = self.transform(img) if self.transform is not None else TF.to_tensor(img)
        y = int(self.targets[index])
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return f"Clothing1M(root={str(self.root)!r}, split={self.split!r}, n_samples={len(self)})"
