"""The ``mwnet-sk`` command line (also ``python -m mwnet_sk``).

Subcommands:

* ``demo``: plain training vs Meta-Weight-Net on scikit-learn's digits with injected label
  noise (no download); ``--out DIR`` writes the results as JSON and the paper's figures.
* ``reproduce``: the paper's experiments by name (``mwnet-sk reproduce --list``), the same
  configurations as the scripts in ``examples/``; ``--smoke`` checks the pipeline on tiny
  generated data in seconds.
* ``benchmark``: time training steps (delegates to :func:`mwnet_sk.benchmark.run_benchmark`).
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys

__all__ = ["main", "build_parser"]


def _set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# --------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from .demo import format_demo, run_demo_detailed, save_demo, save_demo_figures

    _set_threads(args.threads)
    figures = bool(args.out) and not args.no_figures
    run = run_demo_detailed(
        noise_rate=args.noise_rate,
        noise_type=args.noise_type,
        epochs=args.epochs,
        meta_lr=args.meta_lr,
        random_state=args.seed,
        device=args.device,
        verbose=args.verbose,
        record_weights=figures,
    )
    print(format_demo(run.result))
    if args.out:
        path = save_demo(run.result, args.out)
        print(f"\nresults written to {path}")
        if figures:
            try:
                paths = save_demo_figures(run, args.out)
            except ImportError:
                print("figures skipped: they need matplotlib (pip install \"mwnet-sk[plot]\")", file=sys.stderr)
            else:
                print("figures written to " + ", ".join(str(p) for p in paths))
    return 0


# --------------------------------------------------------------------------- reproduce
def _expand_experiments(tokens) -> list[str]:
    """Experiment names from names, aliases, ``table1``..``table4`` and shell-style patterns."""
    from .experiments import EXPERIMENTS, experiment_names, get_experiment

    names: list[str] = []
    for token in tokens:
        key = token.strip().lower().replace("_", "-")
        m = re.fullmatch(r"table([1-4])", key)
        if m:
            found = experiment_names(int(m.group(1)))
        elif any(ch in key for ch in "*?["):
            found = fnmatch.filter(list(EXPERIMENTS), key)
            if not found:
                raise ValueError(f"no experiment matches {token!r}; see `mwnet-sk reproduce --list`")
        else:
            found = [get_experiment(key).name]
        names += [n for n in found if n not in names]
    return names


def _format_list() -> str:
    from .experiments import EXPERIMENTS, TABLE_METHODS

    lines = ["Experiments (the paper's result tables; 'paper' = the published MW-Net accuracy, %):", ""]
    table = None
    width = max(len(e.title.split(": ", 1)[1]) for e in EXPERIMENTS.values())
    for name, exp in EXPERIMENTS.items():
        if exp.table != table:
            table = exp.table
            lines.append(f"Table {table}")
        ours, std = exp.paper_accuracy(TABLE_METHODS[table][-1])
        paper = f"{ours:.2f}" + (f"±{std:.2f}" if std is not None else "")
        lines.append(f"  {name:<28} {exp.title.split(': ', 1)[1]:<{width}} paper {paper}")
    lines += ["", "Also accepted: table1, table2, table3, table4 (every row of a table) and patterns such as "
              "'table2-cifar10-*'."]  # fmt: skip
    return "\n".join(lines)


def _cmd_reproduce(args) -> int:
    from .experiments import DataNotFoundError, run_many

    if args.list:
        print(_format_list())
        return 0
    if not args.experiments:
        print("error: name an experiment (see `mwnet-sk reproduce --list`)", file=sys.stderr)
        return 2
    try:
        names = _expand_experiments(args.experiments)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _set_threads(args.threads)
    weights = None if str(args.weights).lower() == "none" else args.weights
    try:
        run_many(
            names, args.seeds, out=args.out, figures=args.figures, root=args.root, epochs=args.epochs,
            device=args.device, download=args.download, finetune=not args.no_finetune, smoke=args.smoke,
            progress=not args.no_progress, weights=weights, num_workers=args.num_workers,
        )  # fmt: skip
    except (DataNotFoundError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- benchmark
def _benchmark_module():
    try:
        from . import benchmark
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return benchmark


def _cmd_benchmark(args) -> int:
    benchmark = _benchmark_module()
    if benchmark is None:  # pragma: no cover
        print("error: mwnet_sk.benchmark is not available", file=sys.stderr)
        return 2
    if getattr(args, "_full_benchmark_parser", False):
        return benchmark.run_from_args(args)
    # minimal options: pass through what was given, run_benchmark's defaults for the rest
    kwargs = {k: v for k, v in (("model", args.model), ("device", args.device),
                                ("batch_size", args.batch_size), ("steps", args.steps)) if v is not None}  # fmt: skip
    if args.threads:
        kwargs["threads"] = args.threads
    result = benchmark.run_benchmark(**kwargs)
    formatter = getattr(benchmark, "format_benchmark", None)
    print(formatter(result) if callable(formatter) else result)
    return 0


def _add_benchmark_options(bench: argparse.ArgumentParser) -> None:
    """The benchmark module's own options when it offers them (one source of truth), else the
    four basic ones."""
    benchmark = _benchmark_module()
    if benchmark is not None and callable(getattr(benchmark, "build_parser", None)) and \
            callable(getattr(benchmark, "run_from_args", None)):  # fmt: skip
        benchmark.build_parser(bench)
        bench.set_defaults(_full_benchmark_parser=True)
        return
    bench.add_argument("--model", default=None, help="model name (see mwnet_sk.models.get_model)")
    bench.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    bench.add_argument("--batch-size", type=int, default=None, help="training batch size")
    bench.add_argument("--steps", type=int, default=None, help="timed steps")
    bench.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwnet-sk",
        description="Meta-Weight-Net (Shu et al., NeurIPS 2019) for noisy labels and class imbalance.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="plain vs Meta-Weight-Net on scikit-learn's digits with injected label noise (no download)",
        description="Plain training vs Meta-Weight-Net on scikit-learn's digits with injected label "
        "noise. No download; about 20 s on 2 CPU cores.",
    )
    demo.add_argument("--noise-rate", type=float, default=0.4, help="label noise rate (default 0.4)")
    demo.add_argument("--noise-type", default="uniform", help="uniform, flip, flip2, pair or symmetric")
    demo.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    demo.add_argument("--meta-lr", type=float, default=1e-2, help="weight-net learning rate (default 1e-2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--out", default=None,
                      help="folder for results: demo.json and the figures weight_function.png, "
                      "weight_distribution.png, weight_variation.png")  # fmt: skip
    demo.add_argument("--no-figures", action="store_true", help="with --out: write the JSON only")
    demo.add_argument("--verbose", type=int, default=0, help="1 prints the epoch tables")
    demo.set_defaults(func=_cmd_demo)

    rep = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments (Tables 1-4) by name; --list shows them",
        description="Run the paper's experiments: the plain baseline, the baseline fine-tuned on the "
        "meta set (CIFAR) and Meta-Weight-Net under the paper's schedule; prints the paper's numbers "
        "beside ours and writes OUT/results.json.",
        epilog="examples: mwnet-sk reproduce --list; mwnet-sk reproduce table2-cifar10-uniform-40 "
        "--download; mwnet-sk reproduce table1-cifar10-lt-100 --smoke",
    )
    rep.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                     help="experiment names (e.g. table2-cifar10-uniform-40, table1-cifar10-lt-100, "
                     "clothing1m), table1..table4, or patterns")  # fmt: skip
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    rep.add_argument("--root", default="data", help="data folder: CIFAR batches or the Clothing1M tree (default data)")
    rep.add_argument("--download", action="store_true", help="download CIFAR with torchvision when missing")
    rep.add_argument("--smoke", action="store_true",
                     help="tiny generated data in the real format and a tiny network (seconds, CPU)")
    rep.add_argument("--epochs", type=int, default=None,
                     help="override the number of epochs; the lr milestones scale along")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (the paper averages 5)")
    rep.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto)")
    rep.add_argument("--out", default="results/reproduce", help="folder for results.json and figures")
    rep.add_argument("--figures", action="store_true", help="also write the paper's figures (needs matplotlib)")
    rep.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned baseline")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--weights", default="IMAGENET1K_V1",
                     help="Clothing1M: ResNet-50 initialisation (torchvision weights name, a .pth path, or none)")
    rep.add_argument("--num-workers", type=int, default=8, help="Clothing1M: DataLoader workers")
    rep.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    rep.set_defaults(func=_cmd_reproduce)

    bench = sub.add_parser(
        "benchmark",
        help="time Meta-Weight-Net training steps against plain steps",
        description="Time plain and Meta-Weight-Net training steps side by side "
        "(mwnet_sk.benchmark.run_benchmark) and print the table.",
    )
    _add_benchmark_options(bench)
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
