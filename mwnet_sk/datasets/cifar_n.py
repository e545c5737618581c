"""CIFAR-10N / CIFAR-100N human-annotated noisy labels (Wei et al., ICLR 2022).

The labels come as ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` from
https://github.com/UCSC-REAL/cifar-10-100n: ``torch.save`` of a dict of numpy arrays,
aligned with the official order of the CIFAR training batches. They are read with
``torch.load(weights_only=True)`` and only numpy's array-reconstruction globals allowed,
so a malicious file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from ._catalog import dataset_key
from ._utils import decode_keys, integer_labels, torch_load_numpy

__all__ = ["CIFAR10N_KEYS", "CIFAR100N_KEYS", "DEFAULT_LABEL_KEY", "load_cifar_n"]

CIFAR_N_URL = "https://github.com/UCSC-REAL/cifar-10-100n"

CIFAR_N_FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}

CIFAR10N_KEYS = (
    "clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3",
)  # fmt: skip
"""Keys of ``CIFAR-10_human.pt``."""
CIFAR100N_KEYS = ("clean_label", "noisy_label", "noisy_coarse_label", "clean_coarse_label")
"""Keys of ``CIFAR-100_human.pt``."""

DEFAULT_LABEL_KEY = {"cifar10": "worse_label", "cifar100": "noisy_label"}
"""Label set used when ``label_key`` is not given (the hardest CIFAR-10N set, and the only
noisy fine-label set of CIFAR-100N).
"""


def _dataset_key(name: str) -> str:
    key = dataset_key(name)
    key = key[:-1] if key in ("cifar10n", "cifar100n") else key  # "CIFAR-10N" -> "cifar10"
    if key not in CIFAR_N_FILES:
        raise ValueError(f"Unknown CIFAR-N data set {name!r}; expected 'cifar10' or 'cifar100'.")
    return key


def _resolve(path: str | os.PathLike, key: str) -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        return path
    fname = CIFAR_N_FILES[key]
    if path.is_dir():
        candidates = [path / fname, path / "data" / fname, path / "cifar-10-100n" / "data" / fname]
        for cand in candidates:
            if cand.is_file():
                return cand
        tried = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"CIFAR-N file {fname} not found (looked for {tried}). Get it from {CIFAR_N_URL} "
            "(data/ folder)."
        )
    raise FileNotFoundError(f"CIFAR-N file not found: {path}. Get {fname} from {CIFAR_N_URL}.")


def _n_classes(dataset: str, label_key: str) -> int:
    """Classes of a label set: CIFAR-100N's coarse keys hold the 20 superclasses."""
    if dataset == "cifar10":
        return 10
    return 20 if "coarse" in label_key else 100


def load_cifar_n(
    path: str | os.PathLike,
    name: str = "cifar10",
    label_key: str | None = None,
    *,
    return_clean: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10N or CIFAR-100N human noisy labels.

    Parameters
    ----------
    path : str or path
        The ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` file, or a directory containing
        it (directly, in ``data/`` or in ``cifar-10-100n/data/``).
    name : {"cifar10", "cifar100"}, default="cifar10"
        Which file to look for in a directory, and the default ``label_key``.
    label_key : str or None, default=None
        CIFAR-10N: ``"aggre_label"``, ``"worse_label"``, ``"random_label1"``,
        ``"random_label2"``, ``"random_label3"`` or ``"clean_label"``; CIFAR-100N:
        ``"noisy_label"``, ``"noisy_coarse_label"``, ``"clean_label"`` or
        ``"clean_coarse_label"``. Default: ``"worse_label"`` (CIFAR-10N) or
        ``"noisy_label"`` (CIFAR-100N).
    return_clean : bool, default=False
        Also return the ``"clean_label"`` array.

    Returns
    -------
    labels : ndarray of int64, shape (50000,)
        The selected labels, aligned with the CIFAR training split of :func:`load_cifar`.
    clean : ndarray of int64, shape (50000,)
        Only if ``return_clean``.

    Raises
    ------
    FileNotFoundError
        If the file cannot be found.
    ValueError
        If ``label_key`` is not in the file (the message lists the available keys) or the
        file does not hold a dict of label arrays.
    pickle.UnpicklingError
        If the file needs anything beyond numpy arrays to be unpickled.

    Examples
    --------
    >>> from mwnet_sk.datasets import load_cifar_n
    >>> noisy, clean = load_cifar_n("data/CIFAR-10_human.pt", label_key="aggre_label",
    ...                             return_clean=True)  # doctest: +SKIP
    >>> float((noisy != clean).mean())  # doctest: +SKIP
    0.0903
    """
    key = _dataset_key(name)
    file = _resolve(path, key)
    try:
        obj = torch_load_numpy(file)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        marker = "WeightsUnpickler error:"
        detail = msg[msg.find(marker) :] if marker in msg else msg
        raise pickle.UnpicklingError(
            f"{file}: refusing to load: the file needs more than numpy arrays to be "
            f"unpickled ({' '.join(detail.split())[:300]})."
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{file}: expected a dict of label arrays, got {type(obj).__name__}.")
    obj = decode_keys(obj)
    label_key = label_key if label_key is not None else DEFAULT_LABEL_KEY[key]
    if label_key not in obj:
        raise ValueError(
            f"{file}: unknown label_key {label_key!r}; available keys: {sorted(obj)}."
        )
    labels = integer_labels(obj[label_key], f"{file}, entry {label_key!r}", _n_classes(key, label_key))
    if not return_clean:
        return labels
    if "clean_label" not in obj:
        raise ValueError(f"{file}: no 'clean_label' entry; available keys: {sorted(obj)}.")
    clean = integer_labels(obj["clean_label"], f"{file}, entry 'clean_label'", _n_classes(key, "clean_label"))
    if clean.shape != labels.shape:
        raise ValueError(
            f"{file}: {label_key!r} has {labels.shape[0]} labels but 'clean_label' has "
            f"{clean.shape[0]}."
        )
    return labels, clean
