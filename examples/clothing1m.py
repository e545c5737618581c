"""Table 4 of Meta-Weight-Net: Clothing1M (real-world label noise).

Protocol (Section 4.3 of Shu et al., NeurIPS 2019; configuration ``clothing1m`` in
``mwnet_sk.experiments``):

* training set: the 1M noisily labelled images (``noisy_train``); meta set: clean images,
  500 per class (14 x 500 = the paper's "7k clean data") from the clean validation split,
  augmented like the training images; evaluation on the clean test split;
* ImageNet-pretrained ResNet-50; images resized to 256 and cropped to 224, normalised;
* SGD with momentum 0.9, weight decay 1e-3, lr 0.01 divided by 10 after 5 of 10 epochs,
  batch size 32; weight net: meta lr 1e-3;
* two runs: the plain baseline (the paper's "Cross Entropy") and Meta-Weight-Net ("Ours").

The script prints the paper's Table 4 beside ours and writes the runs to
``OUT/results.json`` (``--figures`` adds the learned weight function, Fig. 1f).

Examples::

    python examples/clothing1m.py --smoke                        # seconds, CPU, fake images
    python examples/clothing1m.py --root /data/clothing1m --weights /models/resnet50.pth

Data: Clothing1M is not freely downloadable; request access from its authors (Xiao et al.,
CVPR 2015, https://github.com/Cysu/noisy_label). Expected layout under ``--root``::

    noisy_label_kv.txt  clean_label_kv.txt  category_names_eng.txt
    noisy_train_key_list.txt  clean_train_key_list.txt  clean_val_key_list.txt  clean_test_key_list.txt
    images/0/00/<name>.jpg ...

ResNet-50 weights are read offline: ``--weights IMAGENET1K_V1`` takes torchvision's file
from the torch hub cache, ``--weights PATH`` a saved state dict.
"""

from __future__ import annotations

import argparse
import sys

from mwnet_sk.experiments import DataNotFoundError, run_many


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Meta-Weight-Net vs plain training on Clothing1M (Table 4), with the paper's "
        "numbers beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--root", default="data/clothing1m", help="the Clothing1M folder (annotation files + images/)")
    p.add_argument("--weights", default="IMAGENET1K_V1",
                   help="ResNet-50 initialisation: a torchvision weights name (from the hub cache), "
                   "a path to a state dict, or 'none' for random initialisation")
    p.add_argument("--meta-per-class", type=int, default=500,
                   help="meta images per class from the clean validation split (0: the whole split)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (default: the paper's 10)")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--num-workers", type=int, default=8, help="DataLoader workers for JPEG decoding")
    p.add_argument("--out", default="results/clothing1m", help="folder for results.json and figures")
    p.add_argument("--figures", action="store_true", help="also write the weight-function figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny generated Clothing1M tree and a tiny network: checks the pipeline in seconds")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    weights = None if str(args.weights).lower() == "none" else args.weights
    try:
        run_many(
            ["clothing1m"], args.seeds, out=args.out, figures=args.figures, root=args.root,
            epochs=args.epochs, device=args.device, smoke=args.smoke, progress=not args.no_progress,
            weights=weights, num_workers=args.num_workers, meta_per_class=args.meta_per_class,
        )
    except (DataNotFoundError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
