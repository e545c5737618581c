"""CIFAR-10 / CIFAR-100 readers and the Meta-Weight-Net CIFAR benchmarks.

The readers parse the official *python* pickle batches
(https://www.cs.toronto.edu/~kriz/cifar.html) with a restricted unpickler, so they never
execute code from the files. :func:`make_cifar_benchmark` reproduces the data protocol of
the official Meta-Weight-Net code: a clean, class-balanced meta set is taken from the
training split and removed from it, then the remaining training labels are corrupted
(uniform / flip / flip2 ...) or the remaining images are subsampled to a long tail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils import check_random_state
from torchvision import transforms as T

from ..noise import NOISE_TYPES, make_long_tailed, make_noisy_labels, meta_mask
from ._catalog import NORMALIZATION, dataset_key
from ._utils import ImageArrayDataset, decode_keys, inside_root, integer_labels, safe_pickle_load, to_str

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFARBenchmark",
    "cifar_test_transform",
    "cifar_train_transform",
    "load_cifar",
    "make_cifar_benchmark",
]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

CIFAR10_MEAN, CIFAR10_STD = NORMALIZATION["cifar10"]
"""CIFAR-10 channel means and stds, as in the official Meta-Weight-Net code
(``(125.3, 123.0, 113.9) / 255`` and ``(63.0, 62.1, 66.7) / 255``; see
:data:`mwnet_sk.datasets.NORMALIZATION`).
"""
CIFAR100_MEAN, CIFAR100_STD = NORMALIZATION["cifar100"]
"""CIFAR-100 training-set statistics. (The official MW-Net code normalises CIFAR-100 with
the CIFAR-10 values; pass ``normalize="cifar10"`` to the transform helpers for that.)
"""

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    n_classes: int
    torchvision_class: str


_SPECS = {
    "cifar10": _Spec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        n_classes=10,
        torchvision_class="CIFAR10",
    ),
    "cifar100": _Spec(
        title="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        n_classes=100,
        torchvision_class="CIFAR100",
    ),
}


_LINK_FIX = "pass the folder the files really are in as root"


def _spec(name: str) -> _Spec:
    return _SPECS[dataset_key(name, _SPECS, "CIFAR data set")]


def _base_folder(spec: _Spec, root: str | os.PathLike) -> Path:
    """``root/<folder>``, or ``root`` itself when it already is the extracted folder."""
    root = Path(root).expanduser()
    nested = root / spec.folder
    if nested.is_dir():
        return nested
    if root.name == spec.folder or (root / spec.train_files[0]).is_file():
        return root
    return nested


def _missing(spec: _Spec, path: Path, root: Any) -> FileNotFoundError:
    return FileNotFoundError(
        f"{spec.title} file not found: {path}. Expected the python version of {spec.title} "
        f"({spec.archive} from {CIFAR_URL}) extracted into {root}, giving "
        f"{Path(root) / spec.folder}."
    )


def _download(spec: _Spec, root: Any) -> None:
    """Delegate the download (and md5 check) to torchvision."""
    import torchvision.datasets

    Path(root).expanduser().mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    cls(root=str(Path(root).expanduser()), train=True, download=True)


def _read_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = safe_pickle_load(path)
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(entry).__name__}.")
    entry = decode_keys(entry)
    for key in ("data", label_key):
        if key not in entry:
            raise ValueError(
                f"{path}: key {key!r} missing (found keys: {sorted(entry)}); "
                "is this an official CIFAR python batch?"
            )
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), "
            f"got {data.dtype} {data.shape}."
        )
    labels = integer_labels(entry[label_key], f"{path}, entry {label_key!r}", n_classes)
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {data.shape[0]} images but {labels.size} labels under {label_key!r}."
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar(
    name: str,
    root: str | os.PathLike,
    train: bool = True,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 or CIFAR-100 from the official python pickle batches.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}
        Data set ("CIFAR-10" / "cifar_100" spellings are accepted).
    root : str or path
        Directory containing ``cifar-10-batches-py`` / ``cifar-100-python`` (or that
        folder itself).
    train : bool, default=True
        Training split (50,000 images) or test split (10,000).
    download : bool, default=False
        Download and extract the archive with torchvision's downloader first
        (``torchvision.datasets.CIFAR10(root, download=True)``; skipped when the files are
        already there and intact).

    Returns
    -------
    X : ndarray of uint8, shape (N, 32, 32, 3)
        Images, HWC.
    y : ndarray of int64, shape (N,)
        Labels (CIFAR-100: the 100 fine labels).

    Raises
    ------
    FileNotFoundError
        Naming the missing file and where the archive comes from.
    ValueError
        If a file does not have the layout of an official batch.

    Examples
    --------
    >>> from mwnet_sk.datasets import load_cifar
    >>> X, y = load_cifar("cifar10", "data", train=False)  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape  # doctest: +SKIP
    ((10000, 32, 32, 3), dtype('uint8'), (10000,))
    """
    spec = _spec(name)
    if download:
        _download(spec, root)
    base = _base_folder(spec, root)
    files = spec.train_files if train else spec.test_files
    for f in files:
        if not (base / f).is_file():
            raise _missing(spec, base / f, root)
    parts = [_read_batch(inside_root(base / f, root, _LINK_FIX), spec.label_key, spec.n_classes) for f in files]
    X = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return X, y


def _class_names(spec: _Spec, root: Any) -> list[str] | None:
    """Class names from the meta file; CIFAR-10's are built in when it is absent."""
    path = _base_folder(spec, root) / spec.meta_file
    if path.is_file():
        meta = safe_pickle_load(inside_root(path, root, _LINK_FIX))
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: expected a pickled dict, got {type(meta).__name__}.")
        meta = decode_keys(meta)
        if spec.names_key in meta:
            names = [to_str(n) for n in meta[spec.names_key]]
            if len(names) != spec.n_classes:
                raise ValueError(
                    f"{path}: {len(names)} class names under {spec.names_key!r}, but {spec.title} has "
                    f"{spec.n_classes} classes; is this the meta file of the right data set?"
                )
            return names
    return list(CIFAR10_CLASSES) if spec.n_classes == 10 else None


def _stats(name: str) -> tuple[tuple, tuple]:
    return NORMALIZATION[dataset_key(name, _SPECS, "CIFAR data set")]


def cifar_train_transform(
    name: str = "cifar10",
    *,
    padding: int = 4,
    padding_mode: str = "reflect",
    normalize: str | None = None,
) -> T.Compose:
    """Standard CIFAR training augmentation.

    ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}, default="cifar10"
        Selects the normalisation statistics.
    padding : int, default=4
        Padding before the random 32 x 32 crop.
    padding_mode : str, default="reflect"
        ``"reflect"`` as in the official Meta-Weight-Net code; ``"constant"`` gives the
        zero padding of most other CIFAR code.
    normalize : {"cifar10", "cifar100"} or None, default=None
        Override the statistics (e.g. ``"cifar10"`` for CIFAR-100 to match the official code).

    Returns
    -------
    torchvision.transforms.Compose
        Picklable transform from ``PIL.Image`` to a normalised float tensor (3, 32, 32).

    Examples
    --------
    >>> from mwnet_sk.datasets import cifar_train_transform
    >>> t = cifar_train_transform("cifar100")
    """
    mean, std = _stats(normalize or name)
    return T.Compose(
        [
            T.RandomCrop(32, padding=padding, padding_mode=padding_mode),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def cifar_test_transform(name: str = "cifar10", *, normalize: str | None = None) -> T.Compose:
    """Standard CIFAR evaluation transform: ``ToTensor`` + ``Normalize``.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}, default="cifar10"
        Selects the normalisation statistics.
    normalize : {"cifar10", "cifar100"} or None, default=None
        Override the statistics.

    Returns
    -------
    torchvision.transforms.Compose
        Picklable transform from ``PIL.Image`` to a normalised float tensor (3, 32, 32).

    Examples
    --------
    >>> from mwnet_sk.datasets import cifar_test_transform
    >>> t = cifar_test_transform("cifar10")
    """
    mean, std = _stats(normalize or name)
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


@dataclass(repr=False)
class CIFARBenchmark:
    """The parts of a Meta-Weight-Net CIFAR benchmark (see :func:`make_cifar_benchmark`).

    Attributes
    ----------
    train, meta, test : ImageArrayDataset or None
        Torch datasets (augmentation on ``train`` and ``meta``, normalisation only on
        ``test``); ``None`` when built with ``as_dataset=False``.
    X_train, y_train : ndarray
        Training images (uint8, N x 32 x 32 x 3) and their (noisy) int64 labels.
    y_train_clean : ndarray
        True labels of the training images.
    X_meta, y_meta : ndarray
        Clean, class-balanced meta set (removed from the training split).
    X_test, y_test : ndarray
        Official test split.
    noise_mask : ndarray of bool
        Which training labels differ from the true ones.
    transition_matrix : ndarray of shape (K, K) or None
        The noise matrix used (synthetic noise only).
    train_indices, meta_indices : ndarray of int64
        Rows of the original 50,000-image training split used for train / meta.
    classes : list of str or None
        Class names.
    """

    name: str
    corruption: str | None
    X_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray
    X_meta: np.ndarray
    y_meta: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    noise_mask: np.ndarray
    transition_matrix: np.ndarray | None
    train_indices: np.ndarray
    meta_indices: np.ndarray
    classes: list[str] | None
    n_classes: int
    noise_rate: float | None = None
    imbalance_factor: float | None = None
    train: ImageArrayDataset | None = None
    meta: ImageArrayDataset | None = None
    test: ImageArrayDataset | None = None
    extra: dict = field(default_factory=dict)

    @property
    def actual_noise_rate(self) -> float:
        """Fraction of training labels that were changed."""
        return float(self.noise_mask.mean()) if self.noise_mask.size else 0.0

    def __repr__(self) -> str:
        parts = [
            f"name={self.name!r}",
            f"corruption={self.corruption!r}",
            f"n_train={len(self.y_train)}",
            f"n_meta={len(self.y_meta)}",
            f"n_test={len(self.y_test)}",
        ]
        if self.noise_rate is not None:
            parts.append(f"noise_rate={self.noise_rate}")
            parts.append(f"actual_noise_rate={self.actual_noise_rate:.4f}")
        if self.imbalance_factor is not None:
            parts.append(f"imbalance_factor={self.imbalance_factor}")
        return f"CIFARBenchmark({', '.join(parts)})"


_CORRUPTIONS = (*NOISE_TYPES, "long_tailed", "human", None)


def make_cifar_benchmark(
    name: str = "cifar10",
    root: str | os.PathLike = "data",
    *,
    corruption: str | None = "uniform",
    noise_rate: float = 0.4,
    imbalance_factor: float = 100.0,
    meta_size: int | None = None,
    n_meta_per_class: int | None = None,
    random_state: int | np.random.RandomState | None = None,
    download: bool = False,
    as_dataset: bool = True,
    augment: bool = True,
    cifar_n_path: str | os.PathLike | None = None,
    label_key: str | None = None,
) -> CIFARBenchmark:
    """Build a Meta-Weight-Net CIFAR benchmark in one call.

    Protocol of the official code: a clean, class-balanced meta set is drawn from the
    training split and removed from it; then the remaining training labels are corrupted
    (noise benchmarks) or the remaining images are subsampled to a long tail
    (``n_max * (1/IF) ** (i / (K - 1))`` images for class i, ``n_max`` the per-class count
    left after the meta split, e.g. 4,990 for CIFAR-10). The test split is untouched.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}, default="cifar10"
        The data set.
    root : str or path, default="data"
        Directory holding (or receiving, with ``download=True``) the python batches.
    corruption : str, ndarray or None, default="uniform"
        ``"uniform"`` / ``"flip"`` / ``"flip2"`` (the paper's settings), ``"pair"`` /
        ``"symmetric"`` (see :func:`mwnet_sk.noise.make_noisy_labels`), a K x K
        row-stochastic transition matrix (``corruption`` is then recorded as ``"matrix"``),
        ``"long_tailed"``, ``"human"`` (CIFAR-10N / CIFAR-100N labels from
        ``cifar_n_path``) or ``None`` (clean labels).
    noise_rate : float, default=0.4
        Corruption probability of the synthetic noise types.
    imbalance_factor : float, default=100.0
        Imbalance factor of ``"long_tailed"``.
    meta_size : int or None
        Meta set size, split evenly over classes. Default: 1000 for the noise benchmarks.
    n_meta_per_class : int or None
        Meta samples per class instead. Default: 10 for ``"long_tailed"``.
        Give at most one of ``meta_size`` and ``n_meta_per_class``.
    random_state : int, RandomState instance or None, default=None
        Seed of the meta split and of the corruption.
    download : bool, default=False
        Fetch CIFAR with torchvision's downloader when missing.
    as_dataset : bool, default=True
        Also build the ``train`` / ``meta`` / ``test`` torch datasets.
    augment : bool, default=True
        Use the training augmentation (:func:`cifar_train_transform`) on ``train`` and
        ``meta`` (as the official code does); otherwise they are only normalised.
    cifar_n_path : str or path or None
        For ``corruption="human"``: a ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` file
        or a directory containing it.
    label_key : str or None
        For ``corruption="human"``: which CIFAR-N labels to use (default ``"worse_label"``
        for CIFAR-10N, ``"noisy_label"`` for CIFAR-100N). The benchmark is over the fine
        labels, so CIFAR-100N's coarse keys are refused.

    Returns
    -------
    CIFARBenchmark
        Datasets, raw arrays, noise mask and transition matrix.

    Examples
    --------
    >>> from mwnet_sk.datasets import make_cifar_benchmark
    >>> bench = make_cifar_benchmark("cifar10", "data", corruption="flip", noise_rate=0.4,
    ...                              random_state=0)  # doctest: +SKIP
    >>> len(bench.train), len(bench.meta), len(bench.test)  # doctest: +SKIP
    (49000, 1000, 10000)
    >>> from torch.utils.data import DataLoader
    >>> loader = DataLoader(bench.train, batch_size=100, shuffle=True)  # doctest: +SKIP
    """
    spec = _spec(name)
    key = "cifar10" if spec.n_classes == 10 else "cifar100"
    matrix = None
    if isinstance(corruption, str) and corruption.lower() in ("none", "clean"):
        corruption = None
    if corruption is not None and not isinstance(corruption, str):
        matrix = np.asarray(corruption, dtype=np.float64)  # validated by make_noisy_labels
        corruption = "matrix"
    elif corruption not in _CORRUPTIONS:
        raise ValueError(
            f"Unknown corruption {corruption!r}; expected one of {list(_CORRUPTIONS)} "
            "or a K x K transition matrix."
        )
    if meta_size is None and n_meta_per_class is None:
        if corruption == "long_tailed":
            n_meta_per_class = 10
        else:
            meta_size = 1000

    if download:
        _download(spec, root)
    X_all, y_all = load_cifar(name, root, train=True)
    X_test, y_test = load_cifar(name, root, train=False)
    classes = _class_names(spec, root)
    K = spec.n_classes

    rng = check_random_state(random_state)
    is_meta = meta_mask(
        y_all, n_meta_per_class=n_meta_per_class, meta_size=meta_size, random_state=rng
    )
    meta_idx = np.flatnonzero(is_meta)
    rest_idx = np.flatnonzero(~is_meta)

    transition = None
    rate: float | None = None
    imb: float | None = None
    y_rest = y_all[rest_idx]
    if corruption in NOISE_TYPES or matrix is not None:
        y_noisy_rest, transition = make_noisy_labels(
            y_rest,
            None if matrix is not None else noise_rate,
            noise_type=matrix if matrix is not None else corruption,
            classes=np.arange(K),
            random_state=rng,
            return_transition=True,
        )
        train_idx = rest_idx
        rate = None if matrix is not None else float(noise_rate)
    elif corruption == "long_tailed":
        _, _, keep = make_long_tailed(
            None, y_rest, imbalance_factor=imbalance_factor, random_state=rng, return_indices=True
        )
        train_idx = rest_idx[keep]
        y_noisy_rest = y_rest[keep]
        imb = float(imbalance_factor)
    elif corruption == "human":
        from .cifar_n import DEFAULT_LABEL_KEY, load_cifar_n

        label_key = label_key or DEFAULT_LABEL_KEY[key]
        if "coarse" in label_key:
            raise ValueError(
                f"label_key={label_key!r} holds CIFAR-100N's 20 superclass labels, but the benchmark's meta and "
                "test labels are the 100 fine classes; use label_key='noisy_label' (or 'clean_label')."
            )
        if cifar_n_path is None:
            raise ValueError("corruption='human' needs cifar_n_path (the CIFAR-N .pt file).")
        noisy_all, clean_all = load_cifar_n(
            cifar_n_path, name=key, label_key=label_key, return_clean=True
        )
        if noisy_all.shape[0] != y_all.shape[0]:
            raise ValueError(
                f"The CIFAR-N file has {noisy_all.shape[0]} labels but the {spec.title} "
                f"training split has {y_all.shape[0]} images."
            )
        n_diff = int(np.sum(clean_all != y_all))
        if n_diff:
            raise ValueError(
                f"The CIFAR-N clean labels disagree with the {spec.title} training labels on "
                f"{n_diff} images: the files are not aligned (CIFAR-N follows the official "
                "order of the training batches)."
            )
        train_idx = rest_idx
        y_noisy_rest = noisy_all[rest_idx]
    else:
        train_idx = rest_idx
        y_noisy_rest = y_rest

    X_train = X_all[train_idx]
    y_train = np.asarray(y_noisy_rest, dtype=np.int64)
    y_train_clean = y_all[train_idx]
    X_meta, y_meta = X_all[meta_idx], y_all[meta_idx]

    bench = CIFARBenchmark(
        name=key,
        corruption=corruption,
        X_train=X_train,
        y_train=y_train,
        y_train_clean=y_train_clean,
        X_meta=X_meta,
        y_meta=y_meta,
        X_test=X_test,
        y_test=y_test,
        noise_mask=y_train != y_train_clean,
        transition_matrix=transition,
        train_indices=train_idx.astype(np.int64),
        meta_indices=meta_idx.astype(np.int64),
        classes=classes,
        n_classes=K,
        noise_rate=rate,
        imbalance_factor=imb,
    )
    if corruption == "human":
        bench.extra["label_key"] = label_key
    if as_dataset:
        test_tf = cifar_test_transform(key)
        train_tf = cifar_train_transform(key) if augment else test_tf
        bench.train = ImageArrayDataset(X_train, y_train, transform=train_tf, classes=classes)
        bench.meta = ImageArrayDataset(X_meta, y_meta, transform=train_tf, classes=classes)
        bench.test = ImageArrayDataset(X_test, y_test, transform=test_tf, classes=classes)
    return bench
