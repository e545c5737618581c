"""The mwnet-sk command line: demo (with figures), reproduce, benchmark delegation."""

import json
import subprocess
import sys
import types

import pytest
import torch

from mwnet_sk.cli import _expand_experiments, build_parser, main


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These runs are tiny: one thread is as fast, and immune to oversubscribed CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "mwnet_sk", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("demo", "reproduce", "benchmark"):
        assert command in proc.stdout


def test_demo_flags_are_kept():
    args = build_parser().parse_args(
        ["demo", "--noise-rate", "0.2", "--noise-type", "flip2", "--epochs", "3", "--meta-lr", "0.1",
         "--seed", "1", "--device", "cpu", "--threads", "1", "--out", "x", "--verbose", "0"])  # fmt: skip
    assert (args.noise_rate, args.noise_type, args.epochs, args.meta_lr, args.seed, args.out) == (
        0.2, "flip2", 3, 0.1, 1, "x")
    assert not args.no_figures


def test_demo_writes_json_and_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--epochs", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "plain training" in out and "Meta-Weight-Net" in out and "figures written" in out
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["epochs"] == 3 and 0 <= result["mwnet_accuracy"] <= 1
    for name in ("weight_function.png", "weight_distribution.png", "weight_variation.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_demo_without_figures(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path), "--no-figures"]) == 0
    assert (tmp_path / "demo.json").is_file() and not list(tmp_path.glob("*.png"))


def test_reproduce_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("table1-cifar10-lt-100", "table2-cifar10-uniform-40", "table3-cifar100-flip-20", "clothing1m"):
        assert name in out
    assert "89.27±0.28" in out


def test_reproduce_names_tables_and_patterns():
    assert _expand_experiments(["table2-cifar10-uniform-40"]) == ["table2-cifar10-uniform-40"]
    assert _expand_experiments(["table4"]) == ["clothing1m"]
    assert len(_expand_experiments(["table1"])) == 12
    assert _expand_experiments(["table3-cifar10-*", "table3-cifar10-flip-0"]) == [
        "table3-cifar10-flip-0", "table3-cifar10-flip-20", "table3-cifar10-flip-40"]


def test_reproduce_errors(capsys):
    assert main(["reproduce"]) == 2
    assert "--list" in capsys.readouterr().err
    assert main(["reproduce", "table9-mnist"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "table5-*"]) == 2


def test_reproduce_smoke(tmp_path, capsys):
    rc = main(["reproduce", "table3-cifar10-flip-20", "--smoke", "--epochs", "1", "--no-progress",
               "--no-finetune", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["experiment"] for r in results] == ["table3-cifar10-flip-20"]
    assert results[0]["epochs"] == 1 and results[0]["smoke"]
    out = capsys.readouterr().out
    assert "90.33±0.61" in out and "SMOKE RUN" in out


def test_reproduce_missing_data(tmp_path, capsys):
    assert main(["reproduce", "table1-cifar10-lt-10", "--root", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--download" in capsys.readouterr().err


def test_benchmark_runs_the_benchmark_module(capsys):
    pytest.importorskip("mwnet_sk.benchmark")
    rc = main(["benchmark", "--model", "mlp", "--device", "cpu", "--batch-size", "8", "--steps", "1",
               "--warmup", "0", "--modes", "plain,exact", "--threads", "1", "--quiet"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "plain" in out and "exact" in out


def test_benchmark_delegates(monkeypatch, capsys):
    calls = {}
    fake = types.ModuleType("mwnet_sk.benchmark")

    def run_benchmark(**kwargs):
        calls.update(kwargs)
        return {"ok": True}

    fake.run_benchmark = run_benchmark
    fake.format_benchmark = lambda result: f"formatted {result['ok']}"
    monkeypatch.setitem(sys.modules, "mwnet_sk.benchmark", fake)
    import mwnet_sk

    monkeypatch.setattr(mwnet_sk, "benchmark", fake, raising=False)
    assert main(["benchmark", "--model", "resnet32", "--device", "cpu", "--batch-size", "8", "--steps", "3"]) == 0
    assert calls == {"model": "resnet32", "device": "cpu", "batch_size": 8, "steps": 3}
    assert "formatted True" in capsys.readouterr().out
    calls.clear()
    assert main(["benchmark"]) == 0
    assert calls == {}  # unset options keep run_benchmark's defaults
