"""skorch callbacks for Meta-Weight-Net runs: checkpoints that resume exactly."""

from __future__ import annotations

import os
from contextlib import suppress

import numpy as np
import torch
from skorch.callbacks import Checkpoint as _SkorchCheckpoint
from skorch.callbacks import LoadInitState as _SkorchLoadInitState
from skorch.callbacks import PassthroughScoring
from skorch.utils import noop

__all__ = ["Checkpoint", "LoadInitState", "FinitePassthroughScoring"]


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
