"""Meta-Weight-Net on CIFAR-10 with 40% uniform label noise (the setting of Table 2 of the paper).

Step by step with the public API:

1. the data: 1,000 clean, class-balanced images are taken out of the CIFAR-10 training split as
   the meta set; with probability 0.4 each remaining label is redrawn uniformly from all classes;
2. the estimator: WRN-28-10 trained for 40 epochs (learning rate ÷10 after epochs 36 and 38)
   under the settings of the authors' noisy-label script (the ``mwnet-2019-noise`` preset), the
   uint8 images kept on the device and cropped, flipped and normalised there per batch;
3. the result: the test accuracy, and the paper's figures of the learned weights.

A GPU run takes hours; ``--smoke`` runs the same script on a tiny generated CIFAR-10 with a tiny
network in seconds (its accuracy means nothing). ``mwnet-sk reproduce table2-cifar10-uniform-40``
runs this experiment with the baselines and the paper's numbers beside ours.

    python examples/cifar_noisy_labels.py --root data      # CIFAR-10 python batches in data/
    python examples/cifar_noisy_labels.py --smoke
"""

import argparse
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure
from skorch.callbacks import LRScheduler

from mwnet_sk import MetaWeightClassifier
from mwnet_sk.augment import cifar_augment
from mwnet_sk.datasets import make_cifar_benchmark
from mwnet_sk.models import SmallCNN, wrn28_10
from mwnet_sk.plotting import plot_weight_distribution, plot_weight_function, plot_weight_variation
from mwnet_sk.reproduce.fixtures import write_tiny_cifar
from mwnet_sk.callbacks import EpochProgress
from mwnet_sk.reproduce.protocols import get_protocol


def main(argv=None):
    parser = argparse.ArgumentParser(description="Meta-Weight-Net on CIFAR-10 with 40%% uniform label noise.")
    parser.add_argument("--root", default="data", help="folder holding cifar-10-batches-py (default data)")
    parser.add_argument("--out", default="results/cifar_noisy_labels", help="folder for the figures")
    parser.add_argument("--smoke", action="store_true", help="tiny generated data and network: seconds on a CPU")
    args = parser.parse_args(argv)

    # 1. the data (arrays of uint8 images and int labels)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_cifar(tmp, "cifar10") if args.smoke else args.root
        bench = make_cifar_benchmark("cifar10", root, corruption="uniform", noise_rate=0.4,
                                     meta_size=20 if args.smoke else 1000, random_state=0, as_dataset=False)
    print(bench)

    # 2. the estimator
    preset = get_protocol("mwnet-2019-noise")  # the authors' settings: weighting, optimizers
    epochs, milestones = (2, [1]) if args.smoke else (40, [36, 38])
    clf = MetaWeightClassifier(
        SmallCNN(num_classes=10, width=4) if args.smoke else wrn28_10(num_classes=10),
        **preset.estimator_params,
        max_epochs=epochs,
        callbacks=[LRScheduler("MultiStepLR", milestones=milestones, gamma=0.1), EpochProgress("MW-Net")],
        batch_transform=cifar_augment("cifar10", **preset.augment),  # reflect-pad, crop, flip, normalise
        data_on_device=True,
        record_weights=True,  # every sample's weight after every epoch, for Fig. 6
        device="cuda" if torch.cuda.is_available() else "cpu",
        random_state=0,
        verbose=0,  # EpochProgress reports each epoch
    )
    clf.fit(bench.X_train, bench.y_train, meta=(bench.X_meta, bench.y_meta))

    # 3. the result
    print(f"test accuracy: {clf.score(bench.X_test, bench.y_test):.2%} "
          "(the paper's Table 2: 89.27 ± 0.28 % for MW-Net, 68.07 ± 1.23 % for plain training)")
    fig = Figure(figsize=(13, 3.4))
    left, middle, right = fig.subplots(1, 3)
    plot_weight_function(clf, ax=left, loss_range=(0, 10), show_losses=True)
    plot_weight_distribution(clf.sample_weights_, bench.noise_mask, ax=middle)
    corrupted = bench.noise_mask.nonzero()[0][:10]
    plot_weight_variation(clf.sample_weights_history_, corrupted, ax=right, lr_drops=milestones)
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "weights.png", dpi=110)
    print(f"figures written to {Path(args.out) / 'weights.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
