"""skorch callbacks for Meta-Weight-Net runs: crash-safe checkpoints that resume exactly, a
monitor that says when the weighting function collapses, meta-set scoring that keeps the
best epoch, and per-epoch progress for long runs.

A checkpoint is one unit. :class:`Checkpoint` writes every part of epoch k (classifier, both
optimizers, criterion, weight net, history, training state with the states of stateful
callbacks) into a new hidden folder, then a manifest with every part's size and SHA-256, then
makes the folder current with one atomic rename, and only then removes the previous one. A
run killed at any instant, also while saving, leaves the last complete checkpoint in place;
:class:`LoadInitState` verifies the unit (naming any missing or damaged part), refuses one
made by a run on other data or with other hyper-parameters, and the resumed run equals the
uninterrupted one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, PassthroughScoring
from skorch.callbacks import Checkpoint as _SkorchCheckpoint
from skorch.callbacks import LoadInitState as _SkorchLoadInitState
from skorch.history import History
from skorch.utils import noop

from .core.weight_net import FLAT_SPREAD

__all__ = [
    "Checkpoint",
    "LoadInitState",
    "CheckpointError",
    "CheckpointMismatchError",
    "FinitePassthroughScoring",
    "WeightMonitor",
    "WeightCollapseWarning",
    "MetaScoring",
    "EpochProgress",
    "callback_states",
    "load_callback_states",
]

_FORMAT = "mwnet-sk-checkpoint"
_VERSION = 1
_UNIT = re.compile(r"^checkpoint-(\d{6,})$")
_MANIFEST = "manifest.json"
# Parameters that may differ between a checkpoint and the run that resumes it: they do not
# change what the next training step computes.
_RESUMABLE_CHANGES = {"max_epochs", "verbose", "device", "callbacks", "warm_start", "compile"}
_RESUMABLE_PREFIXES = ("callbacks__", "iterator_meta__num_workers", "iterator_meta__pin_memory",
                       "iterator_train__num_workers", "iterator_train__pin_memory", "iterator_valid__",
                       "compile__")


class CheckpointError(OSError):
    """A checkpoint could not be written, or none complete could be read; the message names
    the folder and the part. A failed save leaves the previous checkpoint untouched."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was made by a run on other data or with other hyper-parameters."""


# --------------------------------------------------------------------------- callback states
def _state_of(callback):
    """The resumable state of a callback: its own ``state_dict()``, or, for skorch's stateful
    callbacks, what their training-time attributes hold."""
    if callable(getattr(callback, "state_dict", None)):
        return callback.state_dict()
    if isinstance(callback, LRScheduler):
        scheduler = getattr(callback, "lr_scheduler_", None)
        return {"scheduler": None if scheduler is None else scheduler.state_dict(),
                "batch_idx": int(getattr(callback, "batch_idx_", 0))}
    if isinstance(callback, EarlyStopping):
        return {"misses": int(callback.misses_), "dynamic_threshold": float(callback.dynamic_threshold_),
                "best_epoch": int(getattr(callback, "best_epoch_", 0)),
                "best_model_weights": getattr(callback, "best_model_weights_", None)}
    return None


def _load_state_of(callback, state):
    if callable(getattr(callback, "load_state_dict", None)):
        callback.load_state_dict(state)
    elif isinstance(callback, LRScheduler):
        if state["scheduler"] is not None and getattr(callback, "lr_scheduler_", None) is not None:
            callback.lr_scheduler_.load_state_dict(state["scheduler"])
        callback.batch_idx_ = int(state["batch_idx"])
    elif isinstance(callback, EarlyStopping):
        callback.misses_ = int(state["misses"])
        callback.dynamic_threshold_ = float(state["dynamic_threshold"])
        callback.best_epoch_ = int(state["best_epoch"])
        callback.best_model_weights_ = state["best_model_weights"]


def callback_states(net) -> dict:
    """``{name: state}`` of every callback of ``net`` that has a resumable state.

    The mechanism for your own callbacks: give them ``state_dict()`` returning tensors,
    numbers, strings, lists and dicts, and ``load_state_dict(state)``; a checkpoint saves the
    state and a resumed run restores it after every callback's ``on_train_begin``. skorch's
    ``LRScheduler`` (per epoch and per batch, ``ReduceLROnPlateau`` included) and
    ``EarlyStopping`` are covered without that.
    """
    states = {}
    for name, callback in getattr(net, "callbacks_", None) or []:
        state = _state_of(callback)
        if state is not None:
            states[name] = state
    return states


def load_callback_states(net, states: dict):
    """Restore :func:`callback_states` output into the callbacks of the same names."""
    callbacks = dict(net.callbacks_)
    missing = sorted(set(states) - set(callbacks))
    if missing:
        raise CheckpointMismatchError(
            f"the checkpoint holds the state of callbacks {missing}, which this run does not have: "
            "resume with the same callbacks"
        )
    for name, state in states.items():
        _load_state_of(callbacks[name], state)


# --------------------------------------------------------------------------- run identity
def _canonical(value):
    """A stable, comparable description of a hyper-parameter value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, torch.nn.Module):
        return f"{type(value).__module__}.{type(value).__qualname__} instance"
    if hasattr(value, "get_params"):
        return {"class": f"{type(value).__module__}.{type(value).__qualname__}",
                "params": _canonical(value.get_params(deep=False))}
    settings = {k: v for k, v in vars(value).items() if not k.startswith("_")} if hasattr(value, "__dict__") else None
    if settings and all(v is None or isinstance(v, (bool, int, float, str)) for v in settings.values()):
        # a small settings object, e.g. skorch's ValidSplit(5): ValidSplit(3) is another run
        return {"class": f"{type(value).__module__}.{type(value).__qualname__}", "params": _canonical(settings)}
    return f"{type(value).__module__}.{type(value).__qualname__}"


def run_parameters(net) -> dict:
    """The hyper-parameters that shape training, as comparable values."""
    params = {}
    for key, value in net.get_params(deep=False).items():
        if key in _RESUMABLE_CHANGES or key.startswith(_RESUMABLE_PREFIXES):
            continue
        params[key] = _canonical(value)
    return params


# --------------------------------------------------------------------------- file helpers
def _write_bytes(path: Path, payload: bytes):
    """Write a new file and force it to disk (every byte a checkpoint writes goes through here)."""
    with open(path, "xb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _switch(tmp: Path, final: Path):
    """Make a complete unit current: one atomic rename."""
    os.rename(tmp, final)


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain_module(module):
    return getattr(module, "_orig_mod", module)


class Checkpoint(_SkorchCheckpoint):
    """A crash-safe checkpoint of everything a run needs to resume exactly.

    Each save writes one unit, ``dirname/checkpoint-NNNNNN/``, holding the classifier
    (``f_params``), its optimizer, the criterion, the weight net, the meta optimizer, the
    history and the training state (step counter, generators and sampler positions, per-sample
    weights, torch's RNG states, and the states of stateful callbacks: LR schedulers,
    ``EarlyStopping``, the weight monitor, any callback with ``state_dict``). The parts are
    written into a hidden folder, followed by ``manifest.json`` (sizes and SHA-256 of every
    part, the run's data fingerprint and hyper-parameters), and the folder is made current
    with one atomic rename; the previous unit is removed only then (``keep`` units are kept).

    Guarantees: a kill at any instant, also during a save, leaves the last complete unit
    loadable. A save that fails (disk full, permissions, a missing package) raises
    :class:`CheckpointError` and leaves the previous unit as it was. Loading verifies the
    manifest and names a missing or damaged part; it falls back to the newest complete unit.
    Every part is read with ``weights_only=True`` (no code runs), except an ``f_pickle`` that
    you ask for.

    Parameters
    ----------
    monitor : str, callable or None, default=None
        When to save. None saves after every epoch (what resuming needs); skorch's
        ``"valid_loss_best"`` etc. work when a validation split is used.
    f_params, f_optimizer, f_criterion, f_history, f_weight_net, f_meta_optimizer, f_training_state : str or None
        File names inside the unit (formatted like skorch's, e.g. ``"params_{last_epoch[epoch]}.pt"``);
        None leaves a part out (the resumed run is then not exact: only for inference saves).
        Parts the estimator does not have (a plain classifier has no weight net) are skipped.
    f_pickle : str or None, default=None
        Also pickle the whole estimator into the unit (loading it runs code: only from trusted folders).
    fn_prefix : str, default=""
        Prefix of every file name.
    dirname : str, default=""
        The folder holding the units (created when missing).
    keep : int, default=1
        Complete units kept (the newest ones); older ones are removed after each save.
    use_safetensors : bool, default=False
        Write the module parts (classifier, criterion, weight net) with safetensors; optimizer
        states and the training state are always written by ``torch.save`` and read with
        ``weights_only=True``.
    **kwargs
        ``event_name``, ``sink``, ``load_best`` as in skorch's ``Checkpoint``.

    Examples
    --------
    >>> from mwnet_sk.callbacks import Checkpoint, LoadInitState
    >>> cp = Checkpoint(dirname="run1")
    >>> callbacks = [cp, LoadInitState(cp)]  # the same line starts and resumes the run
    """

    _saves_training_state = True

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
        keep=1,
        **kwargs,
    ):
        super().__init__(
            monitor=monitor, f_params=f_params, f_optimizer=f_optimizer, f_criterion=f_criterion,
            f_history=f_history, f_pickle=f_pickle, fn_prefix=fn_prefix, dirname=dirname,
            event_name=event_name, sink=sink, load_best=load_best, use_safetensors=False,
            f_weight_net=f_weight_net, f_meta_optimizer=f_meta_optimizer, f_training_state=f_training_state,
            **kwargs,
        )
        # skorch refuses optimizers with safetensors; here they are written by torch.save
        self.use_safetensors = use_safetensors
        self.keep = keep

    def initialize(self):
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ValueError(f"keep must be a positive integer, got {self.keep!r}")
        self._validate_filenames()
        try:
            self._root().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the checkpoint folder {self._root()}: {type(exc).__name__}: {exc}") from exc
        return self

    # ------------------------------------------------------------------ parts
    def _parts(self, net):
        """(key, attribute, file name template, kind) of every part this net has."""
        parts = []
        for key in sorted(k for k in vars(self) if k.startswith("f_") and not k.endswith("_")):
            template = getattr(self, key)
            if template is None or key in ("f_pickle",):
                continue
            name = key[2:]
            if name == "history":
                parts.append((key, None, template, "history"))
            elif name == "training_state":
                parts.append((key, None, template, "training_state"))
            else:
                attr = "module" if name == "params" else name
                component = getattr(net, attr + "_", None)
                if component is None:
                    continue
                kind = "optimizer" if isinstance(component, torch.optim.Optimizer) else "module"
                parts.append((key, attr, template, kind))
        if self.f_pickle is not None:
            parts.append(("f_pickle", None, self.f_pickle, "pickle"))
        return parts

    def _filename(self, net, template):
        history = net.history
        return self.fn_prefix + template.format(
            net=net,
            last_epoch=history[-1] if history else {},
            last_batch=history[-1, "batches", -1] if history and history[-1, "batches"] else {},
        )

    def _serialize(self, net, kind, attr) -> bytes:
        """The bytes of one part (parts are serialised in memory, then written in one go)."""
        if kind == "history":
            return json.dumps(net.history.to_list()).encode()
        if kind == "training_state":
            blob = net.training_state_dict()
            buffer = io.BytesIO()
            try:
                torch.save(blob, buffer)
            except Exception as exc:  # noqa: BLE001 - e.g. a callback state holding a lambda
                self._raise_unsafe_state(blob, exc, "cannot be saved (torch.save fails")
            self._check_plain_data(blob, buffer.getvalue())
            return buffer.getvalue()
        if kind == "pickle":
            return pickle.dumps(net)
        state = _plain_module(getattr(net, attr + "_")).state_dict()
        if kind == "module" and self.use_safetensors:
            from safetensors.torch import save

            return save({k: v.detach().contiguous() for k, v in state.items()})
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    @staticmethod
    def _check_plain_data(blob, payload: bytes):
        """A training state must load with weights_only=True; name the callback whose state
        does not (e.g. one holding a function)."""
        try:
            torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # noqa: BLE001
            Checkpoint._raise_unsafe_state(blob, exc, "cannot be read back safely (torch.load(weights_only=True) fails")

    @staticmethod
    def _raise_unsafe_state(blob, exc, what: str):
        """Raise a CheckpointError naming the callback(s) whose state does not save and load
        back as plain data."""
        culprits = []
        for name, state in (blob.get("callbacks") or {}).items():
            try:
                buffer = io.BytesIO()
                torch.save(state, buffer)
                torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
            except Exception:  # noqa: BLE001 - any failure names the callback
                culprits.append(name)
        where = f"the state of callback(s) {culprits}" if culprits else "the training state"
        raise CheckpointError(
            f"{where} {what}: {exc}); give the callback a state_dict() of tensors, numbers, strings, lists and dicts"
        ) from exc

    # ------------------------------------------------------------------ saving
    def _root(self) -> Path:
        return Path(self.dirname) if self.dirname else Path(".")

    def _units(self):
        """Complete-looking unit folders, newest first: (counter, path)."""
        root = self._root()
        if not root.is_dir():
            return []
        units = []
        for entry in root.iterdir():
            match = _UNIT.match(entry.name)
            if match and entry.is_dir():
                units.append((int(match.group(1)), entry))
        return sorted(units, reverse=True)

    def save_model(self, net):
        """Write one checkpoint unit atomically (see the class docstring). In data-parallel
        training the first process writes and every process learns whether it succeeded."""
        from ._distributed import current_reducer

        reducer = current_reducer()
        if reducer is None:
            return self._save_unit(net)
        failure = None
        if reducer.is_main:
            try:
                self._save_unit(net)
            except CheckpointError as exc:
                failure = exc
        failed = reducer.broadcast_int(failure is not None)
        if failure is not None:
            raise failure
        if failed:
            raise CheckpointError(f"the first process could not save the checkpoint of epoch {len(net.history)} "
                                  f"to {self._root()} (its error names the cause)")

    def _save_unit(self, net):
        root = self._root()
        tmp = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            units = self._units()
            counter = units[0][0] + 1 if units else 1
            tmp = root / f".incomplete-{counter:06d}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            parts = {}
            for key, attr, template, kind in self._parts(net):
                filename = self._filename(net, template)
                if os.sep in filename or (os.altsep and os.altsep in filename) or filename in ("", ".", ".."):
                    raise ValueError(f"{key}={template!r} must be a file name inside the checkpoint folder")
                payload = self._serialize(net, kind, attr)
                _write_bytes(tmp / filename, payload)
                parts[key[2:]] = {"file": filename, "kind": kind, "attribute": attr,
                                  "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
            data = getattr(net, "fit_data_", None)
            manifest = {
                "format": _FORMAT,
                "version": _VERSION,
                "epoch": len(net.history),
                "counter": counter,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "estimator": f"{type(net).__module__}.{type(net).__qualname__}",
                "data": None if data is None else data.fingerprint(),
                "params": run_parameters(net),
                "safetensors": bool(self.use_safetensors),
                "parts": parts,
            }
            # the manifest is written last: a unit without one is incomplete
            _write_bytes(tmp / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            _fsync_dir(tmp)
            final = root / f"checkpoint-{counter:06d}"
            _switch(tmp, final)  # the unit is complete or it is not there
            tmp = None
            _fsync_dir(root)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (KeyboardInterrupt, SystemExit, CheckpointError)):
                raise
            previous = self._units()
            kept = f"the previous checkpoint {previous[0][1]} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(
                f"could not save the checkpoint of epoch {len(net.history)} to {root}: "
                f"{type(exc).__name__}: {exc}; {kept}"
            ) from exc
        self._prune(final)

    def _prune(self, current: Path):
        """Drop units older than the ``keep`` newest and leftovers of interrupted saves."""
        root = self._root()
        for _, path in self._units()[self.keep:]:
            if path != current:
                shutil.rmtree(path, ignore_errors=True)
        for entry in root.iterdir():
            if entry.name.startswith(".incomplete-") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def verify(path: Path) -> dict:
        """The manifest of the unit at ``path`` after checking every part; raises
        :class:`CheckpointError` naming what is missing or damaged."""
        path = Path(path)
        manifest_path = path / _MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{path}: {_MANIFEST} is missing (an interrupted or foreign folder)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: {_MANIFEST} is damaged ({exc})") from exc
        if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
            raise CheckpointError(f"{path}: not a {_FORMAT} version {_VERSION} checkpoint")
        for name, part in manifest["parts"].items():
            file = path / part["file"]
            if not file.is_file():
                raise CheckpointError(f"{path}: part {name!r} ({part['file']}) is missing")
            if file.stat().st_size != part["bytes"]:
                raise CheckpointError(
                    f"{path}: part {name!r} ({part['file']}) is damaged: {file.stat().st_size} bytes, "
                    f"{part['bytes']} expected"
                )
            if _sha256(file) != part["sha256"]:
                raise CheckpointError(f"{path}: part {name!r} ({part['file']}) is damaged: checksum mismatch")
        return manifest

    def latest(self, net=None):
        """(path, manifest) of the newest complete unit, or None when there is none yet.

        Damaged units are skipped with a warning naming the part; if units exist but none is
        complete, :class:`CheckpointError` lists them (delete the folder to start over).
        """
        problems = []
        for _, path in self._units():
            try:
                manifest = self.verify(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if problems:
                warnings.warn(
                    "skipped damaged checkpoint(s): " + "; ".join(problems) + f"; resuming from {path}",
                    UserWarning, stacklevel=2,
                )
            return path, manifest
        if problems:
            raise CheckpointError(
                "no complete checkpoint in " + str(self._root()) + ": " + "; ".join(problems)
                + ". Delete the folder to start over."
            )
        return None

    def load_unit(self, net, path: Path, manifest: dict, *, resume: bool = False):
        """Load every part of a verified unit into ``net`` (initialising it if needed)."""
        if not net.initialized_:
            net.initialize()
        parts = manifest["parts"]
        map_location = net.device if torch.device(net.device).type != "cuda" or torch.cuda.is_available() else "cpu"
        order = sorted(parts.items(), key=lambda kv: {"module": 0, "optimizer": 1}.get(kv[1]["kind"], 2))
        for name, part in order:
            file = path / part["file"]
            kind = part["kind"]
            if kind == "history":
                net.history = History.from_file(str(file))
            elif kind in ("module", "optimizer"):
                component = getattr(net, part["attribute"] + "_", None)
                if component is None:
                    raise CheckpointMismatchError(
                        f"{path}: the checkpoint has part {name!r} but this {type(net).__name__} has no "
                        f"{part['attribute']}_"
                    )
                if kind == "module" and manifest.get("safetensors"):
                    from safetensors.torch import load_file

                    state = load_file(str(file), device=str(map_location))
                else:
                    state = torch.load(file, map_location=map_location, weights_only=True)
                _plain_module(component).load_state_dict(state)
        for name, part in parts.items():
            if part["kind"] == "training_state":
                blob = torch.load(path / part["file"], map_location="cpu", weights_only=True)
                net.load_training_state_dict(blob, resume=resume)
        return net

    def load_into(self, net, use_safetensors=False):
        """What ``net.load_params(checkpoint=self)`` does: load the newest complete unit whole."""
        found = self.latest(net)
        if found is None:
            raise CheckpointError(f"no checkpoint in {self._root()}")
        path, manifest = found
        return self.load_unit(net, path, manifest)

    def get_formatted_files(self, net):
        """The files of the newest complete unit (skorch's interface)."""
        found = self.latest(net)
        if found is None:
            return {}
        path, manifest = found
        return {"f_" + name: str(path / part["file"]) for name, part in manifest["parts"].items()}

    @property
    def f_history_(self):
        found = self.latest()
        if found is None or "history" not in found[1]["parts"]:
            return None
        return str(found[0] / found[1]["parts"]["history"]["file"])


class LoadInitState(_SkorchLoadInitState):
    """Resume from a :class:`Checkpoint` when training begins.

    The same script line both starts and resumes a run: with no checkpoint yet it does
    nothing; otherwise it verifies the newest complete unit (falling back past damaged ones,
    naming them), checks that it was made by this run, and restores every part. With
    ``resume=True`` (default) training continues up to ``max_epochs`` epochs in total;
    ``resume=False`` keeps skorch's behaviour (``max_epochs`` more epochs).

    "This run" means the same data (training rows, labels, meta set: a checkpoint folder of
    another cross-validation fold is refused) and the same hyper-parameters, except
    ``max_epochs``, ``verbose``, ``device``, callbacks and loader worker settings. Refusals
    raise :class:`CheckpointMismatchError` saying what differs. A deliberate change is allowed
    with ``allow_changes``: the new value is applied (e.g. ``lr`` to the restored optimizer)
    and a warning says so.

    Parameters
    ----------
    checkpoint : Checkpoint
        The checkpoint to restore from.
    resume : bool, default=True
        Train only up to ``max_epochs`` epochs in total.
    allow_changes : sequence of str, default=()
        Hyper-parameters that may differ from the checkpoint's (their new values win).
    """

    _restores_training_state = True

    def __init__(self, checkpoint, resume=True, allow_changes=(), use_safetensors=False):
        super().__init__(checkpoint, use_safetensors=use_safetensors)
        self.resume = resume
        self.allow_changes = allow_changes

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if self.did_load_:
            return
        self.did_load_ = True
        if not isinstance(self.checkpoint, Checkpoint):
            raise TypeError("LoadInitState needs a mwnet_sk.callbacks.Checkpoint")
        found = self.checkpoint.latest(net)
        if found is None:
            return
        path, manifest = found
        changed = self._check_run(net, path, manifest)
        self.checkpoint.load_unit(net, path, manifest, resume=self.resume)
        for key, (old, new) in changed.items():
            if net._is_virtual_param(key):  # e.g. lr: the restored optimizer takes the new value
                net.set_params(**{key: net.get_params(deep=False)[key]})
            warnings.warn(f"resumed {path} with {key}={new!r} (the checkpoint had {old!r}), as allowed by "
                          "allow_changes", UserWarning, stacklevel=2)

    def _check_run(self, net, path, manifest) -> dict:
        data = getattr(net, "fit_data_", None)
        if manifest.get("data") is not None and data is not None and manifest["data"] != data.fingerprint():
            raise CheckpointMismatchError(
                f"{path} was written by a run on other data (other training rows, labels or meta set, "
                "e.g. another cross-validation fold), so it is not resumed. Give each run its own "
                "dirname (e.g. Checkpoint(dirname=f'runs/fold{k}')), or delete the folder to start over."
            )
        estimator = f"{type(net).__module__}.{type(net).__qualname__}"
        if manifest.get("estimator") not in (None, estimator):
            raise CheckpointMismatchError(f"{path} was written by a {manifest['estimator']}, not a {estimator}")
        saved, current = manifest.get("params", {}), run_parameters(net)
        allowed = set(self.allow_changes)
        differences, changed = [], {}
        for key in sorted(set(saved) | set(current)):
            old, new = saved.get(key, "<not set>"), current.get(key, "<not set>")
            if old == new:
                continue
            if key in allowed:
                changed[key] = (old, new)
            else:
                differences.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
        if differences:
            raise CheckpointMismatchError(
                f"{path} was made with other hyper-parameters, so resuming would not continue that run: "
                + "; ".join(differences)
                + ". Use the checkpoint's values, a new dirname, or LoadInitState(..., allow_changes=[...]) "
                "to apply the new values deliberately."
            )
        return changed


# --------------------------------------------------------------------------- scoring
class FinitePassthroughScoring(PassthroughScoring):
    """skorch's ``PassthroughScoring`` that ignores batches skipped for non-finite values."""

    def get_avg_score(self, history):
        key = "train_batch_size" if self.on_train else "valid_batch_size"
        weights, scores = map(np.asarray, zip(*history[-1, "batches", :, [key, self.name]]))
        finite = np.isfinite(scores)
        if not finite.any():
            return float("nan")
        return float(np.average(scores[finite], weights=weights[finite]))


class WeightCollapseWarning(UserWarning):
    """The weighting function stopped weighting (near constant, or every weight near zero), or
    the meta loss stalled or diverged."""


# Below this mean weight the weight net's sigmoid is saturated: its gradient (about the weight
# itself) no longer moves it, and the classifier learns from (almost) nothing.
VANISHED_WEIGHT = 1e-4


class WeightMonitor(Callback):
    """Watch the learned weighting function and the meta loss; say so when either stops working.

    After every epoch it evaluates the weight net over the training losses as they stand (the
    5th to 95th percentiles of each row's latest loss: the losses the weights now act on) and
    records in ``history``:

    * ``weight_fn_spread``: ``(max - min) / max`` of the weights over those losses (0: constant);
    * ``weight_fn_trend``: ``"decreasing"``, ``"increasing"``, ``"flat"`` or ``"non-monotonic"``
      (a class-aware weight net: the trend its classes share, or ``"class-dependent"``);
    * ``weight_collapsed``: True once the function has been flat for ``patience`` epochs in a
      row. A flat function gives every sample the same weight, so Meta-Weight-Net then trains
      exactly like plain training (with a rescaled learning rate);
    * ``weights_vanished``: True in an epoch whose mean training weight fell below
      ``vanished_weight``. The weight net's sigmoid has then saturated near 0, so it can hardly
      learn any more, and the classifier learns from (almost) nothing: a dead run, which the
      spread does not show (weights of 1e-9 and 1e-12 are as far apart, relatively, as 1 and
      0.001). In the robustness study a weight net trained by Adam without a warm-up went this
      way on some seeds and ended at chance level;
    * ``meta_diverged``: True in an epoch whose meta loss is above ten times
      ``log(n_classes)``, the loss of predicting every class alike: the classifier's training
      has blown up (in the robustness study it came with vanished weights, or with the weights
      of the rows that still had a loss near zero, and ended at chance level);
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
    vanished_weight : float, default=1e-4
        Mean training weight below which the weights count as vanished.
    """

    def __init__(self, flat_spread=FLAT_SPREAD, patience=3, meta_patience=10, warn=True,
                 vanished_weight=VANISHED_WEIGHT):
        self.flat_spread = flat_spread
        self.patience = patience
        self.meta_patience = meta_patience
        self.warn = warn
        self.vanished_weight = vanished_weight

    def initialize(self):
        self.flat_epochs_ = 0
        self.best_meta_loss_ = float("inf")
        self.best_meta_epoch_ = 0
        self.warned_ = set()
        return self

    def state_dict(self):
        """What a resumed run needs to continue counting (saved by :class:`Checkpoint`)."""
        return {"flat_epochs": self.flat_epochs_, "best_meta_loss": float(self.best_meta_loss_),
                "best_meta_epoch": self.best_meta_epoch_, "warned": sorted(self.warned_)}

    def load_state_dict(self, state):
        self.flat_epochs_ = int(state["flat_epochs"])
        self.best_meta_loss_ = float(state["best_meta_loss"])
        self.best_meta_epoch_ = int(state["best_meta_epoch"])
        self.warned_ = set(state["warned"])

    def _flag(self, history, column, flagged, kind, message):
        """Record ``column`` for this epoch; warn ``message()`` the first time ``kind`` is flagged
        in a fit."""
        history.record(column, bool(flagged))
        if flagged:
            if self.warn and kind not in self.warned_:
                warnings.warn(message(), WeightCollapseWarning, stacklevel=3)
            self.warned_.add(kind)

    def on_epoch_end(self, net, **kwargs):
        history = net.history
        epoch = len(history)
        loss_range = net._observed_loss_range() if hasattr(net, "_observed_loss_range") else None
        meta_loss = history[-1].get("meta_loss")
        # an epoch without a meta step (warm-up) says nothing about learning
        meta_step = meta_loss is not None and bool(np.isfinite(meta_loss))
        if loss_range is not None:
            profile = net._live_weight_function().profile(*loss_range)  # every class's curve if class-aware
            history.record("weight_fn_spread", profile.spread)
            history.record("weight_fn_trend", profile.trend)
            if meta_step:
                self.flat_epochs_ = self.flat_epochs_ + 1 if profile.spread < self.flat_spread else 0
            self._flag(history, "weight_collapsed", self.flat_epochs_ >= self.patience, "collapse", lambda: (
                f"the learned weighting function has been nearly constant for {self.flat_epochs_} "
                f"epochs ({profile}), so every sample gets the same weight and Meta-Weight-Net "
                f"trains like plain training. {_all_fit_note(net, loss_range)}That is expected when the "
                "training labels are clean (also on a long tail with clean labels, where in the robustness "
                "study the defaults' gain came from predicting for the meta set's class frequencies, "
                "target_prior='meta', not from the weighting); under label noise try "
                "normalize_weights=True (the default), the default weight net PerClassWeightNet (a "
                "loss-only WeightNet cannot separate flipped labels), another meta_lr (e.g. 10x larger "
                "or smaller), and check that the meta set is clean and class-balanced. "
                "history[:, 'weight_fn_spread'] shows the spread per epoch."
            ))
        weight_mean = history[-1].get("weight_mean")
        if weight_mean is not None and meta_step:
            # (a warm-up epoch, without a meta step, has every weight 1 and is not looked at)
            self._flag(history, "weights_vanished", weight_mean < self.vanished_weight, "vanished", lambda: (
                f"the training rows' weights have fallen to nearly zero (mean {weight_mean:.3g} this epoch, "
                f"epoch {epoch}): the weight net's sigmoid has saturated, so it can hardly learn any more, "
                "and the classifier learns from (almost) nothing. The weight net's optimizer has overshot: "
                "use the defaults (meta_optimizer='sgd', meta_lr=1e-2) or a smaller meta_lr, and check "
                "that the meta loss (history[:, 'meta_loss']) did not diverge first; if it did, lower the "
                "classifier's learning rate."
            ))
        if meta_step:
            if meta_loss < self.best_meta_loss_:
                self.best_meta_loss_, self.best_meta_epoch_ = float(meta_loss), epoch
            chance = np.log(max(len(getattr(net, "classes_inferred_", ())), 2))
            self._flag(history, "meta_diverged", meta_loss > 10 * chance, "diverged", lambda: (
                f"the meta loss has diverged: {meta_loss:.4g} at epoch {epoch}, more than ten times the "
                f"{chance:.3g} of predicting every class alike (best {self.best_meta_loss_:.4g} at epoch "
                f"{self.best_meta_epoch_}). "
                "The classifier's training has blown up; the weights may have followed (history[:, "
                "'weight_mean']). Lower the classifier's lr, or the weight net's meta_lr (the defaults: "
                "meta_optimizer='sgd', meta_lr=1e-2), and keep an earlier epoch with checkpoints "
                "(mwnet_sk.callbacks.Checkpoint) or callbacks=[mwnet_sk.callbacks.MetaScoring()]."
            ))
        if self.meta_patience is not None and meta_step:
            stalled = epoch - self.best_meta_epoch_ >= self.meta_patience
            self._flag(history, "meta_stalled", stalled, "stall", lambda: (
                f"the meta loss has not improved for {epoch - self.best_meta_epoch_} epochs (best "
                f"{self.best_meta_loss_:.4g} at epoch {self.best_meta_epoch_}): the classifier "
                "may be fitting the noise. Keep the best epoch with "
                "callbacks=[mwnet_sk.callbacks.MetaScoring()] (with train_on_meta=False), train "
                "fewer epochs, or lower the learning rate earlier."
            ))


def _all_fit_note(net, loss_range) -> str:
    """A sentence for the collapse warning when the training losses are all small: with every row
    fit, the meta gradient has nothing left to tell the rows apart by."""
    n_classes = len(getattr(net, "classes_inferred_", ())) or 2
    high = float(loss_range[1])
    if high >= 0.1 * np.log(n_classes):  # a tenth of the loss of a uniform guess
        return ""
    return (f"The training losses reach only {high:.3g}: the classifier fits every row, so nothing is left "
            "to weight. ")


class MetaScoring(Callback):
    """Score the model on a clean set after every epoch and, optionally, keep the best epoch.

    The clean set is the meta set a :class:`~mwnet_sk.MetaWeightClassifier` fits with (when
    ``X_meta`` is None) or any ``(X_meta, y_meta)`` you pass, so the same callback gives a plain
    skorch ``NeuralNetClassifier`` the "select the epoch on the clean rows" baseline. The score
    is recorded in ``history`` under ``name`` (and ``name + "_best"``); with ``keep_best`` the
    classifier's parameters (``module_``) of the best epoch are restored when training ends.
    The best epoch is that of the current ``fit`` (or ``partial_fit`` call): a warm-start fit is
    not rolled back to an earlier fit's parameters.

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
    >>> import numpy as np
    >>> from mwnet_sk.callbacks import MetaScoring
    >>> keep_best = MetaScoring(X_meta=np.zeros((4, 2), np.float32), y_meta=[0, 1, 0, 1])
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

    def on_train_begin(self, net, **kwargs):
        # the best epoch of this fit: a warm-start fit or a partial_fit (new rows, maybe another
        # meta set) must not be compared with, or rolled back to, an earlier fit's best. A
        # resumed run gets its saved best back after this (checkpoint states apply after
        # on_train_begin).
        self.best_score_ = self.best_epoch_ = self.best_state_ = None

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
                module = _plain_module(net.module_)
                self.best_state_ = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        net.history.record(self.name, score)
        net.history.record(self.name + "_best", bool(best))

    def on_train_end(self, net, **kwargs):
        if self.keep_best and self.best_state_ is not None:
            _plain_module(net.module_).load_state_dict(self.best_state_)

    def state_dict(self):
        return {"best_score": self.best_score_, "best_epoch": self.best_epoch_, "best_state": self.best_state_}

    def load_state_dict(self, state):
        self.best_score_, self.best_epoch_ = state["best_score"], state["best_epoch"]
        self.best_state_ = state["best_state"]


# --------------------------------------------------------------------------- progress
_PROGRESS_SHOWN = ("train_loss", "meta_loss", "weight_mean")
_PROGRESS_LINE = "{desc}: epoch {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


class EpochProgress(Callback):
    """A skorch callback that reports every epoch with tqdm.

    On a terminal it draws one bar that advances per epoch, with the last losses as postfix.
    When the stream is not a terminal (a log file, a CI job, a pipe) a bar's carriage
    returns would pile up on one line, so it prints one complete line per epoch instead
    (``MW-Net: epoch 3/60 [00:12<03:53,  4.10s/epoch], train_loss=0.512, ...``).

    Parameters
    ----------
    desc : str
        Label of the run (e.g. ``"MW-Net"``).
    file : file object or None, default=None
        Where to write; None means ``sys.stderr`` at the time training starts.
    disable : bool, default=False
        Report nothing.
    """

    def __init__(self, desc: str = "", file=None, disable: bool = False):
        self.desc = desc
        self.file = file
        self.disable = disable

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        stream = self.file if self.file is not None else sys.stderr
        self.stream_ = stream
        self.start_ = time.perf_counter()
        self.done_ = 0  # epochs of this call to fit
        self.offset_ = 0  # epochs in the history before them (a resumed run's)
        self.total_ = int(net.max_epochs)
        self.interactive_ = bool(getattr(stream, "isatty", lambda: False)())
        self.bar_ = None
        if self.interactive_ and not self.disable:
            self.bar_ = tqdm(total=self.total_, desc=self.desc, unit="epoch", file=stream, leave=False,
                             dynamic_ncols=True)  # fmt: skip

    def _count_from_the_history(self, net):
        """At the first epoch's end, number the epochs as the history does: a run resumed from
        a checkpoint (restored in ``on_train_begin``, maybe after this callback's) goes on
        from its epoch to ``max_epochs``, not from 1."""
        planned = getattr(getattr(net, "training_state_", None), "epochs_planned", None)
        if planned is None:  # a plain skorch net: max_epochs from 1
            return
        self.offset_ = len(net.history) - 1
        self.total_ = self.offset_ + int(planned)
        if self.bar_ is not None and self.offset_:
            # no epoch of the offset was timed here: start the rate after them
            self.bar_.total, self.bar_.initial = self.total_, self.offset_
            self.bar_.n = self.bar_.last_print_n = self.offset_

    def on_epoch_end(self, net, **kwargs):
        if self.disable:
            return
        from tqdm import tqdm

        if self.done_ == 0:
            self._count_from_the_history(net)
        row = net.history[-1]
        postfix = ", ".join(f"{k}={row[k]:.3f}" for k in _PROGRESS_SHOWN if k in row)
        self.done_ += 1
        if self.bar_ is not None:
            self.bar_.set_postfix_str(postfix, refresh=False)
            self.bar_.update(1)  # redraws only when tqdm's mininterval has passed
            if self.offset_ + self.done_ >= self.total_:
                self.bar_.refresh()  # so the last epoch is always drawn, however fast it ran
            return
        line = tqdm.format_meter(self.offset_ + self.done_, self.total_, time.perf_counter() - self.start_,
                                 prefix=self.desc, unit="epoch", postfix=postfix or None, bar_format=_PROGRESS_LINE,
                                 initial=self.offset_)  # fmt: skip
        print(line, file=self.stream_, flush=True)

    def on_train_end(self, net, **kwargs):
        bar = getattr(self, "bar_", None)
        if bar is not None:
            bar.close()
        self.bar_ = None
