"""Meta-Weight-Net on Clothing1M, real-world label noise (the setting of Table 4 of the paper).

Step by step with the public API:

1. the data: the 1M noisily labelled training images, 500 clean images per class of the clean
   validation split as the meta set (the paper's "7k clean data"), the clean test split;
   torch Datasets that decode the JPEGs in DataLoader workers with the paper's preprocessing
   (resize to 256x256, crop the middle 224x224, normalise; no random augmentation);
2. the estimator: an ImageNet-pretrained ResNet-50, SGD with learning rate 0.01 (÷10 after 5 of 10
   epochs), weight decay 1e-3, batch size 32, the weight net trained as in the authors' 2019
   noisy-label script (the ``mwnet-2019-noise`` preset);
3. the result: the test accuracy and the learned weighting function.

Clothing1M is not freely downloadable; its authors give access on request (Xiao et al., CVPR 2015,
https://github.com/Cysu/noisy_label). The ResNet-50 weights are read offline: a torchvision name
(``IMAGENET1K_V1``, from the torch hub cache) or a saved state dict. ``--smoke`` runs the same script
on a tiny generated Clothing1M tree with a tiny network in seconds (its accuracy means nothing).
``mwnet-sk reproduce clothing1m`` runs this experiment with the baseline and the paper's numbers.

    python examples/clothing1m.py --root /data/clothing1m --weights /models/resnet50.pth
    python examples/clothing1m.py --smoke
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from skorch.callbacks import LRScheduler
from torch.utils.data import Subset
from torchvision import transforms as T

from mwnet_sk import MetaWeightClassifier
from mwnet_sk.datasets import CLOTHING1M_MEAN, CLOTHING1M_STD, Clothing1M, clothing1m_paper_transform
from mwnet_sk.models import SmallCNN, resnet50
from mwnet_sk.noise import meta_mask
from mwnet_sk.plotting import plot_weight_function
from mwnet_sk.reproduce.fixtures import write_tiny_clothing1m
from mwnet_sk.callbacks import EpochProgress
from mwnet_sk.reproduce.protocols import get_protocol


def main(argv=None):
    parser = argparse.ArgumentParser(description="Meta-Weight-Net on Clothing1M.")
    parser.add_argument("--root", default="data/clothing1m", help="the Clothing1M folder (annotation files, images/)")
    parser.add_argument("--weights", default="IMAGENET1K_V1", help="ResNet-50 weights: torchvision name or .pth file")
    parser.add_argument("--out", default="results/clothing1m", help="folder for the figure")
    parser.add_argument("--smoke", action="store_true", help="tiny generated data and network: seconds on a CPU")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        # 1. the data
        root = write_tiny_clothing1m(tmp) if args.smoke else args.root
        if args.smoke:  # the same recipe scaled to the tiny images: 36x36, the middle 32x32
            norm = [T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)]
            transform = T.Compose([T.Resize((36, 36)), T.CenterCrop(32), *norm])
        else:  # the paper (Sec. 4.3), for training, meta and test images alike
            transform = clothing1m_paper_transform()
        train = Clothing1M(root, "noisy_train", transform=transform)
        val = Clothing1M(root, "clean_val", transform=transform)
        test = Clothing1M(root, "clean_test", transform=transform)
        meta = Subset(val, np.flatnonzero(meta_mask(val.targets, n_meta_per_class=2 if args.smoke else 500,
                                                    random_state=0)).tolist())  # fmt: skip
        print(f"{len(train)} noisy training images, {len(meta)} clean meta images, {len(test)} clean test images")

        # 2. the estimator
        preset = get_protocol("mwnet-2019-noise")
        epochs, milestones = (2, [1]) if args.smoke else (10, [5])
        workers = 0 if args.smoke else 8
        clf = MetaWeightClassifier(
            SmallCNN(num_classes=14, width=4) if args.smoke else resnet50(num_classes=14, weights=args.weights),
            **{**preset.estimator_params, "lr": 0.01, "optimizer__weight_decay": 1e-3, "batch_size": 32,
               "meta_batch_size": 32},  # the paper's Clothing1M settings
            max_epochs=epochs,
            callbacks=[LRScheduler("MultiStepLR", milestones=milestones, gamma=0.1), EpochProgress("MW-Net")],
            iterator_train__num_workers=workers,
            iterator_valid__num_workers=workers,
            iterator_meta__num_workers=workers,
            device="cuda" if torch.cuda.is_available() else "cpu",
            random_state=0,
            verbose=0,
        )
        clf.fit(train, meta=meta)

        # 3. the result
        accuracy = np.mean(clf.predict(test) == test.targets)
    print(f"test accuracy: {accuracy:.2%} (the paper's Table 4: 73.72 % for MW-Net, 68.94 % for cross entropy)")
    fig = Figure(figsize=(4.5, 3.2))
    ax = plot_weight_function(clf, ax=fig.subplots(), loss_range=(0, 10), show_losses=True)
    ax.set_title("learned weighting function, Clothing1M", fontsize=9)
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "weight_function.png", dpi=110)
    print(f"figure written to {Path(args.out) / 'weight_function.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
