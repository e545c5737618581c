"""The ``mwnet-sk`` command line (also ``python -m mwnet_sk``). Every parser of the package is here.

Subcommands:

* ``demo``: plain training vs Meta-Weight-Net on scikit-learn's digits with injected label
  noise (no download); ``--out DIR`` writes the results as JSON and the paper's figures
  (:mod:`mwnet_sk.reproduce.demo`).
* ``reproduce``: the paper's experiments by name (``mwnet-sk reproduce --list``);
  ``--smoke`` checks the pipeline on tiny generated data in seconds
  (:mod:`mwnet_sk.reproduce.runner`).
* ``benchmark``: time plain and Meta-Weight-Net training steps side by side, and with
  ``--data-parallel 1,2`` data-parallel fits under torchrun with 1 and 2 processes
  (:mod:`mwnet_sk.reproduce.benchmark`).

Bad values stop a command with one line on stderr and exit status 2; the library's messages
state the facts, and this module adds which flag changes them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["build_parser", "main"]

_FIGURE_FORMATS = ("png", "pdf", "svg")


class CLIError(Exception):
    """A bad value or a missing resource, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported on one line instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- value types
def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _device(text: str) -> str:
    value = text.strip().lower()
    if value != "auto" and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


def _process_counts(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        counts = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of process counts, "
                                         "e.g. 1,2") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"process counts must be distinct positive integers, got {text}")
    return counts


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip().replace("-", "_"), value.strip()


# --------------------------------------------------------------------------- shared helpers
def _check_device(device: str) -> str:
    """The device to run on; a device torch cannot use is refused in one line."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
            raise CLIError(f"--device {device}: no CUDA GPU is visible (torch {torch.__version__}, {built}); "
                           "use --device cpu or --device auto")  # fmt: skip
        if index and int(index) >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError(f"--device {device}: the MPS backend is not available here; use --device cpu")
    return device


def _set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _add_device(parser, threads=0, threads_help="torch's choice"):
    parser.add_argument("--device", type=_device, default="auto", metavar="DEVICE",
                        help="auto, cpu, cuda or cuda:N (default auto: a GPU when one is visible)")  # fmt: skip
    parser.add_argument("--threads", type=_non_negative_int, default=threads,
                        help=f"torch CPU threads, 0 for torch's choice (default: {threads_help})")  # fmt: skip


def _add_figure_options(parser):
    parser.add_argument("--format", choices=_FIGURE_FORMATS, default="png", help="figure file format (default png)")
    parser.add_argument("--dpi", type=_positive(int), default=110, help="figure resolution (default 110)")


# --------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from .reproduce.demo import format_demo, run_demo, save_demo, save_demo_figures

    device = _check_device(args.device)
    _set_threads(args.threads)
    figures = bool(args.out) and not args.no_figures
    if figures:
        _require_matplotlib("--no-figures")
    run = run_demo(
        noise_rate=args.noise_rate, noise_type=args.noise_type, epochs=args.epochs, meta_lr=args.meta_lr,
        random_state=args.seed, device=device, record_weights=figures, progress=not args.no_progress,
        verbose=args.verbose,
    )  # fmt: skip
    print(format_demo(run.result))
    if args.out:
        print(f"\nresults written to {save_demo(run.result, args.out)}")
        if figures:
            paths = save_demo_figures(run, args.out, fmt=args.format, dpi=args.dpi)
            print("figures written to " + ", ".join(str(p) for p in paths))
    return 0


def _require_matplotlib(alternative: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f'figures need matplotlib (pip install "mwnet-sk[plot]"), or pass {alternative}') from None


# --------------------------------------------------------------------------- reproduce
def _format_list() -> str:
    from .reproduce.paper import EXPERIMENTS, TABLES
    from .reproduce.protocols import PROTOCOLS
    from .reproduce.report import text_table

    blocks = ["Experiments: the rows of the paper's result tables ('paper' = the published MW-Net accuracy, %)."]
    for number, table in TABLES.items():
        rows = []
        for name, exp in EXPERIMENTS.items():
            if exp.table == number:
                mean, std = exp.paper_accuracy("Ours")
                paper = f"{mean:.2f}" + (f"±{std:.2f}" if std is not None else "")
                rows.append([name, exp.title.split(": ", 1)[1], exp.protocol, paper])
        table_text = text_table(["name", "setting", "protocol", "paper"], rows, indent="  ")
        blocks.append(f"Table {number}: {table.caption}\n{table_text}")
    rows = [[p.name, p.script.rsplit(": ", 1)[-1], p.description] for p in PROTOCOLS.values()]
    protocols = text_table(["name", "script", "what"], rows, indent="  ")
    blocks.append("Protocols (the authors' settings per script; --set protocol=NAME runs another):\n" + protocols)
    blocks.append("Also accepted: table1 ... table4 (every row of a table) and patterns such as 'table2-cifar10-*'.")
    return "\n\n".join(blocks)


def _data_hint(err) -> str:
    """The flags that fix a missing or unreadable data set."""
    from .reproduce.runner import DataNotFoundError

    if err.dataset == "resnet50-weights":
        return " Pass --weights PATH (a saved ResNet-50 state dict), or --weights none for a random initialisation."
    if not isinstance(err, DataNotFoundError):
        return " Replace the file (for CIFAR, --download fetches the archive again into an empty --root)."
    if err.dataset == "clothing1m":
        return " Point --root at the Clothing1M folder."
    return " Get it with --download (torchvision fetches it into --root), or point --root at the folder that holds it."


def _cmd_reproduce(args) -> int:
    from .reproduce.paper import select_experiments
    from .reproduce.runner import DataError, configs_for, run_many

    if args.list:
        print(_format_list())
        return 0
    if not args.experiments:
        raise CLIError("name an experiment; `mwnet-sk reproduce --list` lists them")
    try:
        names = select_experiments(args.experiments)
    except ValueError as err:
        raise CLIError(f"{err}; `mwnet-sk reproduce --list` lists the experiments") from None
    if args.figures:
        _require_matplotlib("no --figures")
    device = _check_device(args.device)
    weights = None if str(args.weights).lower() == "none" else args.weights
    settings = dict(args.set or ())
    try:
        configs = [
            config.with_settings(settings)
            for config in configs_for(
                names, args.seeds, root=args.root, device=device, download=args.download, smoke=args.smoke,
                epochs=args.epochs, finetune=not args.no_finetune, progress=not args.no_progress, weights=weights,
                num_workers=args.num_workers, meta_per_class=args.meta_per_class,
                figures_dir=args.out if args.figures else None, figure_format=args.format, dpi=args.dpi,
            )
        ]  # fmt: skip
    except ValueError as err:
        raise CLIError(f"--set: {err}") from None
    _set_threads(args.threads)
    try:
        run_many(configs, out=args.out)
    except DataError as err:
        raise CLIError(f"{err}{_data_hint(err)}") from None
    return 0


# --------------------------------------------------------------------------- benchmark
def _cmd_benchmark(args) -> int:
    import json

    from .reproduce.benchmark import (
        CUDA_MODES,
        MODES,
        format_benchmark,
        resolve_mode,
        run_benchmark,
        run_data_parallel_benchmark,
        run_fit_benchmark,
    )

    if args.json:  # found out before the run, not after it: a benchmark can take minutes
        _check_writable(args.json, "--json")
    if args.list_modes:
        for m in MODES.values():
            print(f"{m.name:20s} {m.description}{'  [CUDA by default]' if m.cuda_only else ''}")
        print(f"{'intervalK':20s} exact, meta_interval=K")
        return 0
    modes = None
    if args.modes is not None:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        try:
            [resolve_mode(m) for m in modes]
        except ValueError as err:
            raise CLIError(f"--modes: {err}") from None
    device = _check_device(args.device)
    if modes and device.startswith("cpu") and any(m in CUDA_MODES for m in modes):
        print("note: bf16 / channels_last modes are meant for CUDA; timing them on the CPU", file=sys.stderr)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = []
    if args.data_parallel:
        if args.modes is not None:
            raise CLIError("--modes times single-process steps; --data-parallel times whole fits (drop one)")
        kind = device.partition(":")[0]
        if kind not in ("cpu", "cuda"):
            raise CLIError(f"--data-parallel runs on cpu (gloo) or cuda (NCCL), not --device {device}")
        if kind == "cuda":
            import torch

            if max(args.data_parallel) > torch.cuda.device_count():
                raise CLIError(f"--data-parallel {max(args.data_parallel)} needs one GPU per process; "
                               f"{torch.cuda.device_count()} are visible")  # fmt: skip
        try:
            result = run_data_parallel_benchmark(
                args.model, kind, args.batch_size, args.data_parallel, args.steps, args.warmup,
                meta_batch_size=args.meta_batch_size, num_classes=args.num_classes, image_size=args.image_size,
                threads=args.threads or 1, seed=args.seed, progress=progress,
            )  # fmt: skip
        except RuntimeError as err:
            raise CLIError(str(err).replace("\n", " | ")) from None
        print(format_benchmark(result))
        results.append(result)
    elif not args.no_steps:
        result = run_benchmark(
            args.model, device, args.batch_size, args.steps, args.warmup, modes,
            meta_batch_size=args.meta_batch_size, num_classes=args.num_classes, image_size=args.image_size,
            threads=args.threads or None, seed=args.seed, memory=not args.no_memory, progress=progress,
        )  # fmt: skip
        print(format_benchmark(result))
        results.append(result)
    if args.fit_epoch:
        fit = run_fit_benchmark(
            args.model, device, args.batch_size, args.fit_batches, args.fit_repeats,
            num_classes=args.num_classes, image_size=args.image_size, gpu_data_path=args.gpu_data_path,
            precision=args.precision, channels_last=args.channels_last, threads=args.threads or None,
            seed=args.seed, progress=progress,
        )  # fmt: skip
        if results:
            print()
        print(format_benchmark(fit))
        results.append(fit)
    if args.json:
        try:
            with open(args.json, "w") as fh:
                json.dump([r.as_dict() for r in results], fh, indent=2)
        except OSError as err:
            raise CLIError(f"--json {args.json}: could not write the results ({err.strerror})") from None
    return 0


def _check_writable(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise CLIError(f"{flag} {path}: the folder {folder} does not exist; create it or write elsewhere")
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a folder; give a file name")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CLIError(f"{flag} {path}: not writable; write elsewhere")


def _model_name(text: str) -> str:
    from .models import model_key

    try:
        return model_key(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``mwnet-sk`` parser with its three subcommands."""
    from .noise import NOISE_TYPES

    parser = _Parser(
        prog="mwnet-sk",
        description="Meta-Weight-Net (Shu et al., NeurIPS 2019) for noisy labels and class imbalance.",
    )
    parser.add_argument("--version", action="version", version=f"mwnet-sk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,reproduce,benchmark}")

    demo = sub.add_parser(
        "demo",
        help="plain vs Meta-Weight-Net on scikit-learn's digits with injected label noise (no download)",
        description="Plain training vs Meta-Weight-Net on scikit-learn's digits with injected label "
        "noise. No download; about 20 seconds on a 2-core CPU, with per-epoch progress on stderr.",
    )
    demo.add_argument("--noise-rate", type=_rate, default=0.4, help="label noise rate in [0, 1) (default 0.4)")
    demo.add_argument("--noise-type", choices=NOISE_TYPES, default="uniform", help="(default uniform)")
    demo.add_argument("--epochs", type=_positive(int), default=60,
                      help="training epochs; the learning rate drops ÷10 after 80%% of them (default 60)")  # fmt: skip
    demo.add_argument("--meta-lr", type=_positive(float), default=None,
                      help="the weight net's learning rate (default: the estimator's)")  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    # The demo's network is tiny: one thread is fastest, and more threads on a busy machine are
    # many times slower (the docs' timings).
    _add_device(demo, threads=1, threads_help="1")
    demo.add_argument("--out", default=None,
                      help="folder for demo.json and the figures weight_function, weight_distribution, "
                      "weight_variation")  # fmt: skip
    demo.add_argument("--no-figures", action="store_true", help="with --out: write the JSON only")
    _add_figure_options(demo)
    demo.add_argument("--no-progress", action="store_true", help="no per-epoch progress on stderr")
    demo.add_argument("--verbose", type=_non_negative_int, default=0, help="1 prints skorch's epoch tables")
    demo.set_defaults(func=_cmd_demo)

    rep = sub.add_parser(
        "reproduce",
        help="run the paper's experiments (Tables 1-4) by name; --list shows them",
        description="Run the paper's experiments: the plain baseline, the baseline fine-tuned on the "
        "meta set (CIFAR) and Meta-Weight-Net under the paper's schedule and the authors' settings; "
        "prints the paper's numbers beside ours and writes OUT/results.json.",
        epilog="examples: mwnet-sk reproduce --list; mwnet-sk reproduce table2-cifar10-uniform-40 "
        "--download; mwnet-sk reproduce table1-cifar10-lt-100 --smoke; mwnet-sk reproduce table3 "
        "--set protocol=mwnet-2020 --set epochs=30",
    )
    rep.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                     help="experiment names (e.g. table2-cifar10-uniform-40, table1-cifar10-lt-100, "
                     "clothing1m), table1 ... table4, or patterns")  # fmt: skip
    rep.add_argument("--list", action="store_true", help="list the experiments and protocols and exit")
    rep.add_argument("--root", default="data", help="data folder: CIFAR batches or the Clothing1M tree (default data)")
    rep.add_argument("--download", action="store_true", help="download CIFAR with torchvision when missing")
    rep.add_argument("--smoke", action="store_true",
                     help="tiny generated data in the real format and a tiny network (seconds, CPU)")  # fmt: skip
    rep.add_argument("--set", type=_setting, action="append", metavar="KEY=VALUE",
                     help="override a setting: lr, meta_lr, batch_size, epochs or protocol (repeatable)")  # fmt: skip
    rep.add_argument("--epochs", type=_positive(int), default=None,
                     help="the number of epochs (same as --set epochs=N); the lr milestones scale along")  # fmt: skip
    rep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (the paper averages 5)")
    _add_device(rep)
    rep.add_argument("--out", default="results/reproduce", help="folder for results.json and figures")
    rep.add_argument("--figures", action="store_true", help="also write the paper's figures (needs matplotlib)")
    _add_figure_options(rep)
    rep.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned baseline")
    rep.add_argument("--no-progress", action="store_true", help="no per-epoch progress on stderr")
    rep.add_argument("--weights", default="IMAGENET1K_V1",
                     help="Clothing1M: ResNet-50 initialisation (torchvision weights name from the hub cache, "
                     "a .pth path, or none)")  # fmt: skip
    rep.add_argument("--num-workers", type=_non_negative_int, default=8, help="Clothing1M: DataLoader workers")
    rep.add_argument("--meta-per-class", type=_non_negative_int, default=None,
                     help="Clothing1M: meta images per class from the clean validation split (default 500; "
                     "0: the whole split)")  # fmt: skip
    rep.set_defaults(func=_cmd_reproduce)

    from .models import MODEL_NAMES

    bench = sub.add_parser(
        "benchmark",
        help="time Meta-Weight-Net training steps against plain steps",
        description="Time plain skorch-style steps and Meta-Weight-Net steps side by side (interleaved; "
        "medians), optionally whole fit epochs, or (--data-parallel 1,2) data-parallel fits under torchrun "
        "with their throughput and scaling efficiency.",
    )
    bench.add_argument("--model", type=_model_name, default="small_cnn", metavar="MODEL",
                       help=f"one of {', '.join(MODEL_NAMES)} (default small_cnn)")  # fmt: skip
    _add_device(bench)
    bench.add_argument("--batch-size", type=_positive(int), default=64, help="training batch size (default 64)")
    bench.add_argument("--meta-batch-size", type=_positive(int), default=None,
                       help="meta batch size (default: the batch size)")  # fmt: skip
    bench.add_argument("--steps", type=_positive(int), default=20, help="timed rounds per mode (default 20)")
    bench.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed rounds first (default 3)")
    bench.add_argument("--modes", default=None,
                       help="comma-separated modes (default: the CPU set, plus the bf16 / channels_last ones "
                       "on CUDA); --list-modes shows them")  # fmt: skip
    bench.add_argument("--list-modes", action="store_true", help="list the modes and exit")
    bench.add_argument("--image-size", type=_positive(int), default=32, help="synthetic image size (default 32)")
    bench.add_argument("--num-classes", type=_positive(int), default=10, help="number of classes (default 10)")
    bench.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bench.add_argument("--no-memory", action="store_true", help="skip the CUDA peak-memory pass")
    bench.add_argument("--no-steps", action="store_true", help="skip the step benchmark")
    bench.add_argument("--fit-epoch", action="store_true",
                       help="also time whole fit epochs (MetaWeightClassifier, its plain counterpart and a "
                       "plain skorch classifier)")  # fmt: skip
    bench.add_argument("--fit-batches", type=_positive(int), default=8, help="batches per fit epoch (default 8)")
    bench.add_argument("--fit-repeats", type=_positive(int), default=3, help="timed epochs per estimator (default 3)")
    bench.add_argument("--gpu-data-path", action="store_true",
                       help="fit epochs with uint8 data on the device and cifar_augment (MW-Net only)")  # fmt: skip
    bench.add_argument("--precision", choices=("bf16", "fp16"), default=None, help="fit epochs: autocast dtype")
    bench.add_argument("--channels-last", action="store_true", help="fit epochs: channels_last")
    bench.add_argument("--data-parallel", type=_process_counts, default=None, metavar="N,M",
                       help="instead of the step benchmark, time data-parallel fits launched with torchrun, "
                       "one launch per process count (e.g. 1,2; gloo on the CPU, NCCL with --device cuda); "
                       "--batch-size is per process, --threads per process (default 1)")  # fmt: skip
    bench.add_argument("--json", default=None, help="also write the results to this JSON file")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"mwnet-sk {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mwnet-sk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
