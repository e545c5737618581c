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
    assert [r.mode for r in result] == ["skorch_epoch", "plain_epoch", "mwnet_epoch", "mwnet_loss_only_epoch"]
    assert "WeightNet" in result.row("mwnet_loss_only_epoch").description
    assert all(r.epoch_s > 0 and r.samples == 1 for r in result)
    assert result.row("skorch_epoch").ratio == 1.0
    assert result.row("plain_epoch").description.startswith("PlainClassifier.partial_fit (plain counterpart)")
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


# --------------------------------------------------------------------------- data parallel
def test_data_parallel_benchmark_launches_one_and_two_processes():
    from mwnet_sk.reproduce.benchmark import run_data_parallel_benchmark

    messages = []
    result = run_data_parallel_benchmark("mlp", "cpu", batch_size=8, processes=(1, 2), steps=2, warmup=1,
                                         progress=messages.append)  # fmt: skip
    assert [r.mode for r in result] == ["mwnet_dp1", "mwnet_dp2", "plain_dp1", "plain_dp2"]
    # torchrun started as many processes as asked, and every step trained a full global batch
    assert {n: launch["world_size"] for n, launch in result.environment["launches"].items()} == {"1": 1, "2": 2}
    for row in result:
        assert row.samples == 2 and math.isfinite(row.ms_per_step) and row.ms_per_step > 0
        assert row.samples_per_s == pytest.approx(row.processes * 8 * 1000 / row.ms_per_step)
    assert result.row("mwnet_dp1").scaling_efficiency == 1.0 and result.row("plain_dp2").ratio == 1.0
    two = result.row("mwnet_dp2")
    assert two.scaling_efficiency == pytest.approx(result.row("mwnet_dp1").ms_per_step / two.ms_per_step)
    assert result.config["backend"] == "gloo" and result.config["threads_per_process"] == 1
    table = format_benchmark(result)
    assert "scaling efficiency" in table and "| mwnet_dp2 | 2 |" in table and "per process" in table
    assert messages[0] == "1 process: launching torchrun" and messages[-1] == "2 processes: done"
    json.dumps(result.as_dict())


def test_data_parallel_rows_throughput_efficiency_and_ratio():
    from mwnet_sk.reproduce.benchmark import _data_parallel_rows

    samples = {("mwnet", 1): [10.0] * 3, ("mwnet", 2): [12.5] * 3, ("plain", 1): [4.0] * 3, ("plain", 2): [5.0] * 3}
    rows = {r.mode: r for r in _data_parallel_rows(samples, [1, 2], ["mwnet", "plain"], 8)}
    assert rows["mwnet_dp2"].samples_per_s == pytest.approx(1280.0)  # 16 rows per 12.5 ms
    assert rows["mwnet_dp2"].scaling_efficiency == pytest.approx(0.8)  # 1280 / (2 x 800)
    assert rows["mwnet_dp2"].ratio == pytest.approx(2.5) and rows["plain_dp2"].scaling_efficiency == pytest.approx(0.8)
    only_two = _data_parallel_rows({("mwnet", 2): [3.0]}, [2], ["mwnet"], 8)
    assert only_two[0].scaling_efficiency is None and only_two[0].ratio is None  # nothing to compare with


@pytest.mark.parametrize("kwargs, message", [
    ({"processes": (0, 1)}, "distinct positive integers"),
    ({"processes": (2, 2)}, "distinct positive integers"),
    ({"estimators": ("mwnet", "cleanlab")}, "estimators must be some of"),
    ({"model": torch.nn.Linear(2, 2)}, "pass its name"),
    ({"device": "meta"}, "cpu \\(gloo\\) or cuda"),
])
def test_data_parallel_benchmark_refuses_bad_settings_before_launching(kwargs, message):
    from mwnet_sk.reproduce.benchmark import run_data_parallel_benchmark

    params = {"model": "mlp", "processes": (1,), "steps": 1, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        run_data_parallel_benchmark(**params)
