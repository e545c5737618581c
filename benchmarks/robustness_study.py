#!/usr/bin/env python
"""Robustness study: does Meta-Weight-Net, with the library's defaults, beat plain training on
the same labelled rows, seed after seed, on data it was never tuned on?

Settings (data set x bias), each with ``--seeds`` seeds (10 by default):

* data: scikit-learn's digits (8x8 images scaled to [0, 1]) and Gaussian blobs with heavily
  overlapping classes (10 classes, 10 features, cluster std 2.5 in a box of +-5, standardised:
  a Bayes accuracy near 91%) of 2000 and 6000 rows;
* bias: 40% uniform label noise, 40% flip noise, or a long tail (imbalance factor 50). The
  clean meta set is 10 rows per class of the (balanced) training split, taken first; the test
  split (30%) is clean and balanced. Extra digits settings vary the meta set (5 and 20 rows
  per class).

Methods (``--methods``): ``plain`` (the same network and recipe trained on every labelled row,
meta rows included: :func:`mwnet_sk.plain_counterpart`), ``plain-prior`` (the same plain
training, predicting for the meta set's class frequencies like the defaults:
``target_prior="meta"``; it shows how much of the defaults' gain that correction alone gives),
``plain-reseed`` (the same plain training from another seed, i.e. other initial weights and
batch order: its "gain" is what chance alone moves the accuracy by), ``selected`` (plain
training on the noisy rows only, keeping the epoch that scores best on the meta rows:
:class:`mwnet_sk.callbacks.MetaScoring`), ``mwnet`` (the defaults), ``mwnet-keepbest`` (the
defaults plus ``MetaScoring``: the epoch that scores best on the meta rows, which the defaults
also train on), the authors' presets
(``mwnet-2019-noise``, ``mwnet-2019-imbalance``, ``mwnet-2020``: meta set held out), knob
variants (``paper``: Eq. 1 weighting, meta set held out, Adam 1e-3, no warm-up, the network's
own probabilities, i.e. the library's defaults before this study; the presets contribute their
weighting and prediction settings only, the classifier's recipe stays the study's; ``adam``
(the weight net trained by Adam 1e-3, weight decay 1e-4, instead of SGD), ``adam-warmup`` (the
same with the 20% warm-up), ``warmup-0.2`` (the weight net starts learning after 20% of the epochs: the
defaults until the study's fifth run), ``unnormalized`` (Eq. 1 weights V/n instead of weights
normalised by their batch sum), ``meta-lr-1e-3`` and ``meta-lr-1e-1`` (the weight net's
learning rate, 1e-2 by default), ``loss-only`` (the paper's loss-only ``WeightNet`` instead of
the default ``PerClassWeightNet``), ``loss-scale-0.1`` and ``loss-scale-10`` (the weight net's
input scaling: it reads ``loss / loss_scale`` instead of the raw loss), ``meta-batch-20`` and
``meta-batch-50`` (meta batches of 20 and 50 rows instead of the training batch size, 100,
which is the whole meta set of 10 rows per class): one knob at a time away from the defaults;
``adam-warmup`` and the ``transfer`` rows, in ``ON_PREVIOUS_DEFAULTS``, keep the 20% warm-up
of the defaults they were run against) and, when installed, peers: ``cleanlab`` (cleanlab's
``CleanLearning`` around the plain network, trained on every labelled row) and ``oversample``
(imbalanced-learn's ``RandomOverSampler`` before plain training; long tails only). A linear
model, noisy settings only: ``plain-lr`` (scikit-learn's ``LogisticRegression`` on every labelled
row), ``refit-lr`` (:class:`mwnet_sk.refit.MetaWeightRefit` around it, the ``mwnet`` estimator as
weighter) and ``cleanlab-lr`` (``CleanLearning`` around it); the last two are compared with
``plain-lr`` on the same rows, and their AUC is that of the label quality (the learned weights;
cleanlab's ``label_quality``) of the noisy rows. Beyond the
paper: ``class-aware`` (the defaults with :class:`mwnet_sk.ClassAwareWeightNet`; long tails only)
and ``transfer`` (a loss-only weighting function, ``weight_net=WeightNet``, learned on another
seed's data with its meta set, frozen and applied to this seed's training rows without any meta
set; its gain is measured against plain training on those same rows, without the meta rows;
``transfer-per-class`` does the same with the default per-class function).

Every network is the same MLP (one hidden layer of 128) trained with SGD (lr 0.1, momentum
0.9, batch 100) for 60 epochs with the learning rate divided by 10 at 80% of them. Results go
to a JSON-lines file, one line per (setting, seed, method), and the summary prints per setting
and method the mean accuracy, the gain over ``plain`` (mean, smallest, and seeds won / tied),
how often the learned weighting function ended flat (collapsed) or with the wrong trend
(increasing under noise), and the ROC AUC of the weights for telling clean from corrupted rows.

Usage::

    python benchmarks/robustness_study.py --out study.jsonl            # the full study
    python benchmarks/robustness_study.py --out study.jsonl --summary  # print the table again
    python benchmarks/robustness_study.py --smoke --out /tmp/s.jsonl   # seconds: the CI check

The full study takes a few hours on 2 CPU cores (``--jobs 2`` runs two fits at a time, one
thread each); a rerun with the same ``--out`` skips what is already there.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
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
IMBALANCE = 50
EPOCHS = 60
DATASETS = ("digits", "blobs2000", "blobs6000")
BIASES = ("uniform", "flip", "longtail")
# extra settings: the digits with a smaller and a larger meta set
EXTRA = ("digits-uniform-meta5", "digits-uniform-meta20", "digits-flip-meta5")
METHODS = ("plain", "plain-prior", "plain-reseed", "selected", "mwnet", "loss-only", "mwnet-keepbest",
           "mwnet-2019-noise", "mwnet-2019-imbalance", "mwnet-2020", "paper", "adam", "adam-warmup", "warmup-0.2",
           "class-aware", "transfer", "transfer-per-class", "cleanlab", "oversample", "plain-lr", "refit-lr",
           "cleanlab-lr", "unnormalized", "meta-lr-1e-3", "meta-lr-1e-1", "loss-scale-0.1", "loss-scale-10",
           "meta-batch-20", "meta-batch-50")
# ``paper`` is left out by default: with the study's classifier recipe it is ``mwnet-2020``.
DEFAULT_METHODS = ("plain", "plain-prior", "plain-reseed", "selected", "mwnet", "loss-only", "mwnet-keepbest",
                   "mwnet-2019-noise", "mwnet-2019-imbalance", "mwnet-2020", "adam", "adam-warmup", "class-aware",
                   "transfer", "transfer-per-class", "cleanlab", "oversample", "plain-lr", "refit-lr",
                   "cleanlab-lr", "warmup-0.2", "unnormalized", "meta-lr-1e-3", "meta-lr-1e-1", "loss-scale-0.1",
                   "loss-scale-10", "meta-batch-20", "meta-batch-50")
# Until the fifth run the defaults had a warm-up of 20% of the epochs (``warmup-0.2`` is those
# defaults, ``mwnet`` the current ones). The sixth run reran the one-knob variants against the
# current defaults; the methods below were not rerun and keep the warm-up, so that a rerun gives
# the same rows.
PREVIOUS_DEFAULTS = {"warmup_epochs": 0.2}
ON_PREVIOUS_DEFAULTS = {"adam-warmup", "transfer", "transfer-per-class"}
# one knob at a time away from the library's defaults
KNOBS = {
    "paper": {"weight_net": "WeightNet", "normalize_weights": False, "train_on_meta": False, "warmup_epochs": 0,
              "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_optimizer__weight_decay": 1e-4,
              "target_prior": "train"},
    "adam": {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_optimizer__weight_decay": 1e-4, "warmup_epochs": 0},
    "adam-warmup": {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_optimizer__weight_decay": 1e-4},
    "warmup-0.2": PREVIOUS_DEFAULTS,
    "unnormalized": {"normalize_weights": False},
    "meta-lr-1e-3": {"meta_lr": 1e-3},
    "meta-lr-1e-1": {"meta_lr": 1e-1},
    "loss-only": {"weight_net": "WeightNet"},
    "loss-scale-0.1": {"weight_net__loss_scale": 0.1},
    "loss-scale-10": {"weight_net__loss_scale": 10.0},
    "meta-batch-20": {"meta_batch_size": 20},
    "meta-batch-50": {"meta_batch_size": 50},
}


_WEIGHTING = {"weight_net", "normalize_weights", "detach_weight_input", "train_on_meta", "warmup_epochs", "meta_lr",
              "meta_optimizer", "meta_optimizer__momentum", "meta_optimizer__nesterov",
              "meta_optimizer__weight_decay", "meta_interval", "meta_params", "weight_net__hidden_size",
              "target_prior"}


def settings(smoke: bool):
    if smoke:
        return ["digits-uniform", "digits-longtail"]
    return [f"{d}-{b}" for d in DATASETS for b in BIASES] + list(EXTRA)


def make_data(setting: str, seed: int):
    """(X_train, y_noisy, y_true, meta_mask, X_test, y_test) for one setting and seed."""
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from mwnet_sk.noise import make_long_tailed, make_noisy_labels, meta_mask

    parts = setting.split("-")
    name, bias = parts[0], parts[1]
    per_class = int(parts[2][4:]) if len(parts) > 2 else 10
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
    else:
        X, y = make_blobs(n_samples=int(name[5:]), centers=10, n_features=10, cluster_std=2.5,
                          center_box=(-5, 5), random_state=seed)
        X = StandardScaler().fit_transform(X).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    meta = meta_mask(y_tr, n_meta_per_class=per_class, random_state=seed)
    if bias == "longtail":
        X_rest, y_rest = make_long_tailed(X_tr[~meta], y_tr[~meta], imbalance_factor=IMBALANCE, random_state=seed)
        X_tr = np.concatenate([X_tr[meta], X_rest])
        y_tr = np.concatenate([y_tr[meta], y_rest])
        meta = np.arange(len(y_tr)) < meta.sum()
    y_noisy = y_tr.copy()
    if bias in ("uniform", "flip"):
        y_noisy[~meta] = make_noisy_labels(y_tr[~meta], NOISE_RATE, noise_type=bias, random_state=seed)
    return X_tr, y_noisy, y_tr, meta, X_te, y_te


def _logistic_regression():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000)


def make_mwnet(n_features: int, seed: int, epochs: int, **params):
    import torch
    from skorch.callbacks import LRScheduler

    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.models import MLP

    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if isinstance(params.get("meta_optimizer"), str):
        params["meta_optimizer"] = optimizers[params["meta_optimizer"]]
    if params.get("weight_net") == "WeightNet":  # the paper's loss-only 1-100-1 MLP
        params["weight_net"] = mwnet_sk.WeightNet
    milestone = max(1, int(round(0.8 * epochs)))
    return MetaWeightClassifier(
        MLP, module__n_features=n_features, module__num_classes=10, lr=0.1, optimizer__momentum=0.9,
        batch_size=100, max_epochs=epochs, verbose=0, random_state=seed,
        callbacks=[LRScheduler("MultiStepLR", milestones=[milestone], gamma=0.1)], **params,
    )


def run_one(setting: str, seed: int, method: str, epochs: int) -> dict | None:
    """Fit one method on one setting and seed; None when the method does not apply."""
    import torch
    from sklearn.metrics import roc_auc_score

    from mwnet_sk import plain_counterpart
    from mwnet_sk.callbacks import MetaScoring

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    bias = setting.split("-")[1]
    if method == "oversample" and bias != "longtail":
        return None
    if method == "mwnet-2019-imbalance" and bias != "longtail":
        return None
    if method == "mwnet-2019-noise" and bias == "longtail":
        return None
    if method == "class-aware" and bias != "longtail":
        return None
    if method in ("plain-lr", "refit-lr", "cleanlab-lr") and bias == "longtail":
        return None
    X, y_noisy, y_true, meta, X_test, y_test = make_data(setting, seed)
    # the variants of the previous defaults keep their warm-up (PREVIOUS_DEFAULTS)
    build = functools.partial(make_mwnet, **PREVIOUS_DEFAULTS) if method in ON_PREVIOUS_DEFAULTS else make_mwnet
    base = build(X.shape[1], seed, epochs)
    start = time.perf_counter()
    record = {"setting": setting, "seed": seed, "method": method}
    if method == "plain":
        est = plain_counterpart(base).fit(X, y_noisy, meta=meta)
    elif method == "plain-prior":
        est = plain_counterpart(base, target_prior="meta").fit(X, y_noisy, meta=meta)
    elif method == "plain-reseed":  # chance alone: the same plain training from another seed
        est = plain_counterpart(build(X.shape[1], seed + 500, epochs)).fit(X, y_noisy, meta=meta)
    elif method == "selected":
        est = plain_counterpart(base, train_on_meta=False, callbacks=list(base.callbacks) + [MetaScoring()])
        est.fit(X, y_noisy, meta=meta)
    elif method == "cleanlab":
        try:
            from cleanlab.classification import CleanLearning
        except ImportError:
            return None
        # n_jobs=1: the study runs each fit in its own (daemonic) worker process
        est = CleanLearning(plain_counterpart(base), seed=seed, verbose=False,
                            find_label_issues_kwargs={"n_jobs": 1}).fit(X, y_noisy)
    elif method in ("transfer", "transfer-per-class"):
        X_src, y_src, _, meta_src, _, _ = make_data(setting, seed + 1000)
        # a loss-only function carries over to other data; the per-class one's corrections belong to its data
        source_net = {"weight_net": mwnet_sk.WeightNet} if method == "transfer" else {}
        source = build(X.shape[1], seed + 1000, epochs, **source_net).fit(X_src, y_src, meta=meta_src)
        rows = ~meta  # the target has no clean rows at all
        est = build(X.shape[1], seed, epochs, weight_net=source.weight_function_, meta_lr=0,
                         warmup_epochs=0).fit(X[rows], y_noisy[rows])
        plain_rows = plain_counterpart(base).fit(X[rows], y_noisy[rows])
        record["baseline_accuracy"] = round(float(np.mean(plain_rows.predict(X_test) == y_test)), 6)
        weights, corrupted = est.sample_weights_, (y_noisy != y_true)[rows]
        if corrupted.any() and not corrupted.all():
            record["auc"] = round(float(roc_auc_score(~corrupted, weights)), 4)
    elif method == "plain-lr":  # a linear model trained plainly on every labelled row
        est = _logistic_regression().fit(X, y_noisy)
    elif method in ("refit-lr", "cleanlab-lr"):  # compared with plain-lr on the same rows
        record["baseline_accuracy"] = round(float(np.mean(
            _logistic_regression().fit(X, y_noisy).predict(X_test) == y_test)), 6)
        corrupted = (y_noisy != y_true)[~meta]
        if method == "refit-lr":
            from mwnet_sk.refit import MetaWeightRefit

            est = MetaWeightRefit(_logistic_regression(), weighter=base).fit(X, y_noisy, meta=meta)
            quality = est.sample_weights_[~meta]  # what the linear model got (finite, the weighter's order)
        else:
            try:
                from cleanlab.classification import CleanLearning
            except ImportError:
                return None
            est = CleanLearning(_logistic_regression(), seed=seed, verbose=False,
                                find_label_issues_kwargs={"n_jobs": 1}).fit(X, y_noisy)
            quality = est.get_label_issues()["label_quality"].to_numpy()[~meta]
        if corrupted.any() and not corrupted.all():  # the label quality of the noisy rows
            record["auc"] = round(float(roc_auc_score(~corrupted, quality)), 4)
    elif method == "oversample":
        try:
            from imblearn.over_sampling import RandomOverSampler
        except ImportError:
            return None
        X_res, y_res = RandomOverSampler(random_state=seed).fit_resample(X, y_noisy)
        est = plain_counterpart(base).fit(X_res, y_res)
    else:
        if method.startswith("mwnet-20"):
            from mwnet_sk.reproduce.protocols import get_protocol

            # the preset's weighting settings; the classifier's recipe stays the study's
            params = {k: v for k, v in get_protocol(method).estimator_params.items() if k in _WEIGHTING}
        elif method == "class-aware":
            from mwnet_sk import ClassAwareWeightNet

            params = {"weight_net": ClassAwareWeightNet}
        else:
            params = dict(KNOBS.get(method, {}))
        est = build(X.shape[1], seed, epochs, **params)
        if method == "mwnet-keepbest":  # the defaults, keeping the epoch that scores best on the meta rows
            est.set_params(callbacks=list(est.callbacks) + [MetaScoring()])
        est.fit(X, y_noisy, meta=meta)
        profile = est.weight_function_.profile()
        record.update(trend=profile.trend, spread=round(profile.spread, 4),
                      collapsed=bool(est.history[-1].get("weight_collapsed", False)))
        weights, corrupted = est.sample_weights_, y_noisy != y_true
        rows = ~meta & np.isfinite(weights)
        if corrupted[rows].any():
            record["auc"] = round(float(roc_auc_score(~corrupted[rows], weights[rows])), 4)
    record["accuracy"] = round(float(np.mean(est.predict(X_test) == y_test)), 6)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def _job(args):
    return run_one(*args)


def run(out: Path, seeds, methods, epochs: int, jobs: int, smoke: bool):
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if "setting" in row:
                done.add((row["setting"], row["seed"], row["method"]))
    todo = [(s, seed, m, epochs) for s in settings(smoke) for seed in seeds for m in methods
            if (s, seed, m) not in done]
    header = {"study": "robustness", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}",
              "mwnet_sk": mwnet_sk.__version__, "python": platform.python_version(), "epochs": epochs}
    with open(out, "a") as f:
        if not done:
            f.write(json.dumps(header) + "\n")
        if jobs > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for row in pool.imap_unordered(_job, todo):
                    if row is not None:
                        f.write(json.dumps(row) + "\n")
                        f.flush()
        else:
            for args in todo:
                row = _job(args)
                if row is not None:
                    f.write(json.dumps(row) + "\n")
                    f.flush()


def summarize(out: Path) -> str:
    """Per setting and method: accuracy, gain over plain (mean, smallest, wins/ties), collapsed
    and wrong-trend runs, AUC of the weights; and the per-seed gains."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    header = next((r for r in rows if r.get("study")), {})
    rows = [r for r in rows if "setting" in r]
    plain = {(r["setting"], r["seed"]): r["accuracy"] for r in rows if r["method"] == "plain"}
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["setting"], r["method"])].append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    lines = [f"# robustness study ({header.get('date', '?')}, {header.get('machine', '?')}, "
             f"mwnet-sk {header.get('mwnet_sk', '?')}, {header.get('epochs', '?')} epochs)", "",
             "| setting | method | seeds | accuracy % | gain over plain (mean) | smallest gain | won / tied | "
             "flat | wrong trend | AUC | per-seed gains |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (setting, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        rs = sorted((r for r in rs if (r["setting"], r["seed"]) in plain), key=lambda r: r["seed"])
        if not rs:
            continue
        acc = 100 * np.mean([r["accuracy"] for r in rs])
        # transfer is compared with plain training on its own rows (no meta set)
        gains = [100 * (r["accuracy"] - r.get("baseline_accuracy", plain[(r["setting"], r["seed"])])) for r in rs]
        noise = setting.split("-")[1] != "longtail"
        trends = [r.get("trend") for r in rs if "trend" in r]
        flat = sum(t == "flat" for t in trends)
        wrong = sum(t == ("increasing" if noise else "decreasing") for t in trends)
        aucs = [r["auc"] for r in rs if "auc" in r]
        per_seed = " ".join(f"{g:+.1f}" for g in gains)
        if method == "plain":
            lines.append(f"| {setting} | plain | {len(rs)} | {acc:.1f} | | | | | | | |")
            continue
        lines.append(
            f"| {setting} | {method} | {len(rs)} | {acc:.1f} | {np.mean(gains):+.1f} | {min(gains):+.1f} | "
            f"{sum(g > 0 for g in gains)} / {sum(g == 0 for g in gains)} | "
            f"{flat if trends else ''} | {wrong if trends else ''} | {np.mean(aucs):.2f} | {per_seed} |"
            if aucs else
            f"| {setting} | {method} | {len(rs)} | {acc:.1f} | {np.mean(gains):+.1f} | {min(gains):+.1f} | "
            f"{sum(g > 0 for g in gains)} / {sum(g == 0 for g in gains)} | "
            f"{flat if trends else ''} | {wrong if trends else ''} | | {per_seed} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines results file (appended to)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per setting (default 10)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--jobs", type=int, default=1, help="fits run at once (one thread each)")
    parser.add_argument("--smoke", action="store_true", help="2 settings, 1 seed, 3 epochs, 3 methods")
    parser.add_argument("--summary", action="store_true", help="only print the summary of --out")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if not args.summary:
        if args.smoke:
            run(args.out, [0], ["plain", "selected", "mwnet"], 3, 1, smoke=True)
        else:
            run(args.out, list(range(args.seeds)), methods, args.epochs, args.jobs, smoke=False)
    print(summarize(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
