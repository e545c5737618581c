"""The paper's result tables (Shu et al., NeurIPS 2019) and the experiment registry, as data.

Every row of Tables 1-4 is an :class:`Experiment` in :data:`EXPERIMENTS`, named like
``table2-cifar10-uniform-40`` (Table 2, CIFAR-10, 40% uniform noise),
``table3-cifar100-flip-20``, ``table1-cifar10-lt-100`` (imbalance factor 100) or
``clothing1m``. An experiment holds what the paper states for its row (data protocol,
network, epochs and learning-rate milestones, the classifier's SGD settings, batch size,
meta set), the name of the authors' script settings it runs under
(:mod:`mwnet_sk.reproduce.protocols`) and the paper's published accuracies for the row
(:meth:`Experiment.paper_accuracy`). :data:`TABLES` describes each table: its caption, its
methods in the paper's column order and which method our plain baseline stands for.

No torch here: the registry can be read, listed and tested anywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "PaperTable",
    "RUNS",
    "TABLES",
    "experiment_names",
    "get_experiment",
    "scaled_milestones",
    "select_experiments",
]


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's result tables.

    Attributes
    ----------
    number : int
        The table's number in the paper.
    caption : str
        What the table compares, e.g. ``"CIFAR with uniform noise"``.
    model : str
        The network of the table (a :func:`mwnet_sk.models.get_model` name).
    methods : tuple of str
        The methods of the table, in the paper's column (or row) order; ``"Ours"`` is
        Meta-Weight-Net.
    baseline : str
        The method our plain baseline corresponds to (``"BaseModel"`` or ``"Cross Entropy"``).
    setting : str or None
        What distinguishes the rows of the table (``"noise rate"``, ``"imbalance factor"``);
        None for a table of one experiment, laid out with one row per method.
    runs : int or None
        Over how many runs the paper reports mean ± std (None: single numbers).
    """

    number: int
    caption: str
    model: str
    methods: tuple[str, ...]
    baseline: str
    setting: str | None = None
    runs: int | None = None

    def column(self, run: str) -> str:
        """The paper's method name for one of our :data:`RUNS` (``"plain"`` -> the baseline)."""
        return self.baseline if run == "plain" else RUNS[run]["paper"]

    def title(self, run: str) -> str:
        """The column title of one of our runs (``"MW-Net"`` for Meta-Weight-Net)."""
        return self.baseline if run == "plain" else RUNS[run]["title"]


RUNS: dict[str, dict[str, str]] = {
    "plain": {"paper": "", "title": ""},  # the table's baseline (PaperTable.baseline)
    "finetuned": {"paper": "Fine-tuning", "title": "Fine-tuning"},
    "mwnet": {"paper": "Ours", "title": "MW-Net"},
}
"""The runs the reproduction makes for each experiment, in table order, with the paper's
method each stands for and its column title.
"""

_NOISE_METHODS = ("BaseModel", "Reed-Hard", "S-Model", "Self-paced", "Focal Loss", "Co-teaching", "D2L",
                  "Fine-tuning", "MentorNet", "L2RW", "GLC", "Ours")  # fmt: skip

TABLES: dict[int, PaperTable] = {
    1: PaperTable(1, "long-tailed CIFAR", "resnet32",
                  ("BaseModel", "Focal Loss", "Class-Balanced", "Fine-tuning", "L2RW", "Ours"),
                  baseline="BaseModel", setting="imbalance factor"),
    2: PaperTable(2, "CIFAR with uniform noise", "wrn28_10", _NOISE_METHODS, baseline="BaseModel",
                  setting="noise rate", runs=5),
    3: PaperTable(3, "CIFAR with flip noise (two classes, r/2 each)", "resnet32", _NOISE_METHODS,
                  baseline="BaseModel", setting="noise rate", runs=5),
    4: PaperTable(4, "Clothing1M", "resnet50",
                  ("Cross Entropy", "Bootstrapping", "Forward", "S-adaptation", "Joint Optimization",
                   "LCCN", "MLNT", "Ours"),
                  baseline="Cross Entropy"),
}  # fmt: skip
"""The paper's result tables, by number."""

DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "clothing1m": "Clothing1M"}
"""Display names of the data sets and networks."""
MODEL_TITLES = {"wrn28_10": "WRN-28-10", "resnet32": "ResNet-32", "resnet50": "ResNet-50",
                "small_cnn": "SmallCNN"}  # fmt: skip
_N_CLASSES = {"cifar10": 10, "cifar100": 100, "clothing1m": 14}


# --------------------------------------------------------------------------- the paper's numbers
# Copied from the paper's tables (test accuracy, %). Table 1: one run per cell (no std given).
# Tables 2 and 3: (mean, std) over 5 runs; None where the paper writes "-" (the method fails).
_T1_IF = (200, 100, 50, 20, 10, 1)
_TABLE1 = {
    "cifar10": {
        "BaseModel": (65.68, 70.36, 74.81, 82.23, 86.39, 92.89),
        "Focal Loss": (65.29, 70.38, 76.71, 82.76, 86.66, 93.03),
        "Class-Balanced": (68.89, 74.57, 79.27, 84.36, 87.49, 92.89),
        "Fine-tuning": (66.08, 71.33, 77.42, 83.37, 86.42, 93.23),
        "L2RW": (66.51, 74.16, 78.93, 82.12, 85.19, 89.25),
        "Ours": (68.91, 75.21, 80.06, 84.94, 87.84, 92.66),
    },
    "cifar100": {
        "BaseModel": (34.84, 38.32, 43.85, 51.14, 55.71, 70.50),
        "Focal Loss": (35.62, 38.41, 44.32, 51.95, 55.78, 70.52),
        "Class-Balanced": (36.23, 39.60, 45.32, 52.59, 57.99, 70.50),
        "Fine-tuning": (38.22, 41.83, 46.40, 52.11, 57.44, 70.72),
        "L2RW": (33.38, 40.23, 44.44, 51.64, 53.73, 64.11),
        "Ours": (37.91, 42.09, 46.74, 54.37, 58.46, 70.37),
    },
}
_TABLE2 = {  # uniform noise, WRN-28-10; columns as TABLES[2].methods
    ("cifar10", 0): ((95.60, 0.22), (94.38, 0.14), (83.79, 0.11), (90.81, 0.34), (95.70, 0.15),
                     (88.67, 0.25), (94.64, 0.33), (95.65, 0.15), (94.35, 0.42), (92.38, 0.10),
                     (94.30, 0.19), (94.52, 0.25)),
    ("cifar10", 40): ((68.07, 1.23), (81.26, 0.51), (79.58, 0.33), (86.41, 0.29), (75.96, 1.31),
                      (74.81, 0.34), (85.60, 0.13), (80.47, 0.25), (87.33, 0.22), (86.92, 0.19),
                      (88.28, 0.03), (89.27, 0.28)),
    ("cifar10", 60): ((53.12, 3.03), (73.53, 1.54), None, (53.10, 1.78), (51.87, 1.19),
                      (73.06, 0.25), (68.02, 0.41), (78.75, 2.40), (82.80, 1.35), (82.24, 0.36),
                      (83.49, 0.24), (84.07, 0.33)),
    ("cifar100", 0): ((79.95, 1.26), (64.45, 1.02), (52.86, 0.99), (59.79, 0.46), (81.04, 0.24),
                      (61.80, 0.25), (66.17, 1.42), (80.88, 0.21), (73.26, 1.23), (72.99, 0.58),
                      (73.75, 0.51), (78.76, 0.24)),
    ("cifar100", 40): ((51.11, 0.42), (51.27, 1.18), (42.12, 0.99), (46.31, 2.45), (51.19, 0.46),
                       (46.20, 0.15), (52.10, 0.97), (52.49, 0.74), (61.39, 3.99), (60.79, 0.91),
                       (61.31, 0.22), (67.73, 0.26)),
    ("cifar100", 60): ((30.92, 0.33), (26.95, 0.98), None, (19.08, 0.57), (27.70, 3.77),
                       (35.67, 1.25), (41.11, 0.30), (38.16, 0.38), (36.87, 1.47), (48.15, 0.34),
                       (50.81, 1.00), (58.75, 0.11)),
}  # fmt: skip
_TABLE3 = {  # flip noise, ResNet-32; columns as TABLES[3].methods
    ("cifar10", 0): ((92.89, 0.32), (92.31, 0.25), (83.61, 0.13), (88.52, 0.21), (93.03, 0.16),
                     (89.87, 0.10), (92.02, 0.14), (93.23, 0.23), (92.13, 0.30), (89.25, 0.37),
                     (91.02, 0.20), (92.04, 0.15)),
    ("cifar10", 20): ((76.83, 2.30), (88.28, 0.36), (79.25, 0.30), (87.03, 0.34), (86.45, 0.19),
                      (82.83, 0.85), (87.66, 0.40), (82.47, 3.64), (86.36, 0.31), (87.86, 0.36),
                      (89.68, 0.33), (90.33, 0.61)),
    ("cifar10", 40): ((70.77, 2.31), (81.06, 0.76), (75.73, 0.32), (81.63, 0.52), (80.45, 0.97),
                      (75.41, 0.21), (83.89, 0.46), (74.07, 1.56), (81.76, 0.28), (85.66, 0.51),
                      (88.92, 0.24), (87.54, 0.23)),
    ("cifar100", 0): ((70.50, 0.12), (69.02, 0.32), (51.46, 0.20), (67.55, 0.27), (70.02, 0.53),
                      (63.31, 0.05), (68.11, 0.26), (70.72, 0.22), (70.24, 0.21), (64.11, 1.09),
                      (65.42, 0.23), (70.11, 0.33)),
    ("cifar100", 20): ((50.86, 0.27), (60.27, 0.76), (45.45, 0.25), (63.63, 0.30), (61.87, 0.30),
                       (54.13, 0.55), (63.48, 0.53), (56.98, 0.50), (61.97, 0.47), (57.47, 1.16),
                       (63.07, 0.53), (64.22, 0.28)),
    ("cifar100", 40): ((43.01, 1.16), (50.40, 1.01), (43.81, 0.15), (53.51, 0.53), (54.13, 0.40),
                       (44.85, 0.81), (51.83, 0.33), (46.37, 0.25), (52.66, 0.56), (50.98, 1.55),
                       (62.22, 0.62), (58.64, 0.47)),
}  # fmt: skip
_TABLE4 = {
    "Cross Entropy": 68.94, "Bootstrapping": 69.12, "Forward": 69.84, "S-adaptation": 70.36,
    "Joint Optimization": 72.23, "LCCN": 73.07, "MLNT": 73.47, "Ours": 73.72,
}  # fmt: skip


# --------------------------------------------------------------------------- experiments
@dataclass(frozen=True)
class Experiment:
    """One row of one of the paper's result tables, with its training protocol.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"table2-cifar10-uniform-40"``.
    table : int
        The paper's table (a key of :data:`TABLES`).
    dataset : {"cifar10", "cifar100", "clothing1m"}
        The data set.
    corruption : {"long_tailed", "uniform", "flip2", "real"}
        How the training set is biased. The paper's flip noise sends each class to two
        randomly chosen other classes, ``r / 2`` each: ``"flip2"`` in :mod:`mwnet_sk.noise`.
    model : str
        A :func:`mwnet_sk.models.get_model` name.
    epochs : int
        Training epochs.
    milestones : tuple of int
        Epochs after which the classifier learning rate is divided by 10.
    protocol : str
        The authors' script settings the row runs under (a
        :data:`mwnet_sk.reproduce.protocols.PROTOCOLS` name): the weighting, the weight net's
        optimizer and learning rate, Nesterov momentum, the augmentation.
    lr, momentum, weight_decay, batch_size : float, float, float, int
        SGD of the classifier (and of the plain baseline), as the paper states them.
    noise_rate : float or None
        Corruption probability (Tables 2 and 3).
    imbalance_factor : float or None
        Largest / smallest class size (Table 1).
    meta_size, n_meta_per_class : int or None
        Size of the clean meta set (total, split evenly over the classes) or per class.
    paper : mapping of str to float or (float, float) or None
        The paper's accuracies for this row, by method name (:attr:`PaperTable.methods`):
        ``(mean, std)`` in Tables 2-3, a single number in Tables 1 and 4, None for "-".
    notes : str
        Where a setting comes from when the paper does not state it.
    """

    name: str
    table: int
    dataset: str
    corruption: str
    model: str
    epochs: int
    milestones: tuple[int, ...]
    protocol: str
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 100
    noise_rate: float | None = None
    imbalance_factor: float | None = None
    meta_size: int | None = None
    n_meta_per_class: int | None = None
    paper: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def n_classes(self) -> int:
        return _N_CLASSES[self.dataset]

    @property
    def dataset_title(self) -> str:
        return DATASET_TITLES[self.dataset]

    @property
    def setting(self) -> str:
        """The row label of the paper's table: ``"40%"``, ``"IF 100"`` or ``""``."""
        if self.noise_rate is not None:
            return f"{self.noise_rate:.0%}"
        if self.imbalance_factor is not None:
            return f"IF {self.imbalance_factor:g}"
        return ""

    @property
    def title(self) -> str:
        """A one-line description, e.g. ``"Table 2: CIFAR-10, 40% uniform noise, WRN-28-10"``."""
        if self.corruption == "long_tailed":
            what = f"long-tailed, imbalance factor {self.imbalance_factor:g}"
        elif self.corruption == "real":
            what = "real-world label noise"
        else:
            what = f"{self.setting} {'uniform' if self.corruption == 'uniform' else 'flip'} noise"
        model = MODEL_TITLES.get(self.model, self.model)
        return f"Table {self.table}: {self.dataset_title}, {what}, {model}"

    def paper_accuracy(self, method: str) -> tuple[float | None, float | None]:
        """``(mean, std)`` the paper reports for ``method`` (std None when not reported)."""
        value = self.paper.get(method)
        if value is None:
            return None, None
        if isinstance(value, tuple):
            return float(value[0]), float(value[1])
        return float(value), None

    def milestones_for(self, epochs: int) -> list[int]:
        """The milestones for a run of ``epochs`` epochs (see :func:`scaled_milestones`)."""
        return scaled_milestones(self.milestones, self.epochs, epochs)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["paper"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.paper.items()}
        d["milestones"] = list(self.milestones)
        return d


def scaled_milestones(milestones: Sequence[int], epochs: int, new_epochs: int) -> list[int]:
    """Milestones moved proportionally when the number of epochs is overridden.

    Milestones stay distinct, at least 1 and before the last epoch where possible.

    Examples
    --------
    >>> scaled_milestones((36, 38), 40, 20)
    [18, 19]
    """
    if new_epochs == epochs:
        return list(milestones)
    out: list[int] = []
    for m in milestones:
        v = max(1, int(round(m * new_epochs / epochs)))
        if out and v <= out[-1]:
            v = out[-1] + 1
        if v < new_epochs or not out:
            out.append(min(v, max(new_epochs - 1, 1)))
    return sorted(set(out))


def _build_registry() -> dict[str, Experiment]:
    reg: dict[str, Experiment] = {}
    lt_note = "Batch size 100 follows the official code (the paper does not state it for this table)."
    for ds, methods in _TABLE1.items():
        for col, imb in enumerate(_T1_IF):
            name = f"table1-{ds}-lt-{imb}"
            reg[name] = Experiment(
                name=name, table=1, dataset=ds, corruption="long_tailed", model="resnet32",
                epochs=100, milestones=(80, 90), protocol="mwnet-2019-imbalance",
                imbalance_factor=float(imb), n_meta_per_class=10,
                paper={m: v[col] for m, v in methods.items()}, notes=lt_note,
            )  # fmt: skip
    for table, rows, corruption, tag, epochs, milestones in (
        (2, _TABLE2, "uniform", "uniform", 40, (36, 38)),
        (3, _TABLE3, "flip2", "flip", 60, (40, 50)),
    ):
        for (ds, pct), values in rows.items():
            name = f"table{table}-{ds}-{tag}-{pct}"
            reg[name] = Experiment(
                name=name, table=table, dataset=ds, corruption=corruption, model=TABLES[table].model,
                epochs=epochs, milestones=milestones, protocol="mwnet-2019-noise",
                noise_rate=pct / 100, meta_size=1000, paper=dict(zip(TABLES[table].methods, values)),
                notes="A meta batch of 100 (the batch size) follows the official code." + (
                    " Each seed draws its own pair of target classes per class, as the paper says (different "
                    "seeds for label noise generation); the official script fixes them with seed 1 for every "
                    "run." if table == 3 else ""),
            )  # fmt: skip
    reg["clothing1m"] = Experiment(
        name="clothing1m", table=4, dataset="clothing1m", corruption="real", model="resnet50",
        epochs=10, milestones=(5,), protocol="mwnet-2019-noise", lr=0.01, weight_decay=1e-3,
        batch_size=32, n_meta_per_class=500, paper=dict(_TABLE4),
        notes="ImageNet-pretrained ResNet-50. The paper uses 'the 7k clean data' as the meta "
        "set; we take 500 images per class (14 x 500 = 7,000) from the clean validation split "
        "and evaluate on the clean test split. Every image is resized to 256x256 and its middle "
        "224x224 crop taken, without random augmentation, as the paper says. The authors "
        "published no Clothing1M script; the weight net runs under the settings of their 2019 "
        "noisy-label script (its weight decay 5e-4; the paper names none for the weight net).",
    )  # fmt: skip
    return reg


EXPERIMENTS: dict[str, Experiment] = _build_registry()
"""All experiments by name, in table order."""
_ALIASES = {"table4-clothing1m": "clothing1m"}


def experiment_names(table: int | None = None) -> list[str]:
    """Names of the registered experiments (optionally of one table), in table order."""
    return [n for n, e in EXPERIMENTS.items() if table is None or e.table == table]


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def get_experiment(name: str | Experiment) -> Experiment:
    """Look an experiment up by name (case-insensitive; ``_`` and ``-`` are interchangeable).

    Raises
    ------
    ValueError
        Unknown name; the message suggests the closest names.
    """
    if isinstance(name, Experiment):
        return name
    key = _ALIASES.get(_key(name), _key(name))
    if key in EXPERIMENTS:
        return EXPERIMENTS[key]
    close = difflib.get_close_matches(key, list(EXPERIMENTS), n=4, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown experiment {name!r}{hint}")


def select_experiments(tokens: Iterable[str]) -> list[str]:
    """Experiment names from names, ``table1`` ... ``table4`` and shell-style patterns.

    Each name appears once, in the order first selected.

    Raises
    ------
    ValueError
        A name that is unknown or a pattern that matches nothing.

    Examples
    --------
    >>> select_experiments(["table4", "table3-cifar10-flip-*"])
    ['clothing1m', 'table3-cifar10-flip-0', 'table3-cifar10-flip-20', 'table3-cifar10-flip-40']
    """
    names: list[str] = []
    for token in tokens:
        key = _key(token)
        table = re.fullmatch(r"table(\d+)", key)
        if table and int(table.group(1)) in TABLES:
            found = experiment_names(int(table.group(1)))
        elif any(ch in key for ch in "*?["):
            found = fnmatch.filter(list(EXPERIMENTS), key)
            if not found:
                raise ValueError(f"no experiment matches {token!r}")
        else:
            found = [get_experiment(key).name]
        names += [n for n in found if n not in names]
    return names
