"""Carving a clean, class-balanced meta set out of a training set, in scikit-learn style.

:func:`meta_mask` returns the mask form that ``fit(X, y, meta=mask)`` accepts;
:func:`train_meta_split` splits like ``train_test_split``. Both are also importable from
:mod:`mwnet_sk.noise`. Labels may be of any kind scikit-learn accepts; ``random_state`` is
resolved with :func:`sklearn.utils.check_random_state` (pass an int for reproducible results).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from ._validation import check_consistent, encode_labels, labels_to_numpy, take_rows

__all__ = ["meta_mask", "train_meta_split"]


# --------------------------------------------------------------------------- meta set
def _meta_counts(
    counts: np.ndarray, n_meta_per_class: Any, meta_size: Any, classes: np.ndarray
) -> np.ndarray:
    K = len(counts)
    if (n_meta_per_class is None) == (meta_size is None):
        raise ValueError("Give exactly one of n_meta_per_class and meta_size.")
    if n_meta_per_class is not None:
        if isinstance(n_meta_per_class, bool) or not isinstance(n_meta_per_class, numbers.Integral):
            raise ValueError(f"n_meta_per_class must be an int >= 1, got {n_meta_per_class!r}.")
        if n_meta_per_class < 1:
            raise ValueError(f"n_meta_per_class must be >= 1, got {n_meta_per_class}.")
        want = np.full(K, int(n_meta_per_class), dtype=np.int64)
    else:
        if isinstance(meta_size, bool) or not isinstance(meta_size, numbers.Integral):
            raise ValueError(f"meta_size must be an int, got {meta_size!r}.")
        if meta_size < K:
            raise ValueError(
                f"meta_size={meta_size} is smaller than the number of classes ({K}); "
                "a class-balanced meta set needs at least one sample per class."
            )
        # Even split; the remainder goes to the first classes in sorted order.
        want = np.full(K, int(meta_size) // K, dtype=np.int64)
        want[: int(meta_size) % K] += 1
    short = np.flatnonzero(counts < want)
    if short.size:
        i = short[0]
        raise ValueError(
            f"Class {classes[i:i + 1].tolist()[0]!r} has only {counts[i]} samples but "
            f"{want[i]} are needed for the meta set ({short.size} class(es) too small)."
        )
    return want


def meta_mask(
    y: Any,
    *,
    n_meta_per_class: int | None = None,
    meta_size: int | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> np.ndarray:
    """Boolean mask selecting a class-balanced meta set among the rows of ``y``.

    This is the selection used by :func:`train_meta_split`, in the form the estimator's
    ``fit(X, y, meta=mask)`` accepts (masked rows are the meta set; they are trained on too
    unless ``train_on_meta=False``).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels (use the *clean* labels: the meta set is assumed unbiased).
    n_meta_per_class : int or None
        Number of meta samples per class.
    meta_size : int or None
        Total meta set size, split evenly over the K classes; when it is not divisible by
        K, the first ``meta_size % K`` classes (in sorted order) get one extra sample.
        Exactly one of ``n_meta_per_class`` and ``meta_size`` must be given.
    random_state : int, RandomState instance or None, default=None
        Seed for the choice of the meta samples.

    Returns
    -------
    mask : ndarray of bool, shape (n_samples,)
        True for meta rows.

    Raises
    ------
    ValueError
        If both or neither sizes are given, ``meta_size`` < K, or a class has too few samples.

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.model_selection import meta_mask
    >>> y = np.repeat([0, 1, 2], 50)
    >>> mask = meta_mask(y, n_meta_per_class=5, random_state=0)
    >>> int(mask.sum()), np.bincount(y[mask]).tolist()
    (15, [5, 5, 5])
    """
    y_arr = labels_to_numpy(y)
    if y_arr.size == 0:
        raise ValueError("y is empty.")
    classes = np.unique(y_arr)
    idx = encode_labels(y_arr, classes, "y")
    counts = np.bincount(idx, minlength=len(classes))
    want = _meta_counts(counts, n_meta_per_class, meta_size, classes)
    rng = check_random_state(random_state)
    mask = np.zeros(y_arr.shape[0], dtype=bool)
    for k in range(len(classes)):
        members = np.flatnonzero(idx == k)
        mask[rng.permutation(members)[: want[k]]] = True
    return mask


def train_meta_split(
    X: Any,
    y: Any,
    *,
    n_meta_per_class: int | None = None,
    meta_size: int | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> list:
    """Split off a clean, class-balanced meta set, like ``train_test_split``.

    Parameters
    ----------
    X : array-like, list, torch tensor, torch Dataset or None
        Samples, indexed along the first axis.
    y : array-like of shape (n_samples,)
        Clean labels.
    n_meta_per_class : int or None
        Meta samples per class.
    meta_size : int or None
        Total meta samples, split evenly over classes (remainder to the first classes in
        sorted order). Exactly one of the two sizes must be given.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed selects the same rows as :func:`meta_mask`.

    Returns
    -------
    X_train, X_meta, y_train, y_meta : list of 4 items
        Same container kinds as the inputs, rows in their original relative order. The
        training part is every row not in the meta set.

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.model_selection import train_meta_split
    >>> X = np.arange(60).reshape(30, 2)
    >>> y = np.repeat(["a", "b", "c"], 10)
    >>> X_tr, X_me, y_tr, y_me = train_meta_split(X, y, meta_size=6, random_state=0)
    >>> X_tr.shape, X_me.shape, sorted(y_me.tolist())
    ((24, 2), (6, 2), ['a', 'a', 'b', 'b', 'c', 'c'])
    """
    y_arr = labels_to_numpy(y)
    check_consistent(X, y_arr)
    mask = meta_mask(
        y_arr, n_meta_per_class=n_meta_per_class, meta_size=meta_size, random_state=random_state
    )
    meta_idx = np.flatnonzero(mask)
    train_idx = np.flatnonzero(~mask)

    def take_y(idx: np.ndarray) -> Any:
        return y[idx] if isinstance(y, np.ndarray) else take_rows(y, idx)

    return [take_rows(X, train_idx), take_rows(X, meta_idx), take_y(train_idx), take_y(meta_idx)]
