"""The mwnet-sk command line: demo, reproduce, benchmark; one-line errors with flag hints."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mwnet_sk import __version__
from mwnet_sk.cli import build_parser, main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_module_entry_point_and_version():
    proc = subprocess.run([sys.executable, "-m", "mwnet_sk", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mwnet-sk {__version__}"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "reproduce", "benchmark", "--version"):
        assert command in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--noise-type", "bogus"], "argument --noise-type: invalid choice: 'bogus'"),
        (["demo", "--noise-rate", "1.5"], "argument --noise-rate: must be in [0, 1), got 1.5"),
        (["demo", "--epochs", "0"], "argument --epochs: must be positive"),
        (["demo", "--meta-lr", "inf"], "argument --meta-lr: must be finite, got inf"),
        (["reproduce", "clothing1m", "--set", "lr=inf"], "--set: lr must be positive and finite, got inf"),
        (["benchmark", "--no-steps", "--json", "/nonexistent-folder/x.json"],
         "--json /nonexistent-folder/x.json: the folder /nonexistent-folder does not exist"),
        (["demo", "--device", "gpu0"], "'gpu0' is not a device; use auto, cpu, cuda or cuda:N"),
        (["demo", "--format", "jpg"], "argument --format: invalid choice: 'jpg'"),
        (["reproduce", "table9"], "unknown experiment 'table9'; `mwnet-sk reproduce --list` lists the experiments"),
        (["reproduce", "table5-*"], "no experiment matches 'table5-*'"),
        (["reproduce"], "name an experiment; `mwnet-sk reproduce --list` lists them"),
        (["reproduce", "clothing1m", "--set", "lr=fast"], "--set: lr must be a number, got 'fast'"),
        (["reproduce", "clothing1m", "--set", "momentum=0"], "--set: cannot set 'momentum'; settable: lr, meta_lr"),
        (["reproduce", "clothing1m", "--set", "protocol=adam"], "--set: unknown protocol 'adam'; known protocols:"),
        (["reproduce", "clothing1m", "--set", "lr"], "argument --set: 'lr' is not KEY=VALUE"),
        (["benchmark", "--model", "vgg"], "argument --model: unknown model 'vgg'"),
        (["benchmark", "--modes", "plain,nope", "--device", "cpu"], "--modes: unknown mode 'nope'"),
        (["benchmark", "--data-parallel", "1,x"], "argument --data-parallel: '1,x' is not a comma-separated list"),
        (["benchmark", "--data-parallel", "0,2"], "argument --data-parallel: process counts must be distinct positive"),
        (["benchmark", "--data-parallel", "1,2", "--modes", "plain", "--device", "cpu"],
         "--modes times single-process steps; --data-parallel times whole fits"),
    ],
)
def test_bad_values_give_one_clean_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"mwnet-sk {argv[0]}: error: ") and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", [["demo"], ["reproduce", "clothing1m", "--smoke"], ["benchmark"]])
def test_cuda_without_a_gpu_is_one_line(command, capsys):
    assert main([*command, "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "--device cuda: no CUDA GPU is visible" in captured.err and "use --device cpu or --device auto" in captured.err


def test_default_device_is_auto_everywhere():
    parser = build_parser()
    for command in (["demo"], ["reproduce", "x"], ["benchmark"]):
        assert parser.parse_args(command).device == "auto"


def test_demo_writes_json_with_provenance_and_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--epochs", "3", "--out", str(tmp_path), "--format", "pdf", "--dpi", "60",
                 "--device", "cpu"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "plain training" in captured.out and "Meta-Weight-Net" in captured.out and "figures written" in captured.out
    assert "Meta-Weight-Net: epoch 3/3" in captured.err  # per-epoch progress, one line each off a terminal
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["epochs"] == 3 and result["seed"] == 0 and 0 <= result["mwnet_accuracy"] <= 1
    assert result["provenance"]["device"] == "cpu" and result["provenance"]["versions"]["mwnet_sk"] == __version__
    assert result["provenance"]["date"].startswith("20")
    for name in ("weight_function", "weight_distribution", "weight_variation"):
        assert (tmp_path / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_demo_without_figures_or_progress(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path), "--no-figures", "--no-progress"]) == 0
    assert (tmp_path / "demo.json").is_file() and not list(tmp_path.glob("weight_*"))
    assert "epoch" not in capsys.readouterr().err


def test_reproduce_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("table1-cifar10-lt-100", "table2-cifar10-uniform-40", "table3-cifar100-flip-20", "clothing1m",
                 "mwnet-2019-noise", "mwnet-2019-imbalance", "mwnet-2020"):  # fmt: skip
        assert name in out
    assert "89.27±0.28" in out


def test_reproduce_smoke_with_settings(tmp_path, capsys):
    rc = main(["reproduce", "table3-cifar10-flip-20", "--smoke", "--epochs", "3", "--no-progress", "--no-finetune",
               "--set", "epochs=1", "--set", "protocol=mwnet-2020", "--set", "meta_lr=0.01",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert result["experiment"] == "table3-cifar10-flip-20" and result["smoke"]
    assert result["epochs"] == 1 and result["protocol"]["name"] == "mwnet-2020"
    assert result["estimator_params"]["meta_lr"] == 0.01 and result["seed"] == 0 and "versions" in result
    out = capsys.readouterr().out
    assert "90.33±0.61" in out and "SMOKE RUN" in out


def test_reproduce_missing_data_adds_the_flags(tmp_path, capsys):
    assert main(["reproduce", "table1-cifar10-lt-10", "--root", str(tmp_path), "--out", str(tmp_path),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data_batch_1" in err and "Get it with --download" in err
    assert "download=True" not in err
    assert main(["reproduce", "clothing1m", "--root", str(tmp_path), "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "access on request" in err and "Point --root at the Clothing1M folder" in err


def test_benchmark_runs_with_its_options(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--model", "MLP", "--device", "cpu", "--batch-size", "8", "--steps", "1", "--warmup",
               "0", "--modes", "plain,exact", "--threads", "1", "--quiet", "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "| exact |" in printed
    (result,) = json.loads(out.read_text())
    assert [r["mode"] for r in result["rows"]] == ["plain", "exact"]
    assert result["config"]["seed"] == 0 and "versions" in result["environment"]
    assert main(["benchmark", "--list-modes"]) == 0
    assert "intervalK" in capsys.readouterr().out


def test_benchmark_script_is_the_same_command_line(monkeypatch, capsys):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mwnet-sk benchmark") and "--modes" in out and "--fit-epoch" in out


def test_benchmark_data_parallel_flags_reach_the_api(monkeypatch, capsys):
    from mwnet_sk.reproduce import benchmark

    calls = []

    def fake(model, device, batch_size, processes, steps, warmup, **kwargs):
        calls.append(dict(model=model, device=device, batch_size=batch_size, processes=processes, steps=steps,
                          warmup=warmup, **kwargs))  # fmt: skip
        rows = benchmark._data_parallel_rows({("mwnet", n): [10.0 * n] for n in processes}, list(processes),
                                             ["mwnet"], batch_size)  # fmt: skip
        return benchmark.BenchmarkResult(rows, {"processes": list(processes)}, {}, title="data-parallel benchmark")

    monkeypatch.setattr(benchmark, "run_data_parallel_benchmark", fake)
    assert main(["benchmark", "--data-parallel", "1,2", "--model", "mlp", "--device", "cpu", "--batch-size", "32",
                 "--steps", "4", "--quiet"]) == 0  # fmt: skip
    (call,) = calls
    assert (call["model"], call["device"], call["batch_size"], call["processes"]) == ("mlp", "cpu", 32, (1, 2))
    assert call["threads"] == 1 and call["steps"] == 4  # one thread per process unless --threads says otherwise
    out = capsys.readouterr().out
    assert "| mwnet_dp2 | 2 | 20.0 |" in out and "| 50% |" in out
    assert "| plain |" not in out  # the step benchmark did not run
