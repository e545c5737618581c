"""The example scripts run end to end (``--smoke``: tiny data in the real formats, seconds)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = ["cifar_noisy_labels", "cifar_long_tailed", "clothing1m", "grid_search_meta_lr"]

pytest.importorskip("matplotlib")


pytestmark = pytest.mark.usefixtures("one_thread")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_examples_are_short_scripts_over_the_public_api(name, capsys):
    source = (EXAMPLES / f"{name}.py").read_text()
    assert len(source.splitlines()) < 130
    assert "mwnet_sk._" not in source and "mwnet_sk.cli" not in source  # no private or CLI code
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).main(["--help"])
    assert exit_info.value.code == 0 and "--smoke" in capsys.readouterr().out


def test_cifar_noisy_labels_smoke(tmp_path, capsys):
    assert load_example("cifar_noisy_labels").main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test accuracy: \d+\.\d\d% \(the paper's Table 2: 89\.27", out)
    assert (tmp_path / "weights.png").stat().st_size > 5000


def test_cifar_long_tailed_smoke(tmp_path, capsys):
    assert load_example("cifar_long_tailed").main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "images per class: [108, 64," in out and "per class, largest to smallest:" in out
    assert (tmp_path / "weight_function.png").is_file()


def test_clothing1m_smoke(tmp_path, capsys):
    assert load_example("clothing1m").main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "84 noisy training images, 28 clean meta images, 28 clean test images" in out
    assert "73.72 % for MW-Net" in out and (tmp_path / "weight_function.png").is_file()


def test_grid_search_smoke(capsys):
    assert load_example("grid_search_meta_lr").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    # every candidate reported (two smoke epochs may tie them: ranks count ties as equal)
    lines = re.findall(r"meta_lr (\S+) +cross-validated accuracy on noisy labels \d+\.\d\d%  \(rank ([1-4])\)", out)
    assert sorted(float(lr) for lr, _ in lines) == [1e-4, 1e-3, 1e-2, 1e-1] and min(int(r) for _, r in lines) == 1
    assert "selected meta_lr" in out
    assert re.search(r"plain training on the same rows: clean test accuracy \d+\.\d\d%", out)
