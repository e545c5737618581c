"""The machinery shared by the estimators that fit with a clean meta set: skorch's
``NeuralNetClassifier`` hooks for data (the meta-set forms, label encoding, fast batches,
feature names), the training state, what callbacks see, prediction, and persistence.

:class:`~mwnet_sk.MetaWeightClassifier` adds the Meta-Weight-Net step on top;
:class:`~mwnet_sk.baselines.PlainClassifier` adds a plain step.
"""

from __future__ import annotations

import contextlib
import copy
import random
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Checkpoint as SkorchCheckpoint
from skorch.callbacks import EpochScoring, EpochTimer, PassthroughScoring, PrintLog
from skorch.callbacks import LoadInitState as SkorchLoadInitState
from skorch.callbacks import ProgressBar
from skorch.callbacks import TrainEndCheckpoint as SkorchTrainEndCheckpoint
from skorch.dataset import Dataset as SkorchDataset
from skorch.exceptions import SkorchTrainingImpossibleError
from skorch.utils import to_device, to_numpy
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from torch.utils.data import DataLoader, Subset

from ._data import (
    INDEX_KEY,
    INPUT_KEY,
    ArrayDataset,
    BatchIterator,
    EpochSeededDataLoader,
    MergedBatchSampler,
    _as_model_dtype,
    _feature_names,
    features_of,
    is_array_like,
    is_dataset,
    prepare_fit_data,
)
from ._distributed import global_batch_norm, join_launched_group, shard_slicer
from ._state import TrainingState
from .callbacks import FinitePassthroughScoring
from ._validation import check_classes, check_sample_shape, validate_params
from .core.bilevel import PRECISIONS, NonFiniteError, _n_items
from .core.prior import class_prior, logit_shift

__all__ = ["MetaSetClassifier", "TrainingDivergedError"]


class TrainingDivergedError(FloatingPointError):
    """A loss, weight or gradient became NaN/inf; the message names the epoch and batch."""


def _has_batchnorm(module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _plain(module):
    """The module itself when it was wrapped by ``torch.compile``."""
    return getattr(module, "_orig_mod", module)


class MetaSetClassifier(NeuralNetClassifier):
    """Base class: a skorch classifier that fits on biased data with a clean meta set.

    Subclasses implement :meth:`_step` (one training step on a batch) and may add
    components in ``initialize_module`` / ``initialize_optimizer``. Not for direct use.
    """

    # iterator_meta__* routes to the DataLoader that loads meta batches from a Dataset.
    prefixes_ = NeuralNetClassifier.prefixes_ + ["iterator_meta"]
    # Modules of the net that are not the classifier: never in the classifier's optimizer,
    # never compiled.
    _auxiliary_modules: tuple = ("batch_transform",)
    # Fitted attributes that a fresh fit forgets.
    _fit_attributes = ("training_state_", "classes_inferred_", "input_shape_", "n_features_in_",
                       "feature_names_in_", "seed_", "pending_callback_states_", "train_prior_", "target_prior_",
                       "train_counts_", "meta_prior_")

    def __init__(
        self,
        module,
        *,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        train_on_meta=True,
        random_state=None,
        nan_policy="raise",
        batch_transform=None,
        data_on_device=False,
        precision=None,
        channels_last=False,
        sync_batchnorm=False,
        target_prior="train",
        **kwargs,
    ):
        self.train_on_meta = train_on_meta
        self.target_prior = target_prior
        self.random_state = random_state
        self.nan_policy = nan_policy
        self.batch_transform = batch_transform
        self.data_on_device = data_on_device
        self.precision = precision
        self.channels_last = channels_last
        self.sync_batchnorm = sync_batchnorm
        # skorch's __init__ comes last: once the net exists, skorch treats any torch component
        # assigned to it (e.g. a module instance passed as a parameter) as a fitted one.
        super().__init__(module, criterion=criterion, train_split=train_split, **kwargs)

    # ------------------------------------------------------------------ parameters
    @property
    def _default_callbacks(self):
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", FinitePassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            ("valid_acc", EpochScoring("accuracy", name="valid_acc", lower_is_better=False)),
            ("print_log", PrintLog(keys_ignored=["weight_collapsed", "meta_stalled", "weights_vanished",
                                                 "meta_diverged", "meta_score_best", "batches_skipped"])),
        ]

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        # skorch's bookkeeping set, rebuilt by __init__ from the keyword arguments; as a
        # "parameter" it would be cloned and set like one.
        params.pop("_params_to_validate", None)
        return params

    def _check_params(self):
        validate_params(self, self._parameter_constraints)

    def _meta_required(self) -> bool:
        return True

    # ------------------------------------------------------------------ initialisation
    def _base_seed(self):
        if self.random_state is None:
            return int(torch.randint(0, 2**31 - 1, (1,)).item())
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def initialize(self):
        """Initialise every component (seeding them from ``random_state``) and return self."""
        self._check_params()
        reducer = join_launched_group(self.device)  # a script launched by torchrun trains data-parallel
        if reducer is not None and self.sync_batchnorm and self.compile:
            raise ValueError("sync_batchnorm=True cannot be combined with compile=True (its all-reduces run in a "
                             "Python mode around the eager forward); pass compile=False")
        seed = self._base_seed()
        if reducer is not None:  # one seed for every process (random_state=None draws per process)
            seed = reducer.broadcast_int(seed)
        if self.random_state is not None:
            torch.manual_seed(seed)
        for name in self._fit_attributes:
            vars(self).pop(name, None)
        self.seed_ = seed
        super().initialize()
        return self

    def _yield_callbacks(self):
        """skorch's order (PrintLog last), with checkpoints just before the PrintLogs: a unit saved
        at an epoch's end then holds what every other callback recorded for that epoch (a
        scoring callback listed after the checkpoint included), so a resumed run equals the
        uninterrupted one whatever the order of the list."""
        others, checkpoints, print_logs = [], [], []
        for name, cb, named_by_user in super()._yield_callbacks():
            if getattr(cb, "_saves_training_state", False):
                checkpoints.append((name, cb, named_by_user))
            elif isinstance(cb, PrintLog) or cb is PrintLog:
                print_logs.append((name, cb, named_by_user))
            else:
                others.append((name, cb, named_by_user))
        yield from others + checkpoints + print_logs

    def initialize_callbacks(self):
        super().initialize_callbacks()
        for name, callback in self.callbacks_:
            refused = None
            if isinstance(callback, SkorchCheckpoint) and not getattr(callback, "_saves_training_state", False):
                refused = "skorch.callbacks.Checkpoint", "mwnet_sk.callbacks.Checkpoint"
            elif isinstance(callback, SkorchLoadInitState) and not getattr(callback, "_restores_training_state", False):
                refused = "skorch.callbacks.LoadInitState", "mwnet_sk.callbacks.LoadInitState"
            elif isinstance(callback, SkorchTrainEndCheckpoint):
                refused = "skorch.callbacks.TrainEndCheckpoint", "mwnet_sk.callbacks.Checkpoint"
            if refused:
                raise TypeError(
                    f"callback {name!r} is a {refused[0]}, which saves or restores only the classifier, "
                    f"its optimizer and the history: a {type(self).__name__} run also needs its "
                    f"weighting state and training state. Use {refused[1]} instead."
                )
        return self

    def initialize_module(self):
        """Build the classifier and the batch transform (copies of instances)."""
        self.module_ = self._instance("module")
        if self.channels_last:
            self.module_ = self.module_.to(memory_format=torch.channels_last)
        if self.batch_transform is not None:
            self.batch_transform_ = self._instance("batch_transform")
        return self

    def _instance(self, name):
        """``initialized_instance`` for ``name``, copying a passed instance: refits and clones
        start from the weights the user passed, never from trained ones."""
        kwargs = self.get_params_for(name)
        component = getattr(self, name)
        if isinstance(component, torch.nn.Module) and not kwargs:
            component = copy.deepcopy(component)
        return self.initialized_instance(component, kwargs)

    def initialize_criterion(self):
        """The criterion, forced to per-sample losses (``reduction="none"``)."""
        kwargs = self.get_params_for("criterion")
        if kwargs.get("reduction", "none") != "none":
            raise ValueError(f"{type(self).__name__} weights per-sample losses; criterion__reduction must be 'none'")
        criterion = self.criterion
        if not isinstance(criterion, torch.nn.Module) and not isinstance(criterion, type):
            raise TypeError(
                f"criterion must be a torch loss class or instance (e.g. torch.nn.CrossEntropyLoss), got "
                f"{criterion!r}; wrap a function f(logits, y) -> per-sample losses in an nn.Module"
            )
        if isinstance(criterion, torch.nn.Module) and not kwargs:
            # keep the instance's own settings (label smoothing, class weights, ...)
            criterion = copy.deepcopy(criterion)
            if hasattr(criterion, "reduction"):
                criterion.reduction = "none"
            self.criterion_ = criterion
            return self
        if isinstance(criterion, torch.nn.Module):
            criterion = type(criterion)
        try:
            self.criterion_ = criterion(**{**kwargs, "reduction": "none"})
        except TypeError:
            # a criterion without a reduction argument must return per-sample losses itself;
            # the check at the start of fit says so otherwise
            self.criterion_ = criterion(**kwargs)
        return self

    def get_all_learnable_params(self):
        """The classifier's and the criterion's parameters: what ``optimizer_`` trains."""
        for name, param in super().get_all_learnable_params():
            if not any(param is p for aux in self._auxiliary_module_objects() for p in aux.parameters()):
                yield name, param

    def _auxiliary_module_objects(self):
        return [m for m in (getattr(self, n + "_", None) for n in self._auxiliary_modules)
                if isinstance(m, torch.nn.Module)]

    def initialize_optimizer(self, triggered_directly=None):
        args, kwargs = self.get_params_for_optimizer("optimizer", self.get_all_learnable_params())
        self.optimizer_ = self.optimizer(*args, **kwargs)
        return self

    def torch_compile(self, module, name):
        # Only the classifier is compiled. The criterion's per-sample losses are differentiated
        # twice by the meta-gradient (retain_graph, create_graph), which compiled backward
        # graphs do not allow; the weight net and the batch transform are a few small ops.
        if name != "module":
            return module
        return super().torch_compile(module, name)

    # ------------------------------------------------------------------ data
    def check_data(self, X, y):
        # Labels are validated and encoded when fit prepares the data.
        pass

    @property
    def classes_(self):
        if self.classes is not None:
            return np.asarray(self.classes)
        try:
            return self.classes_inferred_
        except AttributeError as exc:
            raise AttributeError(f"{type(self).__name__} has no attribute 'classes_' before fit") from exc

    def _known_classes(self, fresh, classes=None):
        if self.classes is not None:
            return check_classes(self.classes, "classes")
        if classes is not None:
            return check_classes(classes, "classes")
        if not fresh and hasattr(self, "classes_inferred_"):
            return self.classes_inferred_
        return None

    def _custom_dataset(self, X, y):
        """skorch's ``dataset``/``dataset__*`` parameters: build the user's Dataset over X."""
        if is_dataset(X) or (self.dataset is SkorchDataset and not self.get_params_for("dataset")):
            return X
        dataset = self.get_dataset(X, y)
        if not is_dataset(dataset):
            raise TypeError(f"dataset={self.dataset!r} did not build a torch Dataset from X")
        return dataset

    def _prepare(self, X, y, meta, *, fresh, classes=None):
        if getattr(self, "_trimmed_for_prediction", False):
            raise SkorchTrainingImpossibleError(
                f"this {type(self).__name__} was trimmed for prediction (trim_for_prediction()) and cannot be "
                "trained any more; train a fresh copy (sklearn.base.clone) instead"
            )
        self._check_params()
        data = prepare_fit_data(
            self._custom_dataset(X, y), y, meta,
            classes=self._known_classes(fresh, classes),
            train_on_meta=self.train_on_meta,
            keep_integers=self.batch_transform is not None,
            meta_required=self._meta_required(),
        )
        if not fresh:
            check_sample_shape(data.sample_shape, getattr(self, "input_shape_", None), type(self).__name__)
        self._resolve_target_prior(self.target_prior, *self._class_frequencies(data))  # a bad one fails early
        return data

    def get_dataset(self, X, y=None):
        """Array-like X becomes an in-memory dataset batched by tensor indexing; a torch Dataset
        is used as it is; skorch's ``dataset=`` builds anything else."""
        if is_dataset(X):
            return X
        custom = self.dataset is not SkorchDataset or self.get_params_for("dataset")
        if is_array_like(X) and not custom:
            self._check_feature_names(X)
            features, _, shape, _ = features_of(X, "X", keep_integers=self.batch_transform is not None)
            check_sample_shape(shape, getattr(self, "input_shape_", None), type(self).__name__)
            return ArrayDataset(features)
        return super().get_dataset(X, y)

    def _check_feature_names(self, X):
        """scikit-learn's rule: the column names at predict must be those seen in fit."""
        fitted = getattr(self, "feature_names_in_", None)
        names = _feature_names(X)
        if fitted is None and names is None:
            return
        if fitted is not None and names is not None:
            if len(fitted) != len(names) or np.any(fitted != names):
                unseen = [n for n in names if n not in set(fitted)]
                missing = [n for n in fitted if n not in set(names)]
                details = ""
                if unseen:
                    details += f"\nFeature names unseen at fit time: {unseen[:10]}"
                if missing:
                    details += f"\nFeature names seen at fit time, yet now missing: {missing[:10]}"
                if not unseen and not missing:
                    details += "\nFeature names must be in the same order as they were in fit."
                raise ValueError("The feature names should match those that were passed during fit." + details)
        elif fitted is not None:
            warnings.warn(f"X does not have valid feature names, but {type(self).__name__} was fitted with "
                          "feature names", UserWarning, stacklevel=3)
        else:
            warnings.warn(f"X has feature names, but {type(self).__name__} was fitted without feature names",
                          UserWarning, stacklevel=3)

    def get_iterator(self, dataset, training=False):
        """Tensor-indexed batches for in-memory data, a DataLoader for anything else. In
        training, a last batch of one item is merged into the previous one when the module
        has BatchNorm (which cannot normalise a single item)."""
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        iterator = self.iterator_train if training else self.iterator_valid
        batch_size = kwargs.pop("batch_size", self.batch_size)
        batch_size = len(dataset) if batch_size == -1 else batch_size
        shuffle = kwargs.pop("shuffle", training)
        state = getattr(self, "training_state_", None)
        generator = state.train_generator if training and state is not None and state.live else None
        reducer = self._reducer() if training else None
        slicer, min_last = None, self._min_batch() if training else 1
        if reducer is not None:  # batch_size is per process: the global batch is cut in world_size parts
            batch_size, slicer = batch_size * reducer.world_size, shard_slicer(reducer.rank, reducer.world_size)
        if iterator is DataLoader and not kwargs and BatchIterator.supports(dataset):
            return BatchIterator(dataset, batch_size, shuffle=shuffle, generator=generator, min_last=min_last,
                                 slicer=slicer)
        # One path for every shuffled training DataLoader, in one process and in N, drawing the
        # order from the estimator's generator exactly as BatchIterator does for arrays. The
        # loader's own draw (its workers' base seed) comes from a generator of its own, reseeded
        # at every epoch from the run's seed and the epoch number: the training generator and the
        # global RNG stay untouched, and a resumed epoch seeds its workers as the uninterrupted
        # one did (not with persistent_workers=True, whose workers keep the seed of the fit's
        # first epoch). A generator passed as iterator_train__generator replaces both.
        if iterator is DataLoader and (min_last > 1 or slicer is not None or generator is not None) \
                and not {"sampler", "batch_sampler", "drop_last"} & kwargs.keys():
            generator = kwargs.pop("generator", generator)
            sampler = MergedBatchSampler(len(dataset), batch_size, shuffle, generator, min_last, slicer)
            if generator is not None and generator is getattr(state, "train_generator", None):
                return EpochSeededDataLoader(dataset, batch_sampler=sampler, generator=torch.Generator(),
                                             epoch_seed=lambda: self.seed_ * 31 + len(self.history), **kwargs)
            return DataLoader(dataset, batch_sampler=sampler, generator=generator, **kwargs)
        if reducer is not None:
            raise ValueError("data-parallel training shards batches itself: iterator_train__sampler, "
                             "__batch_sampler and __drop_last are not supported under torchrun")
        if iterator is DataLoader and training and generator is not None:
            kwargs.setdefault("generator", generator)
        return iterator(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def _reducer(self):
        """The data-parallel reducer during a fit launched by torchrun, else None."""
        from ._distributed import current_reducer

        return current_reducer()

    def _min_batch(self) -> int:
        """The smallest training batch (per process) a step may get: 2 with BatchNorm."""
        per_process = 2 if _has_batchnorm(self.module_) else 1
        reducer = self._reducer()
        return per_process * (1 if reducer is None else reducer.world_size)

    def _device_input(self, x, training):
        # float64 items of a user Dataset become float32, as floating arrays do in fit
        x = _as_model_dtype(to_device(x, self.device))
        if self.batch_transform is not None:
            self.batch_transform_.train(training)
            x = self.batch_transform_(x)
        if self.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _call_module(self, module, x):
        return module(**x) if isinstance(x, Mapping) else module(x)

    def infer(self, x, **fit_params):
        if fit_params:
            raise TypeError(f"{type(self).__name__} does not pass fit parameters to module.forward; got {sorted(fit_params)}")
        if isinstance(x, Mapping) and INPUT_KEY in x:
            x = x[INPUT_KEY]
        x = self._device_input(x, training=self.module_.training)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self._call_module(self.module_, x)
        with torch.autocast(device_type=torch.device(self.device).type, dtype=dtype):
            return self._call_module(self.module_, x).float()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """The mean per-sample criterion loss (validation and scoring; training steps
        compute their own losses and do not call this)."""
        y_true = to_device(torch.as_tensor(y_true), self.device)
        loss = self.criterion_(y_pred, y_true)
        return loss.mean() if loss.ndim else loss

    # ------------------------------------------------------------------ what callbacks see
    def _user_batch(self, batch):
        """A batch as callbacks see it: the model input (no row numbers) and the labels in
        the user's label space."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            return batch
        xi, yi = batch
        if isinstance(xi, Mapping) and INPUT_KEY in xi:
            xi = xi[INPUT_KEY]
        classes = getattr(self, "classes_inferred_", None) if self.classes is None else np.asarray(self.classes)
        if classes is not None and yi is not None and not np.array_equal(classes, np.arange(len(classes))):
            yi = classes[to_numpy(torch.as_tensor(yi)).astype(np.int64)]
        return xi, yi

    def notify(self, method_name, **cb_kwargs):
        if "batch" in cb_kwargs:
            cb_kwargs["batch"] = self._user_batch(cb_kwargs["batch"])
        getattr(self, method_name)(self, **cb_kwargs)
        reducer = self._reducer()
        main = reducer is None or reducer.is_main
        for _, callback in self.callbacks_:
            # in data-parallel training only the first process prints and shows progress
            if not main and (isinstance(callback, (PrintLog, ProgressBar))
                             or getattr(callback, "main_process_only", False)):
                continue
            getattr(callback, method_name)(self, **cb_kwargs)
        if method_name == "on_train_begin":
            # States restored from a checkpoint are applied after every callback has set
            # itself up in on_train_begin (an LRScheduler builds its scheduler there).
            self._apply_pending_callback_states()

    def _apply_pending_callback_states(self):
        from .callbacks import load_callback_states

        pending = vars(self).pop("pending_callback_states_", None)
        if pending:
            load_callback_states(self, pending)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, meta=None, **fit_params):
        """Initialise and train.

        Parameters
        ----------
        X : array-like, DataFrame, dict of arrays, tensor or torch Dataset
            Training inputs (biased: noisy labels or class imbalance). A dict feeds a
            multi-input module (``module(**x)``). A Dataset yields ``(x, y)`` pairs; its
            labels are read from ``y``, its ``targets`` attribute, or one pass over it.
        y : array-like of shape (n_samples,) or None
            Training labels of any kind scikit-learn accepts; None when X is a Dataset (its
            own labels are used). Given beside a Dataset X, y replaces the labels the Dataset
            yields (e.g. noisy labels for a clean image Dataset): the model trains on y.
        meta : tuple, Dataset, or array-like
            The clean, balanced meta set: a pair ``(X_meta, y_meta)``; a torch Dataset of
            ``(x, y)``; or a boolean mask / integer index array over the rows of X (the mask
            form survives ``Pipeline`` preprocessing and cross-validation splitting).
        **fit_params
            Passed to ``train_split`` (e.g. ``groups`` for a grouped split; per-row arrays
            are cut to the training rows). Fit parameters are not passed to
            ``module.forward``.

        Returns
        -------
        self
        """
        fresh = not self.warm_start or not self.initialized_
        data = self._prepare(X, y, meta, fresh=fresh)  # bad input fails before anything is built
        if fresh:
            self.initialize()
        return self._fit(data, X, y, "fit", fit_params, fresh)

    def partial_fit(self, X, y=None, classes=None, meta=None, **fit_params):
        """Continue training for ``max_epochs`` epochs without re-initialising.

        Same arguments as :meth:`fit`; ``classes`` may list every label up front (labels are
        otherwise fixed by the first call).
        """
        fresh = not self.initialized_
        data = self._prepare(X, y, meta, fresh=fresh, classes=classes)
        if fresh:
            self.initialize()
        return self._fit(data, X, y, "partial_fit", fit_params, fresh)

    def _set_fit_metadata(self, data, fresh=True):
        self.classes_inferred_ = data.classes
        # The network learns the class frequencies of every row it has trained on: a warm-start
        # fit or a partial_fit adds its rows to the earlier ones (train_counts_), not replaces them.
        previous = None if fresh else getattr(self, "train_counts_", None)
        n_classes = len(data.classes)
        self.train_counts_before_ = (np.zeros(n_classes) if previous is None or len(previous) != n_classes
                                     else np.asarray(previous, dtype=np.float64))
        # kept so that target_prior can change after fit (set_params) without refitting
        _, self.meta_prior_ = self._class_frequencies(data)
        self._count_training_rows(data.y_train, n_classes)
        self.input_shape_ = data.sample_shape
        if isinstance(data.sample_shape, tuple) and len(data.sample_shape) == 1:
            self.n_features_in_ = data.sample_shape[0]
        if data.feature_names is not None:
            self.feature_names_in_ = data.feature_names
        else:
            vars(self).pop("feature_names_in_", None)

    def _count_training_rows(self, codes, n_classes):
        """train_counts_ (earlier fits' rows plus these), train_prior_ from them, and the
        target_prior_ that goes with it."""
        self.train_counts_ = self.train_counts_before_ + np.bincount(np.asarray(codes), minlength=n_classes)
        self.train_prior_ = class_prior(self.train_counts_)
        self.target_prior_ = self._resolve_target_prior(self.target_prior, self.train_prior_, self.meta_prior_)

    @staticmethod
    def _class_frequencies(data):
        """(training rows', meta rows') class frequencies of one fit's data (meta: None without)."""
        n_classes = len(data.classes)
        meta = None if data.y_meta is None else class_prior(np.bincount(data.y_meta, minlength=n_classes))
        return class_prior(np.bincount(data.y_train, minlength=n_classes)), meta

    def _resolve_target_prior(self, target, train, meta):
        """The class frequencies to predict for: ``target_prior`` given the training and meta
        frequencies ("meta" without a meta set predicts as trained)."""
        n_classes, given = len(train), target
        if isinstance(target, str):
            return meta.copy() if target == "meta" and meta is not None else np.asarray(train, dtype=np.float64).copy()
        try:
            target = np.asarray(target, dtype=np.float64)
        except (TypeError, ValueError):
            target = np.full(0, np.nan)
        if target.shape != (n_classes,) or not np.all(np.isfinite(target)) or np.any(target < 0) \
                or not target.sum() > 0:
            raise ValueError(
                f"target_prior must be 'meta', 'train', or one non-negative frequency per class "
                f"({n_classes} values in the order of classes_, not all zero); got {given!r}"
            )
        return target / target.sum()

    def initialize_virtual_params(self):
        super().initialize_virtual_params()
        # target_prior set on a fitted estimator changes its predictions at once (no refit: the
        # correction is applied to the logits at prediction)
        self._register_virtual_param("target_prior", MetaSetClassifier._set_target_prior)

    def _set_target_prior(self, _param, value):
        train = getattr(self, "train_prior_", None)
        if train is not None:
            meta = getattr(self, "meta_prior_", None)
            if isinstance(value, str) and value == "meta" and meta is None:
                if not (isinstance(self.target_prior, str) and self.target_prior == "meta"):
                    raise ValueError("this fit did not keep its meta set's class frequencies (meta_prior_): refit "
                                     "with target_prior='meta'")
                meta = self.target_prior_  # predicted for the meta set already
            self.target_prior_ = self._resolve_target_prior(value, train, meta)
        self.target_prior = value

    def _prior_logit_shift(self):
        """The per-class logit shift of predictions (a tensor on ``device``), None when there
        is none (predictions for the training prior, or a net never fitted)."""
        train, target = getattr(self, "train_prior_", None), getattr(self, "target_prior_", None)
        if train is None or target is None or np.allclose(train, target, rtol=0, atol=1e-12):
            return None
        return torch.as_tensor(logit_shift(train, target), dtype=torch.float32, device=torch.device(self.device))

    def _get_predict_nonlinearity(self):
        """skorch's prediction nonlinearity (softmax for ``predict_nonlinearity="auto"``),
        applied to the logits shifted for the target prior (``target_prior``)."""
        nonlin = super()._get_predict_nonlinearity()
        shift = self._prior_logit_shift()
        if shift is None:
            return nonlin

        def shifted(logits):
            return nonlin(logits + shift.to(device=logits.device, dtype=logits.dtype))

        return shifted

    def _fit(self, data, X, y, routing_method, fit_params, fresh=True):
        if fit_params and self.train_split is None:
            raise TypeError(
                f"fit parameters {sorted(fit_params)} go to train_split, but train_split is None; "
                f"{type(self).__name__} does not pass fit parameters to module.forward"
            )
        self._set_fit_metadata(data, fresh)
        self._check_monitors()
        self._begin_training(data)
        self.fit_data_ = data
        try:
            self.notify("on_train_begin", X=X, y=y)
            # after on_train_begin: a callback may have rebuilt the module there (InputShapeSetter)
            self._check_components(data)
            try:
                self.fit_loop(data.train, data.y_train, _routing_method=routing_method, **fit_params)
            except KeyboardInterrupt:
                pass
            self.notify("on_train_end", X=X, y=y)
        finally:
            self._end_training()
            vars(self).pop("fit_data_", None)
            vars(self).pop("train_counts_before_", None)  # only while fitting
        return self

    def _check_monitors(self):
        """A callback that monitors a validation score needs a validation split: say so before
        training instead of failing with a KeyError at the end of the first epoch."""
        if self.train_split is not None:
            return
        for name, callback in self.callbacks_:
            monitor = getattr(callback, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("valid_"):
                raise ValueError(
                    f"callback {name!r} monitors {monitor!r}, which needs a validation split, but train_split "
                    f"is None (the default: every training row is trained on). Monitor the meta-set loss "
                    f"instead, e.g. {type(callback).__name__}(monitor='meta_loss'), or pass a split such as "
                    "train_split=skorch.dataset.ValidSplit(5, stratified=True)"
                )

    def _cut_fit_params(self, fit_params):
        """Per-row fit parameters (arrays with one value per row of X) cut to the training items."""
        data = getattr(self, "fit_data_", None)
        if data is None:
            return fit_params
        unchanged = len(data.train_rows) == data.n_rows and np.array_equal(data.train_rows, np.arange(data.n_rows))
        cut = {}
        for key, value in fit_params.items():
            per_row = (value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__")
                       and len(value) == data.n_rows)
            if not per_row or unchanged:
                cut[key] = value
                continue
            if (data.train_rows < 0).any():
                raise ValueError(
                    f"fit parameter {key!r} has one value per row of X, but the meta set trained on beside X "
                    "has no rows there; pass the meta set as a mask over the rows of X instead"
                )
            cut[key] = value[data.train_rows] if isinstance(value, torch.Tensor) else np.asarray(value)[data.train_rows]
        return cut

    def fit_loop(self, X, y=None, epochs=None, *, _routing_method="fit", **fit_params):
        """skorch's loop, with fit parameters sent to ``train_split`` only and, after a
        resumed checkpoint, only the epochs missing to ``max_epochs``."""
        state = self.training_state_
        if epochs is None:
            epochs = self.max_epochs
            if state.resume_pending:
                epochs = max(self.max_epochs - len(self.history), 0)
        state.resume_pending = False
        state.epochs_planned = int(epochs)
        fit_params = self._cut_fit_params(fit_params)
        from sklearn.utils.metadata_routing import _routing_enabled, process_routing

        if _routing_enabled():
            routed = process_routing(self, _routing_method, **fit_params)
            split_params = routed.get("splitter", {"split": {}})["split"]
        else:
            split_params = fit_params
        dataset_train, dataset_valid = self.get_split_datasets(X, y, **split_params)
        if dataset_valid is not None and isinstance(dataset_train, Subset) and y is not None:
            # rows held out for validation are not trained on: the prior counts the rest only
            self._count_training_rows(np.asarray(y)[np.asarray(dataset_train.indices)], len(self.classes_))
        on_epoch_kwargs = {"dataset_train": dataset_train, "dataset_valid": dataset_valid}
        iterator_train = self.get_iterator(dataset_train, training=True)
        iterator_valid = None if dataset_valid is None else self.get_iterator(dataset_valid, training=False)
        for _ in range(epochs):
            self.notify("on_epoch_begin", **on_epoch_kwargs)
            self.run_single_epoch(iterator_train, training=True, prefix="train", step_fn=self.train_step)
            self.run_single_epoch(iterator_valid, training=False, prefix="valid", step_fn=self.validation_step)
            self.notify("on_epoch_end", **on_epoch_kwargs)
        return self

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if iterator is None:
            return
        batch_count = skipped = 0
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            self.history.record_batch(prefix + "_loss", step["loss"].item())
            # the global batch in data-parallel training, so every process records the same
            self.history.record_batch(prefix + "_batch_size", int(step.pop("batch_size", len(batch[1]))))
            skipped += bool(step.pop("skipped", False))
            self.notify("on_batch_end", batch=batch, training=training, **step)
            batch_count += 1
        self.history.record(prefix + "_batch_count", batch_count)
        if training:
            self.history.record("batches_skipped", skipped)
            if batch_count and skipped == batch_count:
                raise TrainingDivergedError(
                    f"every batch of epoch {len(self.history)} was skipped for non-finite values "
                    "(nan_policy='skip'): nothing was trained; check the inputs and lower the learning rates"
                )

    def _check_components(self, data):
        """One forward of two training items before training: the module's output must have
        one logit per class, the criterion one loss per item."""
        from torch.utils.data._utils.collate import default_collate

        n = min(2, len(data.train))
        if n == 0:
            return
        if isinstance(data.train, ArrayDataset):
            x, y = data.train.batch(torch.arange(n))
        else:
            # a Dataset may draw random augmentations: this extra read must not move the random
            # streams (a resumed run would otherwise start its epoch from other states)
            with _global_rngs_untouched():
                x, y = default_collate([data.train[i] for i in range(n)])
        x = x[INPUT_KEY]
        module = _plain(self.module_)
        buffers = {k: b.clone() for k, b in module.named_buffers()}
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                logits = self._call_module(module, self._device_input(x, training=False))
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                    raise ValueError(
                        f"the module must return a 2-d tensor of logits (n_samples, n_classes); got "
                        f"{getattr(logits, 'shape', type(logits).__name__)}"
                    )
                n_classes = len(data.classes)
                if logits.shape[1] != n_classes:
                    raise ValueError(
                        f"the module returns {logits.shape[1]} logits per sample but there are {n_classes} "
                        f"classes ({list(data.classes)[:10]}): build the module with {n_classes} outputs "
                        f"(e.g. module__num_classes={n_classes})"
                    )
                losses = self.criterion_(logits.float(), to_device(torch.as_tensor(y), self.device).long())
                if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n,):
                    raise ValueError(
                        "the criterion must return one loss per sample (reduction='none'); got shape "
                        f"{tuple(getattr(losses, 'shape', ()))} for a batch of {n}"
                    )
        finally:
            module.train(was_training)
            with torch.no_grad():
                for k, b in module.named_buffers():
                    b.copy_(buffers[k])

    def _begin_training(self, data):
        state = getattr(self, "training_state_", None)
        if state is None or state.n_samples != data.n_samples or state.n_rows != data.n_rows:
            # new rows (partial_fit on a chunk of another size): per-row buffers start afresh, but
            # the step count carries on (meta_interval's phase, n_steps_)
            steps = state.n_steps if state is not None else 0
            state = TrainingState(data.n_samples, data.n_rows, self.seed_ + 7919 * len(self.history),
                                  record_weights=getattr(self, "record_weights", False))
            state.n_steps = steps
        else:
            # the same number of rows (a warm-start fit, a partial_fit): the step count and the
            # random streams carry on, but each row's weight and loss are this fit's (NaN for rows
            # it does not train on, e.g. held out by train_split), not an earlier fit's
            state.sample_weights.fill_(float("nan"))
            state.sample_losses.fill_(float("nan"))
            if getattr(self, "record_weights", False) != (state.weights_history is not None):  # set_params since
                state.weights_history = torch.empty((0, state.n_rows)) if self.record_weights else None
        self.training_state_ = state
        device = torch.device(self.device)
        if self.data_on_device:
            for ds in (data.train, data.meta):
                if isinstance(ds, ArrayDataset):
                    ds.to(device)
        reducer = self._reducer()
        if reducer is not None:
            self._check_data_parallel()
            self._check_data_parallel_data(data, reducer)
            # every process starts from the first one's networks (random_state=None differs per process)
            reducer.broadcast_([t.data for m in self._replicated_modules() for t in m.state_dict().values()])
        state.start(device, **self._meta_source(data))

    def _replicated_modules(self):
        """The networks every data-parallel process must hold identically."""
        return [_plain(self.module_)]

    def _check_data_parallel(self):
        for name, callback in self.callbacks_:
            if isinstance(callback, EpochScoring) and callback.on_train:
                raise ValueError(
                    f"callback {name!r} scores the training data (on_train=True), but under torchrun each process "
                    "holds only its part of every batch, so the processes would record different scores (and an "
                    "EarlyStopping or Checkpoint reading them would decide differently); score a validation split "
                    "(on_train=False), the meta set (mwnet_sk.callbacks.MetaScoring), or monitor train_loss, which "
                    "is the global batch's"
                )

    def _check_data_parallel_data(self, data, reducer):
        """Every process must hold the same data, and enough rows for a part of every batch."""
        device = torch.device(self.device)
        digest = torch.tensor(list(bytes.fromhex(data.fingerprint())[:16]), dtype=torch.int64, device=device)
        first = digest.clone()
        reducer.broadcast_([first])
        differs = torch.tensor([float(not torch.equal(first, digest))], device=device)
        reducer.sum_([differs])  # every process learns it, so every process raises
        if differs.item():
            raise ValueError(
                f"the {reducer.world_size} processes were given different data (training rows, labels or meta "
                "set): each process cuts its part of every batch from the same data, so every process must call "
                "fit with the same X, y and meta (e.g. draw a meta mask with a fixed random_state)"
            )
        per_process = 2 if _has_batchnorm(self.module_) else 1
        needed = per_process * reducer.world_size
        sets = [("training rows", len(data.train))]
        if data.meta is not None and self._meta_source(data):
            sets.append(("meta rows", len(data.meta)))
        for what, n in sets:
            if n < needed:
                raise ValueError(
                    f"data-parallel training over {reducer.world_size} processes needs at least {needed} {what} "
                    f"({per_process} per process{', BatchNorm needs 2' if per_process == 2 else ''}); there are "
                    f"{n}: use fewer processes or more rows"
                )

    def _meta_source(self, data) -> dict:
        """What the training state's meta sampler draws from (nothing for plain training)."""
        return {}

    def _end_training(self):
        self.training_state_.stop()

    @property
    def n_steps_(self):
        """Training steps taken so far."""
        return self.training_state_.n_steps

    # ------------------------------------------------------------------ the step
    def _step(self, x, y, batch, on_grad_computed):
        """One training step; returns an object with ``logits``, ``losses``, ``weights``
        (per sample, detached) and ``loss``. The estimators (MetaWeightClassifier,
        PlainClassifier) define it; the shared base trains nothing by itself."""
        raise TypeError(f"{type(self).__name__} defines no training step: subclass MetaWeightClassifier or "
                        "PlainClassifier, or define _step(x, y, batch, on_grad_computed)")

    def train_step(self, batch, **fit_params):
        """One training step on a batch (skorch's hook); non-finite values follow ``nan_policy``."""
        if fit_params:
            raise TypeError(
                f"{type(self).__name__} does not pass fit parameters to module.forward; got {sorted(fit_params)}"
            )
        self._set_training(True)
        xi, yi = batch
        rows = torch.as_tensor(xi[INDEX_KEY])
        x = self._device_input(xi[INPUT_KEY], training=True)
        y = to_device(torch.as_tensor(yi), self.device).long()

        def on_grad_computed():
            self.notify("on_grad_computed", named_parameters=list(self.module_.named_parameters()),
                        batch=batch, training=True)

        state = self.training_state_
        try:
            with global_batch_norm(self.sync_batchnorm):
                result = self._step(x, y, batch, on_grad_computed)
        except NonFiniteError as err:
            epoch = len(self.history)
            batch_no = len(self.history[-1, "batches"]) if self.history else 0
            msg = f"non-finite {err.stage} in epoch {epoch}, batch {batch_no}"
            state.n_steps += 1
            if self.nan_policy == "raise":
                raise TrainingDivergedError(
                    msg + "; nothing of this batch was applied. Lower the learning rates, check the inputs, "
                    "or pass nan_policy='skip'"
                ) from err
            nan = torch.tensor(float("nan"), device=self.device)
            logits = torch.zeros(len(y), len(self.classes_), device=self.device)
            return {"loss": nan, "y_pred": logits, "skipped": True}
        state.n_steps += 1
        state.record(rows, result.weights, result.losses)
        self._after_step(result)
        return {"loss": result.loss, "y_pred": result.logits, "batch_size": result.n}

    def _after_step(self, result):
        pass

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        state = getattr(self, "training_state_", None)
        if state is not None and state.live:
            state.begin_epoch(data_parallel=self._reducer() is not None)

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        state = getattr(self, "training_state_", None)
        reducer = self._reducer()
        if reducer is not None:
            # running statistics (BatchNorm) are per process during the epoch; afterwards every
            # process holds the first one's, as DDP's broadcast_buffers does
            reducer.broadcast_([b.data for b in _plain(self.module_).buffers()])
        if state is not None and state.live:
            state.gather(reducer)  # before any callback reads the per-sample values
            state.end_epoch()

    def _meta_set_score(self, scoring):
        """Accuracy or negative log-loss of the classifier on the fit's meta set."""
        if scoring not in ("accuracy", "neg_log_loss"):
            raise ValueError(
                f"on the estimator's own meta set MetaScoring supports 'accuracy' and 'neg_log_loss', "
                f"got {scoring!r}; pass X_meta and y_meta for any other scorer"
            )
        data = getattr(self, "fit_data_", None)
        if data is None or data.meta is None:
            raise ValueError("this fit has no meta set to score on: pass MetaScoring(X_meta=..., y_meta=...)")
        logits, labels = [], []
        for batch in self.get_iterator(data.meta, training=False):
            with torch.no_grad():
                logits.append(self.evaluation_step(batch, training=False).float())
            labels.append(torch.as_tensor(batch[1]).to(logits[-1].device))
        logits, labels = torch.cat(logits), torch.cat(labels).long()
        shift = self._prior_logit_shift()
        if shift is not None:  # scored as predict scores: for the target prior
            logits = logits + shift.to(logits.device)
        if scoring == "accuracy":
            return (logits.argmax(1) == labels).double().mean().item()
        return -torch.nn.functional.cross_entropy(logits, labels).item()

    # ------------------------------------------------------------------ prediction
    def __sklearn_is_fitted__(self):
        return bool(self.initialized_) and (hasattr(self, "classes_inferred_") or self.classes is not None) \
            and getattr(self, "module_", None) is not None

    def _check_fitted(self):
        if not self.__sklearn_is_fitted__():
            hint = ("call fit first" if not self.initialized_ else
                    "call fit, or load a checkpoint that includes the training state "
                    "(load_params(checkpoint=...) or f_training_state=...), or pass classes= "
                    "(with target_prior='train')")
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: {hint}.")
        wants_shift = not (isinstance(self.target_prior, str) and self.target_prior == "train")
        if wants_shift and (getattr(self, "train_prior_", None) is None or getattr(self, "target_prior_", None) is None):
            # parameters loaded without the training state: predicting would silently drop the correction
            raise NotFittedError(
                f"This {type(self).__name__} predicts for target_prior={self.target_prior!r}, but the class "
                "frequencies it was trained on are unknown (parameters were loaded without the training state): "
                "load the training state too (load_params(checkpoint=...) or f_training_state=...), or set "
                "target_prior='train' to predict with the network's own class frequencies."
            )

    def trim_for_prediction(self):
        """skorch's ``trim_for_prediction``; ``predict_proba`` keeps returning probabilities (skorch
        infers the softmax from the criterion, which trimming removes)."""
        if not getattr(self, "_trimmed_for_prediction", False) and self.predict_nonlinearity == "auto":
            self.check_is_fitted()
            self.predict_nonlinearity = super()._get_predict_nonlinearity()
        super().trim_for_prediction()

    def predict_proba(self, X):
        """Class probabilities for X, columns in the order of ``classes_``."""
        self._check_fitted()
        if _n_samples(X) == 0:  # skorch would fail inside with "need at least one array to concatenate"
            raise ValueError(f"X has 0 samples: {type(self).__name__} predicts for at least one sample")
        return super().predict_proba(X)

    def predict(self, X):
        """Class labels (in the user's label space) for X."""
        codes = self.predict_proba(X).argmax(axis=1)
        return self.classes_[codes]

    # ------------------------------------------------------------------ persistence
    def _fit_metadata_dict(self) -> dict:
        """What prediction needs beyond parameters (numbers, strings and tensors only)."""
        meta = {}
        classes = getattr(self, "classes_inferred_", None)
        if classes is not None:
            meta["classes"] = classes.tolist()
            meta["classes_kind"] = classes.dtype.kind
        for name in ("n_features_in_", "seed_"):
            if hasattr(self, name):
                meta[name] = int(getattr(self, name))
        if getattr(self, "feature_names_in_", None) is not None:
            meta["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        for name in ("train_prior_", "target_prior_", "train_counts_", "meta_prior_"):
            if getattr(self, name, None) is not None:
                meta[name] = [float(v) for v in getattr(self, name)]
        shape = getattr(self, "input_shape_", None)
        if shape is not None:
            meta["input_shape_"] = {k: list(v) for k, v in shape.items()} if isinstance(shape, dict) else list(shape)
        return meta

    def _load_fit_metadata(self, meta: dict):
        if "classes" in meta:
            kind = meta.get("classes_kind", "O")
            classes = np.asarray(meta["classes"])
            if kind in "iub":
                classes = classes.astype(np.int64 if kind != "b" else bool)
            self.classes_inferred_ = classes
        for name in ("n_features_in_", "seed_"):
            if name in meta:
                setattr(self, name, int(meta[name]))
        if "feature_names_in_" in meta:
            self.feature_names_in_ = np.asarray(meta["feature_names_in_"], dtype=object)
        for name in ("train_prior_", "target_prior_", "train_counts_", "meta_prior_"):
            if name in meta:
                setattr(self, name, np.asarray(meta[name], dtype=np.float64))
        if "input_shape_" in meta:
            shape = meta["input_shape_"]
            self.input_shape_ = {k: tuple(v) for k, v in shape.items()} if isinstance(shape, dict) else tuple(shape)

    def training_state_dict(self) -> dict:
        """Everything beyond parameters and history that a resumed run (or prediction after
        loading) needs: fitted metadata, the training state, the states of stateful
        callbacks, torch's RNG states. Loadable with ``torch.load(..., weights_only=True)``."""
        from .callbacks import callback_states

        state = getattr(self, "training_state_", None)
        return {
            "fit": self._fit_metadata_dict(),
            "training": None if state is None else state.state_dict(),
            "callbacks": callback_states(self),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                # the generators a Dataset's augmentations may draw from in the main process
                "numpy": _numpy_rng_state(),
                "python": _python_rng_state(),
            },
        }

    def load_training_state_dict(self, blob: dict, *, resume: bool = False):
        """Restore :meth:`training_state_dict` output: into the live run during ``fit`` (the
        data must be the same), or for prediction and a later ``partial_fit`` otherwise."""
        self._load_fit_metadata(blob.get("fit", {}))
        saved = blob.get("training")
        state = getattr(self, "training_state_", None)
        if saved is not None:
            if state is not None and state.live:
                state.load_state_dict(saved)
            else:
                state = TrainingState(int(saved["n_samples"]), int(saved["n_rows"]), int(saved["seed"]),
                                      record_weights="weights_history" in saved)
                state.load_state_dict(saved)
                self.training_state_ = state
            state.resume_pending = bool(resume)
        rng = blob.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            if rng.get("numpy") is not None:
                _set_numpy_rng_state(rng["numpy"])
            if rng.get("python") is not None:
                _set_python_rng_state(rng["python"])
        if blob.get("callbacks"):
            # applied once every callback has set itself up (see notify), in this fit or the next
            self.pending_callback_states_ = blob["callbacks"]
        self._after_load()
        return self

    def _after_load(self):
        pass

    def save_params(self, f_params=None, f_optimizer=None, f_criterion=None, f_history=None,
                    use_safetensors=False, f_training_state=None, **kwargs):
        """skorch's ``save_params``, plus ``f_training_state`` (:meth:`training_state_dict`)
        and every registered component by name (``f_weight_net``, ``f_meta_optimizer``)."""
        if f_training_state is not None:
            torch.save(self.training_state_dict(), f_training_state)
        if any(v is not None for v in (f_params, f_optimizer, f_criterion, f_history, *kwargs.values())):
            super().save_params(f_params=f_params, f_optimizer=f_optimizer, f_criterion=f_criterion,
                                f_history=f_history, use_safetensors=use_safetensors, **kwargs)

    def load_params(self, f_params=None, f_optimizer=None, f_criterion=None, f_history=None,
                    checkpoint=None, use_safetensors=False, f_training_state=None, **kwargs):
        """skorch's ``load_params``, plus ``f_training_state``. With a
        :class:`mwnet_sk.callbacks.Checkpoint`, the newest complete checkpoint is verified and
        loaded whole (all parts, the training state included), so that
        ``initialize()`` + ``load_params(checkpoint=cp)`` gives an estimator that predicts."""
        if checkpoint is not None and hasattr(checkpoint, "load_into"):
            checkpoint.load_into(self, use_safetensors=use_safetensors)
            if not any(v is not None for v in (f_params, f_optimizer, f_criterion, f_history, f_training_state,
                                               *kwargs.values())):
                return
            checkpoint = None
        if not self.initialized_:
            self.initialize()
        if any(v is not None for v in (f_params, f_optimizer, f_criterion, f_history, checkpoint, *kwargs.values())):
            super().load_params(f_params=f_params, f_optimizer=f_optimizer, f_criterion=f_criterion,
                                f_history=f_history, checkpoint=checkpoint, use_safetensors=use_safetensors,
                                **kwargs)
        if f_training_state is not None:
            blob = torch.load(f_training_state, map_location="cpu", weights_only=True)
            self.load_training_state_dict(blob)
        self._after_load()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("fit_data_", None)
        return state


# --------------------------------------------------------------------------- global random streams
def _numpy_rng_state() -> dict:
    """numpy's global generator state as plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["gauss"]))


def _python_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_rng_state(state: dict) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


@contextlib.contextmanager
def _global_rngs_untouched():
    """Run a block without moving torch's (CPU and CUDA), numpy's and Python's global generators."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _n_samples(X):
    """Samples in a prediction input (array, DataFrame, tensor, dict of arrays, Dataset); None
    when it cannot be told without reading it."""
    try:
        return _n_items(X)
    except (TypeError, StopIteration):
        return None
