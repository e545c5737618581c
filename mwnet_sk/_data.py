"""Data plumbing for the estimator: input checks, label encoding, indexed datasets,
a batched in-memory iterator and the meta-batch sampler. No skorch, no bilevel math."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

__all__ = [
    "ArrayDataset",
    "IndexedDataset",
    "BatchIterator",
    "MetaSampler",
    "FitData",
    "prepare_fit_data",
    "dataset_targets",
    "is_array_like",
]

INDEX_KEY = "sample_index"
INPUT_KEY = "x"


def is_array_like(obj) -> bool:
    return isinstance(obj, (np.ndarray, torch.Tensor)) or (
        hasattr(obj, "__array__") and not isinstance(obj, Dataset)
    )


def _as_tensor(X, what: str) -> torch.Tensor:
    """X as a tensor; floating data become float32 (what modules expect)."""
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"{what} is a sparse matrix; sparse input is not supported, pass a dense array (X.toarray())"
        )
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        arr = np.asarray(X)
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{what} has dtype object and could not be converted to numbers: {exc}") from exc
        if np.iscomplexobj(arr):
            raise ValueError(f"Complex data not supported: {what} holds complex numbers")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    if t.ndim == 0:
        raise ValueError(f"{what} must have at least one dimension, got a scalar")
    if t.ndim == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead for {what}: Reshape your data either using "
            "X.reshape(-1, 1) if your data has a single feature or X.reshape(1, -1) if it contains "
            "a single sample."
        )
    if t.ndim >= 2 and t.shape[1] == 0:
        raise ValueError(f"{what} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).sum())
        raise ValueError(f"{what} contains NaN or infinite values (in {bad} rows)")
    return t


def _labels_1d(y, what: str) -> np.ndarray:
    from sklearn.utils.multiclass import check_classification_targets

    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        from sklearn.utils.validation import column_or_1d

        arr = column_or_1d(arr, warn=True)  # DataConversionWarning, as in scikit-learn
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-dimensional class labels, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if arr.dtype == object:
        arr = arr.astype(str) if all(isinstance(v, str) for v in arr) else arr
    if len(arr):
        check_classification_targets(arr)  # "Unknown label type: continuous" for regression targets
    return arr


def dataset_targets(dataset, what: str = "dataset") -> np.ndarray:
    """Labels of a torch Dataset of (x, y): its ``targets`` attribute, or one pass over it."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset, what)[np.asarray(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "y", None)
    if targets is not None:
        targets = _labels_1d(targets, f"{what}.targets")
        if len(targets) != len(dataset):
            raise ValueError(
                f"{what}.targets has {len(targets)} labels but the dataset has {len(dataset)} samples"
            )
        return targets
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{what} must yield (x, y) pairs; item {i} is {type(item).__name__}")
        label = item[1]
        labels.append(label.item() if isinstance(label, torch.Tensor) else label)
    return _labels_1d(np.asarray(labels), f"labels of {what}")


class ArrayDataset(Dataset):
    """In-memory tensors with the user's row numbers, batch-indexable without Python loops."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None = None, rows=None):
        self.X = X
        self.y = y
        self.rows = torch.arange(len(X)) if rows is None else torch.as_tensor(rows, dtype=torch.long)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        x = {INPUT_KEY: self.X[row], INDEX_KEY: row}
        return x, (self.y[row] if self.y is not None else torch.tensor(0))

    def to(self, device):
        self.X = self.X.to(device, non_blocking=True)
        if self.y is not None:
            self.y = self.y.to(device, non_blocking=True)
        return self

    def batch(self, positions: torch.Tensor):
        rows = self.rows[positions]
        dev_rows = rows.to(self.X.device)
        x = {INPUT_KEY: self.X[dev_rows], INDEX_KEY: rows}
        y = self.y[dev_rows] if self.y is not None else torch.zeros(len(rows), dtype=torch.long)
        return x, y


class IndexedDataset(Dataset):
    """Wraps a user Dataset of (x, y): yields ({"x": x, "sample_index": offset + row}, encoded y).

    ``offset`` numbers the rows of a second data set after the first one's (a meta Dataset
    trained on beside X: its row i is sample ``len(X) + i``).
    """

    def __init__(self, dataset, rows=None, label_map: dict | None = None, offset: int = 0):
        self.dataset = dataset
        self.rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.label_map = label_map
        self.offset = int(offset)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        x, y = self.dataset[row]
        if isinstance(y, torch.Tensor):
            y = y.item()
        if self.label_map is not None:
            y = self.label_map[y]
        return {INPUT_KEY: x, INDEX_KEY: self.offset + row}, y


def _resolve_rows(dataset):
    """(base ArrayDataset, positions into it) for an ArrayDataset possibly wrapped in Subsets."""
    positions = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(np.asarray(dataset.indices), dtype=torch.long)
        positions = idx if positions is None else idx[positions]
        dataset = dataset.dataset
    if not isinstance(dataset, ArrayDataset):
        return None, None
    if positions is None:
        positions = torch.arange(len(dataset))
    return dataset, positions


class BatchIterator:
    """Batches of an in-memory :class:`ArrayDataset` by tensor indexing (no per-sample Python).

    When the dataset's tensors live on the GPU, so do the batches: no host-device copies.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, generator=None, drop_last=False):
        base, positions = _resolve_rows(dataset)
        if base is None:
            raise TypeError("BatchIterator needs an ArrayDataset (or a Subset of one)")
        self.base, self.positions = base, positions
        self.batch_size = len(positions) if batch_size == -1 else int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last

    @staticmethod
    def supports(dataset) -> bool:
        return _resolve_rows(dataset)[0] is not None

    def __len__(self):
        n = len(self.positions)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.positions)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            chunk = order[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield self.base.batch(self.positions[chunk])


class MetaSampler:
    """Endless meta batches: shuffled passes over the meta set, one batch at a time.

    Its position (current permutation, offset, generator state) is a ``state_dict`` so that
    a resumed run draws exactly the meta batches the uninterrupted run would have drawn.

    A Dataset meta set (images decoded from files, say) can be loaded by DataLoader workers
    that prefetch ahead (``loader_kwargs={"num_workers": 4}``); the positions are still drawn
    here, and ``state_dict`` reports the position after the last batch actually consumed.
    """

    def __init__(self, source, batch_size: int, generator: torch.Generator, device, loader_kwargs=None):
        self.source = source
        self.n = len(source)
        if self.n == 0:
            raise ValueError("the meta set is empty")
        self.batch_size = min(int(batch_size), self.n)
        self.generator = generator
        self.device = torch.device(device)
        self.order = None
        self.offset = 0
        self._array = isinstance(source, ArrayDataset)
        self.loader_kwargs = dict(loader_kwargs or {})
        self._use_loader = not self._array and self.loader_kwargs.get("num_workers", 0) > 0
        self._loader_iter = None
        self._pending = deque()  # positions already handed to the loader but not consumed

    def _next_positions(self):
        if self.order is None or self.offset >= self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.offset = 0
        chunk = self.order[self.offset : self.offset + self.batch_size]
        self.offset += len(chunk)
        return chunk

    def _current_state(self):
        return {
            "order": None if self.order is None else self.order.clone(),
            "offset": self.offset,
            "generator": self.generator.get_state(),
        }

    def _positions_forever(self):
        while True:
            self._pending.append(self._current_state())
            yield self._next_positions().tolist()

    def _loaded_batch(self):
        if self._loader_iter is None:
            loader = DataLoader(self.source, batch_sampler=self._positions_forever(), **self.loader_kwargs)
            self._loader_iter = iter(loader)
        batch = next(self._loader_iter)
        self._pending.popleft()
        return batch

    def next(self):
        if self._array:
            x, y = self.source.batch(self._next_positions())
            x = x[INPUT_KEY]
        else:
            if self._use_loader:
                x, y = self._loaded_batch()
            else:
                x, y = default_collate([self.source[int(i)] for i in self._next_positions()])
            if isinstance(x, dict):
                x = x[INPUT_KEY]
        y = torch.as_tensor(y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self):
        return self._pending[0] if self._pending else self._current_state()

    def load_state_dict(self, state):
        self._loader_iter = None  # prefetched batches belong to the old position
        self._pending.clear()
        self.order = None if state["order"] is None else state["order"].clone()
        self.offset = int(state["offset"])
        self.generator.set_state(state["generator"])


@dataclass
class FitData:
    """Everything ``fit`` derives from (X, y, meta) before training."""

    train: Dataset
    y_train: np.ndarray  # encoded labels of the training rows (for stratified splits)
    meta: Dataset
    n_rows: int  # rows of X
    classes: np.ndarray
    sample_shape: tuple | None = None  # per-sample shape of array inputs (None for Datasets)
    # Sample indices the training batches can carry: n_rows, plus the meta set's size when a
    # separate meta set (pair or Dataset) is trained on too (its rows numbered after X's).
    n_samples: int | None = None

    def __post_init__(self):
        if self.n_samples is None:
            self.n_samples = self.n_rows


def _is_meta_pair(meta) -> bool:
    if not isinstance(meta, (tuple, list)) or len(meta) != 2:
        return False
    return all(isinstance(m, (Dataset, torch.Tensor)) or np.asarray(m).ndim >= 1 for m in meta)


def _encode(labels: np.ndarray, classes: np.ndarray, what: str) -> np.ndarray:
    codes = np.searchsorted(classes, labels)
    codes = np.clip(codes, 0, len(classes) - 1)
    unknown = classes[codes] != labels
    if np.any(unknown):
        bad = np.unique(labels[unknown])[:10]
        raise ValueError(
            f"{what} contains labels not among the training classes {list(classes)[:20]}: {list(bad)}"
        )
    return codes.astype(np.int64)


def _meta_rows(meta, n_rows: int) -> np.ndarray:
    arr = np.asarray(meta.detach().cpu() if isinstance(meta, torch.Tensor) else meta)
    if arr.ndim != 1:
        raise ValueError(
            "meta must be a pair (X_meta, y_meta), a torch Dataset, or a 1-d boolean mask / "
            f"integer index array over the rows of X; got an array of shape {arr.shape}"
        )
    if arr.dtype == bool:
        if len(arr) != n_rows:
            raise ValueError(
                f"the boolean meta mask has length {len(arr)} but X has {n_rows} rows"
            )
        return np.flatnonzero(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"a meta index array must hold integers (or be a boolean mask), got dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_rows):
        raise ValueError(
            f"meta index array has indices outside [0, {n_rows}) for X with {n_rows} rows"
        )
    if len(np.unique(arr)) != len(arr):
        raise ValueError("meta index array contains repeated indices")
    return arr


def prepare_fit_data(X, y, meta, classes=None, train_on_meta=False) -> FitData:
    """Validate (X, y, meta), encode labels and build the train and meta datasets.

    ``classes`` fixes the label set (``partial_fit`` after a first fit); otherwise the classes
    are those present in y. ``train_on_meta`` keeps the meta rows in the training set too (a
    mask's rows stay; a separate meta set's rows are appended, numbered after X's rows).
    """
    x_is_dataset = isinstance(X, Dataset) and not isinstance(X, torch.Tensor)
    if x_is_dataset:
        n_rows = len(X)
        labels = dataset_targets(X, "X") if y is None else _labels_1d(y, "y")
        X_t = None
    else:
        if y is None:
            raise ValueError(
                "MetaWeightClassifier requires y to be passed, but the target y is None "
                "(only a torch Dataset X carries its own labels)"
            )
        X_t = _as_tensor(X, "X")
        n_rows = len(X_t)
        labels = _labels_1d(y, "y")
    if len(labels) != n_rows:
        raise ValueError(f"X has {n_rows} samples but y has {len(labels)} labels")
    if n_rows == 0:
        raise ValueError("X is empty: 0 samples")
    if n_rows == 1:
        raise ValueError("X has n_samples=1: one sample cannot be split into training rows and a meta set")

    if meta is None:
        raise ValueError(
            "fit requires a clean meta set: fit(X, y, meta=(X_meta, y_meta)), meta=<torch Dataset>, "
            "or meta=<boolean mask / index array over the rows of X>"
        )

    # The meta set first: with a mask, its rows leave the training set.
    meta_rows = None
    if isinstance(meta, Dataset) and not isinstance(meta, torch.Tensor):
        meta_kind = "dataset"
    elif _is_meta_pair(meta):
        meta_kind = "pair"
    else:
        meta_kind = "rows"
        meta_rows = _meta_rows(meta, n_rows)
        if len(meta_rows) == 0:
            raise ValueError("the meta mask / index array selects no rows: the meta set is empty")
        if len(meta_rows) == n_rows:
            raise ValueError("the meta mask selects every row of X: nothing is left to train on")
    train_rows = (
        np.arange(n_rows)
        if meta_rows is None or train_on_meta
        else np.setdiff1d(np.arange(n_rows), meta_rows)
    )

    if classes is None:
        classes = np.unique(labels[train_rows if meta_rows is None else np.setdiff1d(np.arange(n_rows), meta_rows)])
    classes = np.asarray(classes)
    if len(classes) < 2:
        raise ValueError(
            f"the training labels contain a single class ({classes[0]!r}); a classifier needs at least two"
        )
    codes = _encode(labels, classes, "y")

    if x_is_dataset:
        identity = np.array_equal(classes, np.arange(len(classes)))
        label_map = None if identity else {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
        train = IndexedDataset(X, rows=train_rows, label_map=label_map)
    else:
        y_t = torch.from_numpy(codes)
        train = ArrayDataset(X_t, y_t, rows=train_rows)

    y_train = codes[train_rows]
    n_samples = n_rows
    if meta_kind == "rows":
        meta_ds = (
            ArrayDataset(train.X, train.y, rows=meta_rows)
            if not x_is_dataset
            else IndexedDataset(X, rows=meta_rows, label_map=train.label_map)
        )
    elif meta_kind == "pair":
        X_meta, y_meta = meta
        if isinstance(X_meta, Dataset) and not isinstance(X_meta, torch.Tensor):
            raise TypeError("pass a meta Dataset directly as meta=dataset, not inside a pair")
        Xm = _as_tensor(X_meta, "X_meta")
        ym = _labels_1d(y_meta, "y_meta")
        if len(Xm) != len(ym):
            raise ValueError(f"X_meta has {len(Xm)} samples but y_meta has {len(ym)} labels")
        if len(Xm) == 0:
            raise ValueError("the meta set (X_meta, y_meta) is empty")
        sample_shape = tuple(X_t.shape[1:]) if X_t is not None else _item_shape(X)
        if sample_shape is not None and tuple(Xm.shape[1:]) != sample_shape:
            raise ValueError(
                f"meta features have shape {tuple(Xm.shape[1:])} per sample but X has {sample_shape}"
            )
        meta_codes = _encode(ym, classes, "y_meta")
        meta_ds = ArrayDataset(Xm, torch.from_numpy(meta_codes))
        if train_on_meta:
            n_samples = n_rows + len(Xm)
            y_train = np.concatenate([y_train, meta_codes])
            if isinstance(train, ArrayDataset) and Xm.dtype == train.X.dtype:
                # one tensor holds both, so batches stay tensor-indexed
                X_all = torch.cat([train.X, Xm])
                y_all = torch.cat([train.y, meta_ds.y])
                all_rows = np.concatenate([train_rows, np.arange(n_rows, n_samples)])
                train = ArrayDataset(X_all, y_all, rows=all_rows)
                meta_ds = ArrayDataset(X_all, y_all, rows=np.arange(n_rows, n_samples))
            else:
                train = ConcatDataset([train, _Shifted(meta_ds, n_rows)])
    else:
        if len(meta) == 0:
            raise ValueError("the meta Dataset is empty")
        meta_labels = dataset_targets(meta, "meta")
        _encode(meta_labels, classes, "the meta set")
        identity = np.array_equal(classes, np.arange(len(classes)))
        label_map = None if identity else {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
        meta_ds = IndexedDataset(meta, label_map=label_map)
        if train_on_meta:
            n_samples = n_rows + len(meta)
            y_train = np.concatenate([y_train, _encode(meta_labels, classes, "the meta set")])
            # items of both parts must collate together: plain int labels on both sides
            first = _Shifted(train, 0) if isinstance(train, ArrayDataset) else train
            train = ConcatDataset([first, IndexedDataset(meta, label_map=label_map, offset=n_rows)])

    return FitData(
        train=train,
        y_train=y_train,
        meta=meta_ds,
        n_rows=n_rows,
        classes=classes,
        sample_shape=None if X_t is None else tuple(X_t.shape[1:]),
        n_samples=n_samples,
    )


class _Shifted(Dataset):
    """An :class:`ArrayDataset` whose items report sample indices shifted by ``offset``
    (meta rows trained on beside a Dataset X: they are numbered after X's rows)."""

    def __init__(self, dataset: ArrayDataset, offset: int):
        self.dataset, self.offset = dataset, int(offset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return {**x, INDEX_KEY: x[INDEX_KEY] + self.offset}, int(y)


def _item_shape(dataset):
    try:
        x = dataset[0][0]
    except Exception:  # a dataset we cannot peek into: no shape check
        return None
    return tuple(x.shape) if hasattr(x, "shape") else None


def check_sample_shape(shape, expected, estimator_name: str, what: str = "X"):
    """sklearn-style error when an array's per-sample shape differs from the one fitted on."""
    if expected is None or shape is None or tuple(shape) == tuple(expected):
        return
    if len(shape) == 1 and len(expected) == 1:
        raise ValueError(
            f"{what} has {shape[0]} features, but {estimator_name} is expecting {expected[0]} features as input."
        )
    raise ValueError(f"{what} has per-sample shape {tuple(shape)}, but {estimator_name} was fitted on {tuple(expected)}.")


def check_batch_size(value, name):
    if not isinstance(value, Integral) or isinstance(value, bool) or (value < 1 and value != -1):
        raise ValueError(f"{name} must be a positive integer (or -1 for the whole set), got {value!r}")
    return int(value)
