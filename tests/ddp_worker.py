"""The unchanged single-process training script the distributed tests launch with torchrun.

``python ddp_worker.py SCENARIO OUT_DIR``: trains and saves what it learned to
``OUT_DIR/<scenario>-rank<r>.pt`` (every process writes its own file, to compare ranks).
"""

import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)

from sklearn.datasets import load_digits  # noqa: E402
from skorch.callbacks import Callback  # noqa: E402

from mwnet_sk import MetaWeightClassifier, plain_counterpart  # noqa: E402
from mwnet_sk.callbacks import Checkpoint, LoadInitState  # noqa: E402
from mwnet_sk.models import MLP  # noqa: E402
from mwnet_sk.noise import make_noisy_labels, meta_mask  # noqa: E402


def data():
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:500], y[:500]
    mask = meta_mask(y, n_meta_per_class=5, random_state=0)
    y_noisy = y.copy()
    y_noisy[~mask] = make_noisy_labels(y[~mask], 0.4, random_state=0)
    return X, y_noisy, mask


def meta_dataset(X, y):
    return torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))


def estimator(batch_size, batchnorm=False, **kwargs):
    params = dict(module=MLP, module__n_features=64, module__num_classes=10, module__batchnorm=batchnorm,
                  lr=0.1, max_epochs=3, batch_size=batch_size, verbose=0,
                  random_state=0, warmup_epochs=1)
    if kwargs.get("optimizer", torch.optim.SGD) is torch.optim.SGD:
        params["optimizer__momentum"] = 0.9
    params.update(kwargs)
    return MetaWeightClassifier(**params)


LBFGS = dict(optimizer=torch.optim.LBFGS, optimizer__line_search_fn="strong_wolfe", optimizer__max_iter=4, lr=1.0,
             max_epochs=2)


def uneven_meta(mask):
    """The meta mask with one row fewer (an odd meta set)."""
    out = mask.copy()
    out[np.flatnonzero(mask)[0]] = False
    return out


def summary(clf):
    out = {"module": clf.module_.state_dict(), "train_loss": clf.history[:, "train_loss"]}
    if hasattr(clf, "weight_net_"):
        out.update(weight_net=clf.weight_net_.state_dict(), weights=torch.from_numpy(clf.sample_weights_),
                   meta_loss=clf.history[:, "meta_loss"], steps=clf.n_steps_)
    return out


class CrashAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        # killed as the next epoch starts: the unit of epoch `epoch` is written (checkpoints run
        # after every other callback at an epoch's end, so a kill there would precede it)
        if len(net.history) == self.epoch + 1:
            os._exit(3)  # a killed job: no cleanup, no flush


def main(scenario, out_dir, batch_size=32):
    X, y, mask = data()
    results = {}
    if scenario == "equal":
        results["mwnet"] = summary(estimator(batch_size).fit(X, y, meta=mask))
        results["plain"] = summary(plain_counterpart(estimator(batch_size)).fit(X, y, meta=mask))
        results["batchnorm"] = summary(estimator(batch_size, batchnorm=True).fit(X, y, meta=mask))
        results["batchnorm-sync"] = summary(estimator(batch_size, batchnorm=True, sync_batchnorm=True)
                                            .fit(X, y, meta=mask))
        results["plain-batchnorm-sync"] = summary(plain_counterpart(
            estimator(batch_size, batchnorm=True, sync_batchnorm=True)).fit(X, y, meta=mask))
        try:  # torch's SyncBatchNorm is refused with what to do instead
            MetaWeightClassifier(torch.nn.SyncBatchNorm.convert_sync_batchnorm(MLP(64, 10, batchnorm=True)),
                                 max_epochs=1, batch_size=batch_size, verbose=0).fit(X, y, meta=mask)
        except ValueError as err:
            results["syncbn-error"] = str(err)
        results["pair"] = summary(estimator(batch_size, meta_interval=2, meta_params="last")
                                  .fit(X[~mask], y[~mask], meta=(X[mask], y[mask])))
        results["on-device"] = summary(estimator(batch_size, data_on_device=True).fit(X, y, meta=mask))
        results["dataset-workers"] = summary(estimator(batch_size, iterator_meta__num_workers=1)
                                             .fit(X[~mask], y[~mask], meta=meta_dataset(X[mask], y[mask])))
        results["bf16"] = summary(estimator(batch_size, precision="bf16", batchnorm=True, sync_batchnorm=True)
                                  .fit(X, y, meta=mask))
        # 49 meta rows: the processes' meta shards differ in size (25 and 24)
        results["uneven-meta"] = summary(estimator(batch_size).fit(X, y, meta=uneven_meta(mask)))
        # a closure optimizer: its line search must see the same (global) loss on every process
        results["lbfgs"] = summary(estimator(batch_size, **LBFGS).fit(X, y, meta=mask))
    elif scenario == "refused":  # clear errors, raised by every process alike (none hangs)
        from skorch.callbacks import EpochScoring

        rank = int(os.environ["RANK"])
        other = meta_mask(y, n_meta_per_class=5, random_state=rank)  # a mask drawn per process
        one_meta_row = np.zeros_like(mask)
        one_meta_row[np.flatnonzero(mask)[0]] = True
        for name, kwargs, meta in [("per-process data", {}, other),
                                   ("one meta row", {}, one_meta_row),
                                   ("train scoring", {"callbacks": [EpochScoring("accuracy", on_train=True)]}, mask)]:
            try:
                estimator(batch_size, max_epochs=1, **kwargs).fit(X, y, meta=meta)
                results[name] = "no error"
            except ValueError as err:
                results[name] = str(err)
    elif scenario in ("crash", "resume"):
        cp = Checkpoint(dirname=os.path.join(out_dir, "run"))
        callbacks = [cp, LoadInitState(cp)] + ([CrashAfter(2)] if scenario == "crash" else [])
        results["mwnet"] = summary(estimator(batch_size, max_epochs=4, callbacks=callbacks).fit(X, y, meta=mask))
    elif scenario == "uninterrupted":
        results["mwnet"] = summary(estimator(batch_size, max_epochs=4).fit(X, y, meta=mask))
    rank = int(os.environ.get("RANK", "0"))
    torch.save(results, os.path.join(out_dir, f"{scenario}-rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
