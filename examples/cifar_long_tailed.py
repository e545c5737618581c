"""Table 1 of Meta-Weight-Net: long-tailed CIFAR-10/100 (class imbalance).

Protocol (Section 4.1 of Shu et al., NeurIPS 2019; configurations in
``mwnet_sk.experiments``):

* 10 clean images per class are removed from the training split as the meta set; the rest is
  subsampled to an exponential long tail: class i keeps ``n_max * (1/IF)^(i/(K-1))`` images,
  IF = imbalance factor (200, 100, 50, 20, 10 or 1);
* ResNet-32, SGD with momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 after epochs 80
  and 90 (100 epochs), batch size 100; weight net: meta lr 1e-5, as the paper states;
* three runs on the same data and schedule: the plain baseline ("BaseModel"), that baseline
  fine-tuned on the meta set ("Fine-tuning") and Meta-Weight-Net ("Ours").

The script prints the paper's numbers beside ours and writes every run to
``OUT/results.json`` (``--figures`` adds the learned weight function, Fig. 1d).

Examples::

    python examples/cifar_long_tailed.py --smoke                         # seconds, CPU, fake data
    python examples/cifar_long_tailed.py --download --imbalance 100      # one cell of Table 1
    python examples/cifar_long_tailed.py --dataset cifar10 cifar100      # the whole table

Data: ``--download`` fetches CIFAR into ``--root`` with torchvision, or extract the python
version from https://www.cs.toronto.edu/~kriz/cifar.html into ``--root`` yourself.
"""

from __future__ import annotations

import argparse
import sys

from mwnet_sk.experiments import DataNotFoundError, get_experiment, run_many

PAPER_FACTORS = (200, 100, 50, 20, 10, 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Meta-Weight-Net vs plain training on long-tailed CIFAR (Table 1), with the "
        "paper's numbers beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", nargs="+", choices=("cifar10", "cifar100"), default=["cifar10"])
    p.add_argument("--imbalance", type=int, nargs="+", default=None, choices=PAPER_FACTORS, metavar="IF",
                   help="imbalance factors (default: all of 200 100 50 20 10 1; 100 with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None,
                   help="override the epochs (milestones scale along); default: the paper's 100")
    p.add_argument("--root", default="data", help="folder with (or for) the CIFAR python batches")
    p.add_argument("--download", action="store_true", help="download CIFAR with torchvision if missing")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--out", default="results/cifar_long_tailed", help="folder for results.json and figures")
    p.add_argument("--figures", action="store_true", help="also write the weight-function figures")
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny generated CIFAR files and a tiny network: checks the pipeline in seconds")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    factors = args.imbalance or ((100,) if args.smoke else PAPER_FACTORS)
    names = [get_experiment(f"table1-{d}-lt-{f}").name for d in args.dataset for f in factors]
    try:
        run_many(
            names, args.seeds, out=args.out, figures=args.figures, root=args.root, epochs=args.epochs,
            device=args.device, download=args.download, finetune=not args.no_finetune,
            smoke=args.smoke, progress=not args.no_progress,
        )
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
