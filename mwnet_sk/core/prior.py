"""Class-prior correction of a classifier's predictions (label shift), in plain numpy.

A classifier trained on rows whose class frequencies are ``p_train(y)`` estimates
``p_train(y | x)``. Where the data it will be used on has other class frequencies ``q(y)`` but
the same ``p(x | y)``, Bayes' rule gives (Saerens, Latinne and Decaestecker, Neural Computation
2002)::

    q(y | x)  ∝  p_train(y | x) · q(y) / p_train(y)

i.e. ``log q(y | x) = logit_y(x) + log q(y) − log p_train(y) + const``: a constant shift of
each class's logit, which is the post-hoc logit adjustment of Menon et al. (ICLR 2021).
Meta-Weight-Net assumes its clean meta set is drawn from the distribution the model is for;
its class frequencies are then the ``q(y)`` to predict for. The biased training rows have other
frequencies: a long tail, or, under class-dependent label noise, the noisy labels' frequencies.

* :func:`class_prior`: class frequencies from label counts;
* :func:`logit_shift`: the per-class shift ``log q(y) − log p_train(y)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_prior", "logit_shift"]


def class_prior(counts) -> np.ndarray:
    """Class frequencies from per-class counts, a class without rows counted as one row.

    A network trained on a set of rows minimises its loss over exactly those rows, so their own
    frequencies (not a smoothed estimate) are the prior it learned. The floor of one row keeps
    every class's prior positive, so a class missing from a set shifts the logits by a finite
    amount instead of never (or always) being predicted.

    Examples
    --------
    >>> class_prior([6, 2, 0]).round(3).tolist()
    [0.667, 0.222, 0.111]
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"class counts must be a non-empty 1-d array of non-negative counts, got {counts!r}")
    counts = np.maximum(counts, 1.0)
    return counts / counts.sum()


def logit_shift(train_prior, target_prior) -> np.ndarray:
    """The shift ``log target_prior − log train_prior`` to add to each class's logit.

    ``target_prior`` is normalised to sum to 1; a class it gives probability 0 gets ``-inf``
    (never predicted). ``train_prior`` must be positive (see :func:`class_prior`).

    Examples
    --------
    >>> logit_shift([0.8, 0.2], [0.5, 0.5]).round(3).tolist()
    [-0.47, 0.916]
    """
    train = np.asarray(train_prior, dtype=np.float64).reshape(-1)
    target = np.asarray(target_prior, dtype=np.float64).reshape(-1)
    if train.shape != target.shape:
        raise ValueError(f"train and target priors differ in length: {train.size} and {target.size}")
    if np.any(train <= 0) or not np.all(np.isfinite(train)):
        raise ValueError("the training prior must be positive and finite for every class")
    target = target / target.sum()
    with np.errstate(divide="ignore"):
        return np.log(target) - np.log(train / train.sum())
