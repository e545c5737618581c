"""Smoke tests of the benchmark code: structure only, never timings."""

import json
import math

import pytest
import torch

from mwnet_sk.reproduce.benchmark import (
    DEFAULT_MODES,
    MODES,
    BenchmarkResult,
    format_benchmark,
    resolve_mode,
    run_benchmark,
    run_fit_benchmark,
)

TINY = {"batch_size": 8, "image_size": 8, "model_kwargs": {"width": 4}}


def test_step_benchmark_rows_and_table():
    modes = ("plain", "unrolled", "exact", "exact_generic_jvp", "interval2", "last", "finite_difference")
    threads = torch.get_num_threads()
    result = run_benchmark("small_cnn", "cpu", steps=2, warmup=1, modes=modes, threads=1, **TINY)
    assert isinstance(result, BenchmarkResult) and isinstance(result, list)
    assert [r.mode for r in result] == list(modes)
    assert torch.get_num_threads() == threads  # restored
    for row in result:
        assert row.samples == 2
        assert math.isfinite(row.ms_per_step) and row.ms_per_step > 0
        assert row.ms_min <= row.ms_per_step and row.ms_q1 <= row.ms_q3
        assert row.ratio is not None and row.peak_mem_mb is None  # no memory numbers on CPU
    assert result.row("plain").ratio == 1.0
    assert result.row("interval2").steps_per_sample == 2
    assert result.config["model"] == "small_cnn" and result.config["batch_size"] == 8
    assert {"torch", "cpu", "date", "device"} <= set(result.environment)
    table = format_benchmark(result)
    assert sum(line.startswith("|") for line in table.splitlines()) == len(modes) + 2  # header, rule, modes
    for mode in modes:
        assert f"| {mode} |" in table
    json.dumps(result.as_dict())  # serialisable


def test_default_modes_and_unknown_mode():
    assert set(DEFAULT_MODES) <= set(MODES)
    assert not any(MODES[m].cuda_only for m in DEFAULT_MODES)
    with pytest.raises(ValueError, match="unknown mode"):
        run_benchmark("small_cnn", modes=("plain", "nope"), steps=1, warmup=0, **TINY)


def test_mlp_and_without_plain_has_no_ratio():
    result = run_benchmark("mlp", batch_size=8, steps=1, warmup=0, modes=("exact",))
    assert result.row("exact").ratio is None
    assert result.config["input_shape"] == [64]


def test_fit_benchmark_rows():
    result = run_fit_benchmark("small_cnn", "cpu", n_batches=2, repeats=1, warmup=0, threads=1, **TINY)
    assert [r.mode for r in result] == ["skorch_epoch", "mwnet_epoch"]
    assert all(r.epoch_s > 0 and r.samples == 1 for r in result)
    assert result.row("skorch_epoch").ratio == 1.0
    assert "s/epoch" in format_benchmark(result)


def test_modes_by_name():
    assert resolve_mode("exact").meta_gradient == "exact" and resolve_mode("interval7").meta_interval == 7
    with pytest.raises(ValueError, match="unknown mode 'interval0'"):
        resolve_mode("interval0")


def test_results_record_seed_versions_and_date():
    result = run_benchmark("mlp", batch_size=8, steps=1, warmup=0, modes=("plain",), seed=3)
    assert result.config["seed"] == 3
    env = result.environment
    assert {"date", "device", "versions", "cpu", "torch_threads"} <= set(env) and env["versions"]["torch"] == torch.__version__
    json.dumps(result.as_dict())
