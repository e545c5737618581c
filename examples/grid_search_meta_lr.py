"""Choosing the weight net's learning rate (``meta_lr``) with scikit-learn's GridSearchCV.

``MetaWeightClassifier`` is a scikit-learn estimator, so its hyper-parameters can be searched
like any other. The meta set is passed as a boolean mask over the rows of X
(``fit(X, y, meta=mask)``): GridSearchCV splits it together with X and y, so in every fold
the clean meta rows of the training part guide the weight net and are not trained on.

What the search can score: the held-out labels are as noisy as the training labels. Under
uniform noise (each label redrawn from all K classes with probability r) the accuracy on
noisy labels is ``(1 - r) * acc + r / K`` in expectation, an increasing function of the clean
accuracy, so it ranks candidates the same way. The script also refits every candidate on the
whole training set and reports its accuracy on a clean test split, and the plain baseline
(same network and schedule, cross-entropy on the noisy labels) for reference.

The paper does not search: it fixes meta_lr = 1e-3 for noisy labels and 1e-5 for class
imbalance (Section 4).

Default data: scikit-learn's digits with 40% uniform noise (no download; a few minutes on
two CPU cores). ``--dataset cifar10`` searches on CIFAR-10 with the Table 2 configuration
(WRN-28-10, 40 epochs per fit: use a GPU, and ``--epochs`` / ``--cv`` to bound the cost).

Examples::

    python examples/grid_search_meta_lr.py                    # digits
    python examples/grid_search_meta_lr.py --meta-lrs 1e-4 1e-3 1e-2 1e-1 --n-jobs 2
    python examples/grid_search_meta_lr.py --dataset cifar10 --root data --download --epochs 10
    python examples/grid_search_meta_lr.py --smoke            # seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from skorch import NeuralNetClassifier
from skorch.callbacks import LRScheduler

from mwnet_sk import MetaWeightClassifier
from mwnet_sk.experiments import DataNotFoundError, get_experiment, make_estimators
from mwnet_sk.models import MLP
from mwnet_sk.noise import make_noisy_labels, meta_mask


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="GridSearchCV over the meta learning rate of Meta-Weight-Net.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=("digits", "cifar10", "cifar100"), default="digits")
    p.add_argument("--meta-lrs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    p.add_argument("--noise-rate", type=float, default=0.4, help="uniform label noise rate")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (digits: 40; CIFAR: the paper's 40)")
    p.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel fits (CPU only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="data", help="CIFAR folder")
    p.add_argument("--download", action="store_true", help="download CIFAR with torchvision if missing")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--out", default="results/grid_search_meta_lr", help="folder for results.json")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="a quick run on part of digits (seconds)")
    return p


def digits_problem(noise_rate: float, seed: int, smoke: bool):
    """Digits split 70/30 into train and a clean test split; 10 clean meta rows per class."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    if smoke:
        X, y = X[:600], y[:600]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    meta = meta_mask(y_tr, n_meta_per_class=5 if smoke else 10, random_state=seed)
    y_noisy = y_tr.copy()
    y_noisy[~meta] = make_noisy_labels(y_tr[~meta], noise_rate, noise_type="uniform", random_state=seed)
    return X_tr, y_noisy, meta, X_te, y_te


def digits_estimators(epochs: int, seed: int, device: str):
    """The demo's MLP, SGD (lr 0.1, momentum 0.9) with lr / 10 at 80% of the epochs."""
    common = dict(
        module=MLP, module__n_features=64, module__num_classes=10, lr=0.1, optimizer__momentum=0.9,
        max_epochs=epochs, batch_size=100, device=device, verbose=0,
    )
    milestone = max(1, int(round(0.8 * epochs)))
    schedule = [LRScheduler("MultiStepLR", milestones=[milestone], gamma=0.1)]
    torch.manual_seed(seed)
    plain = NeuralNetClassifier(criterion=torch.nn.CrossEntropyLoss, train_split=None,
                                iterator_train__shuffle=True, callbacks=list(schedule), **common)
    mwnet = MetaWeightClassifier(random_state=seed, callbacks=list(schedule), **common)
    return plain, mwnet


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()

    if args.dataset == "digits":
        epochs = args.epochs or (3 if args.smoke else 40)
        X, y, meta, X_test, y_test = digits_problem(args.noise_rate, args.seed, args.smoke)
        plain, mwnet = digits_estimators(epochs, args.seed, device)
        fit_meta = meta  # a mask over the rows of X: split by GridSearchCV with X and y
        plain_X, plain_y = X, y.astype(np.int64)  # the baseline also trains on the meta rows
        what = f"digits, {args.noise_rate:.0%} uniform noise, {len(X)} training rows ({meta.sum()} clean meta rows)"
    else:
        from mwnet_sk.datasets import make_cifar_benchmark

        exp = get_experiment(f"table2-{args.dataset}-uniform-{round(args.noise_rate * 100)}")
        try:
            bench = make_cifar_benchmark(args.dataset, args.root, corruption="uniform", noise_rate=args.noise_rate,
                                         meta_size=exp.meta_size, random_state=args.seed,
                                         download=args.download, as_dataset=False)  # fmt: skip
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        plain, mwnet, info = make_estimators(exp, epochs=args.epochs, device=device, seed=args.seed)
        epochs = info["epochs"]
        X, y, X_test, y_test = bench.X_train, bench.y_train, bench.X_test, bench.y_test
        fit_meta = (bench.X_meta, bench.y_meta)  # a separate clean set: passed unchanged to every fold
        plain_X = torch.from_numpy(X).to(device)
        plain_y = torch.from_numpy(y).to(device)
        what = f"{exp.title}, {len(X)} training images, {len(bench.y_meta)} meta images"

    print(f"{what}; {epochs} epochs per fit on {device}")
    print(f"GridSearchCV over meta_lr = {args.meta_lrs}, {args.cv}-fold, scored on the held-out noisy labels")
    search = GridSearchCV(mwnet, {"meta_lr": args.meta_lrs}, cv=args.cv, n_jobs=args.n_jobs, refit=True)
    search.fit(X, y, meta=fit_meta)

    rows = []
    best = float(search.best_params_["meta_lr"])
    for i, lr in enumerate(search.cv_results_["param_meta_lr"]):
        if float(lr) == best:  # already refit on all the training rows by GridSearchCV
            candidate = search.best_estimator_
        else:
            candidate = clone(mwnet).set_params(meta_lr=float(lr))
            candidate.fit(X, y, meta=fit_meta)
        rows.append({
            "meta_lr": float(lr),
            "cv_noisy_accuracy_mean": float(search.cv_results_["mean_test_score"][i]),
            "cv_noisy_accuracy_std": float(search.cv_results_["std_test_score"][i]),
            "rank": int(search.cv_results_["rank_test_score"][i]),
            "clean_test_accuracy": float(candidate.score(X_test, y_test)),
        })  # fmt: skip
    plain.fit(plain_X, plain_y)
    plain_acc = float(np.mean(plain.predict(X_test) == np.asarray(y_test)))

    print()
    print(f"{'meta_lr':>8}  {'CV acc. (noisy labels)':>22}  {'rank':>4}  {'clean test acc.':>15}")
    for r in rows:
        cv = f"{r['cv_noisy_accuracy_mean']:.2%} ± {r['cv_noisy_accuracy_std']:.2%}"
        print(f"{r['meta_lr']:>8g}  {cv:>22}  {r['rank']:>4}  {r['clean_test_accuracy']:>15.2%}")
    best_acc = float(search.best_estimator_.score(X_test, y_test))
    print(f"\nselected meta_lr = {best:g}: clean test accuracy {best_acc:.2%}")
    print(f"plain baseline (same network and schedule): clean test accuracy {plain_acc:.2%}")
    print("paper: no search; meta_lr fixed at 1e-3 (noisy labels) and 1e-5 (class imbalance)")
    if args.smoke:
        print("SMOKE RUN: part of digits, a few epochs; these numbers mean nothing")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": args.dataset, "noise_rate": args.noise_rate, "epochs": epochs, "cv": args.cv,
        "seed": args.seed, "device": device, "date": datetime.date.today().isoformat(),
        "smoke": args.smoke, "candidates": rows, "best_meta_lr": best, "best_clean_test_accuracy": best_acc,
        "plain_clean_test_accuracy": plain_acc, "seconds": time.perf_counter() - start,
        "paper": {"meta_lr_noisy_labels": 1e-3, "meta_lr_class_imbalance": 1e-5},
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"\nresults written to {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataNotFoundError as err:  # pragma: no cover
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
