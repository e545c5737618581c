"""Data plumbing for the estimators: datasets over in-memory arrays, the one batch iterator,
the meta-batch sampler, and the preparation of (X, y, meta) for ``fit``. No skorch training
logic, no bilevel math; input checks and the label encoder live in :mod:`mwnet_sk._validation`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from skorch.dataset import Dataset as SkorchDataset
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset
from torch.utils.data._utils.collate import default_collate

from ._validation import as_feature_tensor, check_labels, encode_labels

__all__ = [
    "ArrayDataset",
    "IndexedDataset",
    "BatchIterator",
    "MetaSampler",
    "FitData",
    "prepare_fit_data",
    "features_of",
    "dataset_targets",
    "is_array_like",
    "is_dataset",
]

# Keys of the internal batch dict: the model input and the sample's row number. Unusual names,
# so that a user's own dict input (a multi-input module) never collides with them.
INPUT_KEY = "__mwnet_input__"
INDEX_KEY = "__mwnet_sample_index__"


def is_dataset(obj) -> bool:
    return isinstance(obj, Dataset) and not isinstance(obj, torch.Tensor)


def is_array_like(obj) -> bool:
    """Array data we batch by indexing: arrays, tensors, DataFrames, nested lists, dicts of those."""
    if is_dataset(obj):
        return False
    if hasattr(obj, "toarray"):  # sparse (some sparse formats are Mappings): meets the clear refusal
        return True
    if isinstance(obj, Mapping):
        return len(obj) > 0 and all(is_array_like(v) for v in obj.values())
    return isinstance(obj, (np.ndarray, torch.Tensor, list, tuple)) or hasattr(obj, "__array__")


def _feature_names(X):
    """Column names of a DataFrame whose columns are all strings (scikit-learn's rule)."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "iloc"):
        return None
    names = np.asarray(columns, dtype=object)
    return names if len(names) and all(isinstance(c, str) for c in names) else None


def features_of(X, what: str = "X", *, keep_integers: bool = False):
    """The model input of array-like X: a tensor, or a dict of tensors for a multi-input module.

    Returns ``(features, n_rows, sample_shape, feature_names)``; ``sample_shape`` is a tuple
    (or a dict of tuples), ``feature_names`` the DataFrame's string columns or None.
    """
    if isinstance(X, Mapping) and not hasattr(X, "toarray"):
        features = {k: as_feature_tensor(v, f"{what}[{k!r}]", keep_integers=keep_integers) for k, v in X.items()}
        lengths = {len(v) for v in features.values()}
        if len(lengths) != 1:
            raise ValueError(f"the arrays of the dict {what} have different lengths: "
                             f"{ {k: len(v) for k, v in features.items()} }")
        return features, lengths.pop(), {k: tuple(v.shape[1:]) for k, v in features.items()}, None
    names = _feature_names(X)
    features = as_feature_tensor(X, what, keep_integers=keep_integers)
    return features, len(features), tuple(features.shape[1:]), names


def _take(features, index):
    if isinstance(features, dict):
        return {k: v[index] for k, v in features.items()}
    return features[index]


def _device_of(features):
    return next(iter(features.values())).device if isinstance(features, dict) else features.device


def _to(features, device):
    if isinstance(features, dict):
        return {k: v.to(device, non_blocking=True) for k, v in features.items()}
    return features.to(device, non_blocking=True)


def dataset_targets(dataset, what: str = "dataset") -> np.ndarray:
    """Labels of a torch Dataset of (x, y): its ``targets`` attribute, or one pass over it."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset, what)[np.asarray(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None and not isinstance(dataset, SkorchDataset):
        targets = getattr(dataset, "y", None)
    if targets is not None:
        targets = check_labels(targets, f"{what}.targets")
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
    return check_labels(np.asarray(labels), f"labels of {what}")


class ArrayDataset(SkorchDataset):
    """In-memory features with encoded labels and the user's row numbers.

    Batches are cut by tensor indexing (:meth:`batch`), never item by item. It is a skorch
    ``Dataset`` whose ``X`` and ``y`` are exactly its items' features and labels in the user's
    label space, so skorch's scoring callbacks read them like they read their own datasets.

    Parameters
    ----------
    X : torch.Tensor or dict of torch.Tensor
        Features of these items, first dimension = items.
    y : torch.Tensor of int64 or None
        Encoded labels (positions in ``classes``).
    rows : array-like of int or None
        The sample number of each item (its row in the user's X); default ``0..len-1``.
    labels : ndarray or None
        The labels in the user's label space (``classes[y]``), shown to callbacks as ``y``.
    """

    def __init__(self, X, y=None, rows=None, labels=None):
        # skorch's Dataset.__init__ converts and checks data; these tensors are ready already.
        self.X = X
        self.codes = y
        n = len(next(iter(X.values()))) if isinstance(X, dict) else len(X)
        self.rows = torch.arange(n) if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.long)
        if len(self.rows) != n:
            raise ValueError(f"{len(self.rows)} row numbers for {n} items")
        self.y = labels if labels is not None else (None if y is None else y.cpu().numpy())
        self._len = n

    def __len__(self):
        return self._len

    def __getitem__(self, i):
        x = {INPUT_KEY: _take(self.X, i), INDEX_KEY: int(self.rows[i])}
        return x, (self.codes[i] if self.codes is not None else torch.tensor(0))

    def to(self, device):
        self.X = _to(self.X, device)
        if self.codes is not None:
            self.codes = self.codes.to(device, non_blocking=True)
        return self

    def batch(self, positions: torch.Tensor):
        index = positions.to(_device_of(self.X))
        x = {INPUT_KEY: _take(self.X, index), INDEX_KEY: self.rows[positions]}
        y = self.codes[index.to(self.codes.device)] if self.codes is not None else torch.zeros(len(positions), dtype=torch.long)
        return x, y

    def subset(self, positions) -> ArrayDataset:
        """The items at ``positions`` as a new dataset (sharing nothing with this one)."""
        index = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        return ArrayDataset(
            _take(self.X, index.to(_device_of(self.X))),
            None if self.codes is None else self.codes[index.to(self.codes.device)],
            rows=self.rows[index],
            labels=None if self.y is None else np.asarray(self.y)[index.numpy()],
        )


class IndexedDataset(Dataset):
    """Wraps a user Dataset of (x, y): yields ({input: x, index: offset + row}, encoded y).

    ``offset`` numbers the rows of a second data set after the first one's (a meta Dataset
    trained on beside X: its row i is sample ``len(X) + i``). ``codes`` (encoded labels, one
    per row of ``dataset``) replace the labels the Dataset yields: the ``y`` passed to ``fit``
    beside a Dataset X.
    """

    def __init__(self, dataset, rows=None, label_map: dict | None = None, offset: int = 0, codes=None):
        self.dataset = dataset
        self.rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.label_map = label_map
        self.offset = int(offset)
        self.codes = None if codes is None else np.asarray(codes, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        x, y = self.dataset[row]
        if isinstance(x, np.ndarray):  # collates with tensor items (meta rows trained on beside it)
            x = torch.from_numpy(x)
        if self.codes is not None:
            return {INPUT_KEY: x, INDEX_KEY: self.offset + row}, int(self.codes[row])
        if isinstance(y, torch.Tensor):
            y = y.item()
        if self.label_map is not None:
            y = self.label_map[y]
        return {INPUT_KEY: x, INDEX_KEY: self.offset + row}, y


class _Shifted(Dataset):
    """An :class:`ArrayDataset` whose items report sample indices shifted by ``offset``, with
    plain int labels (so they collate with a user Dataset's items)."""

    def __init__(self, dataset: ArrayDataset, offset: int):
        self.dataset, self.offset = dataset, int(offset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return {**x, INDEX_KEY: x[INDEX_KEY] + self.offset}, int(y)


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


def merged_batch_bounds(n: int, batch_size: int, min_last: int = 1) -> list[tuple[int, int]]:
    """[start, stop) of each batch; a last batch of fewer than ``min_last`` items joins the one
    before it (a BatchNorm layer cannot normalise one item; in data-parallel training every
    process needs its share of the last batch)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_last:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class BatchIterator:
    """Batches of an in-memory :class:`ArrayDataset` by tensor indexing (no per-sample Python).

    When the dataset's tensors live on the GPU, so do the batches: no host-device copies.
    ``min_last`` folds a too-small last batch into the previous one; ``slicer`` maps the
    positions of each (global) batch to the part this process trains on.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, generator=None, drop_last=False,
                 min_last=1, slicer=None):
        base, positions = _resolve_rows(dataset)
        if base is None:
            raise TypeError("BatchIterator needs an ArrayDataset (or a Subset of one)")
        self.base, self.positions = base, positions
        self.batch_size = len(positions) if batch_size == -1 else int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.min_last = min_last
        self.slicer = slicer

    @staticmethod
    def supports(dataset) -> bool:
        return _resolve_rows(dataset)[0] is not None

    def _bounds(self):
        n = len(self.positions)
        if self.drop_last:
            return [(s, s + self.batch_size) for s in range(0, n - self.batch_size + 1, self.batch_size)]
        return merged_batch_bounds(n, self.batch_size, self.min_last)

    def __len__(self):
        return len(self._bounds())

    def __iter__(self):
        n = len(self.positions)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start, stop in self._bounds():
            chunk = order[start:stop]
            if self.slicer is not None:
                chunk = self.slicer(chunk)
            yield self.base.batch(self.positions[chunk])


class MergedBatchSampler(Sampler):
    """Batches of positions for a DataLoader, shuffled with ``generator``, with the last-batch
    rule and the per-process slicing of :class:`BatchIterator`."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator=None, min_last=1, slicer=None):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.min_last, self.slicer = min_last, slicer

    def __len__(self):
        return len(merged_batch_bounds(self.n, self.batch_size, self.min_last))

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start, stop in merged_batch_bounds(self.n, self.batch_size, self.min_last):
            chunk = order[start:stop]
            yield (chunk if self.slicer is None else self.slicer(chunk)).tolist()


class EpochSeededDataLoader(DataLoader):
    """A DataLoader whose own generator (the draw of its workers' base seed) is reseeded with
    ``epoch_seed()`` each time an epoch iterates it, so epoch k's workers are seeded the same
    whether the run got there in one go or resumed from a checkpoint."""

    def __init__(self, *args, epoch_seed, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_seed = epoch_seed

    def __iter__(self):
        self.generator.manual_seed(int(self._epoch_seed()))
        return super().__iter__()


class _MetaPositions(Sampler):
    """The batch sampler a meta DataLoader draws from: it asks the MetaSampler for positions.

    A class rather than a generator: it pickles with the DataLoader's workers' arguments and
    keeps no reference cycle alive after ``fit``."""

    def __init__(self, sampler: MetaSampler):
        self.sampler = sampler

    def __iter__(self):
        while True:
            self.sampler._pending.append(self.sampler._current_state())
            yield self.sampler._next_positions().tolist()


def _as_model_dtype(x):
    """Floating batches from a Dataset become float32, as floating arrays do."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype == torch.float64:
        return x.float()
    if isinstance(x, dict):
        return {k: _as_model_dtype(v) for k, v in x.items()}
    return x


def _worker_context():
    """The start method for meta loader workers: the platform's default, except inside a
    process whose default was replaced by a non-standard one. A joblib/loky worker of a
    parallel GridSearchCV sets "loky", whose Popen cannot start plain processes, and a
    spawned child cannot find that method; forking the worker works."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    if method in (None, "fork", "spawn", "forkserver") or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return "fork"


class MetaSampler:
    """Endless meta batches: shuffled passes over the meta set, one batch at a time.

    Its position (current permutation, offset, generator state) is a ``state_dict`` so that
    a resumed run draws exactly the meta batches the uninterrupted run would have drawn.

    A Dataset meta set (images decoded from files, say) can be loaded by DataLoader workers
    that prefetch ahead (``loader_kwargs={"num_workers": 4}``); the positions are still drawn
    here, and ``state_dict`` reports the position after the last batch actually consumed.
    :meth:`close` ends the workers (the estimator calls it when ``fit`` ends).

    ``slicer`` (used by data-parallel training) maps the positions of the global meta batch to
    the part this process loads. ``min_last`` folds a smaller last batch of a pass into the
    batch before it (see :func:`merged_batch_bounds`).
    """

    def __init__(self, source, batch_size: int, generator: torch.Generator, device, loader_kwargs=None,
                 slicer=None, min_last=1):
        self.source = source
        self.n = len(source)
        if self.n == 0:
            raise ValueError("the meta set is empty")
        self.batch_size = min(int(batch_size), self.n)
        self.generator = generator
        self.device = torch.device(device)
        self.order = None
        self.offset = 0
        self.slicer = slicer
        self.min_last = int(min_last)
        self._array = isinstance(source, ArrayDataset)
        self.loader_kwargs = dict(loader_kwargs or {})
        self._use_loader = not self._array and self.loader_kwargs.get("num_workers", 0) > 0
        self._loader = None
        self._loader_iter = None
        self._pending = deque()  # positions already handed to the loader but not consumed

    def _next_positions(self):
        if self.order is None or self.offset >= self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.offset = 0
        stop = self.offset + self.batch_size
        if 0 < self.n - stop < self.min_last:
            stop = self.n
        chunk = self.order[self.offset : stop]
        self.offset += len(chunk)
        return chunk if self.slicer is None else self.slicer(chunk)

    def _current_state(self):
        return {
            "order": None if self.order is None else self.order.clone(),
            "offset": self.offset,
            "generator": self.generator.get_state(),
        }

    def _loaded_batch(self):
        if self._loader_iter is None:
            kwargs = dict(self.loader_kwargs)
            if kwargs.get("num_workers", 0) > 0 and "multiprocessing_context" not in kwargs:
                kwargs["multiprocessing_context"] = _worker_context()
            self._loader = DataLoader(self.source, batch_sampler=_MetaPositions(self), **kwargs)
            self._loader_iter = iter(self._loader)
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
            if isinstance(x, dict) and INPUT_KEY in x:
                x = x[INPUT_KEY]
            x = _as_model_dtype(x)
        y = torch.as_tensor(y)
        return _to(x, self.device), y.to(self.device, non_blocking=True)

    def close(self):
        """End the loader's worker processes (prefetched batches are dropped; the position
        stays that of the last batch consumed)."""
        iterator, self._loader_iter, self._loader = self._loader_iter, None, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        if iterator is not None:
            state = self.state_dict()
            self._pending.clear()
            self.load_state_dict(state)

    def state_dict(self):
        return self._pending[0] if self._pending else self._current_state()

    def load_state_dict(self, state):
        iterator, self._loader_iter, self._loader = self._loader_iter, None, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # prefetched batches belong to the old position
        self._pending.clear()
        self.generator.set_state(state["generator"])
        if state["order"] is not None and len(state["order"]) != self.n:
            # a permutation of another meta set (partial_fit with a meta set of another size): the
            # random stream carries on, the next batch starts a permutation of this meta set
            self.order, self.offset = None, 0
            return
        self.order = None if state["order"] is None else state["order"].clone()
        self.offset = int(state["offset"])


@dataclass
class FitData:
    """Everything ``fit`` derives from (X, y, meta) before training."""

    train: Dataset
    y_train: np.ndarray  # encoded labels of the training items (for stratified splits)
    meta: Dataset | None
    y_meta: np.ndarray | None  # encoded labels of the meta items (None without a meta set)
    n_rows: int  # rows of X
    classes: np.ndarray
    train_rows: np.ndarray  # the X row of each training item (-1 for appended meta items)
    sample_shape: object = None  # per-sample shape of array inputs (dict for dict inputs; None for Datasets)
    feature_names: np.ndarray | None = None
    # Sample indices the training batches can carry: n_rows, plus the meta set's size when a
    # separate meta set (pair or Dataset) is trained on too (its rows numbered after X's).
    n_samples: int | None = None
    _hash_parts: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.n_samples is None:
            self.n_samples = self.n_rows

    def fingerprint(self) -> str:
        """A digest of the training and meta data (features, labels, classes, which rows are
        which): two fits on other data or another cross-validation fold differ."""
        digest = hashlib.sha256()
        for part in self._hash_parts:
            _hash_into(digest, part)
        return digest.hexdigest()


def _hash_into(digest, obj):
    if isinstance(obj, dict):
        for key in sorted(obj):
            digest.update(str(key).encode())
            _hash_into(digest, obj[key])
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray) and obj.dtype != object and obj.dtype.kind not in "US":
        digest.update(f"{obj.dtype}{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
    else:
        digest.update(repr(obj if not isinstance(obj, np.ndarray) else obj.tolist()).encode())


def _is_meta_pair(meta) -> bool:
    if not isinstance(meta, (tuple, list)) or len(meta) != 2:
        return False
    return all(is_dataset(m) or isinstance(m, (torch.Tensor, Mapping)) or np.asarray(m, dtype=object).ndim >= 1
               for m in meta)


def _meta_rows(meta, n_rows: int) -> np.ndarray:
    if isinstance(meta, (tuple, list)) and any(np.ndim(m) >= 1 or is_dataset(m) for m in meta):
        raise ValueError(
            f"meta must be a pair (X_meta, y_meta), a torch Dataset, or a 1-d mask / index array over the rows of "
            f"X; got a {type(meta).__name__} of {len(meta)} arrays: pass exactly (X_meta, y_meta)"
        )
    arr = np.asarray(meta.detach().cpu() if isinstance(meta, torch.Tensor) else meta)
    if arr.ndim != 1:
        raise ValueError(
            "meta must be a pair (X_meta, y_meta), a torch Dataset, or a 1-d boolean mask / "
            f"integer index array over the rows of X; got an array of shape {arr.shape}"
        )
    if arr.dtype == bool:
        if len(arr) != n_rows:
            raise ValueError(f"the boolean meta mask has length {len(arr)} but X has {n_rows} rows")
        return np.flatnonzero(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a meta index array must hold integers (or be a boolean mask), got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_rows):
        raise ValueError(f"meta index array has indices outside [0, {n_rows}) for X with {n_rows} rows")
    if len(np.unique(arr)) != len(arr):
        if len(arr) == n_rows and np.isin(arr, (0, 1)).all():
            raise ValueError("meta is an integer array of 0s and 1s over the rows of X, read as row indices (with "
                             "repeats); for a mask pass booleans: meta=mask.astype(bool)")
        raise ValueError("meta index array contains repeated indices")
    return arr


def _label_map(classes):
    if np.array_equal(classes, np.arange(len(classes))):
        return None
    return {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}


def prepare_fit_data(X, y, meta, classes=None, *, train_on_meta=False, keep_integers=False,
                     meta_required=True) -> FitData:
    """Validate (X, y, meta), encode labels and build the train and meta datasets.

    Parameters
    ----------
    X, y, meta
        As :meth:`MetaWeightClassifier.fit` takes them.
    classes : array-like or None
        Fixes the label set and its order (a ``classes=`` parameter, or ``partial_fit`` after
        a first fit); otherwise the sorted labels of the training rows.
    train_on_meta : bool
        Keep the meta rows in the training set (a mask's rows stay; a separate meta set's
        rows are appended, numbered after X's rows).
    keep_integers : bool
        Keep integer features as they are (uint8 images a ``batch_transform`` scales).
    meta_required : bool
        Whether a meta set must be given (False for a fixed weighting function and for
        plain training).
    """
    if is_dataset(X):
        n_rows = len(X)
        labels = dataset_targets(X, "X") if y is None else check_labels(y, "y")
        features = sample_shape = names = None
    else:
        if y is None:
            raise ValueError(
                "this estimator requires y to be passed, but the target y is None (only a torch Dataset X "
                "carries its own labels)"
            )
        if not is_array_like(X):
            raise TypeError(f"X must be array-like (array, tensor, DataFrame, dict of arrays) or a torch "
                            f"Dataset, got {type(X).__name__}")
        features, n_rows, sample_shape, names = features_of(X, "X", keep_integers=keep_integers)
        labels = check_labels(y, "y")
    if len(labels) != n_rows:
        raise ValueError(f"X has {n_rows} samples but y has {len(labels)} labels")
    if n_rows == 0:
        raise ValueError("X is empty: 0 samples")

    meta_rows = None
    if meta is None:
        if meta_required:
            raise ValueError(
                "fit requires a clean meta set: fit(X, y, meta=(X_meta, y_meta)), meta=<torch Dataset>, "
                "or meta=<boolean mask / index array over the rows of X>"
            )
        meta_kind = None
    elif is_dataset(meta):
        meta_kind = "dataset"
    elif _is_meta_pair(meta):
        meta_kind = "pair"
    else:
        meta_kind = "rows"
        meta_rows = _meta_rows(meta, n_rows)
        if len(meta_rows) == 0:
            raise ValueError("the meta mask / index array selects no rows: the meta set is empty")
        if len(meta_rows) == n_rows and not train_on_meta:
            raise ValueError("the meta mask selects every row of X: nothing is left to train on")
    held_out = np.arange(n_rows) if meta_rows is None else np.setdiff1d(np.arange(n_rows), meta_rows)
    train_rows = np.arange(n_rows) if (meta_rows is None or train_on_meta) else held_out

    if classes is None:
        classes = np.unique(labels[held_out] if len(held_out) else labels)
    classes = np.asarray(classes)
    if len(classes) < 2:
        raise ValueError(
            f"the training labels contain 1 class ({classes[0]!r}); a classifier needs at least two"
            if len(classes) else "there are no classes: y is empty"
        )
    codes = encode_labels(labels, classes, "y")
    label_map = _label_map(classes)

    def rows_of_X(rows):
        """The rows of X as a dataset: tensor-indexed for arrays, item by item otherwise."""
        if features is None:
            # a y given beside a Dataset X is what the model trains on (e.g. noisy labels)
            return IndexedDataset(X, rows=rows, label_map=label_map, codes=None if y is None else codes)
        return ArrayDataset(_take(features, torch.from_numpy(rows)), torch.from_numpy(codes[rows]), rows=rows,
                            labels=labels[rows])

    train = rows_of_X(train_rows)
    y_train = codes[train_rows]
    n_samples = n_rows
    hash_parts = [{"X": features if features is not None else (type(X).__name__, len(X)),
                   "codes": codes, "classes": classes, "train_rows": train_rows}]

    meta_ds = meta_codes = None
    if meta_kind == "rows":
        hash_parts.append({"meta_rows": meta_rows})
        meta_ds = rows_of_X(meta_rows)
        meta_codes = codes[meta_rows]
    elif meta_kind == "pair":
        X_meta, y_meta = meta
        if is_dataset(X_meta):
            raise TypeError("pass a meta Dataset directly as meta=dataset, not inside a pair")
        Xm, n_meta, meta_shape, meta_names = features_of(X_meta, "X_meta", keep_integers=keep_integers)
        if names is not None and meta_names is not None and list(meta_names) != list(names):
            raise ValueError(
                f"X_meta's columns {list(meta_names)} are not X's {list(names)} in the same order: the meta rows "
                "would be read with misaligned features; pass X_meta[X.columns]"
            )
        ym = check_labels(y_meta, "y_meta")
        if n_meta != len(ym):
            raise ValueError(f"X_meta has {n_meta} samples but y_meta has {len(ym)} labels")
        if n_meta == 0:
            raise ValueError("the meta set (X_meta, y_meta) is empty")
        shape = sample_shape if features is not None else _item_shape(X)
        if shape is not None and meta_shape != shape:
            raise ValueError(f"meta features have shape {meta_shape} per sample but X has {shape}")
        meta_codes = encode_labels(ym, classes, "y_meta")
        hash_parts.append({"X_meta": Xm, "meta_codes": meta_codes})
        meta_ds = ArrayDataset(Xm, torch.from_numpy(meta_codes), labels=ym)
        if train_on_meta:
            n_samples = n_rows + n_meta
            y_train = np.concatenate([y_train, meta_codes])
            train_rows = np.concatenate([train_rows, np.full(n_meta, -1)])
            meta_ds = ArrayDataset(Xm, torch.from_numpy(meta_codes), rows=np.arange(n_rows, n_samples), labels=ym)
            if isinstance(train, ArrayDataset) and _same_layout(train.X, Xm):
                # one tensor holds both, so batches stay tensor-indexed
                train = ArrayDataset(
                    _cat(train.X, Xm), torch.cat([train.codes, meta_ds.codes]),
                    rows=torch.cat([train.rows, meta_ds.rows]), labels=np.concatenate([train.y, ym]),
                )
            else:
                train = ConcatDataset([train, _Shifted(ArrayDataset(Xm, meta_ds.codes, labels=ym), n_rows)])
    elif meta_kind == "dataset":
        if len(meta) == 0:
            raise ValueError("the meta Dataset is empty")
        meta_labels = dataset_targets(meta, "meta")
        meta_codes = encode_labels(meta_labels, classes, "the meta set's labels")
        hash_parts.append({"meta": (type(meta).__name__, len(meta)), "meta_codes": meta_codes})
        meta_ds = IndexedDataset(meta, label_map=label_map)
        if train_on_meta:
            n_samples = n_rows + len(meta)
            y_train = np.concatenate([y_train, meta_codes])
            train_rows = np.concatenate([train_rows, np.full(len(meta), -1)])
            # items of both parts must collate together: plain int labels on both sides
            first = _Shifted(train, 0) if isinstance(train, ArrayDataset) else train
            train = ConcatDataset([first, IndexedDataset(meta, label_map=label_map, offset=n_rows)])

    return FitData(
        train=train,
        y_train=y_train,
        meta=meta_ds,
        y_meta=meta_codes,
        n_rows=n_rows,
        classes=classes,
        train_rows=train_rows,
        sample_shape=sample_shape,
        feature_names=names,
        n_samples=n_samples,
        _hash_parts=hash_parts,
    )


def _same_layout(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            a[k].dtype == b[k].dtype for k in a)
    return a.dtype == b.dtype


def _cat(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def _item_shape(dataset):
    try:
        x = dataset[0][0]
    except Exception:  # a dataset we cannot peek into: no shape check
        return None
    return tuple(x.shape) if hasattr(x, "shape") else None


