"""Figures of the Meta-Weight-Net paper from a fitted estimator (matplotlib).

* :func:`plot_weight_function`: the learned loss-to-weight map (Fig. 1 d-f).
* :func:`plot_weight_distribution`: histograms of the weights of clean and of corrupted
  training samples (Fig. 5).
* :func:`plot_weight_variation`: how much the weights of chosen samples change from one epoch
  to the next, as a mean curve with a ± std band (Fig. 6).

matplotlib is an optional dependency (``pip install "mwnet-sk[plot]"``); it is imported when
a function is called. Every function draws into ``ax`` (a new figure when None) and returns
the Axes.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> from mwnet_sk import WeightFunction, WeightNet
>>> from mwnet_sk.plotting import plot_weight_function
>>> ax = plot_weight_function(WeightFunction(WeightNet()), loss_range=(0, 5))
>>> ax.get_xlabel()
'training loss'
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["plot_weight_distribution", "plot_weight_function", "plot_weight_variation"]

_CLEAN_COLOUR = "tab:blue"
_NOISY_COLOUR = "tab:red"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "mwnet_sk.plotting needs matplotlib; install it with `pip install \"mwnet-sk[plot]\"` "
            "(or `pip install matplotlib`)."
        ) from err
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=(4.5, 3.2))
    return ax


def _is_estimator(obj: Any) -> bool:
    """An estimator (fitted or not), as opposed to arrays, weight nets and plain callables."""
    return hasattr(obj, "fit") and hasattr(obj, "get_params")


def _as_weight_callable(obj: Any):
    """A callable ndarray -> ndarray from an estimator, a WeightFunction, a module or a function."""
    wf = getattr(obj, "weight_function_", None)
    if wf is not None:
        return wf
    if _is_estimator(obj):
        raise ValueError(f"the {type(obj).__name__} has no weight_function_: fit it first")
    try:
        import torch

        if isinstance(obj, torch.nn.Module):
            from .core.weight_net import WeightFunction

            return WeightFunction(obj)
    except ImportError:  # pragma: no cover
        pass
    if callable(obj):
        return obj
    raise TypeError(
        "expected a fitted MetaWeightClassifier, a WeightFunction, a weight-net module or a "
        f"callable mapping losses to weights; got {type(obj).__name__}"
    )


def plot_weight_function(
    clf_or_weight_function: Any,
    ax=None,
    loss_range: tuple[float, float] = (0.0, 10.0),
    *,
    n_points: int = 200,
    label: str | None = None,
    show_losses: bool = False,
    per_class: bool = False,
    **plot_kwargs,
):
    """Plot the learned weighting function ``V(loss)`` (Fig. 1 d-f of the paper).

    A class-aware function (the default :class:`~mwnet_sk.PerClassWeightNet`) is drawn as its
    mean over the classes; ``per_class=True`` draws each class's curve behind it.

    Parameters
    ----------
    clf_or_weight_function : MetaWeightClassifier, WeightFunction, torch module or callable
        A fitted estimator (its ``weight_function_`` is used), its ``weight_function_``, a
        weight-net module mapping ``(n, 1)`` losses to ``(n, 1)`` weights, or any callable
        mapping an array of losses to an array of weights.
    ax : matplotlib Axes or None
        Where to draw; a new figure when None.
    loss_range : (float, float), default=(0, 10)
        Range of training losses on the x-axis.
    n_points : int, default=200
        Grid points.
    label : str or None
        Legend label of the curve (a legend is drawn when given).
    show_losses : bool, default=False
        With a fitted estimator: also draw the distribution of the training losses at their
        last visit (``sample_losses_``) as a light histogram on a second y-axis, to show which
        part of the curve is actually used.
    per_class : bool, default=False
        For a class-aware function: also draw every class's own curve (thin lines), e.g. to
        see classes whose curves differ under flip noise.
    **plot_kwargs
        Passed to ``ax.plot`` (e.g. ``color``, ``linestyle``).

    Returns
    -------
    matplotlib Axes
        The Axes drawn into.
    """
    lo, hi = (float(v) for v in loss_range)
    if not hi > lo:
        raise ValueError(f"loss_range must be increasing, got {loss_range!r}")
    f = _as_weight_callable(clf_or_weight_function)
    ax = _axes(ax)
    if hasattr(f, "curve"):
        losses, weights = f.curve(lo, hi, n_points)
    else:
        losses = np.linspace(lo, hi, int(n_points))
        weights = np.asarray(f(losses), dtype=float).reshape(-1)
    plot_kwargs.setdefault("linewidth", 2)
    line = ax.plot(losses, weights, label=label, **plot_kwargs)[0]
    if per_class:
        if not getattr(f, "uses_labels", False):
            raise ValueError("per_class=True needs a class-aware weighting function (e.g. PerClassWeightNet's); "
                             "this one reads the loss only")
        for k in range(f.n_classes):
            _, class_weights = f.curve(lo, hi, n_points, label=k)
            ax.plot(losses, class_weights, color=line.get_color(), linewidth=0.8, alpha=0.35)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("training loss")
    ax.set_ylabel("weight")
    ax.grid(True, alpha=0.3)
    if show_losses:
        sample_losses = getattr(clf_or_weight_function, "sample_losses_", None)
        if sample_losses is None:
            raise ValueError("show_losses=True needs a fitted estimator (with sample_losses_)")
        values = np.asarray(sample_losses, dtype=float)
        values = values[np.isfinite(values)]
        twin = ax.twinx()
        twin.hist(np.clip(values, lo, hi), bins=40, range=(lo, hi), color="0.6", alpha=0.35)
        twin.set_ylabel("training samples", color="0.4")
        twin.tick_params(axis="y", colors="0.4")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    if label is not None:
        ax.legend()
    return ax


def _weights_from(obj: Any, attribute: str) -> np.ndarray:
    value = getattr(obj, attribute, None)
    if value is not None:
        return np.asarray(value, dtype=float)
    if _is_estimator(obj):
        hint = " (fit with record_weights=True)" if attribute == "sample_weights_history_" else ": fit it first"
        raise ValueError(f"the {type(obj).__name__} has no {attribute}{hint}")
    return np.asarray(obj, dtype=float)


def plot_weight_distribution(
    sample_weights: Any,
    is_noisy: Any,
    ax=None,
    *,
    bins: int = 40,
    labels: tuple[str, str] = ("clean", "noisy"),
    density: bool = False,
):
    """Histograms of the learned weights of clean and of corrupted samples (Fig. 5).

    Parameters
    ----------
    sample_weights : array-like of shape (n_samples,) or fitted MetaWeightClassifier
        Per-sample weights, e.g. ``clf.sample_weights_`` (NaN entries, such as meta rows or
        rows never trained on, are left out). A fitted estimator is read for its
        ``sample_weights_``.
    is_noisy : array-like of bool, shape (n_samples,)
        True where the training label is corrupted (e.g. ``y_noisy != y_clean``).
    ax : matplotlib Axes or None
        Where to draw; a new figure when None.
    bins : int, default=40
        Histogram bins over the common range of the weights ([0, 1] for the sigmoid weight net).
    labels : (str, str), default=("clean", "noisy")
        Legend labels.
    density : bool, default=False
        Normalise each histogram to unit area instead of counting samples.

    Returns
    -------
    matplotlib Axes
        The Axes drawn into.
    """
    w = _weights_from(sample_weights, "sample_weights_").reshape(-1)
    noisy = np.asarray(is_noisy).reshape(-1)
    if noisy.dtype != bool:
        if not np.isin(noisy, (0, 1)).all():
            raise ValueError("is_noisy must be a boolean mask over the samples")
        noisy = noisy.astype(bool)
    if noisy.shape != w.shape:
        raise ValueError(f"is_noisy has {noisy.size} entries but there are {w.size} sample weights")
    finite = np.isfinite(w)
    clean_w, noisy_w = w[finite & ~noisy], w[finite & noisy]
    if clean_w.size + noisy_w.size == 0:
        raise ValueError("no finite sample weights to plot")
    both = np.concatenate([clean_w, noisy_w])
    lo, hi = float(both.min()), float(both.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    ax = _axes(ax)
    common = dict(bins=bins, range=(lo, hi), alpha=0.6, density=density, edgecolor="none")
    if clean_w.size:
        ax.hist(clean_w, color=_CLEAN_COLOUR, label=f"{labels[0]} ({clean_w.size})", **common)
    if noisy_w.size:
        ax.hist(noisy_w, color=_NOISY_COLOUR, label=f"{labels[1]} ({noisy_w.size})", **common)
    ax.set_xlabel("weight")
    ax.set_ylabel("density" if density else "number of samples")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return ax


def plot_weight_variation(
    sample_weights_history: Any,
    indices: Any,
    ax=None,
    *,
    label: str | None = None,
    color: str | None = None,
    lr_drops: Any = None,
):
    """Weight changes between adjacent epochs of chosen samples: mean ± std (Fig. 6).

    For every epoch ``e >= 2`` the change ``w_e - w_{e-1}`` of each chosen sample's weight is
    computed; the curve is their mean over the samples and the band their standard deviation
    (the paper uses ten randomly chosen corrupted samples).

    Parameters
    ----------
    sample_weights_history : array-like of shape (n_epochs, n_samples) or fitted estimator
        ``clf.sample_weights_history_`` (fit with ``record_weights=True``), or the estimator.
    indices : array-like of int or bool mask
        The samples (columns) to follow.
    ax : matplotlib Axes or None
        Where to draw; a new figure when None.
    label : str or None
        Legend label of the mean curve.
    color : str or None
        Colour of the curve and band.
    lr_drops : sequence of int or None
        Epochs after which the learning rate was lowered, e.g. the ``milestones`` of a
        ``MultiStepLR`` schedule (with ``milestones=[48]`` epochs 49 onwards use the lower
        rate). Each is marked by a dashed vertical line between that epoch and the next:
        the weight net usually takes its final shape right after a drop.

    Returns
    -------
    matplotlib Axes
        The Axes drawn into.
    """
    history = _weights_from(sample_weights_history, "sample_weights_history_")
    if history.ndim != 2:
        raise ValueError(f"sample_weights_history must be 2-d (epochs x samples), got shape {history.shape}")
    if history.shape[0] < 2:
        raise ValueError("the weight variation needs the weights of at least two epochs")
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (history.shape[1],):
            raise ValueError(f"the boolean mask has {idx.size} entries but there are {history.shape[1]} samples")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("indices selects no samples")
    if idx.min() < -history.shape[1] or idx.max() >= history.shape[1]:
        raise IndexError(f"indices out of range for {history.shape[1]} samples")
    diffs = np.diff(history[:, idx], axis=0)  # (n_epochs - 1, k)
    with warnings.catch_warnings():  # all-NaN epochs of unvisited samples stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(diffs, axis=1)
        std = np.nanstd(diffs, axis=1)
    epochs = np.arange(2, history.shape[0] + 1)
    ax = _axes(ax)
    (line,) = ax.plot(epochs, mean, color=color, linewidth=2,
                      label=label or f"mean of {idx.size} samples")  # fmt: skip
    ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.25, linewidth=0,
                    label="± std")  # fmt: skip
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    drops = sorted({int(e) for e in (lr_drops if lr_drops is not None else ())})
    for i, epoch in enumerate(drops):
        ax.axvline(epoch + 0.5, color="0.3", linestyle="--", linewidth=1,
                   label="learning rate lowered" if i == 0 else None)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight change from the previous epoch")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return ax

