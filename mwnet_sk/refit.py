"""Meta-Weight-Net's learned sample weights for any scikit-learn classifier.

:class:`MetaWeightRefit` learns one weight per training row with a neural weighter (a
:class:`~mwnet_sk.MetaWeightClassifier` and its clean meta set), then fits any scikit-learn
classifier with those weights (``sample_weight``), or on the rows it trusts (for
estimators without ``sample_weight``). The weights are the product: a linear model,
a gradient-boosted ensemble or a k-nearest-neighbours classifier gets what the weighting
function learned about which labels to trust.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, _fit_context, clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metadata_routing import _routing_enabled
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _num_samples, check_array, check_is_fitted, has_fit_parameter

from ._data import _is_meta_pair, _meta_rows, dataset_targets, is_array_like, is_dataset
from ._validation import check_labels, encode_labels

__all__ = ["MetaWeightRefit", "default_weighter", "learned_weights", "relative_weights"]

# The default weighter's recipe: the robustness study's MLP recipe (benchmarks/robustness_study.py),
# measured on the digits and on standardised blobs with 40% label noise.
DEFAULT_EPOCHS = 60
DEFAULT_HIDDEN = (128,)


class _MinMaxScale(torch.nn.Module):
    """``(x - low) / span`` per feature, computed from the training X: the default weighter's
    input scaling (as a batch transform, so ``weighter_`` predicts on raw X).

    Why min-max and not standardisation: the default recipe (SGD at lr 0.1) was tuned on
    features in [0, 1]. On the digits, standardising made near-constant pixels into large
    outliers and the weighter memorised the noisy labels (ROC AUC of the weights for corrupted
    rows 0.35-0.90 instead of 0.97-0.997, three seeds, 2026-12-01); min-max scaling keeps every
    feature bounded and gave the unscaled run's numbers.
    """

    def __init__(self, low, span):
        super().__init__()
        self.register_buffer("low", torch.as_tensor(np.asarray(low), dtype=torch.float32))
        self.register_buffer("span", torch.as_tensor(np.asarray(span), dtype=torch.float32))

    def forward(self, x):
        return (x.float() - self.low) / self.span


def default_weighter(X, classes, random_state=None):
    """The weighter :class:`MetaWeightRefit` and :func:`~mwnet_sk.label_issues.find_label_issues`
    use when none is given: a :class:`~mwnet_sk.MetaWeightClassifier` around a one-hidden-layer
    MLP (128 units) sized from ``X``, features min-max scaled to [0, 1] by X's range, SGD
    (lr 0.1, momentum 0.9, batch 100) for 60 epochs with the learning rate divided by 10 after
    48, and the library's weighting defaults.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The training features (their count sizes the MLP, their range scales them).
    classes : array-like
        Every class label (the MLP gets one output per class).
    random_state : int, RandomState instance or None, default=None
        Seeds the weighter (initialisation, shuffling, meta sampling).

    Returns
    -------
    MetaWeightClassifier
        Unfitted.
    """
    from skorch.callbacks import LRScheduler

    from .estimator import MetaWeightClassifier
    from .models import MLP

    features = np.asarray(X, dtype=np.float64)
    features = features.reshape(len(features), -1)
    low, high = features.min(axis=0), features.max(axis=0)
    span = np.where(high > low, high - low, 1.0)  # a constant feature stays 0
    classes = np.asarray(classes)
    return MetaWeightClassifier(
        MLP,
        module__n_features=features.shape[1],
        module__num_classes=len(classes),
        module__hidden=DEFAULT_HIDDEN,
        classes=classes,
        lr=0.1,
        optimizer__momentum=0.9,
        batch_size=100,
        max_epochs=DEFAULT_EPOCHS,
        callbacks=[("lr_step", LRScheduler("MultiStepLR", milestones=[int(0.8 * DEFAULT_EPOCHS)], gamma=0.1))],
        batch_transform=_MinMaxScale(low, span),
        random_state=random_state,
        verbose=0,
    )


# --------------------------------------------------------------------------- the weights of the rows
def _unfrozen(estimator):
    """The estimator inside a ``sklearn.frozen.FrozenEstimator`` (or the estimator itself)."""
    from sklearn.frozen import FrozenEstimator

    return estimator.estimator if isinstance(estimator, FrozenEstimator) else estimator


def _n_rows(X) -> int:
    """The number of rows of X, after scikit-learn's checks of a feature matrix: 2-d (or more),
    numeric, not sparse, not empty. X itself is passed on unconverted (a DataFrame keeps its
    columns for the estimator)."""
    if is_dataset(X) or (not is_array_like(X) and not hasattr(X, "shape")):
        raise TypeError(
            f"X must be array-like (array, DataFrame, list) for a scikit-learn estimator, got {type(X).__name__}"
        )
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("X is a sparse matrix; sparse input is not supported (the weighter's network needs dense "
                        "features): pass a dense array (X.toarray())")
    check_array(X, dtype="numeric", ensure_all_finite=False, allow_nd=True)
    return _num_samples(X)


def _meta_forms(meta, n_rows, *, with_features=True):
    """(mask of meta rows of X, separate meta features, separate meta labels) for the three
    forms ``fit`` takes; the separate parts are None for a mask and for no meta set, and the
    features are None without ``with_features`` (a Dataset is then not read item by item)."""
    mask = np.zeros(n_rows, dtype=bool)
    if meta is None:
        return mask, None, None
    if is_dataset(meta):
        labels = dataset_targets(meta, "meta")
        if not with_features:
            return mask, None, labels
        items = [meta[i][0] for i in range(len(meta))]
        features = np.stack([x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                             for x in items]) if items else None
        return mask, features, labels
    if _is_meta_pair(meta):
        return mask, meta[0], check_labels(meta[1], "y_meta")
    mask[_meta_rows(meta, n_rows)] = True
    return mask, None, None


def learned_weights(weighter, X, y):
    """The weight and the training loss the fitted weighter gave each row of X.

    Rows it never trained on (held-out meta rows with ``train_on_meta=False``, rows held out
    by its ``train_split``) get what its weighting function gives their cross-entropy under
    the fitted classifier, so every row has a weight.

    Parameters
    ----------
    weighter : MetaWeightClassifier
        Fitted on X (or a ``FrozenEstimator`` around one).
    X : array-like of shape (n_rows, n_features)
        The features it was fitted on.
    y : array-like of shape (n_rows,)
        Their labels (for the rows it never trained on).

    Returns
    -------
    weights : ndarray of shape (n_rows,)
        The learned weight of each row (their scale is arbitrary).
    losses : ndarray of shape (n_rows,)
        Each row's training loss when its weight was set.
    """
    inner = _unfrozen(weighter)
    if not hasattr(inner, "sample_weights_"):
        raise TypeError(
            f"the weighter must be a fitted MetaWeightClassifier (it has no sample_weights_), got "
            f"{type(inner).__name__}"
        )
    weights = np.array(inner.sample_weights_, dtype=np.float64)
    losses = np.array(getattr(inner, "sample_losses_", np.full(len(weights), np.nan)), dtype=np.float64)
    n_rows = _n_rows(X)
    if len(weights) != n_rows:
        raise ValueError(
            f"the weighter was fitted on {len(weights)} rows but X has {n_rows}: pass the X it was fitted on"
        )
    missing = np.flatnonzero(~np.isfinite(weights))
    if missing.size:
        codes = encode_labels(np.asarray(check_labels(y, "y"))[missing], inner.classes_, "y")
        # the cross-entropy under the network's own probabilities, as in training (predict_proba
        # may be shifted to another class prior: target_prior)
        logits = inner.forward(_safe_indexing(X, missing))
        log_proba = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
        loss = -log_proba[np.arange(missing.size), codes]
        weight_function = inner.weight_function_
        if getattr(weight_function, "uses_labels", False):
            weights[missing] = weight_function(loss, codes)
        else:
            weights[missing] = weight_function(loss)
        losses[missing] = loss
    return weights, losses


def relative_weights(weights, labels=None):
    """The learned weights divided by the largest: in [0, 1], 1 for the most trusted rows.

    The scale of the weights is arbitrary (the library's default normalises them by their
    batch sum), their ratios are what the weighting function learned. With ``labels``, each
    row's weight is divided by the largest among the rows with the same given label: how much
    the row is trusted next to the most trusted rows of its class. A class-aware weighting
    function (the default ``PerClassWeightNet``) also learns a level per class (it reweights
    whole classes, e.g. rare ones), which says nothing about a single label; read within the
    class, the weights tell wrong labels from right ones.

    Parameters
    ----------
    weights : array-like of shape (n_rows,)
        Learned weights (e.g. from :func:`learned_weights`); NaN entries stay NaN.
    labels : array-like of shape (n_rows,) or None, default=None
        The given labels: divide within each label's rows instead of by the overall largest.

    Returns
    -------
    ndarray of shape (n_rows,)
        The weights divided by the largest (of their label's rows, with ``labels``).

    Raises
    ------
    ValueError
        If every weight is 0 (a collapsed weighting function).
    """
    weights = np.asarray(weights, dtype=np.float64)
    top = np.nanmax(weights) if np.isfinite(weights).any() else np.nan
    if not np.isfinite(top) or top <= 0:
        raise ValueError(
            "the weighter gave every row weight 0: its weighting function collapsed, so there is nothing to "
            "rank the rows by (see the WeightMonitor warnings; try a smaller meta_lr or warmup_epochs)"
        )
    if labels is None:
        return weights / top
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    codes = codes.reshape(-1)
    tops = np.full(codes.max() + 1, np.nan)
    finite = np.isfinite(weights)
    np.fmax.at(tops, codes[finite], weights[finite])
    tops = np.where(np.isfinite(tops) & (tops > 0), tops, top)  # a class whose rows all weigh 0: the overall top
    return weights / tops[codes]


# --------------------------------------------------------------------------- the meta-estimator
def _estimator_has(attr):
    """``available_if`` check: the fitted estimator (or, before fit, the unfitted one) has ``attr``."""

    def check(self):
        getattr(self.estimator_ if hasattr(self, "estimator_") else self.estimator, attr)
        return True

    return check


def _accepts_sample_weight(estimator) -> bool:
    if isinstance(estimator, Pipeline):
        return has_fit_parameter(estimator.steps[-1][1], "sample_weight")
    return has_fit_parameter(estimator, "sample_weight")


class MetaWeightRefit(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Fit any scikit-learn classifier with the sample weights Meta-Weight-Net learns.

    Two fits: first a clone of ``weighter`` (a :class:`~mwnet_sk.MetaWeightClassifier`)
    learns, from the clean meta set, a weight for every training row (low for rows whose
    label it does not trust); then a clone of ``estimator`` is fitted on the training rows
    with those weights as ``sample_weight`` (``mode="weight"``), or on the rows whose weight
    reaches ``threshold`` (``mode="drop"``, for estimators without ``sample_weight``).

    How the weights are used:

    * **Scale.** The learned weights' scale is arbitrary (only their ratios are learned), so
      they are divided by the largest: in [0, 1], 1 for the rows the weighter trusts most.
      Weighting is then the soft form of dropping, and an estimator's regularisation (e.g.
      ``LogisticRegression``'s ``C``, which multiplies the weighted sum of losses) means what
      it means for a fit on the trusted rows alone.
    * **Meta rows.** The clean meta rows are fitted too, with weight 1: their labels are
      verified, so they count like the most trusted rows whatever their learned weight (a
      hard but correct meta row can get a weight near 0; dropping it would discard a checked
      label). A mask's rows stay where they are in X; a separate meta set (pair or Dataset)
      is appended to the training rows.
    * **Rows the weighter never trained on** (with its ``train_split``) get what its weighting
      function gives their loss under the fitted network.

    Parameters
    ----------
    estimator : classifier
        Any scikit-learn classifier (a ``Pipeline`` too). It is cloned; the clone is
        ``estimator_``.
    weighter : MetaWeightClassifier or None, default=None
        Learns the weights; cloned at fit. None builds :func:`default_weighter` from X: an MLP
        (one hidden layer of 128) on min-max scaled features, SGD at 0.1 for 60 epochs with a
        step decay, seeded by ``random_state`` (7-17 s for the 1,257 training rows of the digits
        on one CPU thread, 2026-12-01). Wrap a fitted weighter in ``sklearn.frozen.FrozenEstimator`` to reuse its
        weights (it must have been fitted on the same X).
    mode : {"auto", "weight", "drop"}, default="auto"
        ``"weight"``: pass the weights as ``sample_weight`` (for a ``Pipeline``, to its last
        step); ``"drop"``: fit on the rows whose weight is at least ``threshold`` (and the meta
        rows); ``"auto"``: ``"weight"`` when the estimator's ``fit`` takes ``sample_weight``,
        ``"drop"`` otherwise.
    threshold : float in (0, 1], default=0.5
        With ``mode="drop"``: keep rows whose weight, divided by the largest among the rows with
        the same label, is at least this.
        The learned weights are close to two-valued on noisy labels (within a class, trusted
        rows near the largest weight, the rest near 0), so the choice matters little where the
        weighting separates the rows: on the digits with 40% uniform or flip noise, thresholds
        from 0.25 to 0.75 changed the share of corrupted rows below the threshold by at most
        0.10 and the share of clean rows by at most 0.017 (five seeds each), except on one flip
        seed whose weights separated the rows less (0.16; 2026-12-01, CPU; the "Beyond the
        paper" page).
    random_state : int, RandomState instance or None, default=None
        Seeds the default weighter (``weighter=None``); a given weighter keeps its own.

    Attributes
    ----------
    weighter_ : MetaWeightClassifier
        The fitted weighter (its ``weight_function_``, ``sample_weights_`` and ``history_``).
    estimator_ : classifier
        The fitted clone of ``estimator``; predictions come from it.
    sample_weights_ : ndarray of shape (n_rows,)
        The weight of each row of X divided by the largest (in [0, 1]; 1 for meta rows): what
        ``estimator_`` got as ``sample_weight`` in weight mode; in drop mode divided by the
        largest among the rows with the same label, what was compared with ``threshold``.
    rows_kept_ : ndarray of bool of shape (n_rows,)
        True for the rows of X that ``estimator_`` was fitted on (every row in weight mode).
    meta_mask_ : ndarray of bool of shape (n_rows,)
        True for the rows of X that were the meta set (all False for a pair or a Dataset).
    mode_ : {"weight", "drop"}
        The mode used (``"auto"`` resolved).
    classes_ : ndarray of shape (n_classes,)
        The estimator's classes.
    n_features_in_ : int
        Number of features seen in fit (when ``estimator_`` records it).
    feature_names_in_ : ndarray of str
        Column names of a DataFrame X (when ``estimator_`` records them).

    See Also
    --------
    mwnet_sk.label_issues.find_label_issues : The same weights as a ranked report of rows
        whose label looks wrong.

    Notes
    -----
    With a mask, the meta rows follow X through ``Pipeline`` steps and cross-validation
    splits (each training fold gets its own meta rows); a pair reaches the weighter
    unchanged. Metadata routing works as for ``MetaWeightClassifier``:
    ``set_fit_request(meta=True)``. Fit parameters of ``estimator`` are not forwarded.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import LogisticRegression
    >>> from mwnet_sk import MetaWeightClassifier
    >>> from mwnet_sk.models import MLP
    >>> from mwnet_sk.noise import make_noisy_labels, meta_mask
    >>> from mwnet_sk.refit import MetaWeightRefit
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = X[:600] / 16, y[:600]
    >>> meta = meta_mask(y, n_meta_per_class=10, random_state=0)
    >>> y_noisy = np.where(meta, y, make_noisy_labels(y, 0.4, random_state=0))
    >>> weighter = MetaWeightClassifier(MLP, module__n_features=64, module__num_classes=10, lr=0.1,
    ...                                 max_epochs=3, verbose=0, random_state=0)
    >>> refit = MetaWeightRefit(LogisticRegression(), weighter=weighter)
    >>> refit = refit.fit(X, y_noisy, meta=meta)
    >>> refit.mode_, refit.sample_weights_.shape, float(refit.sample_weights_.max())
    ('weight', (600,), 1.0)
    >>> refit.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"])],
        "weighter": [HasMethods(["fit"]), None],
        "mode": [StrOptions({"auto", "weight", "drop"})],
        "threshold": [Interval(Real, 0, 1, closed="right")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, weighter=None, *, mode="auto", threshold=0.5, random_state=None):
        self.estimator = estimator
        self.weighter = weighter
        self.mode = mode
        self.threshold = threshold
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, meta=None):
        """Learn the weights with the weighter, then fit the estimator with them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features (a DataFrame keeps its columns for the estimator).
        y : array-like of shape (n_samples,)
            Training labels (noisy or imbalanced).
        meta : tuple, Dataset, or array-like, default=None
            The clean meta set, as :meth:`MetaWeightClassifier.fit <mwnet_sk.MetaWeightClassifier.fit>`
            takes it: a pair ``(X_meta, y_meta)``, a torch Dataset of ``(x, y)``, or a boolean
            mask / integer index array over the rows of X (the form that survives ``Pipeline``
            steps and cross-validation splits). Needed unless the weighter has a fixed
            weighting function (``meta_lr=0``).

        Returns
        -------
        self : MetaWeightRefit
            The fitted meta-estimator.
        """
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        n_rows = _n_rows(X)
        if not hasattr(X, "iloc") and not isinstance(X, np.ndarray):
            X = np.asarray(X)  # lists, tensors, other array-likes: rows are selected by indexing
        labels = check_labels(y, "y")
        if len(labels) != n_rows:
            raise ValueError(f"X has {n_rows} samples but y has {len(labels)} labels")
        meta_mask, X_meta, y_meta = _meta_forms(meta, n_rows)
        mode = self.mode
        if mode == "auto":
            mode = "weight" if _accepts_sample_weight(self.estimator) else "drop"
        elif mode == "weight" and not _accepts_sample_weight(self.estimator):
            raise ValueError(
                f"mode='weight' needs an estimator whose fit takes sample_weight; {type(self.estimator).__name__}'s "
                "does not: use mode='drop' (or 'auto')"
            )

        if self.weighter is not None and not has_fit_parameter(_unfrozen(self.weighter), "meta"):
            raise TypeError(
                "the weighter must be a MetaWeightClassifier (fit(X, y, meta=...) learning sample_weights_), got "
                f"{type(_unfrozen(self.weighter)).__name__}"
            )
        if self.weighter is None:
            classes = np.unique(labels) if y_meta is None else np.unique(np.concatenate([labels, y_meta]))
            self.weighter_ = default_weighter(X, classes, self.random_state)
        else:
            self.weighter_ = clone(self.weighter)
        self.weighter_.fit(X, labels, meta=meta)
        raw, _ = learned_weights(self.weighter_, X, labels)
        # weight mode: the weights as learned (a class-aware function's class levels included);
        # drop mode: each row against its class's most trusted rows
        weights = relative_weights(raw, labels=labels if mode == "drop" else None)
        weights[meta_mask] = 1.0  # verified labels count fully

        kept = np.ones(n_rows, dtype=bool) if mode == "weight" else (weights >= self.threshold) | meta_mask
        rows = np.flatnonzero(kept)
        X_fit, y_fit = _safe_indexing(X, rows), labels[rows]
        weight_fit = weights[rows]
        if X_meta is not None:  # a separate meta set: appended, weight 1
            X_fit = _append_rows(X_fit, X_meta)
            y_fit = np.concatenate([y_fit, y_meta])
            weight_fit = np.concatenate([weight_fit, np.ones(len(y_meta))])
        if np.unique(y_fit).size < 2:
            raise ValueError(
                f"only one class is left among the {len(y_fit)} rows kept with threshold={self.threshold}: "
                "lower the threshold or check the weighter's fit"
            )
        self.estimator_ = clone(self.estimator)
        if mode == "weight":
            _fit_weighted(self.estimator_, X_fit, y_fit, weight_fit)
        else:
            self.estimator_.fit(X_fit, y_fit)
        self.sample_weights_ = weights
        self.rows_kept_ = kept
        self.meta_mask_ = meta_mask
        self.mode_ = mode
        return self

    def __sklearn_is_fitted__(self):
        return hasattr(self, "estimator_")

    @property
    def classes_(self):
        """The classes of ``estimator_``."""
        check_is_fitted(self)
        return self.estimator_.classes_

    @property
    def n_features_in_(self):
        """Number of features ``estimator_`` was fitted on."""
        check_is_fitted(self)
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self):
        """Column names of the DataFrame ``estimator_`` was fitted on."""
        check_is_fitted(self)
        return self.estimator_.feature_names_in_

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Class labels predicted by ``estimator_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples,)
            Predicted labels.
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities from ``estimator_``, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Probabilities.
        """
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """Log class probabilities from ``estimator_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Log-probabilities.
        """
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """Decision function of ``estimator_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
            Scores.
        """
        check_is_fitted(self)
        return self.estimator_.decision_function(X)

    @available_if(_estimator_has("score"))
    def score(self, X, y, sample_weight=None):
        """``estimator_``'s score (the mean accuracy for scikit-learn classifiers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Test samples.
        y : array-like of shape (n_samples,)
            True labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the test samples, passed on when given.

        Returns
        -------
        float
            The score.
        """
        check_is_fitted(self)
        if sample_weight is None:
            return self.estimator_.score(X, y)
        return self.estimator_.score(X, y, sample_weight=sample_weight)


def _append_rows(X, X_extra):
    """X's rows followed by X_extra's, keeping a DataFrame a DataFrame."""
    if hasattr(X, "iloc"):
        import pandas as pd

        extra = X_extra if hasattr(X_extra, "iloc") else pd.DataFrame(np.asarray(X_extra), columns=X.columns)
        return pd.concat([X, extra], ignore_index=True)
    X_arr = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
    extra = np.asarray(X_extra.detach().cpu() if isinstance(X_extra, torch.Tensor) else X_extra)
    if extra.shape[1:] != X_arr.shape[1:]:
        raise ValueError(f"the meta set has {extra.shape[1:]} features per row but X has {X_arr.shape[1:]}")
    # numpy's common type of both: float meta rows next to an integer X are not truncated
    return np.concatenate([X_arr, extra])


def _fit_weighted(estimator, X, y, sample_weight):
    """``estimator.fit`` with ``sample_weight``; for a Pipeline, to its last step (as a
    ``<step>__sample_weight`` fit parameter, or routed when metadata routing is on, which
    needs ``set_fit_request(sample_weight=True)`` on that step)."""
    if isinstance(estimator, Pipeline) and not _routing_enabled():
        estimator.fit(X, y, **{f"{estimator.steps[-1][0]}__sample_weight": sample_weight})
    else:
        estimator.fit(X, y, sample_weight=sample_weight)
