"""Input checks shared by the estimators and the data toolkit: the one label encoder, label
and feature checks with scikit-learn's messages, and the declarative hyper-parameter
constraints of :class:`~mwnet_sk.MetaWeightClassifier`. No torch modules, no training."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import Interval, Options, StrOptions, validate_parameter_constraints

__all__ = [
    "check_labels",
    "check_classes",
    "encode_labels",
    "as_feature_tensor",
    "check_sample_shape",
    "validate_params",
    "labels_to_numpy",
    "n_samples",
    "take_rows",
    "check_consistent",
]


# --------------------------------------------------------------------------- labels
def check_labels(y, what: str = "y") -> np.ndarray:
    """``y`` as a 1-d numpy array of class labels, refused with scikit-learn's messages when it
    is not one (2-d, continuous, NaN, strings mixed with numbers)."""
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import column_or_1d

    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = column_or_1d(arr, warn=True)  # DataConversionWarning, as in scikit-learn
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-dimensional class labels, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if arr.dtype == object and len(arr):
        kinds = {"str" if isinstance(v, str) else "number" if isinstance(v, (Real, np.number)) else type(v).__name__
                 for v in arr}
        if len(kinds) > 1:
            raise ValueError(
                f"{what} mixes label types ({', '.join(sorted(kinds))}): use labels of one type, "
                "e.g. all strings or all integers"
            )
        if kinds == {"str"}:
            arr = arr.astype(str)
    if len(arr):
        check_classification_targets(arr)  # "Unknown label type: continuous" for regression targets
        if type_of_target(arr) not in ("binary", "multiclass"):
            raise ValueError(f"{what} must hold single class labels, got target type {type_of_target(arr)!r}")
    return arr


def check_classes(classes, what: str = "classes") -> np.ndarray:
    """A user-given list of classes, in the user's order: 1-d, non-empty, no duplicates."""
    arr = check_labels(classes, what) if not isinstance(classes, np.ndarray) or classes.ndim else None
    if arr is None:
        raise ValueError(f"{what} must be a list of class labels, got {classes!r}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: list at least two class labels")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{what} contains duplicate labels")
    return arr


def encode_labels(labels: np.ndarray, classes: np.ndarray, what: str = "y") -> np.ndarray:
    """The position of every label in ``classes`` (which may be in any order).

    The only label encoder of the package: the estimators, the noise utilities and the
    meta-set helpers all map labels to codes (and back, by indexing ``classes``) with it.
    """
    classes = np.asarray(classes)
    labels = np.asarray(labels)
    sorter = np.argsort(classes, kind="stable")
    ordered = classes[sorter]
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        pos = np.searchsorted(ordered, labels)
    except TypeError as exc:  # e.g. string labels against integer classes
        raise ValueError(f"{what} holds labels of another type than the classes {list(classes)[:10]}") from exc
    clipped = np.minimum(pos, len(classes) - 1)
    valid = (pos < len(classes)) & (ordered[clipped] == labels)
    if not np.all(valid):
        unknown = np.unique(labels[~valid])
        shown = ", ".join(repr(u) for u in unknown[:5].tolist())
        more = "" if unknown.size <= 5 else f" (and {unknown.size - 5} more)"
        raise ValueError(f"{what} contains labels not among the classes {list(classes)[:20]}: {shown}{more}")
    return sorter[clipped].astype(np.int64)


# --------------------------------------------------------------------------- features
def as_feature_tensor(X, what: str = "X", *, keep_integers: bool = False) -> torch.Tensor:
    """X as a tensor, converted as scikit-learn converts numeric input for a float model.

    Floating data become float32 (the dtype of torch modules); integer and boolean data
    become float32 too, unless ``keep_integers`` (e.g. uint8 images that a ``batch_transform``
    scales on the device). Sparse, complex, non-numeric, empty and non-finite input is refused
    with scikit-learn's messages.
    """
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"{what} is a sparse matrix; sparse input is not supported, pass a dense array (X.toarray())"
        )
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        arr = np.asarray(X)
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{what} has dtype object and could not be converted to numbers: {exc}") from exc
        if np.iscomplexobj(arr):
            raise ValueError(f"Complex data not supported: {what} holds complex numbers")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"Complex data not supported: {what} holds complex numbers")
    if t.is_floating_point():
        if t.dtype != torch.float32:
            t = t.float()
    elif not keep_integers:
        t = t.float()
    if t.ndim == 0:
        raise ValueError(f"{what} must have at least one dimension, got a scalar")
    if t.ndim == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead for {what}: Reshape your data either using "
            "X.reshape(-1, 1) if your data has a single feature or X.reshape(1, -1) if it contains "
            "a single sample."
        )
    if t.shape[1] == 0:
        raise ValueError(f"{what} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).sum())
        raise ValueError(f"{what} contains NaN or infinite values (in {bad} rows)")
    return t


def check_sample_shape(shape, expected, estimator_name: str, what: str = "X"):
    """scikit-learn's error when an array's per-sample shape differs from the one fitted on."""
    if expected is None or shape is None or tuple(shape) == tuple(expected):
        return
    if len(shape) == 1 and len(expected) == 1:
        raise ValueError(
            f"{what} has {shape[0]} features, but {estimator_name} is expecting {expected[0]} features as input."
        )
    raise ValueError(f"{what} has per-sample shape {tuple(shape)}, but {estimator_name} was fitted on {tuple(expected)}.")


# --------------------------------------------------------------------------- hyper-parameters
# The parameters of MetaWeightClassifier that scikit-learn-style validation covers; skorch's
# own components (module, optimizer, criterion, callbacks, ...) are checked where they are built.
def parameter_constraints(meta_gradients, precisions, nan_policies) -> dict:
    positive = Interval(Real, 0, None, closed="neither")
    batch = [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})]  # -1: the whole set
    return {
        "lr": [positive],
        "meta_lr": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": batch,
        "meta_batch_size": [*batch, None],
        "meta_gradient": [StrOptions(set(meta_gradients))],
        "meta_interval": [Interval(Integral, 1, None, closed="left")],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left"), Interval(Real, 0, 1, closed="left")],
        "normalize_weights": ["boolean"],
        "detach_weight_input": ["boolean"],
        "train_on_meta": ["boolean"],
        "fast_jvp": ["boolean"],
        "random_state": ["random_state"],
        "nan_policy": [StrOptions(set(nan_policies))],
        "record_weights": ["boolean"],
        "data_on_device": ["boolean"],
        "precision": [StrOptions({p for p in precisions if p is not None}), None],
        "channels_last": ["boolean"],
        "sync_batchnorm": ["boolean"],
        "target_prior": [StrOptions({"meta", "train"}), "array-like"],
    }


def validate_params(estimator, constraints: dict) -> None:
    """Check the estimator's hyper-parameters against ``constraints`` (scikit-learn's
    ``InvalidParameterError``, a ``ValueError``, naming the parameter and what it must be),
    plus the finiteness of learning rates routed as ``optimizer__lr``/``meta_optimizer__lr``."""
    params = {name: getattr(estimator, name) for name in constraints}
    for name, value in params.items():  # scikit-learn's Interval(Integral) lets True pass as 1
        if isinstance(value, bool) and constraints[name] != ["boolean"]:
            raise ValueError(f"The {name!r} parameter of {type(estimator).__name__} must not be a bool. "
                             f"Got {value!r} instead.")
    for name in ("lr", "meta_lr"):
        value = params.get(name)
        if isinstance(value, Real) and not isinstance(value, bool) and not np.isfinite(value):
            raise ValueError(f"The {name!r} parameter of {type(estimator).__name__} must be finite. Got {value!r} instead.")
    validate_parameter_constraints(constraints, params, caller_name=type(estimator).__name__)
    for key in ("optimizer__lr", "meta_optimizer__lr"):
        if key in vars(estimator):
            value = vars(estimator)[key]
            if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value < 0:
                raise ValueError(
                    f"The {key!r} parameter of {type(estimator).__name__} must be a finite number >= 0. "
                    f"Got {value!r} instead."
                )


# --------------------------------------------------------------------------- rows of any container
def labels_to_numpy(y: Any, name: str = "y") -> np.ndarray:
    """Return ``y`` as a 1-D numpy array (torch tensors and column vectors accepted)."""
    if isinstance(y, torch.Tensor):
        arr = y.detach().cpu().numpy()
    else:
        arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got an array of shape {arr.shape}.")
    return arr


def n_samples(X: Any) -> int:
    if hasattr(X, "shape") and len(getattr(X, "shape", ())) > 0:
        return int(X.shape[0])
    return len(X)


def take_rows(X: Any, indices: np.ndarray) -> Any:
    """Select rows of ``X`` keeping its container type.

    numpy arrays, lists, pandas / polars frames and scipy sparse matrices go through
    scikit-learn's ``_safe_indexing``; torch tensors are indexed on their device; any other
    torch ``Dataset`` becomes a :class:`torch.utils.data.Subset`.
    """
    if X is None:
        return None
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(indices, dtype=torch.long, device=X.device)]
    if isinstance(X, torch.utils.data.Dataset) and not hasattr(X, "shape"):
        return torch.utils.data.Subset(X, indices.tolist())
    if isinstance(X, tuple):
        X = list(X)
    return _safe_indexing(X, indices)


def check_consistent(X: Any, y_arr: np.ndarray) -> None:
    if X is not None and n_samples(X) != y_arr.shape[0]:
        raise ValueError(
            f"X and y have inconsistent numbers of samples: {n_samples(X)} != {y_arr.shape[0]}."
        )
