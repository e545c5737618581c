"""The example scripts (smoke runs on generated data) and the experiment registry they share."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mwnet_sk import experiments as ex
from mwnet_sk.datasets import load_cifar

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAPER = Path("/work/shared/paper/meta-weight-net.md")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These runs are tiny: one thread is as fast, and immune to oversubscribed CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_results(out):
    payload = json.loads((Path(out) / "results.json").read_text())
    return payload["results"], payload["table"]


# --------------------------------------------------------------------------- the registry
def test_registry_covers_the_papers_tables():
    assert len(ex.experiment_names(1)) == 12 and len(ex.experiment_names(2)) == 6
    assert len(ex.experiment_names(3)) == 6 and ex.experiment_names(4) == ["clothing1m"]
    t2 = ex.get_experiment("table2-cifar10-uniform-40")
    assert (t2.model, t2.epochs, t2.milestones, t2.lr, t2.momentum, t2.weight_decay, t2.batch_size) == (
        "wrn28_10", 40, (36, 38), 0.1, 0.9, 5e-4, 100)
    assert (t2.meta_lr, t2.meta_size, t2.corruption, t2.noise_rate) == (1e-3, 1000, "uniform", 0.4)
    t3 = ex.get_experiment("TABLE3_cifar100_flip_20")
    assert (t3.model, t3.epochs, t3.milestones, t3.corruption) == ("resnet32", 60, (40, 50), "flip2")
    t1 = ex.get_experiment("table1-cifar100-lt-200")
    assert (t1.model, t1.epochs, t1.milestones, t1.meta_lr, t1.n_meta_per_class) == (
        "resnet32", 100, (80, 90), 1e-5, 10)
    c = ex.get_experiment("table4-clothing1m")
    assert (c.model, c.lr, c.weight_decay, c.batch_size, c.epochs, c.milestones, c.meta_lr) == (
        "resnet50", 0.01, 1e-3, 32, 10, (5,), 1e-3)
    assert c.n_meta_per_class * c.n_classes == 7000
    # the paper's numbers, as published
    assert t2.paper_accuracy("Ours") == (89.27, 0.28) and t2.paper_accuracy("BaseModel") == (68.07, 1.23)
    assert ex.get_experiment("table2-cifar10-uniform-60").paper_accuracy("S-Model") == (None, None)
    assert t1.paper_accuracy("Ours") == (37.91, None)
    assert c.paper_accuracy("Cross Entropy") == (68.94, None) and c.paper_accuracy("Ours") == (73.72, None)


def test_unknown_experiment_suggests_names():
    with pytest.raises(ValueError, match="Did you mean table2-cifar10-uniform-40"):
        ex.get_experiment("table2-cifar10-unifrom-40")


@pytest.mark.skipif(not PAPER.is_file(), reason="the paper's text is not available here")
def test_paper_numbers_match_the_paper_text():
    """Every stored number appears in the paper's table rows, in the same row and order."""
    text = PAPER.read_text()
    rows = [ln for ln in text.splitlines() if "\t" in ln]

    def numbers(line):
        return [float(v) for v in re.findall(r"\d+\.\d\d", line)]

    t1 = {ln.split("\t")[0]: numbers(ln) for ln in rows if ln.split("\t")[0] in ex.TABLE_METHODS[1]}
    for name in ex.experiment_names(1):
        e = ex.get_experiment(name)
        col = (0 if e.dataset == "cifar10" else 6) + ex._T1_IF.index(int(e.imbalance_factor))
        for method in ex.TABLE_METHODS[1]:
            assert t1[method][col] == e.paper_accuracy(method)[0], (name, method)
    noise_rows = [ln for ln in rows if re.search(r"\t(0|20|40|60)%\t", ln)]
    assert len(noise_rows) == 12
    for table, chunk in ((2, noise_rows[:6]), (3, noise_rows[6:])):
        for name, line in zip(ex.experiment_names(table), chunk):
            e = ex.get_experiment(name)
            expected = [v for m in ex.TABLE_METHODS[table] if e.paper[m] for v in e.paper[m]]
            assert numbers(line) == expected, name
    clothing = ex.get_experiment("clothing1m")
    t4 = " ".join(ln for ln in rows if "Cross Entropy" in ln or "Bootstrapping" in ln or "Forward" in ln
                  or "S-adaptation" in ln)  # fmt: skip
    for method, value in clothing.paper.items():
        assert f"{value:.2f}" in t4, method


def test_scaled_milestones():
    assert ex.scaled_milestones((36, 38), 40, 40) == [36, 38]
    assert ex.scaled_milestones((36, 38), 40, 20) == [18, 19]
    assert ex.scaled_milestones((80, 90), 100, 2) == [1]
    assert ex.scaled_milestones((5,), 10, 1) == [1]


def test_tiny_cifar_is_in_the_official_format(tmp_path):
    ex.write_tiny_cifar(tmp_path, "cifar10", n_per_class=3, n_test_per_class=2)
    X, y = load_cifar("cifar10", tmp_path)
    assert X.shape == (30, 32, 32, 3) and X.dtype == np.uint8 and np.bincount(y).tolist() == [3] * 10
    ex.write_tiny_cifar(tmp_path, "cifar100", n_per_class=1, n_test_per_class=1)
    X, y = load_cifar("cifar100", tmp_path, train=False)
    assert X.shape == (100, 32, 32, 3) and sorted(y.tolist()) == list(range(100))


# --------------------------------------------------------------------------- the scripts
@pytest.mark.parametrize("name", ["cifar_noisy_labels", "cifar_long_tailed", "clothing1m", "grid_search_meta_lr"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--smoke" in capsys.readouterr().out


def test_cifar_noisy_labels_smoke(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    rc = load_example("cifar_noisy_labels").main(
        ["--smoke", "--table", "2", "3", "--out", str(out), "--figures", "--no-progress"])
    assert rc == 0
    results, table = read_results(out)
    assert [r["experiment"] for r in results] == ["table2-cifar10-uniform-40", "table3-cifar10-flip-40"]
    for r in results:
        assert r["smoke"] and set(r["accuracy"]) == {"plain", "finetuned", "mwnet"}
        assert all(0 <= v <= 100 for v in r["accuracy"].values())
        assert r["epochs"] == 2 and r["milestones"] == [1]
        assert r["n_meta"] == 20 and 0 < r["actual_noise_rate"] < 1
        assert 0 <= r["mean_weight_noisy"] <= 1 and 0 <= r["mean_weight_clean"] <= 1
        assert len(r["curve_losses"]) == len(r["curve_weights"]) == 41
        assert len(r["figures"]) == 3 and all(Path(p).is_file() for p in r["figures"])
    assert results[0]["paper"]["Ours"] == [89.27, 0.28]
    printed = capsys.readouterr().out
    assert "89.27±0.28" in printed and "87.54±0.23" in printed and "SMOKE RUN" in printed
    assert "paper MW-Net" in table and "ours MW-Net" in table


def test_cifar_long_tailed_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    rc = load_example("cifar_long_tailed").main(["--smoke", "--out", str(out), "--no-progress", "--no-finetune"])
    assert rc == 0
    (r,), table = read_results(out)
    assert r["experiment"] == "table1-cifar10-lt-100" and set(r["accuracy"]) == {"plain", "mwnet"}
    assert r["n_meta"] == 20 and "mean_weight" in r
    assert r["config"]["meta_lr"] == 1e-5
    assert "75.21" in capsys.readouterr().out  # the paper's MW-Net number for this row


def test_clothing1m_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    rc = load_example("clothing1m").main(["--smoke", "--out", str(out), "--no-progress"])
    assert rc == 0
    (r,), table = read_results(out)
    assert r["experiment"] == "clothing1m" and set(r["accuracy"]) == {"plain", "mwnet"}
    assert (r["n_train"], r["n_meta"], r["n_test"]) == (84, 28, 28)
    printed = capsys.readouterr().out
    assert "Cross Entropy" in printed and "68.94" in printed and "73.72" in printed


def test_rates_outside_the_table_are_refused(capsys):
    assert load_example("cifar_noisy_labels").main(["--table", "3", "--noise-rates", "60", "--smoke"]) == 2
    assert "(0, 20, 40)" in capsys.readouterr().err


def test_missing_data_says_how_to_get_them(tmp_path, capsys):
    rc = load_example("cifar_noisy_labels").main(
        ["--root", str(tmp_path / "nothing"), "--noise-rates", "40", "--out", str(tmp_path), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--download" in err and "https://www.cs.toronto.edu/~kriz/cifar.html" in err
    rc = load_example("clothing1m").main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "request access" in err and "clean_val_key_list.txt" in err


def test_grid_search_smoke(tmp_path, capsys):
    out = tmp_path / "gs"
    rc = load_example("grid_search_meta_lr").main(
        ["--smoke", "--meta-lrs", "1e-3", "1e-1", "--cv", "2", "--epochs", "2", "--out", str(out)])
    assert rc == 0
    payload = json.loads((out / "results.json").read_text())
    assert [c["meta_lr"] for c in payload["candidates"]] == [1e-3, 1e-1]
    assert payload["best_meta_lr"] in (1e-3, 1e-1)
    assert sorted(c["rank"] for c in payload["candidates"]) == [1, 2]
    assert 0 <= payload["plain_clean_test_accuracy"] <= 1
    assert "selected meta_lr" in capsys.readouterr().out


def test_format_results_aggregates_seeds():
    base = {"experiment": "table2-cifar10-uniform-40", "table": 2, "device_name": "GPU X", "date": "2026-01-01",
            "epochs": 40}  # fmt: skip
    runs = [dict(base, accuracy={"plain": 70.0, "mwnet": 89.0}), dict(base, accuracy={"plain": 72.0, "mwnet": 90.0})]
    text = ex.format_results(runs)
    assert "71.00±1.41" in text and "89.50±0.71" in text and "GPU X" in text and "SMOKE" not in text
    assert "68.07±1.23" in text and "89.27±0.28" in text
