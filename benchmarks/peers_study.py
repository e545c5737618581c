#!/usr/bin/env python
"""Peers study: Meta-Weight-Net's weights for any scikit-learn classifier
(:class:`mwnet_sk.refit.MetaWeightRefit`) and as a label-issue detector
(:func:`mwnet_sk.label_issues.find_label_issues`), beside what practitioners would use instead.

Data: scikit-learn's digits scaled to [0, 1]; per seed a clean, stratified 30% test split; a
clean meta set of 10 rows per class of the training split (:func:`mwnet_sk.noise.meta_mask`);
40% label noise on the other training rows, ``uniform`` (redrawn from all classes) or ``flip``
(each class to one fixed other class). The robustness study's protocol
(``benchmarks/robustness_study.py``).

Methods (accuracy on the clean test split), every one trained on every labelled row:

* ``plain-lr``: ``LogisticRegression(max_iter=2000)``; ``plain-mlp``: the default weighter's
  network and recipe trained plainly (:func:`mwnet_sk.plain_counterpart`);
* ``mwnet-mlp``: the default weighter itself (:func:`mwnet_sk.refit.default_weighter`: an MLP,
  60 epochs);
* ``refit-lr``: ``MetaWeightRefit(LogisticRegression)`` (weights as ``sample_weight``),
  ``refit-lr-drop``: the same with ``mode="drop"``, ``refit-mlp``: ``MetaWeightRefit`` around
  the plain MLP (it has no ``sample_weight``: the rows below the threshold are dropped);
  the three share one weighter fit (``FrozenEstimator``), the first fits it;
* ``cleanlab-lr``, ``cleanlab-mlp``: cleanlab's ``CleanLearning`` around the same two models
  (5-fold out-of-fold probabilities, then a refit without the rows it flags);
* design checks of ``refit-lr``'s choices, with the same weights: ``lr-raw-weights`` (the
  learned weights as they are), ``lr-meta-learned`` (meta rows keep their learned weight instead
  of 1).

Detection of the corrupted rows (among the noisy training rows): ROC AUC of our
``label_quality`` and of cleanlab's label-quality scores (out-of-fold, from each CleanLearning);
precision and recall of the flags (ours: ``label_quality < 0.5``; also with the prediction
disagreeing with the label; cleanlab's ``is_label_issue``), and the recall and clean-row flag
rate of our flag at thresholds 0.25, 0.5 and 0.75.

Usage::

    python benchmarks/peers_study.py --seeds 5 --out peers.jsonl    # about 5 min per seed on a busy 2-core CPU
    python benchmarks/peers_study.py --summary --out peers.jsonl     # print the tables again
    python benchmarks/peers_study.py --smoke                         # seconds: the test's check

One process, one thread (another job may use the other cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import mwnet_sk
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    import mwnet_sk

NOISE_RATE = 0.4
SETTINGS = ("uniform", "flip")
METHODS = ("plain-lr", "plain-mlp", "mwnet-mlp", "refit-lr", "refit-lr-drop", "refit-mlp", "cleanlab-lr",
           "cleanlab-mlp", "lr-raw-weights", "lr-meta-learned")
THRESHOLDS = (0.25, 0.5, 0.75)


def make_data(noise: str, seed: int):
    """(X_train, y_noisy, y_true, meta_mask, X_test, y_test) for one noise type and seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from mwnet_sk.noise import make_noisy_labels, meta_mask

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    meta = meta_mask(y_tr, n_meta_per_class=10, random_state=seed)
    y_noisy = y_tr.copy()
    y_noisy[~meta] = make_noisy_labels(y_tr[~meta], NOISE_RATE, noise_type=noise, random_state=seed)
    return X_tr, y_noisy, y_tr, meta, X_te, y_te


def _flag_stats(flag, corrupted):
    hits = int((flag & corrupted).sum())
    return {"precision": round(hits / max(int(flag.sum()), 1), 4),
            "recall": round(hits / max(int(corrupted.sum()), 1), 4),
            "clean_flagged": round(int((flag & ~corrupted).sum()) / max(int((~corrupted).sum()), 1), 4)}


def run_seed(noise: str, seed: int, smoke: bool = False) -> list[dict]:
    """Every method on one noise type and seed: one record per method."""
    import torch
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from mwnet_sk import plain_counterpart
    from mwnet_sk.label_issues import find_label_issues
    from mwnet_sk.refit import MetaWeightRefit, default_weighter, learned_weights, relative_weights

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y_noisy, y_true, meta, X_test, y_test = make_data(noise, seed)
    corrupted = (y_noisy != y_true)[~meta]  # the detection targets: the noisy training rows
    lr = LogisticRegression(max_iter=200 if smoke else 2000)
    weighter = default_weighter(X, np.unique(y_noisy), seed)
    if smoke:  # a few epochs, the step decay after the first
        weighter.set_params(max_epochs=2, callbacks__lr_step__milestones=[1])
    records = []

    def record(method, est, start, **extra):
        acc = float(np.mean(est.predict(X_test) == y_test))
        records.append({"noise": noise, "seed": seed, "method": method, "accuracy": round(acc, 4),
                        "seconds": round(time.perf_counter() - start, 1), **extra})

    start = time.perf_counter()
    refit = MetaWeightRefit(lr, weighter=weighter).fit(X, y_noisy, meta=meta)
    seconds_weighter = time.perf_counter() - start
    report = find_label_issues(X, y_noisy, estimator=refit, meta=meta, return_type="dict")
    rows = report["row"]
    quality = np.empty(len(rows))
    quality[rows] = report["label_quality"]
    predicted = np.empty(len(rows), dtype=report["predicted_label"].dtype)
    predicted[rows] = report["predicted_label"]
    q, disagree = quality[~meta], (predicted != y_noisy)[~meta]
    detection = {"auc": round(float(roc_auc_score(corrupted, -q)), 4),
                 "flag": _flag_stats(q < 0.5, corrupted),
                 "flag_and_disagree": _flag_stats((q < 0.5) & disagree, corrupted),
                 "thresholds": {str(t): _flag_stats(q < t, corrupted) for t in THRESHOLDS},
                 "noise_rate": round(float(corrupted.mean()), 4)}
    record("refit-lr", refit, start, detection=detection)

    frozen = FrozenEstimator(refit.weighter_)
    start = time.perf_counter()
    record("mwnet-mlp", refit.weighter_, start, seconds_weighter=round(seconds_weighter, 1))
    start = time.perf_counter()
    record("refit-lr-drop", MetaWeightRefit(lr, weighter=frozen, mode="drop").fit(X, y_noisy, meta=meta), start)
    plain_mlp = plain_counterpart(refit.weighter_)
    start = time.perf_counter()
    record("refit-mlp", MetaWeightRefit(plain_mlp, weighter=frozen).fit(X, y_noisy, meta=meta), start)
    start = time.perf_counter()
    record("plain-lr", clone(lr).fit(X, y_noisy), start)
    start = time.perf_counter()
    record("plain-mlp", clone(plain_mlp).fit(X, y_noisy), start)

    raw, _ = learned_weights(refit.weighter_, X, y_noisy)
    start = time.perf_counter()
    record("lr-raw-weights", clone(lr).fit(X, y_noisy, sample_weight=raw), start)
    start = time.perf_counter()
    record("lr-meta-learned", clone(lr).fit(X, y_noisy, sample_weight=relative_weights(raw)), start)

    try:
        from cleanlab.classification import CleanLearning
    except ImportError:
        return records
    for method, model in (("cleanlab-lr", lr), ("cleanlab-mlp", plain_mlp)):
        if smoke and method == "cleanlab-mlp":
            continue
        start = time.perf_counter()
        cl = CleanLearning(clone(model), seed=seed, cv_n_folds=2 if smoke else 5, verbose=False).fit(X, y_noisy)
        issues = cl.label_issues_df
        cl_quality = issues["label_quality"].to_numpy()[~meta]
        cl_flag = issues["is_label_issue"].to_numpy()[~meta]
        record(method, cl, start, detection={"auc": round(float(roc_auc_score(corrupted, -cl_quality)), 4),
                                              "flag": _flag_stats(cl_flag, corrupted)})
    return records


def header() -> dict:
    import sklearn
    import torch

    return {"study": "peers", "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}, 1 thread",
            "mwnet_sk": mwnet_sk.__version__, "torch": torch.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version()}


def summarize(rows: list[dict], head: dict) -> str:
    """Per noise type: accuracy per method and seed; detection per seed."""
    lines = [f"# peers study ({head.get('date', '?')}, {head.get('machine', '?')}, "
             f"mwnet-sk {head.get('mwnet_sk', '?')})"]
    rows = [r for r in rows if "method" in r]
    for noise in SETTINGS:
        mine = [r for r in rows if r["noise"] == noise]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        acc = {(r["method"], r["seed"]): r["accuracy"] for r in mine}
        lines += ["", f"## digits, 40% {noise} noise: test accuracy %", "",
                  "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for method in METHODS:
            values = [acc.get((method, s)) for s in seeds]
            if all(v is None for v in values):
                continue
            cells = " | ".join("" if v is None else f"{100 * v:.1f}" for v in values)
            done = [v for v in values if v is not None]
            lines.append(f"| {method} | {cells} | {100 * np.mean(done):.1f} |")
        det = {(r["method"], r["seed"]): r["detection"] for r in mine if "detection" in r}
        lines += ["", f"## digits, 40% {noise} noise: finding the corrupted rows", "",
                  "| seed | noise rate | ours: AUC | flag P / R | flag and disagree P / R | cleanlab-lr: AUC "
                  "| flag P / R | cleanlab-mlp: AUC | flag P / R |", "|---|---|---|---|---|---|---|---|---|"]
        for s in seeds:
            ours = det.get(("refit-lr", s))
            if ours is None:
                continue
            cells = [f"{ours['noise_rate']:.2f}", f"{ours['auc']:.3f}",
                     f"{ours['flag']['precision']:.2f} / {ours['flag']['recall']:.2f}",
                     f"{ours['flag_and_disagree']['precision']:.2f} / {ours['flag_and_disagree']['recall']:.2f}"]
            for peer in ("cleanlab-lr", "cleanlab-mlp"):
                d = det.get((peer, s))
                cells += ["", ""] if d is None else [f"{d['auc']:.3f}", f"{d['flag']['precision']:.2f} / "
                                                                         f"{d['flag']['recall']:.2f}"]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", f"## digits, 40% {noise} noise: our flag's threshold (recall / share of clean rows flagged)", "",
                  "| seed | " + " | ".join(f"label_quality < {t}" for t in THRESHOLDS) + " |",
                  "|---|" + "---|" * len(THRESHOLDS)]
        for s in seeds:
            ours = det.get(("refit-lr", s))
            if ours is not None:
                lines.append(f"| {s} | " + " | ".join(
                    f"{ours['thresholds'][str(t)]['recall']:.2f} / {ours['thresholds'][str(t)]['clean_flagged']:.3f}"
                    for t in THRESHOLDS) + " |")
    return "\n".join(lines)


def _read(out: Path):
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [r for r in lines if "method" in r], next((r for r in lines if r.get("study")), {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON-lines results file (appended to; a rerun skips what is there)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per noise type (default 5)")
    parser.add_argument("--noise", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--smoke", action="store_true",
                        help="uniform noise, 1 seed, a 2-epoch weighter, no cleanlab-mlp")
    parser.add_argument("--summary", action="store_true", help="only print the tables of --out")
    args = parser.parse_args(argv)
    noises = [n.strip() for n in args.noise.split(",") if n.strip()]
    if set(noises) - set(SETTINGS):
        parser.error(f"unknown noise {sorted(set(noises) - set(SETTINGS))}; choose from {', '.join(SETTINGS)}")
    if args.summary:
        if args.out is None or not args.out.exists():
            parser.error("--summary needs an existing --out file")
        print(summarize(*_read(args.out)))
        return 0
    from threadpoolctl import threadpool_limits

    head = header()
    rows, done = [], set()
    if args.out is not None and args.out.exists():
        rows, head = _read(args.out)
        done = {(r["noise"], r["seed"]) for r in rows}
    todo = [("uniform", 0)] if args.smoke else [(n, s) for n in noises for s in range(args.seeds)]
    out = None if args.out is None else open(args.out, "a")
    try:
        if out is not None and not done:
            out.write(json.dumps(head) + "\n")
        with threadpool_limits(1):  # one BLAS/OpenMP thread: another job may use the other cores
            for noise, seed in todo:
                if (noise, seed) in done:
                    continue
                new = run_seed(noise, seed, smoke=args.smoke)
                rows += new
                if out is not None:
                    out.writelines(json.dumps(r) + "\n" for r in new)
                    out.flush()
                print(f"done: {noise} seed {seed}", file=sys.stderr, flush=True)
    finally:
        if out is not None:
            out.close()
    print(summarize(rows, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
