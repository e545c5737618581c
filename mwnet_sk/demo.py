"""The embedded default job: Meta-Weight-Net vs plain training on scikit-learn's digits with
injected label noise. Needs no download; about 10 seconds on 2 CPU cores."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["DemoResult", "DemoRun", "run_demo", "run_demo_detailed", "format_demo", "save_demo", "save_demo_figures"]


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo` (accuracies on a clean, held-out test split)."""

    noise_rate: float
    noise_type: str
    n_train: int
    n_meta: int
    n_test: int
    epochs: int
    plain_accuracy: float
    mwnet_accuracy: float
    mean_weight_clean: float
    mean_weight_noisy: float
    curve_losses: list = field(default_factory=list)
    curve_weights: list = field(default_factory=list)
    seconds_plain: float = 0.0
    seconds_mwnet: float = 0.0
    device: str = "cpu"


@dataclass
class DemoRun:
    """Everything :func:`run_demo_detailed` produced: the summary and what the figures need."""

    result: DemoResult
    plain: object
    mwnet: object
    noisy_mask: np.ndarray  # over the training rows: True where the label was corrupted
    meta_mask: np.ndarray  # over the training rows: True for the clean meta rows


def run_demo(
    *,
    noise_rate: float = 0.4,
    noise_type: str = "uniform",
    epochs: int = 60,
    meta_per_class: int = 10,
    meta_lr: float = 1e-2,
    random_state: int = 0,
    device: str = "cpu",
    verbose: int = 0,
    return_estimators: bool = False,
):
    """Train plain and Meta-Weight-Net classifiers on noisy digits and compare them.

    Returns
    -------
    DemoResult, or (DemoResult, plain, mwnet) with ``return_estimators=True``.
    (:func:`run_demo_detailed` takes the same arguments and also returns the masks of the
    corrupted and meta rows.)
    """
    run = run_demo_detailed(
        noise_rate=noise_rate, noise_type=noise_type, epochs=epochs, meta_per_class=meta_per_class,
        meta_lr=meta_lr, random_state=random_state, device=device, verbose=verbose,
    )
    if return_estimators:
        return run.result, run.plain, run.mwnet
    return run.result


def run_demo_detailed(
    *,
    noise_rate: float = 0.4,
    noise_type: str = "uniform",
    epochs: int = 60,
    meta_per_class: int = 10,
    meta_lr: float = 1e-2,
    random_state: int = 0,
    device: str = "cpu",
    verbose: int = 0,
    record_weights: bool = False,
) -> DemoRun:
    """Train plain and Meta-Weight-Net classifiers on noisy digits and compare them.

    Digits (1797 images, 8x8) are split 70/30 into train and a clean test split; a clean,
    class-balanced meta set (``meta_per_class`` per class) is taken from the train part; the
    remaining training labels are corrupted. Both models are the same MLP trained with SGD
    (momentum 0.9, lr 0.1, divided by 10 at 80% of the epochs: the step the weight net needs
    to show its decreasing shape, see the docs). The plain baseline trains on the noisy rows
    and the meta rows (it gets every clean label too).

    ``record_weights=True`` keeps every row's weight after every epoch (for the
    weight-variation figure).

    Returns
    -------
    DemoRun
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from skorch import NeuralNetClassifier
    from skorch.callbacks import LRScheduler

    from .estimator import MetaWeightClassifier
    from .models import MLP
    from .noise import make_noisy_labels, meta_mask

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=random_state
    )
    meta = meta_mask(y_train, n_meta_per_class=meta_per_class, random_state=random_state)
    y_noisy = y_train.copy()
    y_noisy[~meta] = make_noisy_labels(
        y_train[~meta], noise_rate, noise_type=noise_type, random_state=random_state
    )
    corrupted = y_noisy != y_train

    milestone = max(1, int(round(0.8 * epochs)))
    common = dict(
        module=MLP,
        module__n_features=X.shape[1],
        module__num_classes=10,
        lr=0.1,
        optimizer__momentum=0.9,
        max_epochs=epochs,
        batch_size=100,
        device=device,
        verbose=verbose,
    )

    torch.manual_seed(random_state)
    plain = NeuralNetClassifier(
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        iterator_train__shuffle=True,
        callbacks=[LRScheduler("MultiStepLR", milestones=[milestone], gamma=0.1)],
        **common,
    )
    start = time.perf_counter()
    plain.fit(X_train, y_noisy.astype(np.int64))
    seconds_plain = time.perf_counter() - start

    mwnet = MetaWeightClassifier(
        meta_lr=meta_lr,
        random_state=random_state,
        record_weights=record_weights,
        callbacks=[LRScheduler("MultiStepLR", milestones=[milestone], gamma=0.1)],
        **common,
    )
    start = time.perf_counter()
    mwnet.fit(X_train, y_noisy, meta=meta)
    seconds_mwnet = time.perf_counter() - start

    losses, weights = mwnet.weight_function_.curve(0.0, 5.0, n_points=11)
    w = mwnet.sample_weights_
    result = DemoResult(
        noise_rate=noise_rate,
        noise_type=noise_type,
        n_train=int((~meta).sum()),
        n_meta=int(meta.sum()),
        n_test=len(y_test),
        epochs=epochs,
        plain_accuracy=float(plain.score(X_test, y_test)),
        mwnet_accuracy=float(mwnet.score(X_test, y_test)),
        mean_weight_clean=float(np.nanmean(w[~corrupted & ~meta])),
        mean_weight_noisy=float(np.nanmean(w[corrupted])) if corrupted.any() else float("nan"),
        curve_losses=losses.tolist(),
        curve_weights=weights.tolist(),
        seconds_plain=seconds_plain,
        seconds_mwnet=seconds_mwnet,
        device=str(device),
    )
    return DemoRun(result=result, plain=plain, mwnet=mwnet, noisy_mask=corrupted, meta_mask=meta)


def format_demo(result: DemoResult) -> str:
    """A plain-text report: accuracies, weights of clean vs corrupted rows, the learned curve."""
    lines = [
        f"digits, {result.noise_rate:.0%} {result.noise_type} label noise: {result.n_train} noisy training rows, "
        f"{result.n_meta} clean meta rows, {result.n_test} clean test rows, {result.epochs} epochs "
        f"on {result.device}",
        "",
        f"  plain training   test accuracy {result.plain_accuracy:6.2%}   ({result.seconds_plain:.1f} s)",
        f"  Meta-Weight-Net  test accuracy {result.mwnet_accuracy:6.2%}   ({result.seconds_mwnet:.1f} s)",
        "",
        f"  mean learned weight: clean rows {result.mean_weight_clean:.3f}, "
        f"corrupted rows {result.mean_weight_noisy:.3f}",
        "",
        "  learned weighting function V(loss):",
    ]
    for loss, weight in zip(result.curve_losses, result.curve_weights):
        bar = "#" * int(round(weight * 40))
        lines.append(f"    loss {loss:4.1f}  weight {weight:5.3f}  {bar}")
    return "\n".join(lines)


def save_demo(result: DemoResult, out: str | Path) -> Path:
    """Write the result as JSON into ``out``; returns the file path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo.json"
    path.write_text(json.dumps(asdict(result), indent=2))
    return path


def save_demo_figures(run: DemoRun, out: str | Path, *, n_variation: int = 10) -> list[Path]:
    """Write the demo's figures as PNGs into ``out``; returns their paths. Needs matplotlib.

    * ``weight_function.png``: the learned weighting function over the training losses
      (Fig. 1e of the paper), with the distribution of the final training losses behind it;
    * ``weight_distribution.png``: histograms of the weights of clean and of corrupted rows
      (Fig. 5);
    * ``weight_variation.png``: the epoch-to-epoch change of the weights of ``n_variation``
      random corrupted rows, mean ± std (Fig. 6; only when the run recorded the weights).
    """
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves the backend alone

    from .plotting import plot_weight_distribution, plot_weight_function, plot_weight_variation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = run.result
    title = f"digits, {r.noise_rate:.0%} {r.noise_type} noise, {r.epochs} epochs"
    paths = []

    def new_axes():
        return Figure(figsize=(4.5, 3.2)).subplots()

    def save(fig, name):
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        paths.append(path)

    ax = new_axes()
    fig = ax.figure
    plot_weight_function(run.mwnet, ax=ax, loss_range=(0.0, 5.0), show_losses=True, color="tab:green")
    ax.set_title(f"learned weighting function\n{title}", fontsize=9)
    save(fig, "weight_function.png")

    ax = new_axes()
    fig = ax.figure
    plot_weight_distribution(run.mwnet.sample_weights_, run.noisy_mask, ax=ax)
    ax.set_title(f"weights of clean and corrupted rows\n{title}", fontsize=9)
    save(fig, "weight_distribution.png")

    history = getattr(run.mwnet, "sample_weights_history_", None)
    noisy = np.flatnonzero(run.noisy_mask)
    if history is not None and len(history) >= 2 and noisy.size:
        rng = np.random.RandomState(0)
        rows = rng.choice(noisy, size=min(n_variation, noisy.size), replace=False)
        ax = new_axes()
        fig = ax.figure
        plot_weight_variation(history, rows, ax=ax, color="tab:red")
        ax.set_title(f"weight changes of {rows.size} corrupted rows\n{title}", fontsize=9)
        save(fig, "weight_variation.png")
    return paths
