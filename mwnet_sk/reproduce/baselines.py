"""The baselines of the paper's tables: plain training and plain training fine-tuned on the meta set.

Both are the library's :class:`~mwnet_sk.baselines.PlainClassifier`, and
:func:`make_plain_baseline` is the one place of the reproduction that says what plain training
is: :func:`~mwnet_sk.baselines.plain_counterpart` of the Meta-Weight-Net estimator of the run
(the same network and initial weights, optimizer, schedule, batch order, augmentation and data
path), trained with the cross-entropy loss on the rows that estimator trains on (the paper's
"BaseModel" / "Cross Entropy").
"""

from __future__ import annotations

import copy

from sklearn.base import clone

from ..baselines import PlainClassifier, plain_counterpart

__all__ = ["finetune", "make_plain_baseline"]


def make_plain_baseline(estimator, **overrides) -> PlainClassifier:
    """Plain training of the rows ``estimator`` trains on: the tables' baseline.

    Fit it with the same ``X, y, meta=`` as the estimator. It trains on the meta rows exactly
    when the estimator does (``train_on_meta``): under the authors' settings (the protocol
    presets) the meta set is held out of both, as in the paper; under the estimator's defaults
    both train on every labelled row.

    Parameters
    ----------
    estimator : MetaWeightClassifier
        The run's Meta-Weight-Net estimator (fitted or not; it is not changed).
    **overrides
        Parameters of the baseline that differ from the estimator's, e.g. ``callbacks=`` with
        another progress label.

    Returns
    -------
    PlainClassifier
        Unfitted.
    """
    overrides.setdefault("train_on_meta", estimator.train_on_meta)
    return plain_counterpart(estimator, **overrides)


def finetune(baseline: PlainClassifier, X_meta, y_meta, *, epochs: int, lr: float, batch_size: int | None = None,
             random_state: int | None = None) -> PlainClassifier:
    """The paper's "Fine-tuning": a copy of the fitted baseline trained on the clean meta set.

    The paper gives no schedule; the reproduction trains ``epochs`` epochs at a fixed ``lr``
    (the final learning rate of the training schedule) with the baseline's optimizer, device,
    augmentation and data path, and without its callbacks (no schedule, no progress).

    Parameters
    ----------
    baseline : PlainClassifier
        The fitted baseline (:func:`make_plain_baseline`); it is not changed.
    X_meta, y_meta : array-like
        The clean meta set.
    epochs : int
        Epochs on the meta set.
    lr : float
        The fixed learning rate.
    batch_size : int or None, default=None
        None: the baseline's. Never larger than the meta set.
    random_state : int or None, default=None
        Seeds the order of the meta batches.

    Returns
    -------
    PlainClassifier
        The fitted copy.
    """
    params = clone(baseline).get_params(deep=False)
    # the trained weights are the starting point: constructor arguments would rebuild the module
    params = {k: v for k, v in params.items() if not k.startswith(("module__", "callbacks__"))}
    trained = getattr(baseline.module_, "_orig_mod", baseline.module_)  # unwrapped when compiled
    params.update(
        module=copy.deepcopy(trained), lr=lr, max_epochs=int(epochs), callbacks=None, verbose=0,
        batch_size=min(int(batch_size or baseline.batch_size), len(y_meta)), random_state=random_state,
        classes=list(baseline.classes_), train_on_meta=True,
    )  # fmt: skip
    module = params.pop("module")
    return PlainClassifier(module, **params).fit(X_meta, y_meta)
