"""Tables 2 and 3 of Meta-Weight-Net: CIFAR-10/100 with uniform or flip label noise.

Protocol (Section 4.2 of Shu et al., NeurIPS 2019; configurations in
``mwnet_sk.experiments``):

* a clean, class-balanced meta set of 1,000 training images is removed from the training
  split; the remaining labels are corrupted:
  - Table 2, *uniform* noise: with probability r the label is redrawn uniformly from all
    classes; network WRN-28-10; 40 epochs, lr 0.1 divided by 10 after epochs 36 and 38;
  - Table 3, *flip* noise: each class goes to one of two fixed, randomly chosen other classes
    with probability r/2 each (``"flip2"`` in ``mwnet_sk.noise``); network ResNet-32;
    60 epochs, lr 0.1 divided by 10 after epochs 40 and 50;
* SGD with momentum 0.9, weight decay 5e-4, batch size 100; weight net: meta lr 1e-3;
* three runs on the same data and schedule: the plain baseline (cross-entropy on the noisy
  labels; the paper's "BaseModel"), that baseline fine-tuned on the meta set
  ("Fine-tuning"), and Meta-Weight-Net ("Ours").

The script prints the paper's numbers beside ours and writes every run to
``OUT/results.json`` (``--figures`` adds the weight function, the weight distribution of
clean vs corrupted samples (Fig. 5) and the weight variation of ten corrupted samples
(Fig. 6) as PNGs). On a GPU the uint8 images stay on the device and are augmented there.

Examples::

    python examples/cifar_noisy_labels.py --smoke                       # seconds, CPU, fake data
    python examples/cifar_noisy_labels.py --download --noise-rates 40   # CIFAR-10, 40% uniform
    python examples/cifar_noisy_labels.py --table 3 --dataset cifar100 --seeds 0 1 2 3 4

Data: ``--download`` fetches CIFAR into ``--root`` with torchvision, or extract the python
version from https://www.cs.toronto.edu/~kriz/cifar.html into ``--root`` yourself.
"""

from __future__ import annotations

import argparse
import sys

from mwnet_sk.experiments import DataNotFoundError, get_experiment, run_many

PAPER_RATES = {2: (0, 40, 60), 3: (0, 20, 40)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Meta-Weight-Net vs plain training on CIFAR with uniform (Table 2) or flip "
        "(Table 3) label noise, with the paper's numbers beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--table", type=int, nargs="+", choices=(2, 3), default=[2],
                   help="2: uniform noise, WRN-28-10; 3: flip noise, ResNet-32")
    p.add_argument("--dataset", nargs="+", choices=("cifar10", "cifar100"), default=["cifar10"])
    p.add_argument("--noise-rates", type=int, nargs="+", default=None, metavar="PCT",
                   help="noise rates in percent (default: the table's, 0 40 60 or 0 20 40; 40 with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="the paper averages 5 seeds")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the epochs (milestones scale along); default: the paper's")
    p.add_argument("--root", default="data", help="folder with (or for) the CIFAR python batches")
    p.add_argument("--download", action="store_true", help="download CIFAR with torchvision if missing")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--out", default="results/cifar_noisy_labels", help="folder for results.json and figures")
    p.add_argument("--figures", action="store_true", help="also write the paper's figures (needs matplotlib)")
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
    names = []
    for table in args.table:
        rates = args.noise_rates or ((40,) if args.smoke else PAPER_RATES[table])
        bad = sorted(set(rates) - set(PAPER_RATES[table]))
        if bad:
            print(f"error: Table {table} has the noise rates {PAPER_RATES[table]} (%), not {bad}", file=sys.stderr)
            return 2
        tag = "uniform" if table == 2 else "flip"
        for dataset in args.dataset:
            for rate in rates:
                names.append(get_experiment(f"table{table}-{dataset}-{tag}-{rate}").name)
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
