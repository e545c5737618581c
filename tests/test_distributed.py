"""Data-parallel training under torchrun (gloo, CPU, 127.0.0.1) against single-process runs of
the global batch, and distributed hyper-parameter search with dask."""

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(scenario, out_dir, nproc=2, batch_size=32, expect=0):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(HERE / "ddp_worker.py"), scenario, str(out_dir), str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if expect == 0:
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode != 0
    return [torch.load(out_dir / f"{scenario}-rank{r}.pt") for r in range(nproc)] if expect == 0 else None


def assert_close(a, b, atol):
    for key in a["module"]:
        torch.testing.assert_close(a["module"][key].float(), b["module"][key].float(), atol=atol, rtol=1e-5)
    if "weight_net" in a:
        for key in a["weight_net"]:
            torch.testing.assert_close(a["weight_net"][key], b["weight_net"][key], atol=atol, rtol=1e-5)
        np.testing.assert_allclose(a["weights"].numpy(), b["weights"].numpy(), atol=atol)
        assert a["steps"] == b["steps"]
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)


def assert_identical(a, b):
    for part in ("module", "weight_net"):
        for key in a.get(part, {}):
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    if "weights" in a:
        assert torch.equal(a["weights"].nan_to_num(-1), b["weights"].nan_to_num(-1))
    assert a["train_loss"] == b["train_loss"]


def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, one_thread):
    rank0, rank1 = torchrun("equal", tmp_path, batch_size=32)
    X, y, mask = ddp_worker.data()
    single = {
        "mwnet": ddp_worker.summary(ddp_worker.estimator(64).fit(X, y, meta=mask)),
        "plain": ddp_worker.summary(ddp_worker.plain_counterpart(ddp_worker.estimator(64)).fit(X, y, meta=mask)),
        "pair": ddp_worker.summary(ddp_worker.estimator(64, meta_interval=2, meta_params="last")
                                   .fit(X[~mask], y[~mask], meta=(X[mask], y[mask]))),
        # sync_batchnorm=True: the global batch's statistics, so the single-process run
        "on-device": ddp_worker.summary(ddp_worker.estimator(64, data_on_device=True).fit(X, y, meta=mask)),
        "dataset-workers": ddp_worker.summary(ddp_worker.estimator(64).fit(
            X[~mask], y[~mask], meta=ddp_worker.meta_dataset(X[mask], y[mask]))),
        "batchnorm-sync": ddp_worker.summary(ddp_worker.estimator(64, batchnorm=True).fit(X, y, meta=mask)),
        "plain-batchnorm-sync": ddp_worker.summary(ddp_worker.plain_counterpart(
            ddp_worker.estimator(64, batchnorm=True)).fit(X, y, meta=mask)),
        # the global meta batch's mean, not a mean of the processes' means
        "uneven-meta": ddp_worker.summary(ddp_worker.estimator(64).fit(X, y, meta=ddp_worker.uneven_meta(mask))),
        "lbfgs": ddp_worker.summary(ddp_worker.estimator(64, **ddp_worker.LBFGS).fit(X, y, meta=mask)),
    }
    for name in ("mwnet", "plain", "pair", "batchnorm", "batchnorm-sync", "plain-batchnorm-sync", "on-device",
                 "dataset-workers", "bf16", "uneven-meta", "lbfgs"):
        assert_identical(rank0[name], rank1[name])  # every process holds the same model
    for name, reference in single.items():
        # float32 rounding of the sums' order (batch norm's statistics add a little more; LBFGS's
        # line search amplifies it: 2e-4 measured, 2026-12-02)
        atol = 1e-3 if name == "lbfgs" else 1e-5 if "batchnorm" in name else 2e-6
        assert_close(rank0[name], reference, atol=atol)
    assert "sync_batchnorm=True" in rank0["syncbn-error"]
    # bf16 autocast with global batch norm: the same model on every process and a finite run
    # (rounding differs from one process)
    assert np.isfinite(rank0["bf16"]["train_loss"]).all() and np.isfinite(rank0["bf16"]["meta_loss"][-1])
    # per-process BatchNorm statistics (as DDP, the default): not the single-process run
    assert np.isfinite(rank0["batchnorm"]["train_loss"]).all()
    per_process = rank0["batchnorm"]["module"]
    assert any(not torch.allclose(per_process[k].float(), single["batchnorm-sync"]["module"][k].float(), atol=1e-4)
               for k in per_process)


@pytest.fixture
def group_of_one():
    """A gloo process group of one process on 127.0.0.1 (the all-reduces are then identities)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_batch_norm_is_torchs_batch_norm_with_its_derivatives(group_of_one, shape, dtype):
    """The maths of GlobalBatchNorm against F.batch_norm: output (in the input's dtype, half
    precision accumulated in float32), running statistics, gradients and the forward-mode
    tangent; the torchrun test checks the sums across processes."""
    from torch.autograd import forward_ad as fwAD

    from mwnet_sk._distributed import GlobalBatchNorm

    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 300).to(dtype)  # far from 0: cancellation would show
    weight, bias = torch.rand(3) + 0.5, torch.randn(3)
    tangent = torch.randn(shape).to(dtype)

    def run(mode):
        rm, rv = torch.zeros(3), torch.ones(3)
        xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()
        with mode:
            out = F.batch_norm(xg, rm, rv, wg, bias, True, 0.1, 1e-5)
            with fwAD.dual_level():
                dual = F.batch_norm(fwAD.make_dual(x, tangent), rm.clone(), rv.clone(), weight, bias, True, 0.1, 1e-5)
                tan = fwAD.unpack_dual(dual).tangent
        (out.float() ** 2).sum().backward()
        return out, rm, rv, xg.grad, wg.grad, tan

    ours, torchs = run(GlobalBatchNorm()), run(contextlib.nullcontext())
    assert ours[0].dtype == dtype
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_data_parallel_refusals_are_clear_and_raised_by_every_process(tmp_path, one_thread):
    for rank in torchrun("refused", tmp_path):
        assert "processes were given different data" in rank["per-process data"]
        assert "needs at least 2 meta rows (1 per process)" in rank["one meta row"]
        assert "scores the training data (on_train=True)" in rank["train scoring"]


def test_a_killed_run_resumes_under_torchrun(tmp_path, one_thread):
    uninterrupted = torchrun("uninterrupted", tmp_path)
    torchrun("crash", tmp_path, expect=3)
    units = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert units == ["checkpoint-000002"]  # written once (by the first process), the old one removed
    resumed = torchrun("resume", tmp_path)
    assert_identical(resumed[0]["mwnet"], resumed[1]["mwnet"])
    assert_identical(resumed[0]["mwnet"], uninterrupted[0]["mwnet"])


def test_grid_search_on_a_dask_cluster_equals_the_local_one():
    distributed = pytest.importorskip("dask.distributed")
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y, mask = ddp_worker.data()
    grid = {"meta_lr": [1e-3, 1e-2]}
    local = GridSearchCV(ddp_worker.estimator(32, max_epochs=2), grid, cv=2, n_jobs=1)
    local.fit(X, y, meta=mask)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        with joblib.parallel_backend("dask"):
            remote = GridSearchCV(ddp_worker.estimator(32, max_epochs=2), grid, cv=2, n_jobs=-1)
            remote.fit(X, y, meta=mask)
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(remote.predict(X), local.predict(X))
