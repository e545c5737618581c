"""The peers study script runs end to end (``--smoke``: uniform noise, 1 seed, a 2-epoch weighter)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers_study.py"


def test_smoke_run_writes_results_and_per_seed_tables(tmp_path):
    pytest.importorskip("cleanlab")
    out = tmp_path / "peers.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["study"] == "peers" and "machine" in rows[0] and "date" in rows[0]
    methods = {r["method"] for r in rows[1:]}
    assert methods == {"plain-lr", "plain-mlp", "mwnet-mlp", "refit-lr", "refit-lr-drop", "refit-mlp", "cleanlab-lr",
                       "lr-raw-weights", "lr-meta-learned"}
    assert all(r["noise"] == "uniform" and r["seed"] == 0 and 0 <= r["accuracy"] <= 1 for r in rows[1:])
    ours = next(r for r in rows[1:] if r["method"] == "refit-lr")["detection"]
    assert {"auc", "flag", "flag_and_disagree", "thresholds", "noise_rate"} <= set(ours)
    assert set(ours["thresholds"]) == {"0.25", "0.5", "0.75"}
    assert "auc" in next(r for r in rows[1:] if r["method"] == "cleanlab-lr")["detection"]
    assert "## digits, 40% uniform noise: test accuracy %" in done.stdout
    assert "| refit-lr | " in done.stdout and "| 0 | 0.3" in done.stdout  # a detection row for seed 0
    # the summary reads the file again; a rerun skips what is there
    summary = subprocess.run([sys.executable, str(SCRIPT), "--summary", "--out", str(out)], capture_output=True,
                             text=True, timeout=600)
    assert summary.returncode == 0 and summary.stdout == done.stdout
    again = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and len(out.read_text().splitlines()) == len(rows)
