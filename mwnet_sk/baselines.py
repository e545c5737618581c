"""Honest baselines: plain training on the same labelled rows, with the same network, recipe,
data pipeline and random streams as a :class:`~mwnet_sk.MetaWeightClassifier`.

Compare in three lines::

    mw = MetaWeightClassifier(MLP, module__n_features=64, module__num_classes=10, lr=0.1,
                              random_state=0).fit(X, y, meta=mask)
    plain = plain_counterpart(mw).fit(X, y, meta=mask)   # trains on every labelled row
    print(mw.score(X_test, y_test), plain.score(X_test, y_test))

and for the "select the epoch on the clean rows" baseline, train on the noisy rows only and let
:class:`~mwnet_sk.callbacks.MetaScoring` keep the epoch that scores best on the meta set::

    selected = plain_counterpart(mw, train_on_meta=False, callbacks=[MetaScoring()]).fit(X, y, meta=mask)

The estimator predicts for the meta set's class frequencies (``target_prior="meta"``); plain
training predicts for those of its training rows. To see what the weighting adds beyond that
correction, give plain training the same one::

    corrected = plain_counterpart(mw, target_prior="meta").fit(X, y, meta=mask)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._base import MetaSetClassifier
from ._validation import parameter_constraints
from .core.bilevel import META_GRADIENTS, PRECISIONS

__all__ = ["PlainClassifier", "plain_counterpart"]


@dataclass
class _PlainStep:
    logits: torch.Tensor
    losses: torch.Tensor
    weights: torch.Tensor
    loss: torch.Tensor
    n: torch.Tensor


class PlainClassifier(MetaSetClassifier):
    """Plain (unweighted) training of a PyTorch classifier, taking ``meta=`` like the
    Meta-Weight-Net estimator.

    With ``train_on_meta=True`` (default) the meta rows are training rows like any other, so
    the model sees exactly the labelled rows Meta-Weight-Net sees: the fair comparison. With
    ``train_on_meta=False`` the meta rows are held out, e.g. to select the best epoch on them
    with :class:`~mwnet_sk.callbacks.MetaScoring`. ``meta`` may also be omitted.

    Everything else (data forms, label encoding, fast in-memory batches, ``random_state``,
    ``nan_policy``, ``batch_transform``, checkpoints, callbacks) works as in
    :class:`~mwnet_sk.MetaWeightClassifier`, and the same ``random_state`` gives the same
    initial weights and the same batch order.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        The classifier (returns logits).
    train_on_meta : bool, default=True
        Train on the meta rows too.
    target_prior : {"train", "meta"} or array-like of shape (n_classes,), default="train"
        The class frequencies predictions are made for, as in
        :class:`~mwnet_sk.MetaWeightClassifier` (whose default is ``"meta"``). ``"train"``
        (default) is plain training as you would run it otherwise; ``"meta"`` gives plain
        training the same class-prior correction, to see what the weighting adds beyond it.
    **kwargs
        As :class:`~mwnet_sk.MetaWeightClassifier` (the shared parameters) and skorch's
        ``NeuralNetClassifier``.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained classifier.
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    train_prior_, target_prior_ : ndarray of shape (n_classes,)
        The class frequencies trained on and predicted for (see ``target_prior``).
    sample_losses_ : ndarray of shape (n_rows,)
        The training loss of each row of X at its last visit (NaN for rows never trained on).

    Examples
    --------
    >>> import numpy as np
    >>> from mwnet_sk.baselines import PlainClassifier
    >>> from mwnet_sk.models import MLP
    >>> X = np.random.RandomState(0).rand(60, 4).astype(np.float32)
    >>> y = (X[:, 0] > 0.5).astype(int)
    >>> clf = PlainClassifier(MLP, module__n_features=4, module__num_classes=2, max_epochs=2,
    ...                       verbose=0, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        key: value
        for key, value in parameter_constraints(META_GRADIENTS, PRECISIONS, ("raise", "skip")).items()
        if key in ("lr", "max_epochs", "batch_size", "train_on_meta", "random_state", "nan_policy",
                   "data_on_device", "precision", "channels_last", "sync_batchnorm", "target_prior")
    }

    def _meta_required(self) -> bool:
        return False

    @property
    def sample_losses_(self):
        state = vars(self).get("training_state_")
        if state is None:
            raise AttributeError("PlainClassifier has no attribute 'sample_losses_' before fit")
        return state.losses_of_rows()

    def _step(self, x, y, batch, on_grad_computed):
        from .core.bilevel import NonFiniteError

        dtype = PRECISIONS[self.precision]
        device = torch.device(self.device)
        reducer = self._reducer()
        count = torch.tensor([float(len(y))], device=device)
        if reducer is not None:  # the mean over the global batch: each process adds its part
            reducer.sum_([count])
        calls = [0]
        out = {}

        def closure():
            self.optimizer_.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.enable_grad():
                logits = self._call_module(self.module_, x)
            losses = self.criterion_(logits.float(), y)
            loss = losses.sum() / count[0]
            loss.backward()
            grads = [p.grad for p in self.module_.parameters() if p.grad is not None]
            value = loss.detach().reshape(1)
            if reducer is not None:
                reducer.sum_(grads + [value])
            if calls[0] == 0:
                out.update(logits=logits.detach(), losses=losses.detach(), loss=value[0])
            calls[0] += 1
            flags = [torch.isfinite(losses).all()] + ([torch.stack(torch._foreach_norm(grads)).isfinite().all()]
                                                      if grads else [])
            if not bool(torch.stack(flags).all()):
                raise NonFiniteError("train loss" if not bool(flags[0]) else "classifier gradient")
            on_grad_computed()
            return value[0]

        buffers = [b.clone() for b in self.module_.buffers()]
        try:
            self.optimizer_.step(closure)
        except NonFiniteError:
            with torch.no_grad():
                for b, saved in zip(self.module_.buffers(), buffers):
                    b.copy_(saved)
            self.optimizer_.zero_grad(set_to_none=True)
            raise
        return _PlainStep(out["logits"], out["losses"], torch.ones_like(out["losses"]), out["loss"], count[0])


_SHARED = ("module", "criterion", "optimizer", "lr", "max_epochs", "batch_size", "iterator_train",
           "iterator_valid", "dataset", "train_split", "callbacks", "predict_nonlinearity", "warm_start",
           "verbose", "device", "compile", "use_caching", "torch_load_kwargs", "random_state", "nan_policy",
           "batch_transform", "data_on_device", "precision", "channels_last", "sync_batchnorm", "classes")
_SHARED_PREFIXES = ("module__", "criterion__", "optimizer__", "iterator_train__", "iterator_valid__",
                    "dataset__", "callbacks__", "batch_transform__", "compile__")


def plain_counterpart(estimator, **overrides) -> PlainClassifier:
    """An unfitted :class:`PlainClassifier` with ``estimator``'s network, optimizer, schedule
    (callbacks), data settings and ``random_state``: plain training on the same labelled rows.

    It trains on every labelled row, the meta rows included, whatever the estimator's
    ``train_on_meta``: plain training has no use for a held-out clean set other than training
    on it, so this is what a user would run instead. ``overrides`` replace any parameter, e.g.
    ``train_on_meta=False, callbacks=[MetaScoring()]`` (hold the meta rows out to select the
    best epoch on them).
    Callbacks are cloned; the estimator's own defaults (the weight monitor) do not apply.
    Predictions are the network's own (``target_prior="train"``), as plain training gives
    them; ``target_prior="meta"`` adds the estimator's class-prior correction.
    """
    from sklearn.base import clone

    params = clone(estimator).get_params(deep=False)
    shared = {k: v for k, v in params.items() if k in _SHARED or k.startswith(_SHARED_PREFIXES)}
    shared.pop("callbacks__weight_monitor", None)
    shared.update(overrides)
    module = shared.pop("module")
    return PlainClassifier(module, **shared)
