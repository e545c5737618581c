"""The embedded default job: Meta-Weight-Net vs plain training on scikit-learn's digits with
injected label noise. Needs no download; ``mwnet-sk demo`` is a command line over this module.

Digits (1,797 images, 8x8) are split 70/30 into training rows and a clean test split; a clean,
class-balanced meta set (``meta_per_class`` rows per class) is taken from the training rows; the
other training labels are corrupted. Both models are the same MLP with the same initial weights
and batch order, trained with SGD (lr 0.1, momentum 0.9, batch size 100, lr divided by 10 after
80% of the epochs). Meta-Weight-Net runs with the estimator's defaults (only ``meta_lr`` can be
changed); the plain baseline is :func:`~mwnet_sk.baselines.plain_counterpart` of it (through
:func:`~mwnet_sk.reproduce.baselines.make_plain_baseline`), trained on the same labelled rows:
the noisy rows and the clean meta rows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import provenance, resolve_device, text_table, write_figures, write_json

__all__ = ["DemoResult", "DemoRun", "format_demo", "run_demo", "save_demo", "save_demo_figures"]


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo` (accuracies on a clean, held-out test split)."""

    noise_rate: float
    noise_type: str
    seed: int
    n_train: int
    n_meta: int
    n_test: int
    epochs: int
    lr_drop_after: int
    meta_lr: float
    weighting: dict  # the Meta-Weight-Net settings of the run (the estimator's defaults unless changed)
    plain_accuracy: float
    mwnet_accuracy: float
    mean_weight_clean: float
    mean_weight_noisy: float
    curve_losses: list = field(default_factory=list)
    curve_weights: list = field(default_factory=list)
    class_aware: bool = False  # the curve is then the mean of the classes' curves
    seconds_plain: float = 0.0
    seconds_mwnet: float = 0.0
    provenance: dict = field(default_factory=dict)


@dataclass
class DemoRun:
    """Everything :func:`run_demo` produced: the summary and what the figures need."""

    result: DemoResult
    plain: Any
    mwnet: Any
    noisy_mask: np.ndarray  # over the training rows: True where the label was corrupted
    meta_mask: np.ndarray  # over the training rows: True for the clean meta rows


def run_demo(
    *,
    noise_rate: float = 0.4,
    noise_type: str = "uniform",
    epochs: int = 60,
    meta_per_class: int = 10,
    meta_lr: float | None = None,
    random_state: int = 0,
    device: str = "auto",
    record_weights: bool = False,
    progress: bool = False,
    verbose: int = 0,
) -> DemoRun:
    """Train plain and Meta-Weight-Net classifiers on noisy digits and compare them.

    Parameters
    ----------
    noise_rate : float, default=0.4
        Label noise rate (see :func:`mwnet_sk.noise.make_noisy_labels`).
    noise_type : str, default="uniform"
        A :data:`mwnet_sk.noise.NOISE_TYPES` name.
    epochs : int, default=60
        Training epochs; the learning rate is divided by 10 after 80% of them.
    meta_per_class : int, default=10
        Clean meta rows per class.
    meta_lr : float or None, default=None
        The weight net's learning rate; None keeps the estimator's default.
    random_state : int, default=0
        Seeds the split, the noise, the networks and the batches.
    device : str, default="auto"
        ``"auto"``: a GPU when one is visible, else the CPU.
    record_weights : bool, default=False
        Keep every row's weight after every epoch (the weight-variation figure needs it).
    progress : bool, default=False
        Report every epoch on stderr.
    verbose : int, default=0
        skorch's epoch tables.

    Returns
    -------
    DemoRun
        The result, both fitted estimators and the masks of the corrupted and the meta rows.
    """
    from skorch.callbacks import LRScheduler
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from ..estimator import MetaWeightClassifier
    from ..models import MLP
    from ..noise import make_noisy_labels, meta_mask
    from .baselines import make_plain_baseline
    from ..callbacks import EpochProgress

    device = resolve_device(device)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=random_state
    )
    meta = meta_mask(y_train, n_meta_per_class=meta_per_class, random_state=random_state)
    y_noisy = y_train.copy()
    y_noisy[~meta] = make_noisy_labels(y_train[~meta], noise_rate, noise_type=noise_type, random_state=random_state)
    corrupted = y_noisy != y_train

    milestone = max(1, int(round(0.8 * epochs)))

    def callbacks(label):
        cbs = [LRScheduler("MultiStepLR", milestones=[milestone], gamma=0.1)]
        if progress:
            cbs.append(EpochProgress(label))
        return cbs

    # the classifier's recipe; everything about the weighting is the estimator's default
    mw_options = {} if meta_lr is None else {"meta_lr": meta_lr}
    mwnet = MetaWeightClassifier(
        MLP, module__n_features=X.shape[1], module__num_classes=10, lr=0.1, optimizer__momentum=0.9,
        max_epochs=epochs, batch_size=100, device=device, verbose=verbose, random_state=random_state,
        record_weights=record_weights, callbacks=callbacks("Meta-Weight-Net"), **mw_options,
    )  # fmt: skip
    plain = make_plain_baseline(mwnet, callbacks=callbacks("plain training"))

    start = time.perf_counter()
    plain.fit(X_train, y_noisy, meta=meta)
    seconds_plain = time.perf_counter() - start
    start = time.perf_counter()
    mwnet.fit(X_train, y_noisy, meta=meta)
    seconds_mwnet = time.perf_counter() - start

    losses, weights = mwnet.weight_function_.curve(0.0, 5.0, n_points=11)
    w = mwnet.sample_weights_
    result = DemoResult(
        noise_rate=float(noise_rate),
        noise_type=noise_type,
        seed=int(random_state),
        n_train=int((~meta).sum()),
        n_meta=int(meta.sum()),
        n_test=len(y_test),
        epochs=int(epochs),
        lr_drop_after=milestone,
        meta_lr=float(mwnet.meta_lr),
        weighting=_weighting(mwnet),
        plain_accuracy=float(np.mean(plain.predict(X_test) == y_test)),
        mwnet_accuracy=float(mwnet.score(X_test, y_test)),
        mean_weight_clean=float(np.nanmean(w[~corrupted & ~meta])),
        mean_weight_noisy=float(np.nanmean(w[corrupted])) if corrupted.any() else float("nan"),
        curve_losses=losses.tolist(),
        curve_weights=weights.tolist(),
        class_aware=bool(mwnet.weight_function_.uses_labels),
        seconds_plain=seconds_plain,
        seconds_mwnet=seconds_mwnet,
        provenance=provenance(device, seed=random_state),
    )
    return DemoRun(result=result, plain=plain, mwnet=mwnet, noisy_mask=corrupted, meta_mask=meta)


_WEIGHTING = ("meta_lr", "meta_optimizer", "meta_batch_size", "weight_net", "normalize_weights", "train_on_meta",
              "warmup_epochs", "meta_gradient", "meta_interval", "target_prior")


def _weighting(mwnet) -> dict:
    """The settings that shape the weighting, JSON-ready (classes by their dotted names)."""
    params = mwnet.get_params(deep=False)
    named = {k: f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else v for k, v in params.items()}
    if not isinstance(named["target_prior"], str):  # given class frequencies
        named["target_prior"] = [float(v) for v in np.asarray(named["target_prior"]).reshape(-1)]
    return {k: named[k] for k in _WEIGHTING}


_PREDICTED_FOR = {"meta": "the meta set's class frequencies", "train": "the training rows' class frequencies"}


def _describe(weighting: dict, epochs: int) -> str:
    warmup = weighting["warmup_epochs"]
    warmup_epochs = int(round(warmup * epochs)) if isinstance(warmup, float) else int(warmup)
    weighted = "by their batch sum" if weighting["normalize_weights"] else "by the batch size"
    prior = weighting.get("target_prior", "train")  # results saved before target_prior predicted as trained
    predicted = _PREDICTED_FOR[prior] if isinstance(prior, str) else "the given class frequencies"
    return (f"meta_lr {weighting['meta_lr']:g}, weighted losses divided {weighted}, meta rows "
            f"{'trained on too' if weighting['train_on_meta'] else 'held out'}, {warmup_epochs} plain warm-up epochs, "
            f"predictions for {predicted}")


def _what(result: DemoResult) -> str:
    return f"digits, {result.noise_rate:.0%} {result.noise_type} noise, {result.epochs} epochs, seed {result.seed}"


def format_demo(result: DemoResult) -> str:
    """A plain-text report: accuracies, weights of clean vs corrupted rows, the learned curve."""
    where = result.provenance.get("device_name", result.provenance.get("device", "?"))
    table = text_table(
        ["", "test accuracy", "seconds"],
        [["plain training", f"{result.plain_accuracy:.2%}", f"{result.seconds_plain:.1f}"],
         ["Meta-Weight-Net", f"{result.mwnet_accuracy:.2%}", f"{result.seconds_mwnet:.1f}"]],
        indent="  ",
    )  # fmt: skip
    lines = [
        f"digits, {result.noise_rate:.0%} {result.noise_type} label noise: {result.n_train} noisy training rows, "
        f"{result.n_meta} clean meta rows, {result.n_test} clean test rows; {result.epochs} epochs, learning "
        f"rate ÷10 after epoch {result.lr_drop_after}; seed {result.seed}; {where}",
        f"Meta-Weight-Net settings: {_describe(result.weighting, result.epochs)}",
        "",
        table,
        "",
        f"  mean learned weight: clean rows {result.mean_weight_clean:.3f}, "
        f"corrupted rows {result.mean_weight_noisy:.3f}",
        "",
        "  learned weighting function V(loss)" + (", mean over the classes:" if result.class_aware else ":"),
    ]
    for loss, weight in zip(result.curve_losses, result.curve_weights):
        lines.append(f"    loss {loss:4.1f}  weight {weight:5.3f}  {'#' * int(round(weight * 40))}")
    return "\n".join(lines)


def save_demo(result: DemoResult, out: str | Path) -> Path:
    """Write the result, with its provenance, as ``out/demo.json``; returns the path."""
    return write_json(asdict(result), Path(out) / "demo.json")


def save_demo_figures(run: DemoRun, out: str | Path, *, fmt: str = "png", dpi: int = 100) -> list[Path]:
    """Write the demo's figures into ``out``; returns their paths. Needs matplotlib.

    ``weight_function``, ``weight_distribution`` and, when the run recorded the weights,
    ``weight_variation`` (see :func:`mwnet_sk.reproduce.report.write_figures`).
    """
    r = run.result
    return write_figures(
        run.mwnet, out, title=_what(r), noisy_mask=run.noisy_mask, loss_range=(0.0, 5.0),
        lr_drops=[r.lr_drop_after], fmt=fmt, dpi=dpi, seed=r.seed,
    )  # fmt: skip
