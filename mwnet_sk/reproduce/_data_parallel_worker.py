"""The script every process of a data-parallel benchmark runs, launched by ``torchrun`` from
:func:`mwnet_sk.reproduce.benchmark.run_data_parallel_benchmark`:
``python -m mwnet_sk.reproduce._data_parallel_worker CONFIG_JSON OUT_JSON``."""

import json
import sys

from .benchmark import _time_data_parallel_fits

if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        _time_data_parallel_fits(json.load(fh), sys.argv[2])
