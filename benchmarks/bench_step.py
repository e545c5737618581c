#!/usr/bin/env python
"""Time plain skorch-style steps and Meta-Weight-Net steps side by side.

The same command line as ``mwnet-sk benchmark`` (options, defaults and output), runnable from
a checkout. Examples::

    python benchmarks/bench_step.py                                  # small CNN, batch 64
    python benchmarks/bench_step.py --model resnet32 --steps 5 --warmup 1
    python benchmarks/bench_step.py --modes plain,exact,exact_generic_jvp
    python benchmarks/bench_step.py --device cuda --model resnet32 --batch-size 100 \\
        --fit-epoch --gpu-data-path --fit-batches 490 --fit-repeats 2 --no-steps
    python benchmarks/bench_step.py --list-modes

See docs/performance.md for what the modes are and for measured numbers.
"""

import os
import sys

try:
    from mwnet_sk.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from mwnet_sk.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
