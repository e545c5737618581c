"""One runner for every row of the paper's tables: :class:`RunConfig` in, a results dict out.

:func:`run_experiment` trains, on the same data and under the same schedule,

* the plain baseline (:func:`~mwnet_sk.reproduce.baselines.make_plain_baseline`: the library's
  :class:`~mwnet_sk.baselines.PlainClassifier` on the rows Meta-Weight-Net trains on; the
  paper's "BaseModel" / "Cross Entropy"),
* that baseline fine-tuned on the clean meta set, for the tables that have a "Fine-tuning"
  column (:data:`FINETUNE_EPOCHS` epochs at the final learning rate of the schedule: the paper
  gives no schedule for it),
* Meta-Weight-Net (:class:`~mwnet_sk.MetaWeightClassifier`, the paper's "Ours"),

and returns a JSON-ready dict: the three test accuracies, the learned weighting curve, the
weights of clean and corrupted samples, the settings used and where and when it ran.

The settings of a run come, in this order of precedence, from the :class:`RunConfig`
(``lr``, ``meta_lr``, ``batch_size``, ``epochs``, ``protocol``: what ``mwnet-sk reproduce --set``
changes), from the experiment (the paper's network, schedule, learning rate, weight decay and
batch size for its row) and from the experiment's protocol preset (the rest of the authors'
script: weighting, weight-net optimizer, Nesterov, augmentation). The meta batch is as large
as the training batch, as in the authors' code.

CIFAR runs keep the uint8 images on the device and augment them there, per batch, for both
the baseline and Meta-Weight-Net; the meta set is a uint8 pair augmented the same way, as in
the official code. ``smoke=True`` replaces the data by a tiny generated data set in the real
file format (:mod:`~mwnet_sk.reproduce.fixtures`) and the network by a narrow
:class:`~mwnet_sk.models.SmallCNN`: the whole pipeline runs in seconds on a CPU, and its
accuracies mean nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from skorch.callbacks import LRScheduler

from ..augment import cifar_augment
from ..estimator import MetaWeightClassifier
from ..models import get_model
from .baselines import finetune, make_plain_baseline
from .fixtures import smoke_data_root
from .paper import TABLES, Experiment, get_experiment
from ..callbacks import EpochProgress
from .protocols import Protocol, get_protocol
from .report import FIGURE_FORMATS, format_results, provenance, resolve_device, save_results, write_figures

__all__ = [
    "FINETUNE_EPOCHS",
    "DataError",
    "DataNotFoundError",
    "RunConfig",
    "configs_for",
    "make_estimators",
    "run_experiment",
    "run_many",
]

FINETUNE_EPOCHS = 10
"""Epochs of the "Fine-tuning" baseline on the meta set (our choice; the paper gives none)."""
_SMOKE_EPOCHS = 2
_SMOKE_BATCH = {"cifar10": 32, "cifar100": 32, "clothing1m": 16}
_CLOTHING1M_ACCESS = (
    "Clothing1M is not freely downloadable: its authors give access on request (Xiao et al., "
    "CVPR 2015, https://github.com/Cysu/noisy_label)."
)


class DataError(Exception):
    """The data of an experiment could not be read; the message names the file.

    Attributes
    ----------
    dataset : str
        The data set (``"cifar10"``, ``"cifar100"``, ``"clothing1m"``) or ``"resnet50-weights"``.
    """

    def __init__(self, message: str, dataset: str):
        super().__init__(message)
        self.dataset = dataset


class DataNotFoundError(DataError, FileNotFoundError):
    """The data of an experiment (or the ResNet-50 weights) are missing."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run of one experiment needs.

    Parameters
    ----------
    experiment : str
        A name of :data:`mwnet_sk.reproduce.paper.EXPERIMENTS`.
    seed : int, default=0
        Seeds the meta split, the corruption, both networks' initialisation and the batches.
    root : path, default="data"
        Folder of the data (CIFAR python batches or the Clothing1M tree). Ignored with ``smoke``.
    device : str, default="auto"
        ``"auto"`` is ``"cuda"`` when a GPU is visible, else ``"cpu"``.
    download : bool, default=False
        Fetch CIFAR with torchvision when missing.
    smoke : bool, default=False
        Tiny generated data in the real format and a tiny network: checks the pipeline in
        seconds; the accuracies mean nothing.
    epochs : int or None
        Override the number of epochs; the learning-rate milestones scale along
        (:func:`~mwnet_sk.reproduce.paper.scaled_milestones`). None: the paper's (2 with ``smoke``).
    lr, meta_lr : float or None
        Override the classifier's / the weight net's learning rate.
    batch_size : int or None
        Override the batch size (the meta batch follows it).
    protocol : str or None
        Run under another preset of :data:`~mwnet_sk.reproduce.protocols.PROTOCOLS` than the
        experiment's own.
    finetune : bool, default=True
        Also fine-tune the baseline on the meta set where the paper's table has that column.
    record_weights : bool or None, default=None
        Keep every sample's weight after every epoch (the weight-variation figure needs it).
        None: when figures are written for noisy labels.
    weights : str, path or None, default="IMAGENET1K_V1"
        Clothing1M only: the ResNet-50 initialisation (see :func:`mwnet_sk.models.resnet50`).
    num_workers : int, default=4
        Clothing1M only: DataLoader workers decoding the JPEGs (training, meta and test sets).
    meta_per_class : int or None
        Clothing1M only: meta images per class taken from the clean validation split (None:
        the experiment's 500; 0: the whole split).
    figures_dir : path or None
        Write the run's figures there (needs matplotlib).
    figure_format : {"png", "pdf", "svg"}, default="png"
        File format of the figures.
    dpi : int, default=110
        Resolution of the figures (raster formats).
    progress : bool, default=True
        Report every epoch on stderr (:class:`~mwnet_sk.callbacks.EpochProgress`).
    verbose : int, default=0
        skorch's epoch tables.
    """

    experiment: str
    seed: int = 0
    root: str | os.PathLike = "data"
    device: str = "auto"
    download: bool = False
    smoke: bool = False
    epochs: int | None = None
    lr: float | None = None
    meta_lr: float | None = None
    batch_size: int | None = None
    protocol: str | None = None
    finetune: bool = True
    record_weights: bool | None = None
    weights: str | os.PathLike | None = "IMAGENET1K_V1"
    num_workers: int = 4
    meta_per_class: int | None = None
    figures_dir: str | os.PathLike | None = None
    figure_format: str = "png"
    dpi: int = 110
    progress: bool = True
    verbose: int = 0

    #: The settings ``mwnet-sk reproduce --set key=value`` overrides, with their types.
    SETTABLE: ClassVar[dict[str, type]] = {
        "lr": float, "meta_lr": float, "batch_size": int, "epochs": int, "protocol": str,
    }  # fmt: skip

    def __post_init__(self):
        object.__setattr__(self, "experiment", get_experiment(self.experiment).name)
        if self.protocol is not None:
            get_protocol(self.protocol)
        for name in ("lr", "meta_lr", "batch_size", "epochs"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and np.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if self.figure_format not in FIGURE_FORMATS:
            raise ValueError(f"figure_format must be one of {FIGURE_FORMATS}, got {self.figure_format!r}")
        if int(self.dpi) < 1:
            raise ValueError(f"dpi must be positive, got {self.dpi!r}")

    @property
    def exp(self) -> Experiment:
        """The experiment."""
        return get_experiment(self.experiment)

    @property
    def preset(self) -> Protocol:
        """The protocol preset the run uses."""
        return get_protocol(self.protocol or self.exp.protocol)

    @property
    def n_epochs(self) -> int:
        """Epochs the run trains."""
        return int(self.epochs or (_SMOKE_EPOCHS if self.smoke else self.exp.epochs))

    @property
    def milestones(self) -> list[int]:
        """Epochs after which the learning rate is divided by 10."""
        return self.exp.milestones_for(self.n_epochs)

    def with_settings(self, settings: Mapping[str, Any]) -> RunConfig:
        """A copy with some :attr:`SETTABLE` settings changed (strings are converted).

        Raises
        ------
        ValueError
            An unknown key or a value of the wrong type.
        """
        changes = {}
        for key, value in settings.items():
            if key not in self.SETTABLE:
                raise ValueError(f"cannot set {key!r}; settable: {', '.join(self.SETTABLE)}")
            kind = self.SETTABLE[key]
            try:
                changes[key] = kind(value)
            except (TypeError, ValueError):
                expected = "an integer" if kind is int else "a number"
                raise ValueError(f"{key} must be {expected}, got {value!r}") from None
        return dataclasses.replace(self, **changes)  # validated again by __post_init__


# --------------------------------------------------------------------------- estimators
@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded inside, and left as it was outside."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _network(config: RunConfig):
    exp = config.exp
    with _seeded(config.seed):
        if config.smoke:
            return get_model("small_cnn", num_classes=exp.n_classes, width=4)
        if exp.model == "resnet50":
            return get_model("resnet50", num_classes=exp.n_classes, weights=config.weights)
        return get_model(exp.model, num_classes=exp.n_classes)


def _estimator_params(config: RunConfig, device: str) -> dict[str, Any]:
    """The Meta-Weight-Net keyword arguments of a run, in the precedence of the module docstring."""
    exp = config.exp
    params = dict(config.preset.estimator_params)
    params.update(lr=exp.lr, optimizer__momentum=exp.momentum, optimizer__weight_decay=exp.weight_decay,
                  batch_size=_SMOKE_BATCH[exp.dataset] if config.smoke else exp.batch_size)  # fmt: skip
    for key in ("lr", "meta_lr", "batch_size"):
        if getattr(config, key) is not None:
            params[key] = getattr(config, key)
    params["meta_batch_size"] = params["batch_size"]
    params.update(max_epochs=config.n_epochs, device=device, verbose=config.verbose)
    return params


def make_estimators(config: RunConfig, record_weights: bool = False):
    """The plain baseline and the Meta-Weight-Net estimator of a run, unfitted.

    Both start from the same initial weights and share the optimizer, schedule, batch order,
    augmentation and data path (the baseline is
    :func:`~mwnet_sk.reproduce.baselines.make_plain_baseline` of the Meta-Weight-Net
    estimator). CIFAR estimators take uint8 image arrays ``(N, 32, 32, 3)``, kept on the device
    and augmented there; the Clothing1M ones take torch Datasets. Fit both with the same
    ``X, y, meta=``.

    Returns
    -------
    plain : PlainClassifier
        The baseline.
    mwnet : MetaWeightClassifier
        Meta-Weight-Net under the run's settings.
    info : dict
        The epochs, milestones, device, batch size and network of the run.
    """
    exp, protocol = config.exp, config.preset
    device = resolve_device(config.device)
    params = _estimator_params(config, device)
    milestones = config.milestones
    extra: dict[str, Any] = {}
    if exp.dataset.startswith("cifar"):
        extra.update(batch_transform=cifar_augment(exp.dataset, **protocol.augment), data_on_device=True,
                     iterator_valid__batch_size=max(500, params["batch_size"]))  # fmt: skip
    elif config.num_workers and not config.smoke:
        extra.update(iterator_train__num_workers=config.num_workers, iterator_valid__num_workers=config.num_workers,
                     iterator_meta__num_workers=config.num_workers)  # fmt: skip

    def callbacks(label):
        cbs = [LRScheduler("MultiStepLR", milestones=milestones, gamma=0.1)]
        if config.progress:
            cbs.append(EpochProgress(label))
        return cbs

    mwnet = MetaWeightClassifier(
        _network(config), random_state=config.seed, record_weights=record_weights,
        callbacks=callbacks(f"{exp.name} MW-Net"), **extra, **params,
    )  # fmt: skip
    plain = make_plain_baseline(mwnet, callbacks=callbacks(f"{exp.name} baseline"))
    info = {"epochs": config.n_epochs, "milestones": milestones, "device": device,
            "batch_size": params["batch_size"], "model": "small_cnn" if config.smoke else exp.model}  # fmt: skip
    return plain, mwnet, info


# --------------------------------------------------------------------------- data
@dataclass
class _RunData:
    X_train: Any  # uint8 array, or a Dataset carrying its labels
    y_train: np.ndarray | None
    meta: Any  # (X_meta, y_meta) or a Dataset
    X_test: Any
    y_test: np.ndarray
    noise_mask: np.ndarray | None  # over the training rows; None when the true labels are unknown
    extra: dict


def _cifar_data(config: RunConfig, root) -> _RunData:
    from ..datasets import make_cifar_benchmark

    exp = config.exp
    kwargs: dict[str, Any] = dict(random_state=config.seed, download=config.download and not config.smoke,
                                  as_dataset=False)  # fmt: skip
    if exp.corruption == "long_tailed":
        kwargs.update(corruption="long_tailed", imbalance_factor=exp.imbalance_factor,
                      n_meta_per_class=2 if config.smoke else exp.n_meta_per_class)  # fmt: skip
    else:
        kwargs.update(corruption=exp.corruption, noise_rate=exp.noise_rate,
                      meta_size=2 * exp.n_classes if config.smoke else exp.meta_size)  # fmt: skip
    bench = make_cifar_benchmark(exp.dataset, root, **kwargs)
    noisy = bench.noise_rate is not None
    return _RunData(
        bench.X_train, bench.y_train, (bench.X_meta, bench.y_meta), bench.X_test, bench.y_test,
        bench.noise_mask if noisy else None,
        {"actual_noise_rate": bench.actual_noise_rate} if noisy else {},
    )  # fmt: skip


def _clothing1m_data(config: RunConfig, root) -> _RunData:
    from torch.utils.data import Subset
    from torchvision import transforms as T

    from ..datasets import CLOTHING1M_MEAN, CLOTHING1M_STD, Clothing1M, clothing1m_paper_transform
    from ..noise import meta_mask

    if config.smoke:  # tiny images: the paper's recipe scaled down, 36x36 resized, 32x32 centre
        norm = [T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)]
        train_tf = meta_tf = eval_tf = T.Compose([T.Resize((36, 36)), T.CenterCrop(32), *norm])
    else:  # the paper (Sec. 4.3): resize to 256x256, crop the middle 224x224, normalise; no augmentation
        train_tf = meta_tf = eval_tf = clothing1m_paper_transform()
    train = Clothing1M(root, "noisy_train", transform=train_tf)
    val = Clothing1M(root, "clean_val", transform=meta_tf)
    test = Clothing1M(root, "clean_test", transform=eval_tf)
    per_class = 2 if config.smoke else (config.exp.n_meta_per_class if config.meta_per_class is None
                                        else config.meta_per_class)  # fmt: skip
    if per_class:
        smallest = int(np.bincount(val.targets, minlength=config.exp.n_classes).min())
        if smallest < per_class:
            raise ValueError(
                f"the clean validation split of {root} has {smallest} images in its smallest class, "
                f"fewer than the {per_class} meta images per class asked for (0 takes the whole split)"
            )
        rows = np.flatnonzero(meta_mask(val.targets, n_meta_per_class=per_class, random_state=config.seed))
    else:
        rows = np.arange(len(val))
    # the noisy training images of Clothing1M have no clean labels: no noise mask
    return _RunData(train, None, Subset(val, rows.tolist()), test, test.targets, None,
                    {"meta_per_class": per_class})  # fmt: skip


def _load_data(config: RunConfig, root) -> _RunData:
    """The run's data; any failure to read it becomes a :class:`DataError` naming the data set."""
    dataset = config.exp.dataset
    try:
        return _clothing1m_data(config, root) if dataset == "clothing1m" else _cifar_data(config, root)
    except FileNotFoundError as err:
        message = f"{err} {_CLOTHING1M_ACCESS}" if dataset == "clothing1m" else str(err)
        raise DataNotFoundError(message, dataset) from err
    except (ValueError, pickle.UnpicklingError) as err:
        raise DataError(str(err), dataset) from err


# --------------------------------------------------------------------------- the runner
def _size(data) -> int:
    return len(data[1]) if isinstance(data, tuple) else len(data)


def _accuracy(clf, X, y) -> float:
    return float(np.mean(np.asarray(clf.predict(X)) == np.asarray(y)) * 100.0)


def run_experiment(config: RunConfig) -> dict:
    """Train the baseline(s) and Meta-Weight-Net on one experiment; return a JSON-ready dict.

    Returns
    -------
    dict
        ``experiment``, ``title``, ``table``, ``seed``, ``smoke``, ``epochs``, ``milestones``,
        ``accuracy`` (``plain`` / ``finetuned`` / ``mwnet``, in %), ``seconds``, the data sizes,
        the mean weights of clean and corrupted samples (or of all samples), the learned curve,
        the last epoch's history values, the ``protocol`` and ``estimator_params`` used, the
        experiment's configuration, the paper's numbers for the row, the paths of any
        ``figures``, and the :func:`~mwnet_sk.reproduce.report.provenance` (date, device,
        versions).

    Raises
    ------
    DataNotFoundError
        The data (or the ResNet-50 weights) are missing; the message names the file.
    DataError
        A data file cannot be read; the message names the file (and line).
    """
    exp, table = config.exp, TABLES[config.exp.table]
    with contextlib.ExitStack() as stack:
        root = config.root
        if config.smoke:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mwnet-smoke-"))
            root = smoke_data_root(exp.dataset, tmp, imbalance_factor=exp.imbalance_factor)
        data = _load_data(config, root)
        noisy_labels = data.noise_mask is not None and bool(data.noise_mask.any())
        record = config.record_weights
        if record is None:
            record = config.figures_dir is not None and noisy_labels
        try:
            plain, mwnet, info = make_estimators(config, record_weights=record)
        except FileNotFoundError as err:  # the offline ResNet-50 weights
            raise DataNotFoundError(str(err), "resnet50-weights") from err
        device = info["device"]
        params = _estimator_params(config, device)
        result: dict[str, Any] = dict(info, n_train=len(data.X_train), n_meta=_size(data.meta), n_test=len(data.y_test),
                                      accuracy={}, seconds={}, **data.extra)  # fmt: skip

        start = time.perf_counter()
        plain.fit(data.X_train, data.y_train, meta=data.meta)
        result["seconds"]["plain"] = time.perf_counter() - start
        result["accuracy"]["plain"] = _accuracy(plain, data.X_test, data.y_test)

        if config.finetune and "Fine-tuning" in table.methods and isinstance(data.meta, tuple):
            epochs = _SMOKE_EPOCHS if config.smoke else FINETUNE_EPOCHS
            final_lr = params["lr"] * 0.1 ** len(info["milestones"])
            start = time.perf_counter()
            tuned = finetune(plain, *data.meta, epochs=epochs, lr=final_lr, random_state=config.seed)
            result["seconds"]["finetuned"] = time.perf_counter() - start
            result["accuracy"]["finetuned"] = _accuracy(tuned, data.X_test, data.y_test)
            result["finetune"] = {"epochs": epochs, "lr": final_lr}
            del tuned
        del plain

        start = time.perf_counter()
        mwnet.fit(data.X_train, data.y_train, meta=data.meta)
        result["seconds"]["mwnet"] = time.perf_counter() - start
        result["accuracy"]["mwnet"] = _accuracy(mwnet, data.X_test, data.y_test)

    hi = 5.0 if exp.corruption == "long_tailed" else 10.0
    losses, weights = mwnet.weight_function_.curve(0.0, hi, n_points=41)
    sample_weights = mwnet.sample_weights_
    if noisy_labels:
        result["mean_weight_clean"] = float(np.nanmean(sample_weights[~data.noise_mask]))
        result["mean_weight_noisy"] = float(np.nanmean(sample_weights[data.noise_mask]))
    else:
        result["mean_weight"] = float(np.nanmean(sample_weights))
    last = mwnet.history[-1]
    result.update(
        experiment=exp.name, title=exp.title, table=exp.table, dataset=exp.dataset, setting=exp.setting,
        smoke=bool(config.smoke), protocol=config.preset.describe(),
        estimator_params={k: (f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else v)
                          for k, v in params.items()},
        curve_losses=[round(float(v), 4) for v in losses], curve_weights=[round(float(v), 5) for v in weights],
        final={k: float(last[k]) for k in ("train_loss", "meta_loss", "weight_mean", "weight_std") if k in last},
        config=exp.to_dict(),
        paper={table.column(run): exp.paper_accuracy(table.column(run)) for run in ("plain", "finetuned", "mwnet")
               if table.column(run) in exp.paper},
        **provenance(device, seed=config.seed),
    )  # fmt: skip
    if config.figures_dir is not None:
        title = exp.title + (" (SMOKE RUN: tiny generated data and network)" if config.smoke else "")
        result["figures"] = [str(p) for p in write_figures(
            mwnet, config.figures_dir, title=title, noisy_mask=data.noise_mask, loss_range=(0.0, hi),
            lr_drops=info["milestones"], prefix=f"{exp.name}-seed{config.seed}-", fmt=config.figure_format,
            dpi=config.dpi, seed=config.seed,
        )]  # fmt: skip
    return result


def run_many(
    configs: Iterable[RunConfig],
    *,
    out: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run several configurations one after the other; report and save as they finish.

    After every run the collected results are written to ``out/results.json`` (so an
    interrupted sweep keeps what it finished); at the end the table of
    :func:`~mwnet_sk.reproduce.report.format_results` is logged.
    """
    configs = list(configs)
    results: list[dict] = []
    for i, config in enumerate(configs, start=1):
        exp = config.exp
        log(f"[{i}/{len(configs)}] {exp.name} (seed {config.seed}, protocol {config.preset.name}): {exp.title}")
        result = run_experiment(config)
        table = TABLES[exp.table]
        log("    test accuracy: " + ", ".join(f"{table.title(k)} {v:.2f}%" for k, v in result["accuracy"].items()))
        results.append(result)
        if out is not None:
            save_results(results, Path(out) / "results.json")
    log("")
    log(format_results(results))
    if out is not None:
        log(f"\nresults written to {Path(out) / 'results.json'}")
    return results


def configs_for(names: Sequence[str], seeds: Sequence[int], **settings) -> list[RunConfig]:
    """One :class:`RunConfig` per experiment and seed, all with the same ``settings``."""
    return [RunConfig(name, seed=int(seed), **settings) for name in names for seed in seeds]
