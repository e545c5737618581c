"""Results files, tables and figures: one writer for the demo and the reproduction.

* :func:`provenance`: what every results file records (date, versions, device).
* :func:`text_table`: aligned plain-text tables.
* :func:`format_results`: reproduction runs in the layout of the paper's tables, the paper's
  numbers beside ours (the layout follows :data:`mwnet_sk.reproduce.paper.TABLES`).
* :func:`write_json` / :func:`save_results`: JSON files that survive NaN and numpy values.
* :func:`write_figures`: the paper's figures of a fitted estimator (Fig. 1, 5 and 6).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paper import MODEL_TITLES, TABLES, get_experiment

__all__ = [
    "FIGURE_FORMATS",
    "device_name",
    "format_results",
    "provenance",
    "resolve_device",
    "save_results",
    "text_table",
    "write_figures",
    "write_json",
]

FIGURE_FORMATS = ("png", "pdf", "svg")
"""File formats :func:`write_figures` writes."""


# --------------------------------------------------------------------------- provenance
def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def device_name(device: str) -> str:
    """A readable name of the device, e.g. the GPU's or ``"CPU (x86_64, 2 cores, 2 torch threads)"``."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(device: str, seed: int | None = None) -> dict[str, Any]:
    """What a result was measured on and when: date, seed, device and library versions."""
    import sklearn
    import skorch
    import torch

    from .. import __version__

    record: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "versions": {
            "mwnet_sk": __version__,
            "torch": torch.__version__,
            "skorch": skorch.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    if seed is not None:
        record["seed"] = int(seed)
    return record


# --------------------------------------------------------------------------- text
def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f}±{std:.2f}"


def _aggregate(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def format_results(results: Sequence[Mapping]) -> str:
    """Runs as plain-text tables in the layout of the paper, the paper's numbers first.

    Runs of the same experiment (different seeds) are aggregated to mean ± std (sample std,
    as the paper's "± std over 5 repetitions"). A table whose rows are settings (noise rates,
    imbalance factors) gets one row per experiment; a table of one experiment (Clothing1M)
    one row per method, as in the paper.
    """
    if not results:
        return "(no results)"
    by_table: dict[int, dict[str, list[Mapping]]] = {}
    for r in results:
        by_table.setdefault(int(r["table"]), {}).setdefault(r["experiment"], []).append(r)
    blocks = []
    for number in sorted(by_table):
        table = TABLES[number]
        rows = by_table[number]
        runs_all = [r for rs in rows.values() for r in rs]
        ours = [run for run in ("plain", "finetuned", "mwnet") if any(run in r["accuracy"] for r in runs_all)]
        first = get_experiment(next(iter(rows)))
        if table.setting is None:  # one experiment: a row per method
            header = ["method", "paper", "ours", "runs"]
            mine = {table.column(run): run for run in ours}
            lines = []
            for method in table.methods:
                run = mine.get(method)
                label = "MW-Net (Ours)" if method == "Ours" else method
                value = _fmt(*_aggregate([r["accuracy"][run] for r in runs_all if run in r["accuracy"]])) if run else ""
                lines.append([label, _fmt(*first.paper_accuracy(method)), value, str(len(runs_all)) if run else ""])
        else:
            titles = [table.title(run) for run in ours]
            header = (["dataset", table.setting] + [f"paper {t}" for t in titles]
                      + [f"ours {t}" for t in titles] + ["runs"])  # fmt: skip
            lines = []
            for name, runs in rows.items():
                exp = get_experiment(name)
                row = [exp.dataset_title, exp.setting.replace("IF ", "")]
                row += [_fmt(*exp.paper_accuracy(table.column(run))) for run in ours]
                row += [_fmt(*_aggregate([r["accuracy"][run] for r in runs if run in r["accuracy"]])) for run in ours]
                lines.append(row + [str(len(runs))])
        model = {MODEL_TITLES.get(r.get("model", first.model), r.get("model", first.model)) for r in runs_all}
        devices = sorted({r.get("device_name", r.get("device", "?")) for r in runs_all})
        dates = sorted({str(r.get("date", "?"))[:10] for r in runs_all})
        epochs = sorted({r.get("epochs") for r in runs_all}, key=str)
        protocols = sorted({(r.get("protocol") or {}).get("name", "?") for r in runs_all})
        paper_note = f" (mean±std over {table.runs} runs)" if table.runs else ""
        ours_note = " (mean±std over runs)" if any(len(v) > 1 for v in rows.values()) else ""
        block = [
            f"Table {number}: {table.caption}, {', '.join(sorted(model))}: test accuracy (%)",
            f"  'paper' = the numbers published in Shu et al., NeurIPS 2019{paper_note} (MW-Net = their "
            f"'Ours'); 'ours' = this run{ours_note}",
            f"  ours: {', '.join(map(str, epochs))} epochs, protocol {', '.join(protocols)}, on "
            f"{'; '.join(devices)}, {', '.join(dates)}",
        ]
        if any(r.get("smoke") for r in runs_all):
            block.append("  SMOKE RUN: tiny generated data and a tiny network; these accuracies mean nothing")
        blocks.append("\n".join(block + ["", text_table(header, lines)]))
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- files
def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(payload: Any, path: str | os.PathLike) -> Path:
    """Write ``payload`` as indented JSON (numpy values converted, NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return path


def save_results(results: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write runs as JSON: ``{"results": [...], "table": <format_results text>}``."""
    return write_json({"results": list(results), "table": format_results(results)}, path)


# --------------------------------------------------------------------------- figures
def write_figures(
    mwnet,
    out: str | os.PathLike,
    *,
    title: str,
    noisy_mask: np.ndarray | None = None,
    loss_range: tuple[float, float] = (0.0, 10.0),
    lr_drops: Sequence[int] = (),
    prefix: str = "",
    fmt: str = "png",
    dpi: int = 110,
    n_variation: int = 10,
    seed: int = 0,
) -> list[Path]:
    """Write the paper's figures of a fitted :class:`~mwnet_sk.MetaWeightClassifier`.

    * ``weight_function``: the learned weighting function with the final training losses
      behind it (Fig. 1 d-f);
    * ``weight_distribution``: histograms of the weights of clean and corrupted rows (Fig. 5;
      only with a ``noisy_mask`` that marks some rows);
    * ``weight_variation``: epoch-to-epoch weight changes of ``n_variation`` random corrupted
      rows, mean ± std, with the learning-rate drops marked (Fig. 6; only when the estimator
      was fitted with ``record_weights=True``).

    Parameters
    ----------
    mwnet : MetaWeightClassifier
        Fitted.
    out : path
        Folder (created if missing).
    title : str
        Second line of every figure's title (what was run).
    noisy_mask : ndarray of bool or None
        Over the training rows: True where the label is corrupted.
    loss_range : (float, float)
        x-range of the weighting function.
    lr_drops : sequence of int
        Epochs after which the learning rate was lowered.
    prefix : str
        Prepended to the file names (e.g. the experiment and seed).
    fmt : {"png", "pdf", "svg"}
        File format.
    dpi : int
        Resolution of raster formats.
    n_variation : int
        Corrupted rows followed in the variation figure.
    seed : int
        Chooses those rows.

    Returns
    -------
    list of Path
        The files written. Needs matplotlib.
    """
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves the backend alone

    from ..plotting import plot_weight_distribution, plot_weight_function, plot_weight_variation

    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format must be one of {FIGURE_FORMATS}, got {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(ax, name, caption):
        ax.set_title(f"{caption}\n{title}", fontsize=9)
        fig = ax.figure
        fig.tight_layout()
        path = out / f"{prefix}{name}.{fmt}"
        fig.savefig(path, dpi=dpi)
        written.append(path)

    def axes():
        return Figure(figsize=(4.5, 3.2)).subplots()

    ax = axes()
    # a class-aware function: its mean over the classes, with each class's own curve behind it
    per_class = bool(getattr(mwnet.weight_function_, "uses_labels", False))
    plot_weight_function(mwnet, ax=ax, loss_range=loss_range, show_losses=True, per_class=per_class,
                         color="tab:green")
    save(ax, "weight_function", "learned weighting function" + (" (mean and per class)" if per_class else ""))
    noisy = None if noisy_mask is None else np.asarray(noisy_mask, dtype=bool)
    if noisy is not None and noisy.any():
        ax = axes()
        plot_weight_distribution(mwnet.sample_weights_, noisy, ax=ax)
        save(ax, "weight_distribution", "weights of clean and corrupted rows")
        history = getattr(mwnet, "sample_weights_history_", None)
        if history is not None and len(history) >= 2:
            rows = np.random.RandomState(seed).choice(np.flatnonzero(noisy), size=min(n_variation, int(noisy.sum())),
                                                      replace=False)  # fmt: skip
            ax = axes()
            plot_weight_variation(history, rows, ax=ax, color="tab:red", lr_drops=lr_drops)
            save(ax, "weight_variation", f"weight changes of {rows.size} corrupted rows")
    return written
