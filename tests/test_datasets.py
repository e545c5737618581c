"""Tests of mwnet_sk.datasets on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from mwnet_sk.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CLOTHING1M_MEAN,
    CLOTHING1M_STD,
    Clothing1M,
    ImageArrayDataset,
    cifar_test_transform,
    cifar_train_transform,
    clothing1m_eval_transform,
    load_cifar,
    load_cifar_n,
    make_cifar_benchmark,
)

N_PER_BATCH = 20  # CIFAR-10 fixture: 5 x 20 = 100 training images, 10 per class
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


# --------------------------------------------------------------------------- fixtures
class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the official CIFAR files.

    ``str``/``bytes`` become Python-2 ``str`` opcodes (BINSTRING) and numpy's reconstruct
    function is referenced under its pre-2.0 module ``numpy.core.multiarray``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump(obj, path: Path, py2: bool = False) -> None:
    with open(path, "wb") as f:
        if py2:
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=2)


def _images(rng, n):
    return rng.randint(0, 256, size=(n, 3 * 32 * 32)).astype(np.uint8)


def write_cifar10(root: Path, py2: bool = False, seed: int = 0) -> Path:
    """Official layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(i + b) % 10 for i in range(N_PER_BATCH)]
        entry = {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": labels,
            b"data": _images(rng, N_PER_BATCH),
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(N_PER_BATCH)],
        }
        _dump(entry, folder / f"data_batch_{b}", py2)
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [i % 10 for i in range(30)],
        b"data": _images(rng, 30),
        b"filenames": [f"test_{i}.png".encode() for i in range(30)],
    }
    _dump(test, folder / "test_batch", py2)
    meta = {
        b"num_cases_per_batch": N_PER_BATCH,
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_vis": 3072,
    }
    _dump(meta, folder / "batches.meta", py2)
    return folder


def write_cifar100(root: Path, seed: int = 0) -> Path:
    """Official layout: cifar-100-python/train, test, meta (fine and coarse labels)."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 200), ("test", 100)):
        fine = [i % 100 for i in range(n)]
        entry = {
            b"filenames": [f"{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": _images(rng, n),
        }
        _dump(entry, folder / split)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _dump(meta, folder / "meta")
    return folder


def _raw_batches(folder: Path, files, label_key=b"labels"):
    data, labels = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data.append(d[b"data"])
        labels += d[label_key]
    return np.concatenate(data), np.asarray(labels)


@pytest.fixture
def cifar10_root(tmp_path) -> Path:
    write_cifar10(tmp_path)
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path) -> Path:
    write_cifar100(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- CIFAR readers
def test_load_cifar10_layout_and_pixels(cifar10_root):
    X, y = load_cifar("cifar10", cifar10_root, train=True)
    assert X.shape == (100, 32, 32, 3) and X.dtype == np.uint8 and X.flags.c_contiguous
    assert y.shape == (100,) and y.dtype == np.int64
    raw, raw_y = _raw_batches(
        cifar10_root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
    )
    np.testing.assert_array_equal(y, raw_y)
    # official rows are 1024 red, 1024 green, 1024 blue values, row-major 32 x 32
    img = raw[17]
    np.testing.assert_array_equal(X[17, :, :, 0], img[:1024].reshape(32, 32))
    np.testing.assert_array_equal(X[17, :, :, 2], img[2048:].reshape(32, 32))
    assert X[17, 3, 5, 1] == img[1024 + 3 * 32 + 5]
    X_test, y_test = load_cifar("CIFAR-10", cifar10_root, train=False)
    assert X_test.shape == (30, 32, 32, 3) and y_test.tolist() == [i % 10 for i in range(30)]


def test_load_cifar_accepts_the_extracted_folder_as_root(cifar10_root):
    X1, y1 = load_cifar("cifar10", cifar10_root)
    X2, y2 = load_cifar("cifar10", cifar10_root / "cifar-10-batches-py")
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)


def test_python2_written_batches_load_identically(tmp_path):
    write_cifar10(tmp_path / "py3")
    write_cifar10(tmp_path / "py2", py2=True)
    for train in (True, False):
        X3, y3 = load_cifar("cifar10", tmp_path / "py3", train=train)
        X2, y2 = load_cifar("cifar10", tmp_path / "py2", train=train)
        np.testing.assert_array_equal(X2, X3)
        np.testing.assert_array_equal(y2, y3)
    bench = make_cifar_benchmark(
        "cifar10", tmp_path / "py2", meta_size=10, corruption=None, random_state=0
    )
    assert bench.classes == CIFAR10_NAMES


def test_load_cifar100(cifar100_root):
    X, y = load_cifar("cifar100", cifar100_root, train=True)
    assert X.shape == (200, 32, 32, 3) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [2] * 100
    X_test, y_test = load_cifar("cifar_100", cifar100_root, train=False)
    assert X_test.shape == (100, 32, 32, 3)
    raw, raw_y = _raw_batches(cifar100_root / "cifar-100-python", ["test"], b"fine_labels")
    np.testing.assert_array_equal(y_test, raw_y)
    np.testing.assert_array_equal(X_test[5, :, :, 1], raw[5, 1024:2048].reshape(32, 32))


def test_missing_cifar_file_message(cifar10_root, tmp_path):
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        load_cifar("cifar10", cifar10_root)
    msg = str(exc.value)
    assert "data_batch_3" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "cifar-10-python.tar.gz" in msg
    # facts only: how to pass a flag or an argument is the caller's business (the CLI says --download)
    assert "download" not in msg.replace("cifar-10-python", "")
    # the test split is still readable
    load_cifar("cifar10", cifar10_root, train=False)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.test"):
        load_cifar("cifar100", tmp_path / "nowhere", train=False)


def test_unknown_cifar_name(cifar10_root):
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("svhn", cifar10_root)


def test_cifar_pickles_are_loaded_safely(cifar10_root):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        load_cifar("cifar10", cifar10_root)


def test_malformed_cifar_batch(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    _dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, path)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar("cifar10", cifar10_root, train=False)
    _dump({b"data": np.zeros((3, 3072), np.uint8)}, path)
    with pytest.raises(ValueError, match=r"test_batch: key 'labels' missing"):
        load_cifar("cifar10", cifar10_root, train=False)


@pytest.mark.parametrize("bad", [57, -1])
def test_cifar_labels_outside_the_classes_are_refused_naming_the_file(cifar10_root, bad):
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_4"
    _dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, bad, 2]}, path)
    with pytest.raises(ValueError, match=rf"data_batch_4, entry 'labels': 1 labels are outside \[0, 9\] \(the first is {bad} at position 1\)"):
        load_cifar("cifar10", cifar10_root)


def test_cifar100_label_range_is_its_own(cifar100_root):
    path = cifar100_root / "cifar-100-python" / "test"
    _dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [99, 100]}, path)
    with pytest.raises(ValueError, match=r"test, entry .fine_labels.: 1 labels are outside \[0, 99\]"):
        load_cifar("cifar100", cifar100_root, train=False)


def test_truncated_cifar_batch_names_its_file(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"data_batch_5: not a readable pickle file, truncated or damaged"):
        load_cifar("cifar10", cifar10_root)
    meta = cifar10_root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(meta.read_bytes()[:10])
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"batches.meta: not a readable pickle"):
        make_cifar_benchmark("cifar10", cifar10_root, meta_size=10, as_dataset=False)


def test_download_delegates_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False, **kw):
            calls.append((root, train, download))
            if download and not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    root = tmp_path / "dl"
    X, y = load_cifar("cifar10", root, train=True, download=True)
    assert X.shape == (100, 32, 32, 3)
    assert calls == [(str(root), True, True)]
    bench = make_cifar_benchmark("cifar10", root, meta_size=10, download=True, random_state=0)
    assert len(bench.y_train) == 90 and len(calls) == 2


# --------------------------------------------------------------------------- Dataset + transforms
def test_image_array_dataset(cifar10_root):
    X, y = load_cifar("cifar10", cifar10_root)
    ds = ImageArrayDataset(X, y)
    x0, y0 = ds[3]
    assert isinstance(y0, int) and y0 == y[3]
    assert x0.shape == (3, 32, 32) and x0.dtype == torch.float32
    torch.testing.assert_close(x0, torch.from_numpy(X[3]).permute(2, 0, 1).float() / 255)
    assert ds.targets.dtype == np.int64 and len(ds) == 100 and ds.data is ds.images
    tds = ImageArrayDataset(X, y, transform=cifar_test_transform(), target_transform=float)
    xt, yt = tds[3]
    mean = torch.tensor(CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(xt, (x0 - mean) / std)
    assert yt == float(y[3])
    # grayscale arrays work too
    g = ImageArrayDataset(np.zeros((2, 8, 8, 1), np.uint8), [0, 1])
    assert g[0][0].shape == (1, 8, 8)


def test_image_array_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3)), [0, 1])
    with pytest.raises(ValueError, match="integers"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="different lengths"):
        ImageArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1, 2])
    with pytest.raises(ValueError, match="shape"):
        ImageArrayDataset(np.zeros((2, 4), np.uint8), [0, 1])


def test_cifar_transforms():
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    train_t = cifar_train_transform("cifar10")
    names = [type(t).__name__ for t in train_t.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop = train_t.transforms[0]
    assert crop.size == (32, 32) and crop.padding == 4 and crop.padding_mode == "reflect"
    assert train_t(img).shape == (3, 32, 32)
    test_t = cifar_test_transform("cifar100")
    assert [type(t).__name__ for t in test_t.transforms] == ["ToTensor", "Normalize"]
    expected = (128 / 255 - torch.tensor(CIFAR100_MEAN)) / torch.tensor(CIFAR100_STD)
    torch.testing.assert_close(test_t(img)[:, 0, 0], expected)
    # official MW-Net normalisation for CIFAR-100 = CIFAR-10 statistics
    assert cifar_test_transform("cifar100", normalize="cifar10").transforms[1].mean == CIFAR10_MEAN
    assert cifar_train_transform(padding_mode="constant").transforms[0].padding_mode == "constant"
    # with reflect padding a constant image stays constant under any crop
    torch.testing.assert_close(train_t(img), cifar_test_transform()(img))


# --------------------------------------------------------------------------- benchmarks
def test_noise_benchmark_protocol(cifar10_root):
    X_all, y_all = load_cifar("cifar10", cifar10_root)
    b = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption="uniform", noise_rate=0.6, meta_size=20, random_state=0
    )
    # meta: class balanced, clean, removed from the training split
    assert np.bincount(b.y_meta, minlength=10).tolist() == [2] * 10
    assert set(b.meta_indices.tolist()).isdisjoint(b.train_indices.tolist())
    assert sorted(b.meta_indices.tolist() + b.train_indices.tolist()) == list(range(100))
    np.testing.assert_array_equal(b.X_meta, X_all[b.meta_indices])
    np.testing.assert_array_equal(b.y_meta, y_all[b.meta_indices])
    np.testing.assert_array_equal(b.X_train, X_all[b.train_indices])
    np.testing.assert_array_equal(b.y_train_clean, y_all[b.train_indices])
    np.testing.assert_array_equal(b.noise_mask, b.y_train != b.y_train_clean)
    assert b.noise_mask.any() and b.y_train.dtype == np.int64
    np.testing.assert_allclose(b.transition_matrix, 0.4 * np.eye(10) + 0.06)
    assert b.noise_rate == 0.6 and 0 < b.actual_noise_rate < 1
    assert b.classes == CIFAR10_NAMES and b.n_classes == 10
    assert "n_train=80" in repr(b) and "n_meta=20" in repr(b)
    # datasets: augmentation on train and meta, only normalisation on test
    assert len(b.train) == 80 and len(b.meta) == 20 and len(b.test) == 30
    for ds in (b.train, b.meta):
        assert isinstance(ds.transform.transforms[0], T.RandomCrop)
    assert not any(isinstance(t, T.RandomCrop) for t in b.test.transform.transforms)
    np.testing.assert_array_equal(b.train.targets, b.y_train)
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int) and y == b.y_train[0]
    # reproducible
    b2 = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption="uniform", noise_rate=0.6, meta_size=20, random_state=0
    )
    np.testing.assert_array_equal(b.y_train, b2.y_train)
    np.testing.assert_array_equal(b.meta_indices, b2.meta_indices)


def test_flip_benchmark_uses_its_matrix(cifar10_root):
    b = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption="flip", noise_rate=1.0, meta_size=10,
        random_state=3, as_dataset=False,
    )  # fmt: skip
    assert b.train is None and b.test is None
    assert b.noise_mask.all()
    targets = b.transition_matrix.argmax(axis=1)
    np.testing.assert_array_equal(b.y_train, targets[b.y_train_clean])
    assert np.all(targets != np.arange(10))


def test_default_meta_size_needs_real_cifar(cifar10_root):
    # the paper's 1000 meta images (100 per class) do not fit in the 100-image fixture
    with pytest.raises(ValueError, match="has only 10 samples but 100 are needed"):
        make_cifar_benchmark("cifar10", cifar10_root)


def test_long_tailed_benchmark(cifar10_root):
    b = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption="long_tailed", imbalance_factor=5,
        n_meta_per_class=1, random_state=0,
    )  # fmt: skip
    assert np.bincount(b.y_meta).tolist() == [1] * 10
    # 9 images per class are left after the meta split: n_max = 9
    expected = [int(9 * (1 / 5) ** (i / 9)) for i in range(10)]
    assert min(expected) == 1
    assert np.bincount(b.y_train, minlength=10).tolist() == expected
    assert not b.noise_mask.any() and b.transition_matrix is None
    assert b.imbalance_factor == 5 and b.noise_rate is None
    assert set(b.train_indices.tolist()).isdisjoint(b.meta_indices.tolist())
    assert len(b.train) == sum(expected)


def test_cifar100_benchmark_and_dataloader_workers(cifar100_root):
    b = make_cifar_benchmark(
        "cifar100", cifar100_root, corruption="flip2", noise_rate=0.4, n_meta_per_class=1,
        random_state=0,
    )  # fmt: skip
    assert len(b.y_meta) == 100 and len(b.y_train) == 100
    assert b.transition_matrix.shape == (100, 100)
    assert np.all(np.count_nonzero(b.transition_matrix, axis=1) == 3)
    assert b.classes[:2] == ["fine0", "fine1"]
    mean = b.train.transform.transforms[-1].mean
    assert tuple(mean) == CIFAR100_MEAN
    # picklable, usable with DataLoader worker processes
    clone = pickle.loads(pickle.dumps(b))
    np.testing.assert_array_equal(clone.y_train, b.y_train)
    loader = DataLoader(b.train, batch_size=25, num_workers=2)
    xs, ys = zip(*loader)
    assert torch.cat(xs).shape == (100, 3, 32, 32)
    np.testing.assert_array_equal(torch.cat(ys).numpy(), b.y_train)


def test_clean_and_matrix_benchmarks(cifar10_root):
    clean = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption=None, meta_size=10, random_state=0
    )
    assert not clean.noise_mask.any() and clean.transition_matrix is None
    M = np.roll(np.eye(10), 1, axis=1)  # deterministic i -> i+1
    b = make_cifar_benchmark("cifar10", cifar10_root, corruption=M, meta_size=10, random_state=0)
    assert b.corruption == "matrix"
    np.testing.assert_array_equal(b.y_train, (b.y_train_clean + 1) % 10)
    with pytest.raises(ValueError, match="Unknown corruption 'gaussian'"):
        make_cifar_benchmark("cifar10", cifar10_root, corruption="gaussian", meta_size=10)
    with pytest.raises(ValueError, match="noise_rate"):
        make_cifar_benchmark("cifar10", cifar10_root, noise_rate=1.5, meta_size=10)
    no_aug = make_cifar_benchmark(
        "cifar10", cifar10_root, meta_size=10, augment=False, random_state=0
    )
    assert [type(t).__name__ for t in no_aug.meta.transform.transforms] == ["ToTensor", "Normalize"]


# --------------------------------------------------------------------------- CIFAR-N
CIFAR10N_KEYS = [
    "clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3",
]  # fmt: skip


def write_cifar10n(path: Path, clean: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    d = {"clean_label": np.asarray(clean, dtype=np.int64)}
    for k in CIFAR10N_KEYS[1:]:
        noisy = d["clean_label"].copy()
        flip = rng.rand(len(noisy)) < 0.3
        noisy[flip] = rng.randint(0, 10, size=flip.sum())
        d[k] = noisy
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(d, path)  # what the CIFAR-N release is: torch.save of numpy arrays
    return d


def test_load_cifar10n(tmp_path):
    clean = np.arange(100) % 10
    d = write_cifar10n(tmp_path / "CIFAR-10_human.pt", clean)
    for key in CIFAR10N_KEYS:
        labels = load_cifar_n(tmp_path / "CIFAR-10_human.pt", label_key=key)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, d[key])
    # default: worse_label; a directory is searched for the file
    np.testing.assert_array_equal(load_cifar_n(tmp_path), d["worse_label"])
    noisy, cl = load_cifar_n(tmp_path, label_key="aggre_label", return_clean=True)
    np.testing.assert_array_equal(cl, clean)
    np.testing.assert_array_equal(noisy, d["aggre_label"])


def test_load_cifar100n_in_data_folder(tmp_path):
    rng = np.random.RandomState(0)
    clean = rng.randint(0, 100, 50)
    d = {
        "clean_label": clean,
        "noisy_label": rng.randint(0, 100, 50),
        "noisy_coarse_label": rng.randint(0, 20, 50).astype(np.int32),
        "clean_coarse_label": rng.randint(0, 20, 50).astype(np.int32),
    }
    (tmp_path / "data").mkdir()
    torch.save(d, tmp_path / "data" / "CIFAR-100_human.pt")
    np.testing.assert_array_equal(load_cifar_n(tmp_path, name="cifar100"), d["noisy_label"])
    coarse = load_cifar_n(tmp_path, name="cifar-100n", label_key="noisy_coarse_label")
    assert coarse.dtype == np.int64
    np.testing.assert_array_equal(coarse, d["noisy_coarse_label"])


def test_cifar_n_unknown_key_and_missing_file(tmp_path):
    write_cifar10n(tmp_path / "CIFAR-10_human.pt", np.arange(20) % 10)
    with pytest.raises(ValueError) as exc:
        load_cifar_n(tmp_path, label_key="worst_label")
    msg = str(exc.value)
    assert "worst_label" in msg and all(k in msg for k in CIFAR10N_KEYS)
    with pytest.raises(FileNotFoundError, match="CIFAR-100_human.pt"):
        load_cifar_n(tmp_path, name="cifar100")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_cifar_n(tmp_path / "nope.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar_n(tmp_path / "list.pt")


def test_cifar_n_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"clean_label": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="evil.pt: refusing to load"):
        load_cifar_n(tmp_path / "evil.pt")


def test_truncated_cifar_n_file_names_the_file(tmp_path):
    write_cifar10n(tmp_path / "CIFAR-10_human.pt", np.arange(20) % 10)
    data = (tmp_path / "CIFAR-10_human.pt").read_bytes()
    (tmp_path / "CIFAR-10_human.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"CIFAR-10_human.pt: not a readable torch file, truncated or damaged"):
        load_cifar_n(tmp_path)


def test_cifar_n_legacy_format_and_old_numpy_module(tmp_path):
    d = {"clean_label": np.arange(10), "worse_label": np.arange(10)[::-1].copy()}
    buf = io.BytesIO()
    torch.save(d, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    # files written with numpy < 2 name numpy.core.multiarray._reconstruct
    old = raw.replace(
        b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct"
    )
    assert b"numpy.core.multiarray\n_reconstruct" in old
    (tmp_path / "CIFAR-10_human.pt").write_bytes(old)
    np.testing.assert_array_equal(load_cifar_n(tmp_path), d["worse_label"])


def test_human_noise_benchmark(cifar10_root, tmp_path):
    _, y_all = load_cifar("cifar10", cifar10_root)
    d = write_cifar10n(tmp_path / "n" / "CIFAR-10_human.pt", y_all)
    b = make_cifar_benchmark(
        "cifar10", cifar10_root, corruption="human", cifar_n_path=tmp_path / "n",
        label_key="random_label2", meta_size=10, random_state=0,
    )  # fmt: skip
    np.testing.assert_array_equal(b.y_train, d["random_label2"][b.train_indices])
    np.testing.assert_array_equal(b.y_meta, y_all[b.meta_indices])
    np.testing.assert_array_equal(b.noise_mask, b.y_train != b.y_train_clean)
    assert b.extra["label_key"] == "random_label2"
    # misaligned files are refused
    write_cifar10n(tmp_path / "bad" / "CIFAR-10_human.pt", (y_all + 1) % 10)
    with pytest.raises(ValueError, match="disagree"):
        make_cifar_benchmark(
            "cifar10", cifar10_root, corruption="human", cifar_n_path=tmp_path / "bad", meta_size=10
        )
    write_cifar10n(tmp_path / "short" / "CIFAR-10_human.pt", y_all[:50])
    with pytest.raises(ValueError, match="50 labels"):
        make_cifar_benchmark(
            "cifar10", cifar10_root, corruption="human", cifar_n_path=tmp_path / "short",
            meta_size=10,
        )
    with pytest.raises(ValueError, match="cifar_n_path"):
        make_cifar_benchmark("cifar10", cifar10_root, corruption="human", meta_size=10)


# --------------------------------------------------------------------------- Clothing1M
CLOTHING_NAMES = [
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
]  # fmt: skip


def write_clothing1m(root: Path, layout: str = "official", with_categories: bool = True) -> dict:
    """A tiny Clothing1M tree with real JPEGs.

    layout: "official" (root/images/a/bc/name.jpg, keys 'images/...'), "stripped" (keys
    and folders without 'images/'), "flat" (keys 'images/...' but every image directly in
    root/images/), "mixed" (label files with 'images/', key lists without).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    keys = [f"images/{i % 3}/{i % 7:02d}/{1000 + i},{i * 37}.jpg" for i in range(12)]
    noisy_labels = {k: (i * 5) % 14 for i, k in enumerate(keys)}
    clean_keys = keys[6:]
    clean_labels = {k: (i + 1) % 14 for i, k in enumerate(clean_keys)}
    for i, k in enumerate(keys):
        rel = k[len("images/") :]
        if layout == "official" or layout == "mixed":
            path = root / k
        elif layout == "stripped":
            path = root / rel
        else:  # flat
            path = root / "images" / rel.rsplit("/", 1)[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == 4:  # a grayscale JPEG, must come out RGB
            Image.fromarray(rng.randint(0, 256, (30, 40), dtype=np.uint8), "L").save(path, "JPEG")
        else:
            arr = rng.randint(0, 256, (30 + i, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path, "JPEG")

    def fmt(k, for_keys=False):
        if layout == "stripped" or (layout == "mixed" and for_keys):
            return k[len("images/") :]
        return k

    label_files = {"noisy_label_kv.txt": noisy_labels, "clean_label_kv.txt": clean_labels}
    for fname, labels in label_files.items():
        (root / fname).write_text("".join(f"{fmt(k)} {v}\n" for k, v in labels.items()))
    lists = {
        "noisy_train": keys[:6],
        "clean_train": clean_keys[:2],
        "clean_val": clean_keys[2:4],
        "clean_test": clean_keys[4:],
    }
    for split, ks in lists.items():
        (root / f"{split}_key_list.txt").write_text("".join(f"{fmt(k, True)}\n" for k in ks))
    if with_categories:
        (root / "category_names_eng.txt").write_text("\n".join(CLOTHING_NAMES) + "\n")
    return {"noisy": noisy_labels, "clean": clean_labels, "lists": lists}


@pytest.mark.parametrize("layout", ["official", "stripped", "flat", "mixed"])
def test_clothing1m_layouts(tmp_path, layout):
    info = write_clothing1m(tmp_path, layout)
    for split, ks in info["lists"].items():
        ds = Clothing1M(tmp_path, split=split, transform=None)
        labels = info["noisy"] if split == "noisy_train" else info["clean"]
        assert len(ds) == len(ks)
        assert ds.targets.dtype == np.int64
        assert ds.targets.tolist() == [labels[k] for k in ks]
        assert ds.keys == [k[len("images/") :] for k in ks]
        for i in range(len(ds)):
            x, y = ds[i]
            assert isinstance(y, int) and y == ds.targets[i]
            assert x.dtype == torch.float32 and x.shape[0] == 3 and x.shape[2] == 40
    assert ds.classes == CLOTHING_NAMES


def test_clothing1m_noisy_and_clean_labels_differ(tmp_path):
    info = write_clothing1m(tmp_path)
    noisy = Clothing1M(tmp_path, "noisy_train", transform=None)
    clean = Clothing1M(tmp_path, "clean_test", transform=None)
    assert noisy.targets.tolist() == [info["noisy"][k] for k in info["lists"]["noisy_train"]]
    assert clean.targets.tolist() == [info["clean"][k] for k in info["lists"]["clean_test"]]


def test_clothing1m_image_root_and_default_transforms(tmp_path):
    write_clothing1m(tmp_path / "imgs", "official")
    ann = tmp_path / "annotations"
    ann.mkdir()
    for f in (tmp_path / "imgs").glob("*.txt"):
        (ann / f.name).write_text(f.read_text())
    train = Clothing1M(ann, "noisy_train", image_root=tmp_path / "imgs")
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    x, y = train[4]  # the grayscale one
    assert x.shape == (3, 224, 224) and isinstance(y, int)
    val = Clothing1M(ann, "clean_val", image_root=tmp_path / "imgs")
    names = [type(t).__name__ for t in val.transform.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert val.transform.transforms[-1].mean == CLOTHING1M_MEAN
    assert val.transform.transforms[-1].std == CLOTHING1M_STD
    # eval transform values: constant image -> (c/255 - mean) / std
    const = Image.fromarray(np.full((300, 280, 3), 200, np.uint8))
    out = clothing1m_eval_transform()(const)
    expected = (200 / 255 - torch.tensor(CLOTHING1M_MEAN)) / torch.tensor(CLOTHING1M_STD)
    torch.testing.assert_close(out[:, 100, 100], expected)
    # callable transform receives an RGB PIL image; picklable; works in a DataLoader
    seen = Clothing1M(ann, "clean_test", transform=T.Compose([T.Resize((8, 8)), T.ToTensor()]),
                      image_root=tmp_path / "imgs")  # fmt: skip
    clone = pickle.loads(pickle.dumps(seen))
    xb, yb = next(iter(DataLoader(clone, batch_size=2)))
    assert xb.shape == (2, 3, 8, 8) and yb.tolist() == seen.targets[:2].tolist()


def test_clothing1m_category_fallback(tmp_path):
    write_clothing1m(tmp_path, with_categories=False)
    ds = Clothing1M(tmp_path, "clean_val", transform=None)
    assert len(ds.classes) == 14 and ds.classes[0] == "T-Shirt"


def test_clothing1m_missing_files(tmp_path):
    write_clothing1m(tmp_path)
    (tmp_path / "clean_label_kv.txt").unlink()
    Clothing1M(tmp_path, "noisy_train")  # does not need the clean labels
    with pytest.raises(FileNotFoundError, match="clean_label_kv.txt"):
        Clothing1M(tmp_path, "clean_val")
    (tmp_path / "noisy_train_key_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="noisy_train_key_list.txt"):
        Clothing1M(tmp_path, "noisy_train")
    with pytest.raises(ValueError, match="Unknown Clothing1M split 'train'"):
        Clothing1M(tmp_path, "train")
    with pytest.raises(ValueError, match="transform"):
        Clothing1M(tmp_path, "clean_test", transform="imagenet")


def test_clothing1m_missing_image(tmp_path):
    write_clothing1m(tmp_path)
    ds = Clothing1M(tmp_path, "noisy_train", transform=None)
    (tmp_path / "images" / ds.keys[2]).unlink()
    ds[1]
    with pytest.raises(FileNotFoundError, match=r"1002,74\.jpg"):
        ds[2]


@pytest.mark.parametrize(
    "content, match",
    [
        ("images/0/00/a.jpg 1\nimages/0/00/b.jpg 2\nimages/0/00/c.jpg 3 x\n", "line 3: expected"),
        ("images/0/00/a.jpg 1\n\nimages/0/00/b.jpg two\n", "line 3: label 'two' is not an integer"),
        ("images/0/00/a.jpg 14\n", "line 1: label 14 is outside"),
        ("images/0/00/a.jpg\n", "line 1: expected"),
    ],
)
def test_clothing1m_malformed_label_file(tmp_path, content, match):
    write_clothing1m(tmp_path)
    (tmp_path / "noisy_label_kv.txt").write_text(content)
    with pytest.raises(ValueError, match=match) as exc:
        Clothing1M(tmp_path, "noisy_train")
    assert "noisy_label_kv.txt" in str(exc.value)


def test_clothing1m_key_without_label(tmp_path):
    info = write_clothing1m(tmp_path)
    ks = info["lists"]["clean_val"]
    (tmp_path / "clean_val_key_list.txt").write_text(f"{ks[0]}\n{ks[1]}\nimages/9/99/unknown.jpg\n")
    with pytest.raises(ValueError) as exc:
        Clothing1M(tmp_path, "clean_val")
    msg = str(exc.value)
    assert "clean_val_key_list.txt, line 3" in msg and "unknown.jpg" in msg
    assert "clean_label_kv.txt" in msg
    (tmp_path / "clean_val_key_list.txt").write_text(f"{ks[0]} 3\n")
    with pytest.raises(ValueError, match=r"clean_val_key_list.txt, line 1: expected one image"):
        Clothing1M(tmp_path, "clean_val")


@pytest.mark.parametrize(
    "key", ["../secret.png", "images/../../secret.png", "/etc/hostname", "images\\..\\x.jpg", "C:/x.jpg"]
)
@pytest.mark.parametrize("fname", ["noisy_label_kv.txt", "noisy_train_key_list.txt"])
def test_clothing1m_keys_that_leave_the_root_are_refused(tmp_path, key, fname):
    info = write_clothing1m(tmp_path / "root")
    (tmp_path / "secret.png").write_bytes(b"not for you")
    first = info["lists"]["noisy_train"][0]
    if fname == "noisy_label_kv.txt":
        content = f"{first} 3\n{key} 1\n"
    else:
        content = f"{first}\n{key}\n"
        labels = (tmp_path / "root" / "noisy_label_kv.txt").read_text()
        (tmp_path / "root" / "noisy_label_kv.txt").write_text(labels + "x.jpg 1\n")
    (tmp_path / "root" / fname).write_text(content)
    with pytest.raises(ValueError) as exc:
        Clothing1M(tmp_path / "root", "noisy_train")
    assert f"{fname}, line 2: image path {key!r} leaves the data root" in str(exc.value)


@pytest.mark.parametrize("fname", ["clean_label_kv.txt", "clean_test_key_list.txt", "category_names_eng.txt"])
def test_clothing1m_non_utf8_file_names_file_and_line(tmp_path, fname):
    write_clothing1m(tmp_path)
    path = tmp_path / fname
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"images/0/00/caf\xe9.jpg 1\n"  # latin-1, not UTF-8
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=rf"{fname}, line 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        Clothing1M(tmp_path, "clean_test")


# ------------------------------------------------------------------ review fixes (2026-12-02)
@pytest.mark.parametrize("labels", [[0.9] * 20, [True, False] * 10, ["1"] * 20])
def test_cifar_labels_that_are_not_integers_are_refused(cifar10_root, labels):
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_1"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    entry[b"labels"] = labels
    _dump(entry, path)
    with pytest.raises(ValueError, match=r"data_batch_1, entry 'labels': expected a 1-D array of integer"):
        load_cifar("cifar10", cifar10_root, train=True)


def test_cifar_whole_float_labels_are_read(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    expected = list(entry[b"labels"])
    entry[b"labels"] = np.asarray(expected, dtype=np.float64)
    _dump(entry, path)
    _, y = load_cifar("cifar10", cifar10_root, train=False)
    assert y.dtype == np.int64 and y.tolist() == expected


def test_cifar_batch_written_at_pickle_protocol_5_loads(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    path.write_bytes(pickle.dumps(entry, protocol=5))  # numpy writes arrays through _frombuffer
    X, y = load_cifar("cifar10", cifar10_root, train=False)
    assert X.shape == (30, 32, 32, 3) and y.tolist() == list(entry[b"labels"])


def test_cifar_meta_file_with_the_wrong_number_of_names_is_refused(cifar10_root):
    _dump({b"label_names": [b"cat", b"dog", b"bird"]}, cifar10_root / "cifar-10-batches-py" / "batches.meta")
    with pytest.raises(ValueError, match=r"batches.meta: 3 class names under 'label_names', but CIFAR-10 has 10"):
        make_cifar_benchmark("cifar10", cifar10_root, corruption="uniform", meta_size=10, random_state=0)


def test_cifar_files_linked_from_outside_the_root_are_refused(tmp_path):
    write_cifar10(tmp_path / "elsewhere")
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-batches-py").symlink_to(tmp_path / "elsewhere" / "cifar-10-batches-py")
    with pytest.raises(ValueError, match=r"outside the data root .*pass the folder the files really are in as root"):
        load_cifar("cifar10", root, train=False)
    X, _ = load_cifar("cifar10", tmp_path / "elsewhere", train=False)  # the fix the message names
    assert len(X) == 30
    # a link inside the root stays allowed
    (root / "cifar-10-batches-py").unlink()
    write_cifar10(root / "real")
    (root / "cifar-10-batches-py").symlink_to(root / "real" / "cifar-10-batches-py")
    assert len(load_cifar("cifar10", root, train=False)[0]) == 30


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_cifar_n_labels_outside_the_classes_are_refused(tmp_path, bad):
    d = write_cifar10n(tmp_path / "CIFAR-10_human.pt", np.arange(100) % 10)
    d["worse_label"][3] = bad
    torch.save(d, tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(ValueError, match=rf"entry 'worse_label': 1 labels are outside \[0, 9\] \(the first is {bad} "):
        load_cifar_n(tmp_path / "CIFAR-10_human.pt", "cifar10")


def test_cifar100n_coarse_labels_have_20_classes_and_are_refused_by_the_benchmark(cifar100_root, tmp_path):
    fine = np.arange(200) % 100
    d = {"clean_label": fine, "noisy_label": fine.copy(), "clean_coarse_label": fine // 5,
         "noisy_coarse_label": fine // 5}
    torch.save(d, tmp_path / "CIFAR-100_human.pt")
    assert load_cifar_n(tmp_path / "CIFAR-100_human.pt", "cifar100", label_key="noisy_coarse_label").max() == 19
    with pytest.raises(ValueError, match=r"label_key='noisy_coarse_label' holds CIFAR-100N's 20 superclass"):
        make_cifar_benchmark("cifar100", cifar100_root, corruption="human", meta_size=100, random_state=0,
                             cifar_n_path=tmp_path / "CIFAR-100_human.pt", label_key="noisy_coarse_label")


def test_clothing1m_item_file_does_not_depend_on_reading_order(tmp_path):
    (tmp_path / "images" / "1").mkdir(parents=True)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "images" / "1" / "x.png")  # item 1's own file
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "images" / "x.png")  # an unrelated flat file
    Image.new("RGB", (4, 4), (0, 255, 0)).save(tmp_path / "images" / "y.png")  # item 0, only flat
    (tmp_path / "noisy_label_kv.txt").write_text("images/0/y.png 0\nimages/1/x.png 1\n")
    (tmp_path / "noisy_train_key_list.txt").write_text("images/0/y.png\nimages/1/x.png\n")
    alone = Clothing1M(tmp_path, transform=None).image_path(1)
    after = Clothing1M(tmp_path, transform=None)
    assert after.image_path(0) == tmp_path / "images" / "y.png"
    assert after.image_path(1) == alone == tmp_path / "images" / "1" / "x.png"


def test_clothing1m_images_linked_from_outside_the_root_are_refused(tmp_path):
    info = write_clothing1m(tmp_path / "real", "official")
    root = tmp_path / "root"
    root.mkdir()
    for f in (tmp_path / "real").glob("*.txt"):
        (root / f.name).write_text(f.read_text())
    (root / "images").symlink_to(tmp_path / "real" / "images")
    ds = Clothing1M(root, transform=None)
    with pytest.raises(ValueError, match=r"outside the data root .*pass image_root="):
        ds[0]
    ds = Clothing1M(root, transform=None, image_root=tmp_path / "real")  # the fix the message names
    assert ds[0][1] == info["noisy"][info["lists"]["noisy_train"][0]]
    (root / "noisy_label_kv.txt").unlink()
    (root / "noisy_label_kv.txt").symlink_to(tmp_path / "real" / "noisy_label_kv.txt")
    with pytest.raises(ValueError, match=r"noisy_label_kv.txt resolves to .*outside the data root"):
        Clothing1M(root, transform=None)
