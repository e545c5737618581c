"""skorch callbacks for Meta-Weight-Net runs: checkpoints that resume exactly, a monitor
that says when the weighting function collapses, and meta-set scoring with best-epoch keeping."""

from __future__ import annotations

import copy
import os
import warnings
from contextlib import suppress

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.callbacks import Checkpoint as _SkorchCheckpoint
from skorch.callbacks import LoadInitState as _SkorchLoadInitState
from skorch.callbacks import PassthroughScoring
from skorch.utils import noop

from .core.weight_net import FLAT_SPREAD, weight_profile

__all__ = [
    "Checkpoint",
    "LoadInitState",
    "FinitePassthroughScoring",
    "WeightMonitor",
    "WeightCollapseWarning",
    "MetaScoring",
]


class WeightCollapseWarning(UserWarning):
    """The weighting function stopped weighting (near constant), or the meta loss stalled."""


class WeightMonitor(Callback):
    """Watch the learned weighting function and the meta loss; say so when either stops working.

    After every epoch it evaluates the weight net over the losses seen in that epoch (their
    5th to 95th percentiles) and records in ``history``:

    * ``weight_fn_spread``: ``(max - min) / max`` of the weights over those losses (0: constant);
    * ``weight_fn_trend``: ``"decreasing"``, ``"increasing"``, ``"flat"`` or ``"non-monotonic"``;
    * ``weight_collapsed``: True once the function has been flat for ``patience`` epochs in a
      row. A flat function gives every sample the same weight, so Meta-Weight-Net then trains
      exactly like plain training (with a rescaled learning rate);
    * ``meta_stalled``: True once the epoch's meta loss has not improved on its best for
      ``meta_patience`` epochs.

    Each condition raises one :class:`WeightCollapseWarning` per fit that says what to try.
    :class:`~mwnet_sk.MetaWeightClassifier` includes this callback by default as
    ``"weight_monitor"``: tune it with ``callbacks__weight_monitor__patience=5``, or switch it
    off with ``callbacks__weight_monitor=None``.

    Parameters
    ----------
    flat_spread : float, default=0.1
        Spread below which the function counts as flat.
    patience : int, default=3
        Consecutive flat epochs before ``weight_collapsed`` is set and the warning raised.
    meta_patience : int or None, default=10
        Epochs without a new best meta loss before ``meta_stalled`` is set; None never checks.
    warn : bool, default=True
        Raise the warnings (the history is recorded either way).
    """

    def __init__(self, flat_spread=FLAT_SPREAD, patience=3, meta_patience=10, warn=True):
        self.flat_spread = flat_spread
        self.patience = patience
        self.meta_patience = meta_patience
        self.warn = warn

    def initialize(self):
        self.flat_epochs_ = 0
        self.best_meta_loss_ = np.inf
        self.best_meta_epoch_ = 0
        self.warned_ = set()
        return self

    def state_dict(self):
        """What a resumed run needs to continue counting (see :class:`Checkpoint`)."""
        return {"flat_epochs": self.flat_epochs_, "best_meta_loss": float(self.best_meta_loss_),
                "best_meta_epoch": self.best_meta_epoch_, "warned": sorted(self.warned_)}

    def load_state_dict(self, state):
        self.flat_epochs_ = int(state["flat_epochs"])
        self.best_meta_loss_ = float(state["best_meta_loss"])
        self.best_meta_epoch_ = int(state["best_meta_epoch"])
        self.warned_ = set(state["warned"])

    def _warn(self, kind, message):
        if self.warn and kind not in self.warned_:
            warnings.warn(message, WeightCollapseWarning, stacklevel=2)
        self.warned_.add(kind)

    def on_epoch_end(self, net, **kwargs):
        history = net.history
        epoch = len(history)
        loss_range = net._observed_loss_range() if hasattr(net, "_observed_loss_range") else None
        if loss_range is not None:
            profile = weight_profile(net._weight_function_live, *loss_range)
            history.record("weight_fn_spread", profile.spread)
            history.record("weight_fn_trend", profile.trend)
            self.flat_epochs_ = self.flat_epochs_ + 1 if profile.spread < self.flat_spread else 0
            collapsed = self.flat_epochs_ >= self.patience
            history.record("weight_collapsed", collapsed)
            if collapsed:
                self._warn("collapse", (
                    f"the learned weighting function has been nearly constant for {self.flat_epochs_} "
                    f"epochs ({profile}), so every sample gets the same weight and Meta-Weight-Net "
                    "trains like plain training. Try normalize_weights=True (the default), another "
                    "meta_lr (e.g. 10x larger or smaller), and check that the meta set is clean and "
                    "class-balanced; history['weight_fn_spread'] shows the spread per epoch."
                ))
        meta_loss = history[-1].get("meta_loss")
        if self.meta_patience is not None and meta_loss is not None and np.isfinite(meta_loss):
            if meta_loss < self.best_meta_loss_:
                self.best_meta_loss_, self.best_meta_epoch_ = float(meta_loss), epoch
            stalled = epoch - self.best_meta_epoch_ >= self.meta_patience
            history.record("meta_stalled", stalled)
            if stalled:
                self._warn("stall", (
                    f"the meta loss has not improved for {epoch - self.best_meta_epoch_} epochs (best "
                    f"{self.best_meta_loss_:.4g} at epoch {self.best_meta_epoch_}): the classifier "
                    "may be fitting the noise. Keep the best epoch with "
                    "callbacks=[mwnet_sk.callbacks.MetaScoring()], train fewer epochs, or lower the "
                    "learning rate earlier."
                ))


class MetaScoring(Callback):
    """Score the model on a clean set after every epoch and, optionally, keep the best epoch.

    The clean set is the meta set a :class:`~mwnet_sk.MetaWeightClassifier` fits with (when
    ``X_meta`` is None) or any ``(X_meta, y_meta)`` you pass, so the same callback gives a plain
    skorch ``NeuralNetClassifier`` the "select the epoch on the clean rows" baseline. The score
    is recorded in ``history`` under ``name`` (and ``name + "_best"``); with ``keep_best`` the
    classifier's parameters (``module_``) of the best epoch are restored when training ends.

    A meta set the classifier also trains on (``train_on_meta=True``) scores optimistically:
    select on it only when it is held out of training.

    Parameters
    ----------
    X_meta, y_meta : array-like or None, default=None
        The clean set, labels in the user's label space. None: the estimator's own meta set
        (only with :class:`~mwnet_sk.MetaWeightClassifier`).
    scoring : str or callable, default="accuracy"
        A scikit-learn scorer name or ``scorer(net, X, y)``; with the estimator's own meta set
        only ``"accuracy"`` and ``"neg_log_loss"`` are available.
    lower_is_better : bool, default=False
        Direction of the score.
    keep_best : bool, default=True
        Restore the best epoch's classifier parameters at the end of training.
    name : str, default="meta_score"
        History key.

    Examples
    --------
    >>> from skorch import NeuralNetClassifier
    >>> from mwnet_sk.callbacks import MetaScoring
    >>> scoring = MetaScoring(X_meta=[[0.0, 1.0]], y_meta=[1])  # with any skorch classifier
    """

    def __init__(self, X_meta=None, y_meta=None, scoring="accuracy", lower_is_better=False,
                 keep_best=True, name="meta_score"):
        self.X_meta = X_meta
        self.y_meta = y_meta
        self.scoring = scoring
        self.lower_is_better = lower_is_better
        self.keep_best = keep_best
        self.name = name

    def initialize(self):
        if (self.X_meta is None) != (self.y_meta is None):
            raise ValueError("MetaScoring needs both X_meta and y_meta, or neither (the estimator's meta set)")
        self.best_score_ = None
        self.best_epoch_ = None
        self.best_state_ = None
        return self

    def _score(self, net):
        if self.X_meta is not None:
            from sklearn.metrics import check_scoring

            return float(check_scoring(net, scoring=self.scoring)(net, self.X_meta, self.y_meta))
        if not hasattr(net, "_meta_set_score"):
            raise TypeError(
                f"{type(net).__name__} has no meta set of its own: pass MetaScoring(X_meta=..., y_meta=...)"
            )
        return float(net._meta_set_score(self.scoring))

    def _better(self, score):
        if self.best_score_ is None:
            return True
        return score < self.best_score_ if self.lower_is_better else score > self.best_score_

    def on_epoch_end(self, net, **kwargs):
        score = self._score(net)
        best = self._better(score)
        if best:
            self.best_score_, self.best_epoch_ = score, len(net.history)
            if self.keep_best:
                self.best_state_ = {k: v.detach().to("cpu", copy=True) for k, v in net.module_.state_dict().items()}
        net.history.record(self.name, score)
        net.history.record(self.name + "_best", bool(best))

    def on_train_end(self, net, **kwargs):
        if self.keep_best and self.best_state_ is not None:
            net.module_.load_state_dict(self.best_state_)

    def state_dict(self):
        return {"best_score": self.best_score_, "best_epoch": self.best_epoch_, "best_state": self.best_state_}

    def load_state_dict(self, state):
        self.best_score_, self.best_epoch_ = state["best_score"], state["best_epoch"]
        self.best_state_ = state["best_state"]


class Checkpoint(_SkorchCheckpoint):
    """skorch's ``Checkpoint`` that also saves what a Meta-Weight-Net run needs to resume.

    Besides the classifier, its optimizer, the criterion and the history, it saves the weight
    net (``f_weight_net``), the meta optimizer (``f_meta_optimizer``) and the training state
    (``f_training_state``: step counter, meta-batch position, the generators of the training
    shuffle and meta sampling, torch's RNG states and the per-sample weights so far). Resumed
    with :class:`LoadInitState`, a run ends bit-identical on CPU to an uninterrupted one.

    Parameters
    ----------
    monitor : str, callable or None, default=None
        When to save. None saves after every epoch (what resuming needs); skorch's
        ``"valid_loss_best"`` etc. work when a validation split is used.
    f_weight_net, f_meta_optimizer, f_training_state : str or None
        File names (formatted like skorch's ``f_params``); None skips the part.
    **kwargs
        Everything skorch's ``Checkpoint`` takes (``dirname``, ``f_params``, ``f_history``, ...).

    Examples
    --------
    >>> from mwnet_sk.callbacks import Checkpoint, LoadInitState
    >>> cp = Checkpoint(dirname="run1")
    >>> callbacks = [cp, LoadInitState(cp)]  # the same line starts and resumes the run
    """

    def __init__(
        self,
        monitor=None,
        f_params="params.pt",
        f_optimizer="optimizer.pt",
        f_criterion="criterion.pt",
        f_history="history.json",
        f_weight_net="weight_net.pt",
        f_meta_optimizer="meta_optimizer.pt",
        f_training_state="training_state.pt",
        f_pickle=None,
        fn_prefix="",
        dirname="",
        event_name="event_cp",
        sink=noop,
        load_best=False,
        use_safetensors=False,
        **kwargs,
    ):
        super().__init__(
            monitor=monitor,
            f_params=f_params,
            f_optimizer=f_optimizer,
            f_criterion=f_criterion,
            f_history=f_history,
            f_pickle=f_pickle,
            fn_prefix=fn_prefix,
            dirname=dirname,
            event_name=event_name,
            sink=sink,
            load_best=load_best,
            use_safetensors=use_safetensors,
            f_weight_net=f_weight_net,
            f_meta_optimizer=f_meta_optimizer,
            **kwargs,
        )
        self.f_training_state = f_training_state

    def _f_kwargs(self):
        # skorch hands every f_* to net.save_params, which only knows modules and optimizers.
        kwargs = super()._f_kwargs()
        kwargs.pop("f_training_state", None)
        return kwargs

    def training_state_file(self, net, idx=-1):
        if self.f_training_state is None:
            return None
        return self._format_target(net, self.f_training_state, idx)

    def save_model(self, net):
        super().save_model(net)
        path = self.training_state_file(net)
        if path is None or not hasattr(net, "training_state_dict"):
            return
        # Written to a temporary file and renamed: an interruption mid-write never leaves a
        # truncated state next to complete parameter files.
        tmp = f"{path}.tmp"
        torch.save(net.training_state_dict(), tmp)
        os.replace(tmp, path)


class LoadInitState(_SkorchLoadInitState):
    """Restore a :class:`Checkpoint` when training begins, including the training state.

    With ``resume=True`` (default) the run continues where the checkpoint stopped and trains
    only the epochs still missing to reach ``max_epochs``, so the same script line both starts
    and resumes a run. ``resume=False`` keeps skorch's behaviour (load, then train
    ``max_epochs`` more epochs). The estimator restores this callback before any other
    callback's ``on_train_begin``, so learning-rate schedulers see the restored history.

    Parameters
    ----------
    checkpoint : Checkpoint
        The checkpoint to restore from; nothing happens when its files do not exist yet.
    resume : bool, default=True
        Train only up to ``max_epochs`` epochs in total.
    """

    def __init__(self, checkpoint, resume=True, use_safetensors=False):
        super().__init__(checkpoint, use_safetensors=use_safetensors)
        self.resume = resume

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if not self.did_load_:
            self.restore(net)

    def restore(self, net) -> bool:
        """Load the checkpoint into ``net``; return whether one was found."""
        self.did_load_ = True
        history_file = getattr(self.checkpoint, "f_history_", None)
        if history_file is not None and not os.path.exists(history_file):
            return False
        with suppress(FileNotFoundError):
            net.load_params(checkpoint=self.checkpoint, use_safetensors=self.use_safetensors)
            state_file = None
            if isinstance(self.checkpoint, Checkpoint):
                idx = _last_checkpoint_index(net, self.checkpoint)
                state_file = self.checkpoint.training_state_file(net, idx)
            if state_file is not None and os.path.exists(state_file) and hasattr(net, "load_training_state_dict"):
                state = torch.load(state_file, map_location="cpu", weights_only=True)
                net.load_training_state_dict(state)
            if self.resume:
                net.resume_from_epoch_ = len(net.history)
            return True
        return False


def _last_checkpoint_index(net, checkpoint):
    idx = -1
    if checkpoint.event_name is not None and net.history:
        for i, saved in enumerate(net.history[:, checkpoint.event_name]):
            if saved:
                idx = i
    return idx


class FinitePassthroughScoring(PassthroughScoring):
    """skorch's ``PassthroughScoring`` that ignores batches skipped for non-finite values."""

    def get_avg_score(self, history):
        key = "train_batch_size" if self.on_train else "valid_batch_size"
        weights, scores = map(np.asarray, zip(*history[-1, "batches", :, [key, self.name]]))
        finite = np.isfinite(scores)
        if not finite.any():
            return float("nan")
        return float(np.average(scores[finite], weights=weights[finite]))
