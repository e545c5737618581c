"""The ``mwnet-sk`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_demo(args) -> int:
    import torch

    from .demo import format_demo, run_demo, save_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_demo(
        noise_rate=args.noise_rate,
        noise_type=args.noise_type,
        epochs=args.epochs,
        meta_lr=args.meta_lr,
        random_state=args.seed,
        device=args.device,
        verbose=args.verbose,
    )
    print(format_demo(result))
    if args.out:
        path = save_demo(result, args.out)
        print(f"\nresults written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwnet-sk",
        description="Meta-Weight-Net (Shu et al., NeurIPS 2019) for noisy labels and class imbalance.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="plain vs Meta-Weight-Net on scikit-learn's digits with injected label noise (no download)",
    )
    demo.add_argument("--noise-rate", type=float, default=0.4, help="label noise rate (default 0.4)")
    demo.add_argument("--noise-type", default="uniform", help="uniform, flip, flip2, pair or symmetric")
    demo.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    demo.add_argument("--meta-lr", type=float, default=1e-2, help="weight-net learning rate (default 1e-2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--out", default=None, help="folder for results (JSON and figures)")
    demo.add_argument("--verbose", type=int, default=0, help="1 prints the epoch tables")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
