"""Label-noise, long-tail and meta-set utilities in scikit-learn style.

These functions build the biased training sets studied in the Meta-Weight-Net paper
(Shu et al., NeurIPS 2019) from clean labelled data:

* :func:`make_noisy_labels` corrupts labels with a class-conditional noise model
  (``"uniform"``, ``"flip"``, ``"flip2"``, ``"pair"``, ``"symmetric"`` or a user-given
  transition matrix); :func:`noise_transition_matrix` builds the matrix alone.
* :func:`make_long_tailed` subsamples a data set into the exponential long-tailed profile
  of Long-Tailed CIFAR.
* :func:`train_meta_split` and :func:`meta_mask` (from :mod:`mwnet_sk.model_selection`, also
  importable from here) carve a clean, class-balanced meta set out of a training set.

All randomness comes from ``random_state`` (an int, a :class:`numpy.random.RandomState` or
``None``, resolved with :func:`sklearn.utils.check_random_state`); the functions never seed
NumPy's global generator. As in scikit-learn, ``random_state=None`` draws from the global
``RandomState`` singleton, so pass an int for reproducible results.

Labels can be of any kind scikit-learn accepts (ints, non-contiguous ints, strings, ...);
outputs have the kind of the input.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._validation import check_consistent, encode_labels, labels_to_numpy, take_rows
from .model_selection import meta_mask, train_meta_split

__all__ = [
    "NOISE_TYPES",
    "make_long_tailed",
    "make_noisy_labels",
    "meta_mask",
    "noise_transition_matrix",
    "train_meta_split",
]

#: Names accepted by the ``noise_type`` argument (a transition matrix is accepted too).
NOISE_TYPES = ("uniform", "flip", "flip2", "pair", "symmetric")

# Minimum number of classes each named noise model needs.
_MIN_CLASSES = {"uniform": 1, "flip": 2, "flip2": 3, "pair": 2, "symmetric": 2}


# --------------------------------------------------------------------------- helpers
def _restore_kind(values: np.ndarray, like: Any) -> Any:
    """Give ``values`` (numpy) the container type of ``like`` (torch tensor or ndarray)."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values


def _check_classes(classes: Any, y_arr: np.ndarray | None = None) -> np.ndarray:
    """Validate a class list (or build it from ``y``); return a 1-D numpy array."""
    if classes is None:
        if y_arr is None or y_arr.size == 0:
            raise ValueError("y is empty: cannot infer the classes.")
        return np.unique(y_arr)
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"The number of classes must be >= 1, got {classes}.")
        return np.arange(int(classes))
    cls = labels_to_numpy(classes, name="classes")
    if cls.size == 0:
        raise ValueError("classes is empty.")
    if np.unique(cls).size != cls.size:
        raise ValueError("classes contains duplicate labels.")
    return cls


def _check_rate(noise_rate: Any) -> float:
    if isinstance(noise_rate, bool) or not isinstance(noise_rate, numbers.Real):
        raise ValueError(f"noise_rate must be a real number in [0, 1], got {noise_rate!r}.")
    rate = float(noise_rate)
    if not np.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate!r}.")
    return rate


def _check_matrix(matrix: Any, n_classes: int | None) -> np.ndarray:
    T = np.array(matrix, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"The transition matrix must be square (K x K), got shape {T.shape}.")
    if n_classes is not None and T.shape[0] != n_classes:
        raise ValueError(
            f"The transition matrix has shape {T.shape} but there are {n_classes} classes; "
            f"expected ({n_classes}, {n_classes})."
        )
    if not np.all(np.isfinite(T)):
        raise ValueError("The transition matrix contains NaN or infinite entries.")
    if np.any(T < 0):
        raise ValueError("The transition matrix has negative entries; it must be row-stochastic.")
    sums = T.sum(axis=1)
    bad = np.flatnonzero(~np.isclose(sums, 1.0, rtol=0.0, atol=1e-6))
    if bad.size:
        raise ValueError(
            "The transition matrix is not row-stochastic: row(s) "
            f"{bad[:5].tolist()} sum to {np.round(sums[bad[:5]], 6).tolist()} instead of 1."
        )
    return T / sums[:, None]


def _is_matrix(noise_type: Any) -> bool:
    return not isinstance(noise_type, str)


def _transition_matrix(
    noise_rate: Any, n_classes: int, noise_type: Any, rng: np.random.RandomState
) -> np.ndarray:
    """Core of :func:`noise_transition_matrix` once the classes are known."""
    if _is_matrix(noise_type):
        if noise_rate is not None:
            raise ValueError(
                "noise_rate must be None when noise_type is a transition matrix "
                "(the matrix already fixes the noise)."
            )
        return _check_matrix(noise_type, n_classes)
    if noise_type not in _MIN_CLASSES:
        raise ValueError(
            f"Unknown noise_type {noise_type!r}; expected one of {list(NOISE_TYPES)} "
            "or a K x K row-stochastic transition matrix."
        )
    r = _check_rate(noise_rate)
    K = int(n_classes)
    if K < _MIN_CLASSES[noise_type]:
        raise ValueError(
            f"noise_type={noise_type!r} needs at least {_MIN_CLASSES[noise_type]} classes, got {K}."
        )
    eye = np.eye(K)
    if noise_type == "uniform":
        # Redraw uniformly from ALL classes with probability r (the true class included).
        return (1.0 - r) * eye + r * np.full((K, K), 1.0 / K)
    if noise_type == "symmetric":
        # Redraw uniformly from the OTHER classes with probability r.
        return (1.0 - r) * eye + r * (np.ones((K, K)) - eye) / (K - 1)
    T = (1.0 - r) * eye
    rows = np.arange(K)
    if noise_type == "pair":
        T[rows, (rows + 1) % K] += r
    elif noise_type == "flip":
        # One fixed other class per row: an offset in 1..K-1 avoids the diagonal.
        targets = (rows + rng.randint(1, K, size=K)) % K
        T[rows, targets] += r
    else:  # flip2: two distinct fixed other classes per row, r/2 each.
        for i in range(K):
            offsets = rng.choice(np.arange(1, K), size=2, replace=False)
            T[i, (i + offsets) % K] += r / 2.0
    return T


def _sample_from_rows(T: np.ndarray, idx: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Draw one class per sample from row ``T[idx[i]]`` by inverse-CDF sampling.

    Vectorised: one uniform number per sample and one ``searchsorted`` per class.
    """
    cdf = np.cumsum(T, axis=1)
    # Division by the row total makes the last entry (and any trailing zero-probability
    # entries, whose cumulative sum equals it exactly) exactly 1.0, so u in [0, 1) can
    # never select a class of probability zero.
    cdf /= cdf[:, -1:]
    u = rng.random_sample(idx.shape[0])
    out = np.empty_like(idx)
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(T.shape[0] + 1))
    for k in range(T.shape[0]):
        members = order[bounds[k] : bounds[k + 1]]
        if members.size:
            out[members] = np.searchsorted(cdf[k], u[members], side="right")
    return np.minimum(out, T.shape[0] - 1)


def _output_dtype(y_arr: np.ndarray, classes: np.ndarray) -> np.dtype:
    # Fixed-width strings: widen so class names longer than those in y are not truncated.
    if y_arr.dtype.kind in "US" and classes.dtype.kind == y_arr.dtype.kind:
        return np.promote_types(y_arr.dtype, classes.dtype)
    return y_arr.dtype


# --------------------------------------------------------------------------- noise
def noise_transition_matrix(
    noise_rate: float | None,
    classes: int | Any,
    *,
    noise_type: str | np.ndarray = "uniform",
    random_state: int | np.random.RandomState | None = None,
) -> np.ndarray:
    """Build the K x K label-noise transition matrix of a noise model.

    ``T[i, j]`` is the probability that a sample of true class ``i`` is given label ``j``
    (rows follow the order of ``classes``; each row sums to 1).

    Parameters
    ----------
    noise_rate : float in [0, 1] or None
        Corruption probability ``r``. Must be ``None`` when ``noise_type`` is a matrix.
    classes : int or array-like
        The number of classes ``K``, or the class labels themselves (only their count and
        order matter).
    noise_type : {"uniform", "flip", "flip2", "pair", "symmetric"} or ndarray, default="uniform"
        * ``"uniform"``: with probability ``r`` the label is redrawn uniformly from all K
          classes (the paper's protocol): ``T = (1 - r) I + r/K``. The true class can be
          drawn again, so the expected fraction of changed labels is ``r (K - 1) / K``.
        * ``"symmetric"``: with probability ``r`` the label is redrawn uniformly from the
          K - 1 *other* classes.
        * ``"flip"``: each class goes to one fixed, randomly chosen other class with
          probability ``r`` (the official Meta-Weight-Net code).
        * ``"flip2"``: two fixed, randomly chosen other classes, ``r / 2`` each (needs K >= 3).
        * ``"pair"``: class ``i`` goes to class ``i + 1`` (mod K) with probability ``r``.
        * a K x K row-stochastic array: validated and returned (as float64).
    random_state : int, RandomState instance or None, default=None
        Chooses the target classes of ``"flip"`` / ``"flip2"``. Unused otherwise.

    Returns
    -------
    T : ndarray of shape (K, K), dtype float64
        Row-stochastic transition matrix.

    Raises
    ------
    ValueError
        For a rate outside [0, 1] or NaN, an unknown noise type, too few classes for the
        noise type, or an invalid matrix.

    Examples
    --------
    >>> from mwnet_sk.noise import noise_transition_matrix
    >>> noise_transition_matrix(0.4, 4, noise_type="pair")
    array([[0.6, 0.4, 0. , 0. ],
           [0. , 0.6, 0.4, 0. ],
           [0. , 0. , 0.6, 0.4],
           [0.4, 0. , 0. , 0.6]])
    >>> noise_transition_matrix(0.5, 2, noise_type="uniform")
    array([[0.75, 0.25],
           [0.25, 0.75]])
    """
    cls = _check_classes(classes)
    rng = check_random_state(random_state)
    return _transition_matrix(noise_rate, len(cls), noise_type, rng)


def make_noisy_labels(
    y: Any,
    noise_rate: float | None,
    *,
    noise_type: str | np.ndarray = "uniform",
    classes: Any = None,
    random_state: int | np.random.RandomState | None = None,
    return_transition: bool = False,
) -> Any:
    """Corrupt labels with class-conditional label noise.

    Each label ``y_i`` is replaced by a class drawn independently from row ``T[y_i]`` of the
    transition matrix of the noise model (see :func:`noise_transition_matrix`). Sampling is
    vectorised (inverse CDF), so millions of labels take well under a second.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Clean labels: ints (contiguous or not), strings, ... ; a torch tensor is accepted
        and a tensor is returned.
    noise_rate : float in [0, 1] or None
        Corruption probability ``r``; ``None`` when ``noise_type`` is a matrix.
    noise_type : {"uniform", "flip", "flip2", "pair", "symmetric"} or ndarray, default="uniform"
        Noise model, see :func:`noise_transition_matrix`. ``"uniform"`` (the paper's setting)
        redraws from *all* classes, so only ``r (K - 1) / K`` of the labels change on average;
        use ``"symmetric"`` for exactly ``r``.
    classes : array-like or None, default=None
        The classes and their order (rows/columns of the matrix; ``"pair"`` maps each class
        to the next one in this order). Defaults to the sorted unique labels of ``y``. Pass
        it when ``y`` may lack some classes (small sets) or to fix the matrix's order.
    random_state : int, RandomState instance or None, default=None
        Seed for the flip targets and the label draws. The matrix is drawn first, so
        :func:`noise_transition_matrix` with the same int seed returns the same matrix.
        The global NumPy generator is only used when ``None`` is passed (scikit-learn
        convention); it is never re-seeded.
    return_transition : bool, default=False
        Also return the transition matrix actually used.

    Returns
    -------
    y_noisy : ndarray or torch.Tensor of shape (n_samples,)
        Noisy labels, of the dtype of ``y`` (string dtypes are widened if needed).
    T : ndarray of shape (K, K)
        Only if ``return_transition``: the matrix used, rows/columns in ``classes`` order.

    Raises
    ------
    ValueError
        Invalid rate, unknown noise type, bad matrix, labels not in ``classes``, too few
        classes for the noise type.

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.noise import make_noisy_labels
    >>> y = np.repeat(["cat", "dog", "frog"], 1000)
    >>> y_noisy, T = make_noisy_labels(y, 0.3, noise_type="flip", random_state=0,
    ...                                return_transition=True)
    >>> y_noisy.dtype == y.dtype
    True
    >>> bool(np.allclose(T.sum(axis=1), 1.0))
    True
    >>> round(float(np.mean(y_noisy != y)), 1)
    0.3
    """
    y_arr = labels_to_numpy(y)
    if y_arr.size == 0:
        raise ValueError("y is empty.")
    cls = _check_classes(classes, y_arr)
    idx = encode_labels(y_arr, cls, "y")
    rng = check_random_state(random_state)
    T = _transition_matrix(noise_rate, len(cls), noise_type, rng)
    new_idx = _sample_from_rows(T, idx, rng)
    y_noisy = cls.astype(_output_dtype(y_arr, cls), copy=False)[new_idx]
    y_noisy = _restore_kind(y_noisy, y)
    if return_transition:
        return y_noisy, T
    return y_noisy


# --------------------------------------------------------------------------- long tail
def make_long_tailed(
    X: Any,
    y: Any,
    *,
    imbalance_factor: float,
    class_order: Any = None,
    random_state: int | np.random.RandomState | None = None,
    return_indices: bool = False,
) -> tuple:
    """Subsample a data set into an exponential long-tailed class profile.

    The i-th class (0-based, in ``class_order``) keeps
    ``int(n_max * (1 / imbalance_factor) ** (i / (K - 1)))`` samples chosen at random,
    where ``n_max`` is the size of the largest class and K the number of classes — the
    Long-Tailed CIFAR protocol (Cui et al., 2019) used by Meta-Weight-Net. A class with
    fewer samples than its target keeps all of them. Selected rows keep their original
    relative order.

    Parameters
    ----------
    X : array-like, list, torch tensor, torch Dataset or None
        Samples, indexed along the first axis. ``None`` returns ``None`` for ``X``.
    y : array-like of shape (n_samples,)
        Labels of any kind.
    imbalance_factor : float >= 1
        Ratio between the largest and the smallest class size (1 keeps everything).
    class_order : array-like or None, default=None
        Classes from the largest to the smallest target size; must contain exactly the
        classes of ``y``. Defaults to the sorted unique labels.
    random_state : int, RandomState instance or None, default=None
        Seed for the choice of the kept samples.
    return_indices : bool, default=False
        Also return the (sorted) indices of the kept rows.

    Returns
    -------
    X_lt : same kind as X
        Kept samples (a :class:`~torch.utils.data.Subset` for a Dataset).
    y_lt : same kind as y
        Their labels.
    indices : ndarray of int64
        Only if ``return_indices``.

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.noise import make_long_tailed
    >>> y = np.repeat(np.arange(3), 100)
    >>> X = np.arange(300)[:, None]
    >>> X_lt, y_lt = make_long_tailed(X, y, imbalance_factor=100, random_state=0)
    >>> np.bincount(y_lt).tolist()
    [100, 10, 1]
    """
    if isinstance(imbalance_factor, bool) or not isinstance(imbalance_factor, numbers.Real):
        raise ValueError(f"imbalance_factor must be a number >= 1, got {imbalance_factor!r}.")
    if not np.isfinite(imbalance_factor) or imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor!r}.")
    y_arr = labels_to_numpy(y)
    if y_arr.size == 0:
        raise ValueError("y is empty.")
    check_consistent(X, y_arr)
    present = np.unique(y_arr)
    if class_order is None:
        order = present
    else:
        order = _check_classes(class_order)
        missing = np.setdiff1d(present, order)
        extra = np.setdiff1d(order, present)
        if missing.size or extra.size:
            raise ValueError(
                "class_order must contain exactly the classes of y; "
                f"missing from class_order: {missing.tolist()}, not in y: {extra.tolist()}."
            )
    idx = encode_labels(y_arr, order, "y")
    counts = np.bincount(idx, minlength=len(order))
    K = len(order)
    n_max = int(counts.max())
    mu = 1.0 / float(imbalance_factor)
    rng = check_random_state(random_state)
    targets = [n_max if K == 1 else int(n_max * mu ** (i / (K - 1))) for i in range(K)]
    if min(targets) == 0:
        empty = [order[i].item() if hasattr(order[i], "item") else order[i] for i in range(K) if targets[i] == 0]
        raise ValueError(
            f"imbalance_factor={imbalance_factor!r} with at most {n_max} rows per class leaves no row of class(es) "
            f"{empty}; use imbalance_factor <= {n_max} or more rows per class."
        )
    keep = []
    for i, target in enumerate(targets):
        members = np.flatnonzero(idx == i)
        keep.append(rng.permutation(members)[: min(target, members.size)])
    indices = np.sort(np.concatenate(keep)).astype(np.int64)
    X_lt = take_rows(X, indices)
    y_lt = take_rows(y, indices) if not isinstance(y, np.ndarray) else y[indices]
    if return_indices:
        return X_lt, y_lt, indices
    return X_lt, y_lt
