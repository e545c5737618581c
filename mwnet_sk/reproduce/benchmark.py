"""Side-by-side timing of plain training steps and Meta-Weight-Net steps.

Every mode gets its own copy of the model (same initial weights) and its own optimizers; the
modes are timed *interleaved*, round-robin, with the starting mode rotated every round, so slow
drifts of the machine (thermal state, other processes, allocator warm-up) hit all modes alike.
Each timed sample is one "unit" of work: one step, or for ``meta_interval=k`` modes a cycle of k
steps (one weight-net update and k−1 classifier-only steps), reported per step. On CUDA the
device is synchronised before and after each unit, and peak memory is measured per mode in a
separate pass (``torch.cuda.reset_peak_memory_stats`` before each mode, the mode's own model,
optimizer state, gradients and temporaries counted, nothing of the other modes).

Use :func:`run_benchmark` (step level, :class:`~mwnet_sk.core.bilevel.BilevelStep`),
:func:`run_fit_benchmark` (whole ``fit`` epochs of :class:`~mwnet_sk.MetaWeightClassifier`, of
its plain counterpart and of a plain skorch ``NeuralNetClassifier`` on the same data: the glue
overhead) or :func:`run_data_parallel_benchmark` (``fit`` under ``torchrun`` with 1, 2, ...
processes: step time, throughput and scaling efficiency), and print the result with
:func:`format_benchmark`. ``mwnet-sk benchmark`` (and ``python benchmarks/bench_step.py``) is the
command line over these functions.

Examples
--------
>>> from mwnet_sk.reproduce.benchmark import run_benchmark, format_benchmark
>>> result = run_benchmark("small_cnn", "cpu", batch_size=8, steps=1, warmup=0,
...                        modes=("plain", "exact"), image_size=8)
>>> [row.mode for row in result]
['plain', 'exact']
"""

from __future__ import annotations

import contextlib
import gc
import os
import json
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from skorch.callbacks import Callback
from torch import nn

from .report import provenance

__all__ = [
    "CUDA_MODES",
    "DEFAULT_MODES",
    "MODES",
    "BenchmarkResult",
    "BenchmarkRow",
    "Mode",
    "environment",
    "format_benchmark",
    "resolve_mode",
    "run_benchmark",
    "run_data_parallel_benchmark",
    "run_fit_benchmark",
]


# --------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One way of taking a training step.

    ``kind="plain"`` is skorch's default ``train_step`` work: zero the gradients, forward, mean
    cross-entropy, backward, SGD step. ``kind="mwnet"`` is one
    :meth:`BilevelStep.step <mwnet_sk.core.bilevel.BilevelStep.step>` with the given options.
    """

    name: str
    description: str
    kind: str = "mwnet"
    meta_gradient: str = "exact"
    meta_params: object = "all"
    meta_interval: int = 1
    precision: str | None = None  # None or "bf16"
    channels_last: bool = False
    fast_jvp: bool = True
    cuda_only: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in [
        Mode("plain", "skorch-style step: forward, mean CE, backward, SGD", kind="plain"),
        Mode("unrolled", 'meta_gradient="unrolled" (paper code: create_graph)', meta_gradient="unrolled"),
        Mode("exact", 'meta_gradient="exact" (Eq. 6, one JVP; default)'),
        Mode("exact_generic_jvp", "exact with torch's generic forward AD (fast_jvp=False)", fast_jvp=False),
        Mode("interval5", "exact, meta_interval=5 (per step over a cycle of 5)", meta_interval=5),
        Mode("last", 'exact, meta_params="last" (head only)', meta_params="last"),
        Mode("finite_difference", 'meta_gradient="finite_difference"', meta_gradient="finite_difference"),
        Mode("plain_bf16_cl", "plain step, bf16 autocast + channels_last", kind="plain",
             precision="bf16", channels_last=True, cuda_only=True),
        Mode("exact_bf16", "exact, bf16 autocast", precision="bf16", cuda_only=True),
        Mode("exact_channels_last", "exact, channels_last", channels_last=True, cuda_only=True),
        Mode("exact_bf16_cl", "exact, bf16 autocast + channels_last", precision="bf16",
             channels_last=True, cuda_only=True),
    ]
}  # fmt: skip

DEFAULT_MODES: tuple[str, ...] = ("plain", "unrolled", "exact", "interval5", "last", "finite_difference")
"""Modes timed by default on every device."""
CUDA_MODES: tuple[str, ...] = ("plain_bf16_cl", "exact_bf16", "exact_channels_last", "exact_bf16_cl")
"""Modes added by default on CUDA (bf16 and channels_last are GPU features)."""


def resolve_mode(name: str) -> Mode:
    """The :class:`Mode` of a name of :data:`MODES`, or of ``"intervalK"`` for any K >= 1."""
    if name in MODES:
        return MODES[name]
    match = re.fullmatch(r"interval(\d+)", name)
    if match and int(match.group(1)) >= 1:
        k = int(match.group(1))
        return Mode(name, f"exact, meta_interval={k} (per step over a cycle of {k})", meta_interval=k)
    raise ValueError(f"unknown mode {name!r}; known modes: {', '.join(MODES)} (and intervalK for any K)")


# --------------------------------------------------------------------------- results
@dataclass
class BenchmarkRow:
    """Timing of one mode. Times are per training step, in milliseconds."""

    mode: str
    description: str
    ms_per_step: float  # median over the timed samples
    ms_q1: float
    ms_q3: float
    ms_min: float
    samples: int  # timed units (a unit is one step, or one cycle of meta_interval steps)
    steps_per_sample: int
    ratio: float | None = None  # median / median of the "plain" mode
    peak_mem_mb: float | None = None  # CUDA only
    peak_mem_ratio: float | None = None  # peak / peak of the "plain" mode
    epoch_s: float | None = None  # run_fit_benchmark only: median seconds per epoch
    processes: int | None = None  # run_data_parallel_benchmark only: processes of the run
    samples_per_s: float | None = None  # run_data_parallel_benchmark only: global batch / median step time
    scaling_efficiency: float | None = None  # throughput / (processes x the one-process throughput)

    def as_dict(self) -> dict:
        return asdict(self)


class BenchmarkResult(list):
    """A list of :class:`BenchmarkRow` plus ``config`` and ``environment`` dicts."""

    def __init__(self, rows=(), config=None, environment=None, title="step benchmark"):
        super().__init__(rows)
        self.config = dict(config or {})
        self.environment = dict(environment or {})
        self.title = title

    def row(self, mode: str) -> BenchmarkRow:
        """The row of ``mode`` (KeyError if it was not run)."""
        for r in self:
            if r.mode == mode:
                return r
        raise KeyError(mode)

    def as_dict(self) -> dict:
        return {
            "title": self.title,
            "config": self.config,
            "environment": self.environment,
            "rows": [r.as_dict() for r in self],
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device="cpu") -> dict:
    """What the numbers were measured on: device, CPU, threads, library versions, date."""
    device = torch.device(device)
    env = provenance(str(device))
    env.update(
        cpu=_cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
    )
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        pass
    return env


class _OtherLoad:
    """CPU time other processes used while the benchmark ran, in cores (Linux; else None).

    On a shared machine the interleaving keeps the comparison fair, but absolute times and
    their spread still suffer; this number says how much (0.0 is a quiet machine). The
    benchmark's own child processes (the data-parallel runs) are not "other" processes.
    """

    def __init__(self):
        self.cores = None

    @staticmethod
    def _busy_seconds():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        try:
            self._start = (self._busy_seconds(), sum(os.times()[:4]), time.perf_counter())
        except (OSError, ValueError, AttributeError):
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is None:
            return False
        try:
            busy, own, wall = self._busy_seconds(), sum(os.times()[:4]), time.perf_counter()
        except (OSError, ValueError, AttributeError):
            return False
        b0, o0, w0 = self._start
        if wall > w0:
            self.cores = round(max(0.0, (busy - b0) - (own - o0)) / (wall - w0), 2)
        return False


# --------------------------------------------------------------------------- building blocks
def _per_sample_ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def _model_factory(model, num_classes, model_kwargs):
    from ..models import get_model, model_key

    if isinstance(model, str):
        key = model_key(model)
        kwargs = dict(model_kwargs or {})
        if key == "mlp":
            kwargs.setdefault("n_features", 64)
            kwargs.setdefault("num_classes", num_classes)
        else:
            kwargs.setdefault("num_classes", num_classes)
        return key, (lambda: get_model(key, **kwargs))
    if isinstance(model, nn.Module):
        import copy

        return type(model).__name__, (lambda: copy.deepcopy(model))
    if callable(model):
        return getattr(model, "__name__", "model"), (lambda: model(**dict(model_kwargs or {})))
    raise TypeError(f"model must be a name, an nn.Module or a callable, got {model!r}")


def _input_shape(name, image_size, model_kwargs):
    if name == "mlp":
        return (int((model_kwargs or {}).get("n_features", 64)),)
    return (3, image_size, image_size)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One mode's model, optimizers and step function; ``unit(i)`` does one timed unit."""

    def __init__(self, mode: Mode, factory, device, batches, seed):
        self.mode = mode
        self.device = device
        self.batches = batches
        torch.manual_seed(seed)  # same initial weights in every mode
        module = factory().to(device)
        self.memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
        if mode.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        # The paper's optimizers: SGD(momentum 0.9, weight decay 5e-4) and Adam(1e-3, 1e-4).
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.dtype = torch.bfloat16 if mode.precision == "bf16" else None
        if mode.kind == "plain":
            self.criterion = nn.CrossEntropyLoss()
            self.step = None
        else:
            from ..core.bilevel import BilevelStep
            from ..core.weight_net import WeightNet

            self.weight_net = WeightNet(100).to(device)
            self.meta_optimizer = torch.optim.Adam(self.weight_net.parameters(), lr=1e-3, weight_decay=1e-4)
            self.step = BilevelStep(
                module,
                self.weight_net,
                _per_sample_ce,
                self.optimizer,
                self.meta_optimizer,
                meta_gradient=mode.meta_gradient,
                meta_params=mode.meta_params,
                autocast_dtype=self.dtype,
                fast_jvp=mode.fast_jvp,
            )
        self.steps_per_unit = mode.meta_interval if mode.kind == "mwnet" else 1

    def _batch(self, i):
        x, y, xm, ym = self.batches[i % len(self.batches)]
        if self.mode.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            xm = xm.contiguous(memory_format=torch.channels_last)
        return x, y, xm, ym

    def _plain_step(self, x, y):
        # skorch's NeuralNet.train_step: zero_grad, infer, get_loss, backward, optimizer step.
        self.module.train()
        self.optimizer.zero_grad()
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            y_pred = self.module(x)
        loss = self.criterion(y_pred.float(), y)
        loss.backward()
        self.optimizer.step()

    def unit(self, i: int) -> int:
        for k in range(self.steps_per_unit):
            x, y, xm, ym = self._batch(i * self.steps_per_unit + k)
            if self.step is None:
                self._plain_step(x, y)
            else:
                self.step.step(x, y, xm, ym, update_weight_net=(k == 0))
        return self.steps_per_unit


def _make_batches(shape, batch_size, meta_batch_size, num_classes, device, n=4, seed=0):
    g = torch.Generator().manual_seed(seed + 12345)
    batches = []
    for _ in range(n):
        x = torch.randn((batch_size, *shape), generator=g)
        y = torch.randint(0, num_classes, (batch_size,), generator=g)
        xm = torch.randn((meta_batch_size, *shape), generator=g)
        ym = torch.randint(0, num_classes, (meta_batch_size,), generator=g)
        batches.append(tuple(t.to(device) for t in (x, y, xm, ym)))
    return batches


def _fork_rng(device):
    # The benchmark seeds torch; the caller's random state is left as it was.
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.random.fork_rng(devices=[index])


@contextlib.contextmanager
def _threads(threads):
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _no_gc():
    """Collect once, then keep Python's cyclic GC from pausing inside timed units."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _quartiles(values):
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _summarise(mode, samples_ms, steps_per_sample):
    q1, q3 = _quartiles(samples_ms)
    return BenchmarkRow(
        mode=mode.name,
        description=mode.description,
        ms_per_step=statistics.median(samples_ms),
        ms_q1=q1,
        ms_q3=q3,
        ms_min=min(samples_ms),
        samples=len(samples_ms),
        steps_per_sample=steps_per_sample,
    )


def _add_ratios(rows):
    plain = next((r for r in rows if r.mode == "plain"), None)
    if plain is None:
        return
    for r in rows:
        r.ratio = r.ms_per_step / plain.ms_per_step
        if r.peak_mem_mb is not None and plain.peak_mem_mb:
            r.peak_mem_ratio = r.peak_mem_mb / plain.peak_mem_mb


# --------------------------------------------------------------------------- step benchmark
def run_benchmark(
    model="small_cnn",
    device="cpu",
    batch_size: int = 64,
    steps: int = 20,
    warmup: int = 3,
    modes: Sequence[str] | None = None,
    *,
    meta_batch_size: int | None = None,
    num_classes: int = 10,
    image_size: int = 32,
    model_kwargs: dict | None = None,
    threads: int | None = None,
    seed: int = 0,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Time plain and Meta-Weight-Net steps side by side, interleaved.

    Parameters
    ----------
    model : str, nn.Module or callable, default="small_cnn"
        A name for :func:`mwnet_sk.models.get_model` (``"small_cnn"``, ``"resnet32"``,
        ``"wrn28_10"``, ``"mlp"``, ...), a module (deep-copied per mode) or a factory.
    device : str or torch.device, default="cpu"
        Where to time the steps.
    batch_size : int, default=64
        Training batch size.
    steps : int, default=20
        Timed samples per mode (rounds). A sample is one step, or one cycle of
        ``meta_interval`` steps for the interval modes.
    warmup : int, default=3
        Untimed rounds first (allocator, kernels, lazy initialisation).
    modes : sequence of str, optional
        Mode names from :data:`MODES` (or ``"intervalK"``). Default: :data:`DEFAULT_MODES`,
        plus :data:`CUDA_MODES` on CUDA. Include ``"plain"`` to get ratios.
    meta_batch_size : int, optional
        Meta batch size; default ``batch_size`` (the estimator's default).
    num_classes, image_size : int
        Synthetic data: ``(3, image_size, image_size)`` Gaussian images (``(64,)`` features for
        ``"mlp"``) with uniform labels.
    model_kwargs : dict, optional
        Extra constructor arguments for a named model.
    threads : int, optional
        ``torch.set_num_threads`` for the run (restored afterwards).
    seed : int, default=0
        Seeds the synthetic data and the initial weights (the same in every mode).
    memory : bool, default=True
        On CUDA, measure each mode's peak memory in a separate pass.
    progress : callable, optional
        Called with a short status line as the run advances (e.g. ``print``).

    Returns
    -------
    BenchmarkResult
        One :class:`BenchmarkRow` per mode, in the order of ``modes``.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if modes is None:
        modes = DEFAULT_MODES + (CUDA_MODES if device.type == "cuda" else ())
    elif isinstance(modes, str):
        modes = tuple(m.strip() for m in modes.split(",") if m.strip())
    specs = [resolve_mode(m) for m in modes]
    if len({m.name for m in specs}) != len(specs):
        raise ValueError(f"modes must be distinct, got {list(modes)}")
    steps, warmup = int(steps), int(warmup)
    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    meta_batch_size = meta_batch_size or batch_size
    name, factory = _model_factory(model, num_classes, model_kwargs)
    say = progress or (lambda _msg: None)

    with _threads(threads), _fork_rng(device):
        env = environment(device)
        shape = _input_shape(name, image_size, model_kwargs)
        batches = _make_batches(shape, batch_size, meta_batch_size, num_classes, device, seed=seed)
        runners = [_Runner(m, factory, device, batches, seed) for m in specs]
        samples = {m.name: [] for m in specs}
        counter = 0
        with _no_gc(), _OtherLoad() as other:
            for r in range(warmup + steps):
                timed = r >= warmup
                offset = r % len(runners)
                for runner in runners[offset:] + runners[:offset]:
                    _sync(device)
                    t0 = time.perf_counter()
                    n = runner.unit(counter)
                    _sync(device)
                    dt = time.perf_counter() - t0
                    if timed:
                        samples[runner.mode.name].append(1000.0 * dt / n)
                counter += 1
                say(f"{'round' if timed else 'warm-up'} {r + 1 - warmup if timed else r + 1}/"
                    f"{steps if timed else warmup} done")  # fmt: skip
        env["other_processes_cores"] = other.cores
        rows = [_summarise(runner.mode, samples[runner.mode.name], runner.steps_per_unit) for runner in runners]
        del runners
        if memory and device.type == "cuda":
            for row, spec in zip(rows, specs):
                row.peak_mem_mb = _peak_memory_mb(spec, factory, device, batches, seed)
                say(f"peak memory of {spec.name}: {row.peak_mem_mb:.0f} MB")
    _add_ratios(rows)
    config = {
        "model": name,
        "device": str(device),
        "batch_size": batch_size,
        "meta_batch_size": meta_batch_size,
        "input_shape": list(shape),
        "steps": steps,
        "warmup": warmup,
        "seed": seed,
        "modes": [m.name for m in specs],
        "optimizer": "SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)",
        "meta_optimizer": "Adam(lr=1e-3, weight_decay=1e-4), WeightNet(100)",
    }
    return BenchmarkResult(rows, config, env, title="step benchmark")


def _peak_memory_mb(spec, factory, device, batches, seed):
    """Peak CUDA memory of one mode alone: its model, optimizer state, grads and temporaries."""
    gc.collect()
    torch.cuda.empty_cache()
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    runner = _Runner(spec, factory, device, batches, seed)
    runner.unit(0)  # optimizer state and gradients exist from here on, as in training
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    runner.unit(1)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del runner
    gc.collect()
    torch.cuda.empty_cache()
    return peak / 2**20


# --------------------------------------------------------------------------- fit benchmark
def run_fit_benchmark(
    model="small_cnn",
    device="cpu",
    batch_size: int = 64,
    n_batches: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    *,
    meta_size: int | None = None,
    gpu_data_path: bool = False,
    precision: str | None = None,
    channels_last: bool = False,
    num_classes: int = 10,
    image_size: int = 32,
    model_kwargs: dict | None = None,
    threads: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Whole ``fit`` epochs: skorch ``NeuralNetClassifier``, the library's plain training and
    :class:`MetaWeightClassifier` (with its default per-class weight net, and with the paper's
    loss-only ``WeightNet``).

    All see the same synthetic training set of ``n_batches * batch_size`` rows; the MW-Net
    estimator also gets a meta set of ``meta_size`` rows (default ``batch_size``), and its plain
    counterpart (:func:`~mwnet_sk.reproduce.baselines.make_plain_baseline`) the same meta set,
    trained on like every row (the estimator's default ``train_on_meta=True``). Each timed
    sample is one epoch (``partial_fit`` with ``max_epochs=1`` on an initialised net),
    alternating between the estimators. The rows report ms per training step (epoch time
    divided by ``n_batches``) and seconds per epoch; compare them with :func:`run_benchmark` to
    see what the skorch glue costs.

    With ``gpu_data_path=True`` the data are uint8 HWC images kept on the device
    (``data_on_device=True``) and augmented there by :func:`mwnet_sk.augment.cifar_augment`
    (random crop, flip, normalisation); plain skorch has no such path, so only the library's
    estimators are timed. ``precision`` and ``channels_last`` are passed to them.
    ``n_batches=490, batch_size=100`` is one CIFAR-10 epoch of the paper's setting (49,000
    training images after the 1,000-image meta set). The ratios are to skorch's epoch (to the
    plain counterpart's on the GPU data path).
    """
    import numpy as np
    from skorch import NeuralNetClassifier

    from ..estimator import MetaWeightClassifier
    from .baselines import make_plain_baseline

    device = torch.device(device)
    name, factory = _model_factory(model, num_classes, model_kwargs)
    say = progress or (lambda _msg: None)
    n_train = int(n_batches) * int(batch_size)
    meta_size = int(meta_size or batch_size)
    rng = np.random.RandomState(seed)
    shape = _input_shape(name, image_size, model_kwargs)
    if gpu_data_path:
        if len(shape) != 3:
            raise ValueError("gpu_data_path needs an image model")
        hwc = (shape[1], shape[2], shape[0])
        X = rng.randint(0, 256, size=(n_train, *hwc), dtype=np.uint8)
        X_meta = rng.randint(0, 256, size=(meta_size, *hwc), dtype=np.uint8)
    else:
        X = rng.standard_normal((n_train, *shape)).astype(np.float32)
        X_meta = rng.standard_normal((meta_size, *shape)).astype(np.float32)
    y = rng.randint(0, num_classes, n_train).astype(np.int64)
    y[:num_classes] = np.arange(num_classes)  # every class present
    y_meta = np.arange(meta_size, dtype=np.int64) % num_classes

    common = {
        "lr": 0.1,
        "optimizer": torch.optim.SGD,
        "optimizer__momentum": 0.9,
        "optimizer__weight_decay": 5e-4,
        "batch_size": batch_size,
        "max_epochs": 1,
        "train_split": None,
        "device": str(device),
        "verbose": 0,
    }
    module = _ModuleFactory(factory)
    estimators = {}
    if not gpu_data_path:
        estimators["skorch_epoch"] = (
            "skorch NeuralNetClassifier.partial_fit, 1 epoch",
            NeuralNetClassifier(module, criterion=nn.CrossEntropyLoss, **common),
            {},
        )
    extra = {}
    if gpu_data_path:
        from ..augment import cifar_augment

        extra = {"batch_transform": cifar_augment("cifar10"), "data_on_device": True}
    options = ((", GPU data path" if gpu_data_path else "") + (f", {precision}" if precision else "")
               + (", channels_last" if channels_last else ""))  # fmt: skip
    mwnet = MetaWeightClassifier(module, precision=precision, channels_last=channels_last, random_state=seed,
                                 **extra, **common)  # fmt: skip
    estimators["plain_epoch"] = (
        "PlainClassifier.partial_fit (plain counterpart), 1 epoch" + options, make_plain_baseline(mwnet),
        {"meta": (X_meta, y_meta)},
    )  # fmt: skip
    estimators["mwnet_epoch"] = (
        "MetaWeightClassifier.partial_fit, 1 epoch (exact)" + options, mwnet, {"meta": (X_meta, y_meta)},
    )  # fmt: skip
    # what the default per-class weight net costs over the paper's loss-only one
    from ..core.weight_net import WeightNet

    estimators["mwnet_loss_only_epoch"] = (
        "the same with weight_net=WeightNet (the paper's loss-only weight net)" + options,
        MetaWeightClassifier(module, weight_net=WeightNet, precision=precision, channels_last=channels_last,
                             random_state=seed, **extra, **common),
        {"meta": (X_meta, y_meta)},
    )  # fmt: skip

    with _threads(threads), _fork_rng(device):
        env = environment(device)
        torch.manual_seed(seed)
        for _, net, _ in estimators.values():
            net.initialize()
        samples = {k: [] for k in estimators}
        keys = list(estimators)
        with _no_gc(), _OtherLoad() as other:
            for r in range(int(warmup) + int(repeats)):
                timed = r >= warmup
                for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                    _, net, fit_params = estimators[key]
                    _sync(device)
                    t0 = time.perf_counter()
                    net.partial_fit(X, y, **fit_params)
                    _sync(device)
                    if timed:
                        samples[key].append(time.perf_counter() - t0)
                say(f"epoch round {r + 1}/{warmup + repeats} done")
        env["other_processes_cores"] = other.cores
    rows = []
    for key, (description, _, _) in estimators.items():
        per_step = [1000.0 * s / n_batches for s in samples[key]]
        row = _summarise(Mode(key, description), per_step, 1)
        row.epoch_s = statistics.median(samples[key])
        rows.append(row)
    # ratios to skorch's own loop; on the GPU data path (no skorch row) to the plain counterpart
    base = next((r for r in rows if r.mode == "skorch_epoch"), None) or next(r for r in rows if r.mode == "plain_epoch")
    if base is not None:
        for r in rows:
            r.ratio = r.ms_per_step / base.ms_per_step
    config = {
        "model": name,
        "device": str(device),
        "batch_size": batch_size,
        "n_batches": n_batches,
        "n_train": n_train,
        "meta_size": meta_size,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "gpu_data_path": gpu_data_path,
        "precision": precision,
        "channels_last": channels_last,
    }
    return BenchmarkResult(rows, config, env, title="fit benchmark")


class _ModuleFactory:
    """A picklable-enough module 'class' for skorch: calling it builds the model."""

    def __init__(self, factory):
        self.factory = factory
        self.__name__ = "benchmark_model"

    def __call__(self, **kwargs):
        return self.factory()


# --------------------------------------------------------------------------- data-parallel benchmark
DATA_PARALLEL_ESTIMATORS: tuple[str, ...] = ("mwnet", "plain")
"""What :func:`run_data_parallel_benchmark` fits: Meta-Weight-Net and its plain counterpart."""

_DP_DESCRIPTIONS = {
    "mwnet": "MetaWeightClassifier.fit (exact meta-gradient, no warm-up)",
    "plain": "PlainClassifier.fit (plain counterpart)",
}
_WORKER_MODULE = "mwnet_sk.reproduce._data_parallel_worker"


def run_data_parallel_benchmark(
    model="small_cnn",
    device="cpu",
    batch_size: int = 64,
    processes: Sequence[int] = (1, 2),
    steps: int = 20,
    warmup: int = 3,
    *,
    meta_batch_size: int | None = None,
    estimators: Sequence[str] = DATA_PARALLEL_ESTIMATORS,
    num_classes: int = 10,
    image_size: int = 32,
    model_kwargs: dict | None = None,
    threads: int = 1,
    seed: int = 0,
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Data-parallel ``fit`` under ``torchrun`` with 1, 2, ... processes, side by side.

    For every number of processes N in ``processes``, launches ``python -m
    torch.distributed.run --nproc_per_node=N --master_addr=127.0.0.1 --master_port=<free port>``
    on this machine. Every process runs the same script: it builds a synthetic training set of
    ``(warmup + steps) * N * batch_size`` rows and a meta set of ``N * meta_batch_size`` rows,
    and fits a :class:`~mwnet_sk.MetaWeightClassifier` on ``model`` for one epoch (the
    estimator's defaults, except ``warmup_epochs=0`` so that every step is a Meta-Weight-Net
    step, and ``train_on_meta=False`` so that every step has a full global batch), then its plain
    counterpart (:class:`~mwnet_sk.PlainClassifier`) the same way. ``fit`` joins the process
    group the launcher describes (gloo on the CPU, NCCL on CUDA with one GPU per process), and
    ``batch_size`` is per process, so a step of N processes trains ``N * batch_size`` rows. The
    first process times every training step (end of one step to the end of the next, the whole
    ``fit`` loop included; the processes move in lockstep, joined by their all-reduces) and
    the first ``warmup`` steps are left out. A one-process run is a plain single-process ``fit``
    (torchrun with one process sets up no process group).

    Parameters
    ----------
    model : str, default="small_cnn"
        A name for :func:`mwnet_sk.models.get_model` (the processes build it themselves).
    device : str, default="cpu"
        ``"cpu"`` (gloo) or ``"cuda"`` (NCCL; needs as many visible GPUs as processes).
    batch_size : int, default=64
        Training batch size per process.
    processes : sequence of int, default=(1, 2)
        The numbers of processes to run, each in its own launch. Include 1 to get the scaling
        efficiencies.
    steps : int, default=20
        Timed steps per estimator and launch.
    warmup : int, default=3
        Untimed steps first.
    meta_batch_size : int, optional
        Meta batch size per process; default ``batch_size``.
    estimators : sequence of {"mwnet", "plain"}, default=("mwnet", "plain")
        What to fit in every launch.
    num_classes, image_size : int
        Synthetic data: ``(3, image_size, image_size)`` Gaussian images (``(64,)`` features for
        ``"mlp"``) with uniform labels.
    model_kwargs : dict, optional
        Extra constructor arguments for the model (JSON-serialisable).
    threads : int, default=1
        torch CPU threads per process (``OMP_NUM_THREADS`` and ``torch.set_num_threads``), the
        same for every N: on a CPU, N processes then use N times the cores of one.
    seed : int, default=0
        Seeds the synthetic data, the initial weights and the batch order.
    timeout : float, default=600
        Seconds one launch may take; a launch that runs longer is stopped with all its
        processes.
    progress : callable, optional
        Called with a short status line as the run advances (e.g. ``print``).

    Returns
    -------
    BenchmarkResult
        One :class:`BenchmarkRow` per estimator and number of processes (mode
        ``"<estimator>_dp<N>"``): ms per step, ``processes``, ``samples_per_s`` (global batch
        over the median step time), ``scaling_efficiency`` (throughput with N processes over N
        times the throughput with one; 1.0 is perfect scaling) and ``ratio`` (Meta-Weight-Net's
        step time over the plain one's with the same N).

    Raises
    ------
    RuntimeError
        A launch failed; the message ends with the last lines the processes wrote.
    """
    device = torch.device(device)
    counts = [int(n) for n in processes]
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise ValueError(f"processes must be distinct positive integers, got {list(processes)}")
    unknown = [e for e in estimators if e not in DATA_PARALLEL_ESTIMATORS]
    if unknown or not estimators:
        raise ValueError(f"estimators must be some of {DATA_PARALLEL_ESTIMATORS}, got {list(estimators)}")
    if not isinstance(model, str):
        raise TypeError(f"the data-parallel benchmark builds the model in every process: pass its name, got {model!r}")
    steps, warmup, threads = int(steps), int(warmup), int(threads)
    if steps < 1 or warmup < 0 or threads < 1:
        raise ValueError("steps and threads must be >= 1 and warmup >= 0")
    if device.type == "cuda" and max(counts) > torch.cuda.device_count():
        raise ValueError(f"{max(counts)} processes need {max(counts)} GPUs (one each); "
                         f"{torch.cuda.device_count()} are visible")  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"data-parallel training runs on cpu (gloo) or cuda (NCCL), not {device.type}")
    name, _ = _model_factory(model, num_classes, model_kwargs)  # checks the name
    meta_batch_size = int(meta_batch_size or batch_size)
    say = progress or (lambda _msg: None)
    worker_config = {
        "model": name, "model_kwargs": dict(model_kwargs or {}), "device": device.type,
        "batch_size": int(batch_size), "meta_batch_size": meta_batch_size, "steps": steps, "warmup": warmup,
        "estimators": list(estimators), "num_classes": int(num_classes), "image_size": int(image_size),
        "threads": threads, "seed": int(seed),
    }  # fmt: skip
    env = environment("cpu" if device.type == "cpu" else "cuda")
    env["torch_threads"] = threads  # per process
    samples: dict[tuple[str, int], list[float]] = {}
    launches: dict[str, dict] = {}  # per launch: the processes the workers saw, the machine's other load
    with tempfile.TemporaryDirectory(prefix="mwnet-dp-bench-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w") as fh:
            json.dump(worker_config, fh)
        for n in counts:
            say(f"{n} process{'es' if n > 1 else ''}: launching torchrun")
            out_path = os.path.join(tmp, f"times-{n}.json")
            with _OtherLoad() as other:
                _launch_torchrun(n, [config_path, out_path], threads, timeout)
            with open(out_path) as fh:
                measured = json.load(fh)
            launches[str(n)] = {"world_size": measured["world_size"], "other_processes_cores": other.cores}
            for kind in estimators:
                samples[(kind, n)] = measured["ms_per_step"][kind]
            say(f"{n} process{'es' if n > 1 else ''}: done")
    loads = [launch["other_processes_cores"] for launch in launches.values()]
    env["other_processes_cores"] = max((c for c in loads if c is not None), default=None)
    env["launches"] = launches

    rows = _data_parallel_rows(samples, counts, estimators, int(batch_size))
    config = {
        "model": name,
        "device": device.type,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "batch_size": int(batch_size),
        "meta_batch_size": meta_batch_size,
        "processes": counts,
        "threads_per_process": threads,
        "steps": steps,
        "warmup": warmup,
        "seed": int(seed),
        "estimators": list(estimators),
        "input_shape": list(_input_shape(name, image_size, model_kwargs)),
    }
    return BenchmarkResult(rows, config, env, title="data-parallel benchmark")


def _data_parallel_rows(samples, counts, estimators, batch_size) -> list[BenchmarkRow]:
    """Rows from the step times (ms) of each (estimator, processes): throughput, scaling
    efficiency against the one-process run, ratio to plain training with as many processes."""
    rows = []
    for kind in estimators:
        for n in counts:
            mode = Mode(f"{kind}_dp{n}", f"{_DP_DESCRIPTIONS[kind]}, {n} process{'es' if n > 1 else ''}")
            row = _summarise(mode, samples[(kind, n)], 1)
            row.processes = n
            row.samples_per_s = n * batch_size / (row.ms_per_step / 1000.0)
            rows.append(row)
    by_mode = {row.mode: row for row in rows}
    for row in rows:
        kind = row.mode.rsplit("_dp", 1)[0]
        single = by_mode.get(f"{kind}_dp1")
        if single is not None:
            row.scaling_efficiency = row.samples_per_s / (row.processes * single.samples_per_s)
        plain = by_mode.get(f"plain_dp{row.processes}")
        if plain is not None:
            row.ratio = row.ms_per_step / plain.ms_per_step
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_torchrun(n: int, args: Sequence[str], threads: int, timeout: float) -> None:
    """Run the worker script under torchrun with ``n`` processes on this machine."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    for _attempt in range(3):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", _WORKER_MODULE, *args]  # fmt: skip
        # a session of its own: a launch that times out is stopped with every process it started
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"the {n}-process run took longer than {timeout:g} s and was stopped") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        if proc.returncode == 0:
            return
        if "address already in use" not in output.lower():  # another program took the free port: retry
            break
    tail = "\n".join(output.strip().splitlines()[-15:])
    raise RuntimeError(f"the {n}-process run failed (exit status {proc.returncode}):\n{tail}")


class _StepTimes(Callback):
    """A skorch callback: when each training step began and ended (the device synchronised)."""

    def __init__(self, device):
        self.device = device

    def on_train_begin(self, net, **kwargs):
        self.begins_: list[float] = []
        self.ends_: list[float] = []

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            _sync(torch.device(self.device))
            self.begins_.append(time.perf_counter())

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            _sync(torch.device(self.device))
            self.ends_.append(time.perf_counter())

    def step_ms(self, first: int) -> list[float]:
        """Milliseconds of each step from step ``first`` on: from the end of the previous step
        (the start of the very first one) to its end."""
        starts = [self.begins_[0]] + self.ends_[:-1]
        return [1000.0 * (end - start) for start, end in zip(starts[first:], self.ends_[first:])]


def _time_data_parallel_fits(config: dict, out_path: str) -> None:
    """The script of every launched process (see :func:`run_data_parallel_benchmark`)."""
    import numpy as np

    from ..estimator import MetaWeightClassifier
    from .baselines import make_plain_baseline

    torch.set_num_threads(int(config["threads"]))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size, meta_batch_size = int(config["batch_size"]), int(config["meta_batch_size"])
    n_steps = int(config["warmup"]) + int(config["steps"])
    name, factory = _model_factory(config["model"], config["num_classes"], config["model_kwargs"])
    shape = _input_shape(name, config["image_size"], config["model_kwargs"])
    # every process builds the same data; fit gives each its part of every global batch
    rng = np.random.RandomState(config["seed"])
    n_train, n_meta = n_steps * world_size * batch_size, world_size * meta_batch_size
    X = rng.standard_normal((n_train, *shape)).astype(np.float32)
    X_meta = rng.standard_normal((n_meta, *shape)).astype(np.float32)
    y = rng.randint(0, config["num_classes"], n_train).astype(np.int64)
    y[: config["num_classes"]] = np.arange(config["num_classes"])  # every class present
    y_meta = np.arange(n_meta, dtype=np.int64) % config["num_classes"]
    device = config["device"]

    mwnet = MetaWeightClassifier(
        _ModuleFactory(factory), lr=0.1, optimizer__momentum=0.9, optimizer__weight_decay=5e-4,
        batch_size=batch_size, meta_batch_size=meta_batch_size, max_epochs=1, warmup_epochs=0, train_on_meta=False,
        device=device, data_on_device=device == "cuda", verbose=0, random_state=config["seed"],
    )  # fmt: skip
    times = {}
    for kind in config["estimators"]:
        timer = _StepTimes(device)
        net = mwnet.set_params(callbacks=[timer]) if kind == "mwnet" else make_plain_baseline(mwnet, callbacks=[timer])
        net.fit(X, y, meta=(X_meta, y_meta))
        if len(timer.ends_) != n_steps:
            raise RuntimeError(f"expected {n_steps} training steps, timed {len(timer.ends_)}")
        times[kind] = timer.step_ms(int(config["warmup"]))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as fh:
            json.dump({"world_size": world_size, "ms_per_step": times}, fh)


# --------------------------------------------------------------------------- formatting
def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_benchmark(result: BenchmarkResult | Sequence[BenchmarkRow]) -> str:
    """A Markdown table (with a one-line header of the configuration and machine).

    Data-parallel rows add the number of processes, the throughput and the scaling
    efficiency; their ratio is Meta-Weight-Net's step time over the plain one's with as many
    processes.
    """
    rows = list(result)
    lines = []
    config = getattr(result, "config", {})
    env = getattr(result, "environment", {})
    per_process = "processes" in config
    if config or env:
        threads = env.get("torch_threads", "?")
        where = f"{env.get('cpu', '?')}, {threads} thread{'s' if threads != 1 else ''}"
        where = env.get("gpu") or (where + " per process" if per_process else where)
        what = (
            f"{config.get('model', '?')}, batch {config.get('batch_size', '?')}"
            + (f" (meta batch {config['meta_batch_size']})" if "meta_batch_size" in config else "")
            + (" per process" if per_process else "")
            + (f", {config['n_batches']} batches/epoch" if "n_batches" in config else "")
        )
        device = config.get("device", "?") + (f", {config['backend']}" if "backend" in config else "")
        lines.append(
            f"{getattr(result, 'title', 'benchmark')}: {what} on {device} ({where}); "
            f"torch {env.get('torch', '?')}; {str(env.get('date', '?'))[:10]}"
        )
        notes = []
        if env.get("load_average") is not None:
            notes.append(f"load average at start {env['load_average']}")
        if env.get("other_processes_cores") is not None:
            notes.append(f"other processes used {env['other_processes_cores']:.2f} cores during the timing")
        if notes:
            lines.append("; ".join(notes))
        lines.append("")
    has_mem = any(r.peak_mem_mb is not None for r in rows)
    has_epoch = any(r.epoch_s is not None for r in rows)
    has_dp = any(r.processes is not None for r in rows)
    header = ["mode"] + (["processes"] if has_dp else []) + ["ms/step (median)", "IQR"]
    if has_dp:
        header += ["samples/s", "scaling efficiency"]
    header.append("ratio")
    if has_epoch:
        header.append("s/epoch")
    if has_mem:
        header += ["peak MB", "mem ratio"]
    header.append("what")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for r in rows:
        cells = [r.mode] + ([_fmt(r.processes, "d")] if has_dp else []) + [f"{r.ms_per_step:.1f}",
                                                                          f"{r.ms_q1:.1f}-{r.ms_q3:.1f}"]
        if has_dp:
            cells += [_fmt(r.samples_per_s, ".0f"), _fmt(r.scaling_efficiency, ".0%")]
        cells.append(_fmt(r.ratio, ".2f") + ("x" if r.ratio else ""))
        if has_epoch:
            cells.append(_fmt(r.epoch_s, ".2f"))
        if has_mem:
            cells += [_fmt(r.peak_mem_mb, ".0f"), _fmt(r.peak_mem_ratio, ".2f")]
        cells.append(r.description)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
