"""Crash-safe checkpoints: a kill at any instant of a save, loud failures, verified loading,
refusal of other runs, and exact resume of every stateful part (callbacks included)."""

import json
import os
import random

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler

import mwnet_sk.callbacks as cb_module
from mwnet_sk import MetaWeightClassifier
from mwnet_sk.callbacks import Checkpoint, CheckpointError, CheckpointMismatchError, LoadInitState

from conftest import TinyMLP


@pytest.fixture(scope="module")
def data(digits):
    X, y, mask = digits
    keep = np.random.RandomState(2).permutation(np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)[:150]])
    return X[keep], y[keep], mask[keep]


def make_clf(**kwargs):
    params = dict(module=TinyMLP, module__dropout=0.2, lr=0.1, optimizer__momentum=0.9, max_epochs=3,
                  batch_size=64, verbose=0, random_state=0)
    params.update(kwargs)
    return MetaWeightClassifier(**params)


def _state(clf):
    """Everything a bit-identical comparison looks at."""
    return {
        "module": {k: v.clone() for k, v in clf.module_.state_dict().items()},
        "weight_net": {k: v.clone() for k, v in clf.weight_net_.state_dict().items()},
        "weights": clf.sample_weights_.copy(),
        "train_loss": clf.history[:, "train_loss"],
        "meta_loss": clf.history[:, "meta_loss"],
        "steps": clf.n_steps_,
        "lr": clf.optimizer_.param_groups[0]["lr"],
    }


def _assert_same(a, b):
    for part in ("module", "weight_net"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    np.testing.assert_array_equal(a["weights"], b["weights"])
    for key in ("train_loss", "steps", "lr"):
        assert a[key] == b[key], key
    # meta_loss is NaN in warm-up epochs (no meta step): NaN equals NaN here, numbers exactly
    np.testing.assert_array_equal(a["meta_loss"], b["meta_loss"], err_msg="meta_loss")


def _run(dirname, data, **kwargs):
    X, y, mask = data
    cp = Checkpoint(dirname=str(dirname))
    return make_clf(callbacks=[cp, LoadInitState(cp)], **kwargs).fit(X, y, meta=mask)


def _crash_child(dirname, data, crash):
    """Fork a child that trains and dies (os._exit) at write event ``crash`` = (n, where) of the
    epoch-2 save; return its exit status."""
    kind, n = crash
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        events = {"count": 0}
        real_write, real_switch = cb_module._write_bytes, cb_module._switch

        def in_epoch_two():
            return events.get("epoch") == 2

        class Epoch(Callback):
            def on_epoch_end(self, net, **kwargs):
                events["epoch"] = len(net.history)

        def write(path, payload):
            if in_epoch_two():
                events["count"] += 1
                if events["count"] == n:
                    if kind == "before":
                        os._exit(17)
                    if kind == "half":
                        with open(path, "xb") as f:
                            f.write(payload[: len(payload) // 2])
                        os._exit(17)
                    real_write(path, payload)
                    os._exit(17)  # "after"
            real_write(path, payload)

        def switch(tmp, final):
            if in_epoch_two() and kind == "switch-before":
                os._exit(17)
            real_switch(tmp, final)
            if in_epoch_two() and kind == "switch-after":
                os._exit(17)

        cb_module._write_bytes, cb_module._switch = write, switch
        try:
            X, y, mask = data
            cp = Checkpoint(dirname=str(dirname))
            # the epoch recorder runs before the checkpoint (callbacks run in order)
            make_clf(callbacks=[Epoch(), cp, LoadInitState(cp)]).fit(X, y, meta=mask)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def test_a_kill_at_any_write_of_a_save_resumes_to_the_uninterrupted_run(data, tmp_path, one_thread):
    reference = _state(make_clf().fit(*data[:2], meta=data[2]))
    n_writes = 8  # params, optimizer, criterion, history, weight net, meta optimizer, training state, manifest
    crashes = [(kind, n) for n in range(1, n_writes + 1) for kind in ("before", "half", "after")]
    crashes += [("switch-before", 0), ("switch-after", 0)]
    for i, crash in enumerate(crashes):
        dirname = tmp_path / f"run{i}"
        assert _crash_child(dirname, data, crash) == 17, crash  # it did die mid-save
        resumed = _run(dirname, data)  # the same line as before the crash
        _assert_same(reference, _state(resumed))
        assert not any(p.name.startswith(".incomplete-") for p in dirname.iterdir())


def test_a_failed_save_raises_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)
    units = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert units == ["checkpoint-000001"]

    def disk_full(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cb_module, "_write_bytes", disk_full)
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    clf = make_clf(max_epochs=2, callbacks=[cp, LoadInitState(cp)])
    with pytest.raises(CheckpointError, match="No space left on device.*checkpoint-000001 is intact"):
        clf.fit(X, y, meta=mask)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == units
    Checkpoint.verify(tmp_path / "run" / "checkpoint-000001")  # still complete


def test_unwritable_folder_and_missing_package_are_loud(data, tmp_path):
    X, y, mask = data
    (tmp_path / "a_file").write_text("not a folder")
    cp = Checkpoint(dirname=str(tmp_path / "a_file" / "run"))
    with pytest.raises(CheckpointError, match="cannot create the checkpoint folder.*Not a directory"):
        make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)
    try:
        import safetensors  # noqa: F401
    except ImportError:
        cp = Checkpoint(dirname=str(tmp_path / "st"), use_safetensors=True)
        with pytest.raises(CheckpointError, match="safetensors"):
            make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)


def test_a_missing_part_is_named_and_an_older_unit_is_used(data, tmp_path):
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"), keep=2)
    make_clf(max_epochs=2, callbacks=[cp]).fit(X, y, meta=mask)
    (tmp_path / "run" / "checkpoint-000002" / "weight_net.pt").unlink()
    cp = Checkpoint(dirname=str(tmp_path / "run"), keep=2)
    with pytest.warns(UserWarning, match=r"part 'weight_net' \(weight_net.pt\) is missing.*checkpoint-000001"):
        resumed = make_clf(max_epochs=2, callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)
    assert len(resumed.history) == 2
    # with only the damaged unit there is nothing to fall back to: refused, by name
    (tmp_path / "solo").mkdir()
    cp = Checkpoint(dirname=str(tmp_path / "solo"))
    make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)
    unit = tmp_path / "solo" / "checkpoint-000001"
    payload = (unit / "training_state.pt").read_bytes()
    (unit / "training_state.pt").write_bytes(payload[:-10])
    with pytest.raises(CheckpointError, match=r"part 'training_state' \(training_state.pt\) is damaged"):
        make_clf(callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)


def test_other_data_other_fold_and_changed_settings_are_refused(data, tmp_path):
    from sklearn.model_selection import cross_validate

    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)
    smaller = mask.copy()
    smaller[np.flatnonzero(mask)[:5]] = False
    for kwargs, meta, match in [
        ({}, smaller, "other data"),  # a smaller meta set
        ({"lr": 0.05}, mask, r"lr: 0.1 in the checkpoint, 0.05 now"),
        ({"meta_lr": 0.1}, mask, r"meta_lr: 0.01 in the checkpoint, 0.1 now"),
    ]:
        cp = Checkpoint(dirname=str(tmp_path / "run"))
        with pytest.raises(CheckpointMismatchError, match=match):
            make_clf(callbacks=[cp, LoadInitState(cp)], **kwargs).fit(X, y, meta=meta)
    # a deliberate change is applied and said
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    with pytest.warns(UserWarning, match="lr=0.05"):
        clf = make_clf(max_epochs=2, lr=0.05, callbacks=[cp, LoadInitState(cp, allow_changes=["lr"])])
        clf.fit(X, y, meta=mask)
    assert clf.optimizer_.param_groups[0]["lr"] == 0.05 and len(clf.history) == 2
    # the checkpoint recipe inside cross_validate: fold 2 does not "resume" fold 1
    cp = Checkpoint(dirname=str(tmp_path / "cv"))
    with pytest.raises(CheckpointMismatchError, match="another cross-validation fold"):
        cross_validate(make_clf(max_epochs=1, callbacks=[cp, LoadInitState(cp)]), X, y, cv=2,
                       params={"meta": mask}, error_score="raise")


class Crash(Callback):
    def __init__(self, epoch, batch=None):
        self.epoch, self.batch = epoch, batch

    def on_epoch_begin(self, net, **kwargs):
        # as the next epoch starts, once the unit of epoch `epoch` is written
        if self.batch is None and len(net.history) == self.epoch + 1:
            raise KeyboardInterrupt

    def on_batch_end(self, net, training=False, **kwargs):
        if self.batch is not None and training and len(net.history) == self.epoch \
                and len(net.history[-1, "batches"]) == self.batch:
            raise KeyboardInterrupt


class Counter(Callback):
    """A user callback with state, resumed through state_dict / load_state_dict."""

    def initialize(self):
        self.batches_ = 0
        return self

    def on_batch_end(self, net, training=False, **kwargs):
        self.batches_ += int(training)

    def on_epoch_end(self, net, **kwargs):
        net.history.record("batches_so_far", self.batches_)

    def state_dict(self):
        return {"batches": self.batches_}

    def load_state_dict(self, state):
        self.batches_ = state["batches"]


@pytest.mark.parametrize("name,callbacks,kwargs", [
    ("plateau", lambda: [LRScheduler("ReduceLROnPlateau", monitor="train_loss", patience=0, factor=0.5)], {}),
    ("early stopping", lambda: [EarlyStopping(monitor="train_loss", patience=1, threshold=0.2)], {"max_epochs": 8}),
    ("cyclic per batch", lambda: [LRScheduler("CyclicLR", base_lr=0.01, max_lr=0.2, step_size_up=3,
                                              step_every="batch")], {}),
    ("user callback", lambda: [Counter()], {}),
])
def test_stateful_callbacks_resume(data, tmp_path, name, callbacks, kwargs):
    X, y, mask = data
    params = {"max_epochs": 5, **kwargs}
    full = make_clf(callbacks=callbacks(), **params).fit(X, y, meta=mask)
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(callbacks=callbacks() + [cp, LoadInitState(cp), Crash(2)], **params).fit(X, y, meta=mask)
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    resumed = make_clf(callbacks=callbacks() + [cp, LoadInitState(cp)], **params).fit(X, y, meta=mask)
    assert len(resumed.history) == len(full.history)
    _assert_same(_state(full), _state(resumed))
    for key in ("event_lr", "batches_so_far"):
        if key in full.history[-1]:
            assert full.history[:, key] == resumed.history[:, key]


def test_initialize_and_load_params_gives_a_predicting_estimator(data, tmp_path):
    X, y, mask = data
    names = np.array(list("abcdefghij"))
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    fitted = make_clf(max_epochs=2, callbacks=[cp]).fit(X, names[y], meta=mask)
    loaded = make_clf().initialize()
    loaded.load_params(checkpoint=cp)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert loaded.predict(X).dtype.kind == "U"
    losses, labels = np.array([0.1, 2.0, 0.5]), np.array([0, 1, 1])
    np.testing.assert_allclose(loaded.weight_function_(losses, labels), fitted.weight_function_(losses, labels))
    np.testing.assert_array_equal(loaded.sample_weights_, fitted.sample_weights_)
    # the explicit-files form: save_params / load_params with the weight net and the training state
    fitted.save_params(f_params=tmp_path / "p.pt", f_weight_net=tmp_path / "w.pt",
                       f_training_state=tmp_path / "s.pt")
    again = make_clf().initialize()
    again.load_params(f_params=tmp_path / "p.pt", f_weight_net=tmp_path / "w.pt", f_training_state=tmp_path / "s.pt")
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))
    # parameters alone do not say what the labels are: refused, with what to load
    bare = make_clf().initialize()
    bare.load_params(f_params=tmp_path / "p.pt")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="training state"):
        bare.predict(X)


def test_skorch_checkpoint_is_refused_with_the_replacement(data):
    from skorch.callbacks import Checkpoint as SkorchCheckpoint

    X, y, mask = data
    with pytest.raises(TypeError, match="Use mwnet_sk.callbacks.Checkpoint instead"):
        make_clf(callbacks=[SkorchCheckpoint(dirname="never")]).fit(X, y, meta=mask)


def test_manifest_records_the_unit(data, tmp_path):
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=1, callbacks=[cp]).fit(X, y, meta=mask)
    manifest = json.loads((tmp_path / "run" / "checkpoint-000001" / "manifest.json").read_text())
    assert manifest["epoch"] == 1 and manifest["params"]["lr"] == 0.1 and len(manifest["data"]) == 64
    assert set(manifest["parts"]) == {"params", "optimizer", "criterion", "history", "weight_net",
                                      "meta_optimizer", "training_state"}


# ------------------------------------------------------------------ review fixes (2026-12-02)
def test_a_callback_listed_after_the_checkpoint_is_in_its_unit(data, tmp_path):
    """Checkpoints run after every other callback, whatever the order of the list."""
    X, y, mask = data
    # an integer warm-up: 20% of max_epochs would differ between the two legs
    full = make_clf(max_epochs=4, warmup_epochs=1, callbacks=[Counter()]).fit(X, y, meta=mask)
    for epochs in (2, 4):
        cp = Checkpoint(dirname=str(tmp_path / "run"))
        resumed = make_clf(max_epochs=epochs, warmup_epochs=1, callbacks=[cp, LoadInitState(cp), Counter()]).fit(
            X, y, meta=mask)
    assert resumed.history[:, "batches_so_far"] == full.history[:, "batches_so_far"]
    _assert_same(_state(full), _state(resumed))


class NoisyItems(torch.utils.data.Dataset):
    """A random augmentation drawn from a global generator (torch's, numpy's or Python's) of the
    process reading the item: a DataLoader worker, or the main process."""

    def __init__(self, X, y, source="torch"):
        self.X, self.targets, self.source = torch.from_numpy(X), y, source

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        d = self.X.shape[1]
        noise = {"torch": lambda: torch.randn(d), "numpy": lambda: torch.from_numpy(np.random.randn(d)).float(),
                 "python": lambda: torch.tensor([random.gauss(0, 1) for _ in range(d)])}[self.source]()
        return self.X[i] + 0.1 * noise, int(self.targets[i])


@pytest.mark.parametrize("source,workers", [("torch", 1), ("torch", 0), ("numpy", 0), ("python", 0)])
def test_resume_equals_the_uninterrupted_run_with_random_dataset_items(data, tmp_path, one_thread, source, workers):
    """The workers' seeds, the extra read of two items before training, and the global generators a
    Dataset draws from in the main process are all part of what a resume restores."""
    X, y, mask = data
    rows = np.flatnonzero(~mask)[:120]
    meta = (X[mask], y[mask])
    kwargs = dict(max_epochs=3, warmup_epochs=1, iterator_train__num_workers=workers, train_on_meta=False)
    # random_state seeds torch's generator; numpy's and Python's are the user's to seed
    np.random.seed(0), random.seed(0)
    full = make_clf(**kwargs).fit(NoisyItems(X[rows], y[rows], source), None, meta=meta)
    for epochs, seed in ((1, 0), (3, 99)):  # the second leg, as in a new process, restores every generator
        np.random.seed(seed), random.seed(seed), torch.manual_seed(seed)
        cp = Checkpoint(dirname=str(tmp_path / "run"))
        resumed = make_clf(**{**kwargs, "max_epochs": epochs}, callbacks=[cp, LoadInitState(cp)]).fit(
            NoisyItems(X[rows], y[rows], source), None, meta=meta)
    _assert_same(_state(full), _state(resumed))


def test_a_callback_state_that_cannot_be_pickled_is_named(data, tmp_path):
    class Unpicklable(Callback):
        def state_dict(self):
            return {"fn": lambda: 0}

    X, y, mask = data
    with pytest.raises(CheckpointError, match=r"the state of callback\(s\) \['bad'\] cannot be saved"):
        make_clf(max_epochs=1, callbacks=[Checkpoint(dirname=str(tmp_path)), ("bad", Unpicklable())]).fit(
            X, y, meta=mask)


def test_another_validation_split_is_another_run(data, tmp_path):
    from skorch.dataset import ValidSplit

    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=1, train_split=ValidSplit(5), callbacks=[cp]).fit(X, y, meta=mask)
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    with pytest.raises(CheckpointMismatchError, match="train_split"):
        make_clf(train_split=ValidSplit(3), callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)


def test_a_resume_with_more_epochs_does_not_fall_back_into_warm_up(data, tmp_path):
    """warmup_epochs=0.2 is 1 epoch of 4 but 3 of 16: epoch 3 of the resumed run keeps weighting."""
    X, y, mask = data
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    make_clf(max_epochs=4, warmup_epochs=0.2, callbacks=[cp, LoadInitState(cp), Crash(2)]).fit(X, y, meta=mask)
    cp = Checkpoint(dirname=str(tmp_path / "run"))
    resumed = make_clf(max_epochs=16, warmup_epochs=0.2, callbacks=[cp, LoadInitState(cp)]).fit(X, y, meta=mask)
    meta_loss = np.asarray(resumed.history[:, "meta_loss"], dtype=float)
    assert np.isnan(meta_loss[0]) and np.isfinite(meta_loss[1:]).all()
