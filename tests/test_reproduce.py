"""The reproduce/ package: the paper's numbers, the runner, the baselines, reports and progress."""

import ast
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mwnet_sk import PlainClassifier
from mwnet_sk.datasets import load_cifar
from mwnet_sk.reproduce import paper, report
from mwnet_sk.reproduce.fixtures import write_tiny_cifar
from mwnet_sk.callbacks import EpochProgress
from mwnet_sk.reproduce.protocols import PROTOCOLS
from mwnet_sk.reproduce.runner import DataNotFoundError, RunConfig, make_estimators, run_experiment

ROOT = Path(__file__).resolve().parents[1]
PAPER = Path("/work/shared/paper/meta-weight-net.md")


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- layout
def test_the_library_never_imports_reproduce():
    for path in (ROOT / "mwnet_sk").rglob("*.py"):
        if "reproduce" in path.relative_to(ROOT / "mwnet_sk").parts or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "reproduce" not in module, f"{path} imports {module}"
            elif isinstance(node, ast.Import):
                assert not any("reproduce" in a.name for a in node.names), path


def test_paper_module_needs_no_torch():
    tree = ast.parse((ROOT / "mwnet_sk" / "reproduce" / "paper.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"torch", "numpy", "skorch", "mwnet_sk"}


# --------------------------------------------------------------------------- the registry
def test_registry_covers_the_papers_tables():
    assert len(paper.experiment_names(1)) == 12 and len(paper.experiment_names(2)) == 6
    assert len(paper.experiment_names(3)) == 6 and paper.experiment_names(4) == ["clothing1m"]
    t2 = paper.get_experiment("table2-cifar10-uniform-40")
    assert (t2.model, t2.epochs, t2.milestones, t2.lr, t2.momentum, t2.weight_decay, t2.batch_size) == (
        "wrn28_10", 40, (36, 38), 0.1, 0.9, 5e-4, 100)
    assert (t2.meta_size, t2.corruption, t2.noise_rate, t2.protocol) == (1000, "uniform", 0.4, "mwnet-2019-noise")
    t3 = paper.get_experiment("TABLE3_cifar100_flip_20")
    assert (t3.model, t3.epochs, t3.milestones, t3.corruption) == ("resnet32", 60, (40, 50), "flip2")
    t1 = paper.get_experiment("table1-cifar100-lt-200")
    assert (t1.model, t1.epochs, t1.milestones, t1.n_meta_per_class) == ("resnet32", 100, (80, 90), 10)
    # the paper's weight-net learning rates come with the matching script's settings
    assert PROTOCOLS[t1.protocol].estimator_params["meta_lr"] == 1e-5
    assert PROTOCOLS[t2.protocol].estimator_params["meta_lr"] == 1e-3
    c = paper.get_experiment("table4-clothing1m")
    assert (c.model, c.lr, c.weight_decay, c.batch_size, c.epochs, c.milestones) == (
        "resnet50", 0.01, 1e-3, 32, 10, (5,))
    assert c.n_meta_per_class * c.n_classes == 7000
    assert t2.paper_accuracy("Ours") == (89.27, 0.28) and t2.paper_accuracy("BaseModel") == (68.07, 1.23)
    assert paper.get_experiment("table2-cifar10-uniform-60").paper_accuracy("S-Model") == (None, None)
    assert t1.paper_accuracy("Ours") == (37.91, None)
    assert c.paper_accuracy("Cross Entropy") == (68.94, None) and c.paper_accuracy("Ours") == (73.72, None)


def test_names_tables_and_patterns():
    with pytest.raises(ValueError, match="did you mean table2-cifar10-uniform-40"):
        paper.get_experiment("table2-cifar10-unifrom-40")
    assert paper.select_experiments(["table4"]) == ["clothing1m"]
    assert len(paper.select_experiments(["table1"])) == 12
    assert paper.select_experiments(["table3-cifar10-*", "table3-cifar10-flip-0"]) == [
        "table3-cifar10-flip-0", "table3-cifar10-flip-20", "table3-cifar10-flip-40"]
    with pytest.raises(ValueError, match="no experiment matches 'table5-\\*'"):
        paper.select_experiments(["table5-*"])


@pytest.mark.skipif(not PAPER.is_file(), reason="the paper's text is not available here")
def test_paper_numbers_match_the_paper_text():
    """Every stored number appears in the paper's table rows, in the same row and order."""
    rows = [ln for ln in PAPER.read_text().splitlines() if "\t" in ln]

    def numbers(line):
        return [float(v) for v in re.findall(r"\d+\.\d\d", line)]

    methods1 = paper.TABLES[1].methods
    t1 = {ln.split("\t")[0]: numbers(ln) for ln in rows if ln.split("\t")[0] in methods1}
    for name in paper.experiment_names(1):
        e = paper.get_experiment(name)
        col = (0 if e.dataset == "cifar10" else 6) + (200, 100, 50, 20, 10, 1).index(int(e.imbalance_factor))
        for method in methods1:
            assert t1[method][col] == e.paper_accuracy(method)[0], (name, method)
    noise_rows = [ln for ln in rows if re.search(r"\t(0|20|40|60)%\t", ln)]
    assert len(noise_rows) == 12
    for table, chunk in ((2, noise_rows[:6]), (3, noise_rows[6:])):
        for name, line in zip(paper.experiment_names(table), chunk):
            e = paper.get_experiment(name)
            expected = [v for m in paper.TABLES[table].methods if e.paper[m] for v in e.paper[m]]
            assert numbers(line) == expected, name
    t4 = " ".join(ln for ln in rows if any(m in ln for m in ("Cross Entropy", "Bootstrapping", "Forward", "S-adaptation")))
    for method, value in paper.get_experiment("clothing1m").paper.items():
        assert f"{value:.2f}" in t4, method


def test_scaled_milestones():
    assert paper.scaled_milestones((36, 38), 40, 40) == [36, 38]
    assert paper.scaled_milestones((36, 38), 40, 20) == [18, 19]
    assert paper.scaled_milestones((80, 90), 100, 2) == [1]
    assert paper.scaled_milestones((5,), 10, 1) == [1]


def test_tiny_cifar_is_in_the_official_format(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", n_per_class=3, n_test_per_class=2)
    X, y = load_cifar("cifar10", tmp_path)
    assert X.shape == (30, 32, 32, 3) and X.dtype == np.uint8 and np.bincount(y).tolist() == [3] * 10
    write_tiny_cifar(tmp_path, "CIFAR-100", n_per_class=1, n_test_per_class=1)
    X, y = load_cifar("cifar100", tmp_path, train=False)
    assert X.shape == (100, 32, 32, 3) and sorted(y.tolist()) == list(range(100))


# --------------------------------------------------------------------------- the runner
def test_run_config_settings_and_precedence():
    config = RunConfig("table2_cifar10_uniform_40").with_settings(
        {"lr": "0.05", "meta_lr": "0.01", "batch_size": "64", "epochs": "20", "protocol": "mwnet-2020"})
    assert config.experiment == "table2-cifar10-uniform-40"
    assert (config.lr, config.meta_lr, config.batch_size, config.n_epochs) == (0.05, 0.01, 64, 20)
    assert config.milestones == [18, 19] and config.preset.name == "mwnet-2020"
    plain, mwnet, info = make_estimators(dataclasses_replace(config, device="cpu", progress=False))
    # the run's settings beat the experiment's, which beat the preset's
    assert (mwnet.lr, mwnet.meta_lr, mwnet.batch_size, mwnet.meta_batch_size) == (0.05, 0.01, 64, 64)
    assert mwnet.meta_optimizer is torch.optim.Adam and mwnet.normalize_weights is False
    assert mwnet.get_params()["optimizer__weight_decay"] == 5e-4 and mwnet.batch_transform.padding_mode == "reflect"
    # the baseline is the library's plain classifier, trained the same way on the same rows: same
    # initial weights, optimizer, schedule, augmentation and data path; the meta set held out as
    # the preset holds it out of Meta-Weight-Net's training
    assert isinstance(plain, PlainClassifier) and plain.train_on_meta is mwnet.train_on_meta is False
    assert (plain.lr, plain.batch_size, plain.max_epochs, plain.random_state) == (0.05, 64, 20, 0)
    assert plain.get_params()["optimizer__momentum"] == 0.9 and plain.data_on_device
    assert plain.batch_transform.padding_mode == "reflect" and plain.iterator_valid__batch_size == 500
    for a, b in zip(plain.module.parameters(), mwnet.module.parameters()):
        assert torch.equal(a, b)
    assert [type(cb).__name__ for cb in plain.callbacks] == ["LRScheduler"]
    with pytest.raises(ValueError, match="cannot set 'momentum'"):
        config.with_settings({"momentum": "0.5"})
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        config.with_settings({"batch_size": "1.5"})
    with pytest.raises(ValueError, match="unknown protocol"):
        config.with_settings({"protocol": "adam"})
    with pytest.raises(ValueError, match="epochs must be positive"):
        RunConfig("clothing1m", epochs=0)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_smoke_run_records_results_provenance_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    config = RunConfig("table3-cifar10-flip-40", smoke=True, progress=False, figures_dir=tmp_path,
                       figure_format="svg", seed=1)  # fmt: skip
    r = run_experiment(config)
    assert set(r["accuracy"]) == {"plain", "finetuned", "mwnet"}
    assert all(0 <= v <= 100 for v in r["accuracy"].values())
    assert (r["epochs"], r["milestones"], r["n_meta"], r["seed"]) == (2, [1], 20, 1)
    assert r["protocol"]["name"] == "mwnet-2019-noise" and r["estimator_params"]["normalize_weights"] is True
    assert {"date", "device", "device_name", "versions"} <= set(r) and r["versions"]["torch"] == torch.__version__
    assert 0 <= r["mean_weight_noisy"] <= 1 and 0 < r["actual_noise_rate"] < 1
    assert [Path(p).name for p in r["figures"]] == [
        f"table3-cifar10-flip-40-seed1-{n}.svg" for n in ("weight_function", "weight_distribution", "weight_variation")]
    assert all(Path(p).read_text().lstrip().startswith("<?xml") for p in r["figures"])
    path = report.save_results([r], tmp_path / "results.json")
    payload = json.loads(path.read_text())
    assert payload["results"][0]["experiment"] == "table3-cifar10-flip-40" and "87.54±0.23" in payload["table"]


def test_missing_data_is_a_fact_with_the_data_set(tmp_path):
    with pytest.raises(DataNotFoundError) as exc:
        run_experiment(RunConfig("table1-cifar10-lt-10", root=tmp_path, progress=False))
    assert exc.value.dataset == "cifar10" and "data_batch_1" in str(exc.value)
    assert "--" not in str(exc.value)  # flags are the command line's to add
    with pytest.raises(DataNotFoundError, match="access on request") as exc:
        run_experiment(RunConfig("clothing1m", root=tmp_path, progress=False))
    assert exc.value.dataset == "clothing1m"


def test_format_results_aggregates_seeds_and_lays_out_each_table():
    base = {"experiment": "table2-cifar10-uniform-40", "table": 2, "device_name": "GPU X",
            "date": "2026-01-01T10:00:00+00:00", "epochs": 40, "protocol": {"name": "mwnet-2019-noise"}}  # fmt: skip
    runs = [dict(base, accuracy={"plain": 70.0, "mwnet": 89.0}), dict(base, accuracy={"plain": 72.0, "mwnet": 90.0})]
    text = report.format_results(runs)
    assert "71.00±1.41" in text and "89.50±0.71" in text and "GPU X" in text and "SMOKE" not in text
    assert "68.07±1.23" in text and "89.27±0.28" in text and "2026-01-01" in text
    assert text.startswith("Table 2: CIFAR with uniform noise, WRN-28-10") and "noise rate" in text
    clothing = report.format_results([{"experiment": "clothing1m", "table": 4, "accuracy": {"mwnet": 70.5}}])
    assert "MW-Net (Ours)       73.72  70.50" in clothing and "Cross Entropy       68.94" in clothing


def test_text_table_and_json_of_numpy_and_nan(tmp_path):
    assert report.text_table(["a", "bb"], [[1, 2.5], ["xyz", ""]]).splitlines() == ["a    bb", "---  ---", "1    2.5", "xyz"]
    path = report.write_json({"x": np.float32(0.5), "n": np.int64(3), "nan": float("nan"), "v": np.arange(2)},
                             tmp_path / "a" / "b.json")  # fmt: skip
    assert json.loads(path.read_text()) == {"x": 0.5, "n": 3, "nan": None, "v": [0, 1]}


# --------------------------------------------------------------------------- the baselines
def _digits_run(**params):
    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.models import MLP

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % 3
    mask = np.arange(60) < 9
    mwnet = MetaWeightClassifier(MLP, module__n_features=5, module__num_classes=3, lr=0.1, batch_size=16,
                                 max_epochs=2, verbose=0, random_state=0, **params)  # fmt: skip
    return X, y, mask, mwnet


@pytest.mark.parametrize("train_on_meta", [True, False])
def test_plain_baseline_is_the_library_counterpart_on_the_same_rows(train_on_meta):
    from mwnet_sk.reproduce.baselines import make_plain_baseline

    X, y, mask, mwnet = _digits_run(train_on_meta=train_on_meta)
    plain = make_plain_baseline(mwnet).fit(X, y, meta=mask)
    assert type(plain) is PlainClassifier and plain.train_on_meta is train_on_meta
    trained = np.isfinite(plain.sample_losses_)
    np.testing.assert_array_equal(trained, np.ones(60, bool) if train_on_meta else ~mask)  # the rows MW-Net trains on
    # the same initial weights as Meta-Weight-Net: both initialise from random_state
    mwnet.initialize()
    fresh = make_plain_baseline(mwnet).initialize()
    for a, b in zip(fresh.module_.parameters(), mwnet.module_.parameters()):
        assert torch.equal(a, b)
    again = make_plain_baseline(mwnet).fit(X, y, meta=mask)
    assert torch.equal(again.module_.fc.weight, plain.module_.fc.weight)  # repeatable


def test_finetune_starts_from_the_baseline_and_leaves_it_untouched():
    from mwnet_sk.reproduce.baselines import finetune, make_plain_baseline

    X, y, mask, mwnet = _digits_run(train_on_meta=False)
    plain = make_plain_baseline(mwnet, optimizer__momentum=0.9).fit(X, y, meta=mask)
    state = {k: v.clone() for k, v in plain.module_.state_dict().items()}
    tuned = finetune(plain, X[mask], y[mask], epochs=1, lr=0.01, random_state=0)
    assert tuned.batch_size == 9 and tuned.lr == 0.01 and tuned.get_params()["optimizer__momentum"] == 0.9
    assert len(tuned.history) == 1 and tuned.callbacks is None
    # one step of 9 rows away from the baseline's weights, not from a fresh initialisation
    assert 0 < (tuned.module_.fc.weight - plain.module_.fc.weight).abs().max() < 0.05
    assert all(torch.equal(v, plain.module_.state_dict()[k]) for k, v in state.items())  # the baseline is untouched
    assert list(tuned.classes_) == list(plain.classes_)


def test_demo_runs_the_estimator_defaults_against_plain_on_the_same_rows():
    import inspect

    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.reproduce.demo import format_demo, run_demo

    run = run_demo(epochs=2, device="cpu")
    defaults = inspect.signature(MetaWeightClassifier).parameters
    for name, value in run.result.weighting.items():
        if not isinstance(defaults[name].default, type):
            assert value == defaults[name].default, name
    assert type(run.plain) is PlainClassifier and run.plain.train_on_meta and run.mwnet.train_on_meta
    assert np.isfinite(run.plain.sample_losses_).all()  # every labelled row, the clean meta rows included
    assert run.plain.random_state == run.mwnet.random_state == 0
    assert "meta rows trained on too" in format_demo(run.result)
    assert run_demo(epochs=1, meta_lr=0.5, device="cpu").result.weighting["meta_lr"] == 0.5


# --------------------------------------------------------------------------- progress
class _Log(io.StringIO):
    def isatty(self):
        return False


def test_progress_writes_one_line_per_epoch_when_not_a_terminal():
    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.models import MLP

    log = _Log()
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    clf = MetaWeightClassifier(MLP, module__n_features=4, module__num_classes=2, max_epochs=3, batch_size=20,
                               verbose=0, random_state=0, callbacks=[EpochProgress("MW-Net", file=log)])  # fmt: skip
    clf.fit(X, y, meta=np.arange(40) < 6)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert re.match(r"MW-Net: epoch 3/3 \[\d\d:\d\d<00:00, .*\], train_loss=\d\.\d{3}, meta_loss=\d\.\d{3}", lines[-1])


def test_clothing1m_run_uses_the_papers_preprocessing(tmp_path):
    """Sec. 4.3: resize to 256x256, crop the middle 224x224, normalise; the same every read."""
    from test_datasets import write_clothing1m

    from mwnet_sk.reproduce.runner import RunConfig, _clothing1m_data

    write_clothing1m(tmp_path)
    data = _clothing1m_data(RunConfig("clothing1m", root=tmp_path, meta_per_class=0, progress=False), tmp_path)
    for ds in (data.X_train, data.meta, data.X_test):
        first, again = ds[0][0], ds[0][0]
        assert first.shape == (3, 224, 224) and torch.equal(first, again)  # no random crop or flip
    assert "Resize(size=(256, 256)" in repr(data.X_train.transform)


@pytest.mark.parametrize("interactive", [False, True])
def test_progress_of_a_resumed_run_counts_on_from_the_checkpoint(tmp_path, interactive):
    from mwnet_sk import MetaWeightClassifier
    from mwnet_sk.callbacks import Checkpoint, LoadInitState
    from mwnet_sk.models import MLP

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2

    def run(max_epochs, log):
        cp = Checkpoint(dirname=str(tmp_path))
        progress = EpochProgress("MW-Net", file=log)
        clf = MetaWeightClassifier(MLP, module__n_features=4, module__num_classes=2, max_epochs=max_epochs,
                                   batch_size=20, verbose=0, random_state=0,
                                   callbacks=[progress, cp, LoadInitState(cp)])  # progress before the restore
        return clf.fit(X, y, meta=np.arange(40) < 6), progress

    first = _Log()
    run(2, first)
    assert [line.split(" [")[0] for line in first.getvalue().splitlines()] == ["MW-Net: epoch 1/2", "MW-Net: epoch 2/2"]
    log = _Log()
    if interactive:
        log.isatty = lambda: True
    clf, progress = run(5, log)  # resumes at epoch 3 of 5
    assert len(clf.history) == 5 and (progress.offset_, progress.done_, progress.total_) == (2, 3, 5)
    if interactive:  # the bar went on from 2 of 5
        assert "5/5" in log.getvalue()  # it stopped at 3/5 when it counted from 1
    else:
        lines = [line.split(" [")[0] for line in log.getvalue().splitlines()]
        assert lines == ["MW-Net: epoch 3/5", "MW-Net: epoch 4/5", "MW-Net: epoch 5/5"]
    # partial_fit trains max_epochs more: numbered as the history numbers them
    log2 = _Log()
    clf.set_params(callbacks__EpochProgress__file=log2, callbacks__LoadInitState__resume=False)
    clf.partial_fit(X, y, meta=np.arange(40) < 6)
    assert log2.getvalue().splitlines()[0].startswith("MW-Net: epoch 6/10")
