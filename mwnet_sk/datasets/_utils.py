"""Shared helpers of the dataset loaders: safe unpickling and image-array datasets."""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

PathLike = str | os.PathLike

# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles written with
# either version name one or the other module.
_np_multiarray = getattr(np, "_core", None)
_np_multiarray = _np_multiarray.multiarray if _np_multiarray is not None else np.core.multiarray

_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_mod, "_reconstruct")] = _np_multiarray._reconstruct
    _NUMPY_GLOBALS[(_mod, "scalar")] = _np_multiarray.scalar
# numpy pickles arrays at protocol 5 as numeric._frombuffer(buffer, dtype, shape, order): it only
# wraps bytes (numpy refuses object dtypes from a buffer), so it runs no code.
_np_numeric = getattr(np, "_core", None)
_np_numeric = _np_numeric.numeric if _np_numeric is not None else np.core.numeric
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_GLOBALS[(_mod, "_frombuffer")] = _np_numeric._frombuffer
_NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
_NUMPY_GLOBALS[("numpy", "dtype")] = np.dtype

# dtype classes (numpy.dtypes.Int64DType, ...) that torch's weights-only unpickler must be
# allowed to "build" when it restores an array's dtype. Only plain numeric/bool dtypes.
_NUMERIC_DTYPE_CODES = "?bhilqBHILQefdFD"
_NUMPY_DTYPE_CLASSES = sorted(
    {type(np.dtype(c)) for c in _NUMERIC_DTYPE_CODES}, key=lambda t: t.__name__
)


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (the file is refused, not damaged)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed for numpy arrays and bytes.

    Enough for the official CIFAR python batches (dicts of lists, strings, bytes and numpy
    arrays, written by Python 2 or 3); any other global raises
    :class:`pickle.UnpicklingError` instead of importing code.
    """

    _allowed: dict[tuple[str, str], Any] = {
        **_NUMPY_GLOBALS,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") with protocol < 3.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"Refusing to load global {module}.{name}: only numpy arrays and plain "
                "Python containers are allowed in this file."
            ) from None


def safe_pickle_load(path: PathLike) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (``encoding="latin1"``).

    Raises
    ------
    pickle.UnpicklingError
        The file asks for code beyond numpy arrays and plain containers (named in the message).
    ValueError
        The file is truncated or damaged (named in the message).
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as err:
        raise pickle.UnpicklingError(f"{path}: {err}") from None
    except Exception as err:  # any failure to parse the bytes means a damaged file
        raise ValueError(
            f"{path}: not a readable pickle file, truncated or damaged "
            f"({type(err).__name__}: {err}; {len(data)} bytes)."
        ) from err


def torch_load_numpy(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with just the numpy globals allow-listed.

    Loads files written by ``torch.save`` of containers of numpy arrays (e.g. CIFAR-N's
    ``*_human.pt``) without enabling arbitrary unpickling.
    """
    allowed: list = [np.ndarray, np.dtype, *_NUMPY_DTYPE_CLASSES]
    for (module, name), obj in _NUMPY_GLOBALS.items():
        if module.startswith("numpy.") and module.endswith("multiarray"):
            allowed.append((obj, f"{module}.{name}"))
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise  # a refused global: the caller names the file and what was refused
        except (RuntimeError, EOFError, ValueError, OSError) as err:
            raise ValueError(
                f"{path}: not a readable torch file, truncated or damaged ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]})."
            ) from err


def inside_root(path: PathLike, root: PathLike, fix: str) -> Path:
    """``path``, after checking that it resolves (symbolic links followed) to a place inside
    ``root`` (resolved too): a loader never reads outside the folder it was given.

    ``fix`` ends the error message: what to pass instead (e.g. ``"pass image_root=..."``).
    """
    path = Path(path)
    real, real_root = path.resolve(), Path(root).expanduser().resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(
            f"{path} resolves to {real}, outside the data root {real_root} (through a symbolic "
            f"link): loaders read only below their root; {fix}."
        )
    return path


def integer_labels(value: Any, where: str, n_classes: int | None = None) -> np.ndarray:
    """``value`` as a 1-D int64 array, refusing what would silently change: floats with a
    fraction, booleans, strings, and (with ``n_classes``) labels outside ``[0, n_classes)``.
    ``where`` names the file and entry in the message."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    arr = np.asarray(value)
    whole_floats = arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr)))
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or whole_floats):
        raise ValueError(
            f"{where}: expected a 1-D array of integer class labels, got dtype {arr.dtype} with shape "
            f"{arr.shape}; is this the official file?"
        )
    labels = arr.astype(np.int64)
    if n_classes is not None:
        outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if outside.size:
            first = int(outside[0])
            raise ValueError(
                f"{where}: {outside.size} labels are outside [0, {n_classes - 1}] (the first is "
                f"{int(labels[first])} at position {first}); is this the file of the right data set?"
            )
    return labels


def decode_keys(d: dict) -> dict:
    """Return ``d`` with ``bytes`` keys decoded (latin-1) to ``str``."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def to_str(x: Any) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


class ImageArrayDataset(torch.utils.data.Dataset):
    """Torch ``Dataset`` over an in-memory uint8 image array.

    Parameters
    ----------
    images : array-like of uint8, shape (N, H, W, C) or (N, H, W)
        Images in HWC layout (what :func:`~mwnet_sk.datasets.load_cifar` returns).
    labels : array-like of int, shape (N,)
        Integer class labels (encode string labels first, e.g. with ``LabelEncoder``).
    transform : callable or None, default=None
        Applied to the ``PIL.Image``; typically a torchvision ``Compose`` such as
        :func:`~mwnet_sk.datasets.cifar_train_transform`. ``None`` only converts the image to
        a float tensor in [0, 1] (C, H, W).
    target_transform : callable or None, default=None
        Applied to the int label.
    classes : sequence of str or None, default=None
        Class names, stored as ``.classes``.

    Attributes
    ----------
    images : ndarray of uint8
        The images (a single-channel last axis is dropped).
    targets : ndarray of int64, shape (N,)
        The labels.
    classes : list of str or None
        The class names.

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.datasets import ImageArrayDataset
    >>> ds = ImageArrayDataset(np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 1])
    >>> x, y = ds[1]
    >>> tuple(x.shape), y
    ((3, 32, 32), 1)
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        classes: Any = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array, got dtype {images.dtype}.")
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim not in (3, 4):
            raise ValueError(
                f"images must have shape (N, H, W, C) or (N, H, W), got {images.shape}."
            )
        targets = np.asarray(labels)
        if targets.ndim != 1 or targets.dtype.kind not in "iu":
            raise ValueError(
                "labels must be a 1-D array of integers (encode string labels first, e.g. "
                f"with sklearn's LabelEncoder); got dtype {targets.dtype}, shape {targets.shape}."
            )
        if targets.shape[0] != images.shape[0]:
            raise ValueError(
                "images and labels have different lengths: "
                f"{images.shape[0]} != {targets.shape[0]}."
            )
        self.images = images
        self.targets = targets.astype(np.int64)
        self.transform = transform
        self.target_transform = target_transform
        self.classes = list(classes) if classes is not None else None

    @property
    def data(self) -> np.ndarray:
        """Alias of ``images`` (torchvision's CIFAR datasets call it ``data``)."""
        return self.images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = Image.fromarray(self.images[index])
        x = self.transform(img) if self.transform is not None else TF.to_tensor(img)
        y = int(self.targets[index])
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_samples={len(self)}, image_shape={self.images.shape[1:]}, "
            f"n_classes={len(np.unique(self.targets))})"
        )
