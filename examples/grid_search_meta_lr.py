"""Choosing the weight net's learning rate (``meta_lr``) with scikit-learn's GridSearchCV.

``MetaWeightClassifier`` is a scikit-learn estimator, so its hyper-parameters are searched like
any other. The meta set is a boolean mask over the rows of X (``fit(X, y, meta=mask)``):
GridSearchCV splits it together with X and y, so in every fold the clean meta rows of the
training part guide the weight net (and, by default, are trained on like the other rows).

What the search scores: the held-out labels are as noisy as the training labels. Under uniform
noise (each label redrawn from all K classes with probability r) the accuracy on noisy labels is
``(1 - r) * acc + r / K`` in expectation, an increasing function of the clean accuracy, so it
ranks the candidates as the clean accuracy would. The script also reports the selected model's
accuracy on a clean test split, next to plain training of the same network on the same rows
(``plain_counterpart``). (The paper does not search: it fixes meta_lr at 1e-3 for noisy
labels and 1e-5 for class imbalance.)

The data: scikit-learn's digits with 40% uniform label noise (no download). ``--smoke`` searches on
part of digits for two epochs, in seconds.

    python examples/grid_search_meta_lr.py
    python examples/grid_search_meta_lr.py --smoke
"""

import argparse

import numpy as np
from skorch.callbacks import LRScheduler
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from mwnet_sk import MetaWeightClassifier, plain_counterpart
from mwnet_sk.models import MLP
from mwnet_sk.noise import make_noisy_labels, meta_mask


def main(argv=None):
    parser = argparse.ArgumentParser(description="GridSearchCV over the meta learning rate of Meta-Weight-Net.")
    parser.add_argument("--smoke", action="store_true", help="part of digits, two epochs: seconds")
    args = parser.parse_args(argv)

    # the data: a clean test split, 10 clean meta rows per class, 40% uniform noise on the other rows
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    if args.smoke:
        X, y = X[:600], y[:600]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    meta = meta_mask(y_train, n_meta_per_class=5 if args.smoke else 10, random_state=0)
    y_noisy = y_train.copy()
    y_noisy[~meta] = make_noisy_labels(y_train[~meta], 0.4, noise_type="uniform", random_state=0)

    # the estimator: an MLP trained with SGD, the learning rate ÷10 after 80% of the epochs
    epochs = 2 if args.smoke else 40
    clf = MetaWeightClassifier(
        MLP, module__n_features=64, module__num_classes=10, lr=0.1, optimizer__momentum=0.9,
        batch_size=100, max_epochs=epochs, random_state=0, verbose=0,
        callbacks=[LRScheduler("MultiStepLR", milestones=[max(1, round(0.8 * epochs))], gamma=0.1)],
    )  # fmt: skip

    # the search, scored on the held-out (noisy) labels of each fold; verbose=2 reports every fit
    search = GridSearchCV(clf, {"meta_lr": [1e-4, 1e-3, 1e-2, 1e-1]}, cv=2 if args.smoke else 3, verbose=2)
    search.fit(X_train, y_noisy, meta=meta)
    for lr, score, rank in zip(search.cv_results_["param_meta_lr"], search.cv_results_["mean_test_score"],
                               search.cv_results_["rank_test_score"]):  # fmt: skip
        print(f"meta_lr {lr:<7g} cross-validated accuracy on noisy labels {score:.2%}  (rank {rank})")
    best = search.best_params_["meta_lr"]
    print(f"selected meta_lr = {best:g}: clean test accuracy {search.score(X_test, y_test):.2%}")

    # the baseline: the same network, recipe and initial weights trained plainly on the same rows
    plain = plain_counterpart(search.best_estimator_).fit(X_train, y_noisy, meta=meta)
    print(f"plain training on the same rows: clean test accuracy {plain.score(X_test, y_test):.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
