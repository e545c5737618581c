"""MetaWeightClassifier: the Meta-Weight-Net bilevel loop as a skorch ``NeuralNetClassifier``."""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring, EpochTimer, PassthroughScoring, PrintLog
from skorch.utils import TeeGenerator, to_device
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from torch.utils.data import DataLoader

from ._data import (
    INDEX_KEY,
    INPUT_KEY,
    ArrayDataset,
    BatchIterator,
    MetaSampler,
    _as_tensor,
    check_batch_size,
    check_sample_shape,
    is_array_like,
    prepare_fit_data,
)
from .core.bilevel import META_GRADIENTS, PRECISIONS, BilevelStep, NonFiniteError
from .callbacks import FinitePassthroughScoring, LoadInitState, WeightMonitor
from .core.weight_net import WeightFunction, WeightNet

__all__ = ["MetaWeightClassifier", "TrainingDivergedError"]



class TrainingDivergedError(FloatingPointError):
    """A loss, weight or gradient became NaN/inf; the message names the epoch and batch."""


def _encoded_accuracy(net, X, y):
    """Accuracy on the encoded labels the internal validation batches carry."""
    y_pred = net.predict_proba(X).argmax(axis=1)
    y_true = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).ravel()
    return float(np.mean(y_pred == y_true))


class MetaWeightClassifier(NeuralNetClassifier):
    """Meta-Weight-Net (Shu et al., NeurIPS 2019) for classification with biased training data.

    Trains any PyTorch classifier on noisy or imbalanced data while learning, from a small
    clean and balanced meta set, a weighting function ``V(loss; Θ)`` (an MLP) that maps each
    training sample's loss to its weight. Every training step is Algorithm 1 of the paper:
    a virtual SGD step of the classifier with the current weights (Eq. 3), one step of the
    weight net on the meta loss at the virtual weights (Eq. 4), and the real classifier step
    with the updated weights (Eq. 5). By default the weight-net gradient is computed exactly
    with first-order quantities only (Eq. 6, one forward-mode JVP), without the second-order
    graph of the paper's code.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        The classifier; it must return logits. Constructor arguments route with
        ``module__name=value``. An instance is copied at initialisation, so refits and
        clones start from the weights you passed, never from trained ones.
    criterion : loss class, default=torch.nn.CrossEntropyLoss
        Per-sample loss on logits. It is built with ``reduction="none"``.
    optimizer : torch optimizer class, default=torch.optim.SGD
        Classifier optimizer; ``optimizer__*`` routes to it and ``lr`` is its learning rate.
        Its current learning rate (per parameter group) is the step size α of the virtual
        step, so learning-rate schedules (e.g. skorch's ``LRScheduler``) apply to both.
    lr : float, default=0.01
        Classifier learning rate.
    meta_lr : float, default=1e-3
        Learning rate of the weight-net optimizer (β in Eq. 4; 1e-3 for noisy labels and
        1e-5 for class imbalance in the paper).
    meta_optimizer : torch optimizer class, default=torch.optim.Adam
        Optimizer of the weight net; ``meta_optimizer__*`` routes to it. Its weight decay
        defaults to 1e-4 as in the paper's code (``meta_optimizer__weight_decay``).
    meta_batch_size : int or None, default=None
        Meta batch size m; None means ``batch_size``.
    weight_net : torch.nn.Module class or instance, default=WeightNet
        The weighting function; ``weight_net__hidden_size`` etc. route to it. A custom module
        must map a ``(n, 1)`` tensor of losses to ``(n, 1)`` weights.
    meta_gradient : {"exact", "unrolled", "finite_difference"}, default="exact"
        ``"exact"``: first-order Eq. 6 with one JVP (fast, equal to ``"unrolled"`` up to
        float rounding); ``"unrolled"``: differentiate through the virtual step with a
        second-order graph (the paper's code; the reference); ``"finite_difference"``:
        central differences for the train/meta gradient similarities.
    meta_interval : int, default=1
        Update the weight net every ``meta_interval`` steps (the classifier steps every
        step with the current weights). 1 is the paper.
    meta_params : "all", "last" or list of str, default="all"
        Parameters that take the virtual step. ``"last"`` restricts the virtual step and the
        meta-gradient to the last layer (a FaMUS-like approximation); "all" is the paper.
    normalize_weights : bool, default=False
        Divide the weighted loss by the sum of the weights instead of the batch size.
    train_on_meta : bool, default=False
        Also train on the meta rows (weighted by the weight net like every training row):
        a mask's rows stay in the training set, a separate meta set's rows are appended to it.
        False is the paper (the meta set is held out of training).
    detach_weight_input : bool, default=True
        Feed the weight net the detached loss in the virtual step (Eq. 3 as written, and the
        authors' noisy-label scripts). False lets the virtual step's gradient flow through the
        weight net's input too, as the authors' 2019 class-imbalance script does.
    fast_jvp : bool, default=True
        With ``meta_gradient="exact"``: reuse the real forward's convolution and pooling
        outputs in the JVP and use a fused batch-norm tangent rule (exact either way; about
        half the JVP's cost on a CPU, see the performance page). False uses torch's generic
        forward-mode AD.
    random_state : int, RandomState instance or None, default=None
        Fixes the initialisation of both networks, the shuffling of the training data and the
        meta sampling. It seeds torch's global generator at initialisation (dropout and user
        modules draw from it), so an int gives the same fit on CPU every time.
    nan_policy : {"raise", "skip"}, default="raise"
        What to do when a loss, weight or gradient is NaN/inf: raise
        :class:`TrainingDivergedError` naming the epoch and batch, or skip the batch (no
        parameter is written).
    record_weights : bool, default=False
        Keep the weight of every training sample after every epoch in
        ``sample_weights_history_`` (for the weight-variation plots, Fig. 6).
    batch_transform : torch.nn.Module or None, default=None
        Applied on the device to every input batch (train, meta, and prediction), in train
        mode during training and eval mode for prediction: e.g.
        :class:`mwnet_sk.augment.BatchAugment` for GPU crop/flip/normalisation of uint8 images.
    data_on_device : bool, default=False
        For array inputs, keep the whole training and meta arrays on ``device`` and slice
        batches there (no host-to-device copies, no per-sample Python).
    precision : {None, "bf16", "fp16"}, default=None
        Run forwards under ``torch.autocast`` with this dtype.
    channels_last : bool, default=False
        Convert the classifier and 4-d image batches to ``torch.channels_last``.
    iterator_meta__num_workers : int, optional
        For a meta set given as a torch Dataset: DataLoader worker processes that load and
        prefetch meta batches. Any other DataLoader option routes the same way, e.g.
        ``iterator_meta__pin_memory=True``. The meta batches drawn are the same either way.
    train_split : callable or None, default=None
        skorch's internal validation split. None (the default) trains on every training row,
        as the paper does; pass e.g. ``skorch.dataset.ValidSplit(5, stratified=True)`` to
        monitor a held-out part of the (biased) training data.
    **kwargs
        Everything else skorch's ``NeuralNetClassifier`` accepts (``max_epochs``,
        ``batch_size``, ``device``, ``callbacks``, ``iterator_train__*``, ...).

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained classifier.
    weight_net_ : torch.nn.Module
        The trained weight net (on ``device``).
    optimizer_, meta_optimizer_ : torch.optim.Optimizer
        The two optimizers.
    classes_ : ndarray of shape (n_classes,)
        Class labels, in the order of the classifier's outputs.
    weight_function_ : WeightFunction
        A picklable CPU copy of the learned loss-to-weight map.
    sample_weights_ : ndarray of shape (n_rows,)
        The weight each row of X got at its last visit; NaN for meta rows and rows never
        trained on (e.g. held out by ``train_split``).
    sample_losses_ : ndarray of shape (n_rows,)
        The training loss of each row at its last visit (NaN likewise).
    sample_weights_history_ : ndarray of shape (n_epochs, n_rows)
        Only with ``record_weights=True``: ``sample_weights_`` after each epoch.
    n_steps_ : int
        Training steps taken so far (the weight net is updated on steps where
        ``n_steps_ % meta_interval == 0``).
    history_ : skorch History
        Per epoch: ``train_loss`` (weighted), ``meta_loss``, ``weight_mean``, ``weight_std``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.datasets import load_digits
    >>> from mwnet_sk import MetaWeightClassifier
    >>> from mwnet_sk.noise import make_noisy_labels, train_meta_split
    >>> from mwnet_sk.models import MLP
    >>> X, y = load_digits(return_X_y=True)
    >>> X = (X / 16).astype(np.float32)
    >>> X_tr, X_meta, y_tr, y_meta = train_meta_split(X, y, n_meta_per_class=10, random_state=0)
    >>> y_noisy = make_noisy_labels(y_tr, 0.4, random_state=0)
    >>> clf = MetaWeightClassifier(MLP, module__n_features=64, module__num_classes=10,
    ...                            lr=0.1, max_epochs=5, verbose=0, random_state=0)
    >>> clf = clf.fit(X_tr, y_noisy, meta=(X_meta, y_meta))
    >>> clf.sample_weights_.shape == (len(X_tr),)
    True
    """

    # iterator_meta__* routes to the DataLoader that loads meta batches from a Dataset.
    prefixes_ = NeuralNetClassifier.prefixes_ + ["iterator_meta"]

    # weight_net_, meta_optimizer_ and batch_transform_ are created inside skorch's
    # initialize_* contexts, so skorch registers them (prefix routing, device moves,
    # CUDA-safe pickling) exactly like module_ and optimizer_.

    def __init__(
        self,
        module,
        *,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        meta_lr=1e-3,
        meta_optimizer=torch.optim.Adam,
        meta_batch_size=None,
        weight_net=WeightNet,
        meta_gradient="exact",
        meta_interval=1,
        meta_params="all",
        normalize_weights=False,
        detach_weight_input=True,
        train_on_meta=False,
        fast_jvp=True,
        random_state=None,
        nan_policy="raise",
        record_weights=False,
        batch_transform=None,
        data_on_device=False,
        precision=None,
        channels_last=False,
        **kwargs,
    ):
        self.meta_lr = meta_lr
        self.meta_optimizer = meta_optimizer
        self.meta_batch_size = meta_batch_size
        self.weight_net = weight_net
        self.meta_gradient = meta_gradient
        self.meta_interval = meta_interval
        self.meta_params = meta_params
        self.normalize_weights = normalize_weights
        self.detach_weight_input = detach_weight_input
        self.train_on_meta = train_on_meta
        self.fast_jvp = fast_jvp
        self.random_state = random_state
        self.nan_policy = nan_policy
        self.record_weights = record_weights
        self.batch_transform = batch_transform
        self.data_on_device = data_on_device
        self.precision = precision
        self.channels_last = channels_last
        # skorch's __init__ comes last: once the net exists, skorch treats any torch component
        # assigned to it (e.g. a WeightNet instance passed as weight_net) as a fitted one.
        super().__init__(module, criterion=criterion, train_split=train_split, **kwargs)

    # ------------------------------------------------------------------ callbacks & params
    @property
    def _default_callbacks(self):
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", FinitePassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            ("valid_acc", EpochScoring(_encoded_accuracy, name="valid_acc", lower_is_better=False)),
            ("weight_monitor", WeightMonitor()),
            ("print_log", PrintLog(keys_ignored=["weight_collapsed", "meta_stalled", "meta_score_best"])),
        ]

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        # skorch's bookkeeping set, rebuilt by __init__ from the keyword arguments; as a
        # "parameter" it would be cloned and set like one.
        params.pop("_params_to_validate", None)
        return params

    def _check_hyperparameters(self):
        def positive_finite(name, value):
            if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

        positive_finite("lr", self.lr)
        positive_finite("meta_lr", self.meta_lr)
        for key in ("optimizer__lr", "meta_optimizer__lr"):
            if key in vars(self):
                positive_finite(key, vars(self)[key])
        if self.meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient must be one of {META_GRADIENTS}, got {self.meta_gradient!r}")
        if not isinstance(self.meta_interval, Integral) or isinstance(self.meta_interval, bool) or self.meta_interval < 1:
            raise ValueError(f"meta_interval must be an integer >= 1, got {self.meta_interval!r}")
        if self.nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {self.nan_policy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        check_batch_size(self.batch_size, "batch_size")
        if self.meta_batch_size is not None:
            check_batch_size(self.meta_batch_size, "meta_batch_size")
        if not isinstance(self.max_epochs, Integral) or self.max_epochs < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {self.max_epochs!r}")

    # ------------------------------------------------------------------ initialisation
    def _base_seed(self):
        if self.random_state is None:
            return int(torch.randint(0, 2**31 - 1, (1,)).item())
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def initialize(self):
        """Initialise every component (seeding them from ``random_state``) and return self."""
        self._check_hyperparameters()
        self.seed_ = self._base_seed()
        if self.random_state is not None:
            torch.manual_seed(self.seed_)
        self.n_steps_ = 0
        # A fresh fit forgets where the previous one stopped.
        for name in ("train_generator_state_", "meta_sampler_state_", "sample_weights_", "sample_losses_",
                     "resume_from_epoch_", "sample_weights_history_", "input_shape_", "n_features_in_",
                     "meta_sample_weights_", "meta_sample_losses_", "n_rows_"):
            vars(self).pop(name, None)
        super().initialize()
        return self

    def initialize_module(self):
        """Build the classifier, the weight net and the batch transform (copies of instances)."""
        kwargs = self.get_params_for("module")
        module = self.module
        if isinstance(module, torch.nn.Module) and not kwargs:
            module = copy.deepcopy(module)
        self.module_ = self.initialized_instance(module, kwargs)
        if self.channels_last:
            self.module_ = self.module_.to(memory_format=torch.channels_last)

        wkwargs = self.get_params_for("weight_net")
        weight_net = self.weight_net
        if isinstance(weight_net, torch.nn.Module) and not wkwargs:
            weight_net = copy.deepcopy(weight_net)
        self.weight_net_ = self.initialized_instance(weight_net, wkwargs)

        if self.batch_transform is not None:
            tkwargs = self.get_params_for("batch_transform")
            transform = self.batch_transform
            if isinstance(transform, torch.nn.Module) and not tkwargs:
                transform = copy.deepcopy(transform)
            self.batch_transform_ = self.initialized_instance(transform, tkwargs)
        return self

    def initialize_criterion(self):
        """The criterion, forced to per-sample losses (``reduction="none"``)."""
        kwargs = self.get_params_for("criterion")
        if kwargs.get("reduction", "none") != "none":
            raise ValueError("MetaWeightClassifier weights per-sample losses; criterion__reduction must be 'none'")
        criterion = self.criterion
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
            # the bilevel step checks the shape and says so otherwise
            self.criterion_ = criterion(**kwargs)
        return self

    def initialize_optimizer(self, triggered_directly=None):
        """The classifier optimizer (classifier parameters only) and the meta optimizer."""
        args, kwargs = self.get_params_for_optimizer("optimizer", self.module_.named_parameters())
        self.optimizer_ = self.optimizer(*args, **kwargs)

        margs, mkwargs = self.get_params_for_optimizer("meta_optimizer", self.weight_net_.named_parameters())
        if "lr" not in self.get_params_for("meta_optimizer"):
            mkwargs["lr"] = self.meta_lr
        mkwargs.setdefault("weight_decay", 1e-4)
        self.meta_optimizer_ = self.meta_optimizer(*margs, **mkwargs)
        return self

    def initialize_virtual_params(self):
        super().initialize_virtual_params()
        # ``meta_lr`` set on a fitted estimator updates the live meta optimizer, like ``lr``.
        self._register_virtual_param("meta_lr", MetaWeightClassifier._set_meta_lr)

    def _set_meta_lr(self, _param, value):
        self.meta_lr = value
        for group in self.meta_optimizer_.param_groups:
            group["lr"] = value

    # ------------------------------------------------------------------ data
    def check_data(self, X, y):
        # Labels are validated and encoded in fit; classes_ must not be re-inferred from codes.
        pass

    @property
    def classes_(self):
        if self.classes is not None:
            return np.asarray(self.classes)
        try:
            return self.classes_inferred_
        except AttributeError as exc:
            raise AttributeError("MetaWeightClassifier has no attribute 'classes_' before fit") from exc

    def get_dataset(self, X, y=None):
        """Arrays and tensors become an in-memory dataset that is batched by tensor indexing."""
        if isinstance(X, torch.utils.data.Dataset) or not is_array_like(X):
            return super().get_dataset(X, y)
        X = _as_tensor(X, "X")
        check_sample_shape(tuple(X.shape[1:]), getattr(self, "input_shape_", None), type(self).__name__)
        return ArrayDataset(X)

    def get_iterator(self, dataset, training=False):
        """Tensor-indexed batches for in-memory data, skorch's DataLoader for anything else."""
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        iterator = self.iterator_train if training else self.iterator_valid
        batch_size = kwargs.pop("batch_size", self.batch_size)
        shuffle = kwargs.pop("shuffle", training)
        if iterator is DataLoader and not kwargs and BatchIterator.supports(dataset):
            generator = self.train_generator_ if training else None
            return BatchIterator(dataset, batch_size, shuffle=shuffle, generator=generator)
        if iterator is DataLoader and training and "generator" not in kwargs:
            kwargs["generator"] = self.train_generator_
        return iterator(dataset, batch_size=batch_size if batch_size != -1 else len(dataset), shuffle=shuffle, **kwargs)

    def _device_input(self, x, training):
        x = to_device(x, self.device)
        if self.batch_transform is not None:
            self.batch_transform_.train(training)
            x = self.batch_transform_(x)
        if self.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def infer(self, x, **fit_params):
        if isinstance(x, dict) and INDEX_KEY in x:
            x = x[INPUT_KEY]
        x = self._device_input(x, training=self.module_.training)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.module_(x, **fit_params)
        with torch.autocast(device_type=torch.device(self.device).type, dtype=dtype):
            return self.module_(x, **fit_params).float()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = to_device(torch.as_tensor(y_true), self.device)
        loss = self.criterion_(y_pred, y_true)
        return loss.mean() if loss.ndim else loss

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, meta=None, **fit_params):
        """Initialise and train with the Meta-Weight-Net loop.

        Parameters
        ----------
        X : array-like, tensor or torch Dataset
            Training inputs (biased: noisy labels or class imbalance). A Dataset yields
            ``(x, y)`` pairs; its labels are read from ``y``, its ``targets`` attribute, or
            one pass over it.
        y : array-like of shape (n_samples,) or None
            Training labels of any kind scikit-learn accepts; None when X is a Dataset.
        meta : tuple, Dataset, or array-like
            The clean, balanced meta set: a pair ``(X_meta, y_meta)``; a torch Dataset of
            ``(x, y)``; or a boolean mask / integer index array over the rows of X (those rows
            are the meta set and are not trained on). The mask form survives ``Pipeline``
            preprocessing and cross-validation splitting.
        **fit_params
            Passed on to skorch (``train_split`` parameters).

        Returns
        -------
        self
        """
        fresh = not self.warm_start or not self.initialized_
        data = self._prepare_data(X, y, meta, fresh=fresh)  # bad input fails before anything is built
        if fresh:
            self.initialize()
        return self._train(data, "fit", fit_params)

    def partial_fit(self, X, y=None, classes=None, meta=None, **fit_params):
        """Continue training for ``max_epochs`` epochs without re-initialising.

        Same arguments as :meth:`fit`; ``classes`` may list every label up front (labels are
        otherwise fixed by the first call).
        """
        data = self._prepare_data(X, y, meta, fresh=not self.initialized_, classes=classes)
        if not self.initialized_:
            self.initialize()
        return self._train(data, "partial_fit", fit_params)

    def _prepare_data(self, X, y, meta, *, fresh, classes=None):
        self._check_hyperparameters()
        known = classes
        if known is None and not fresh and hasattr(self, "classes_inferred_"):
            known = self.classes_inferred_
        if self.classes is not None:
            known = np.asarray(self.classes)
        data = prepare_fit_data(X, y, meta, classes=known, train_on_meta=self.train_on_meta)
        if not fresh:
            check_sample_shape(data.sample_shape, getattr(self, "input_shape_", None), type(self).__name__)
        return data

    def _train(self, data, routing_method, fit_params):
        self.classes_inferred_ = data.classes
        self.input_shape_ = data.sample_shape
        if data.sample_shape is not None and len(data.sample_shape) == 1:
            self.n_features_in_ = data.sample_shape[0]
        self._begin_training(data)
        try:
            # Checkpoints are restored before any callback's on_train_begin, so that e.g. an
            # LRScheduler builds its schedule from the restored history and optimizer.
            for _, callback in self.callbacks_:
                if isinstance(callback, LoadInitState) and not callback.did_load_:
                    callback.restore(self)
            super().partial_fit(data.train, data.y_train, _routing_method=routing_method, **fit_params)
        finally:
            self._end_training()
        return self

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop; after a resumed checkpoint, only the epochs missing to ``max_epochs``."""
        resumed = vars(self).pop("resume_from_epoch_", None)
        if epochs is None and resumed is not None:
            epochs = max(self.max_epochs - resumed, 0)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    def training_state_dict(self) -> dict:
        """Everything beyond parameters and history that a resumed run needs (tensors and ints,
        loadable with ``torch.load(..., weights_only=True)``)."""
        live = hasattr(self, "meta_sampler_")
        state = {
            "n_steps": int(self.n_steps_),
            "seed": int(self.seed_),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "train_generator": self.train_generator_.get_state() if live else self.train_generator_state_,
            "meta_sampler": self.meta_sampler_.state_dict() if live else self.meta_sampler_state_,
            "sample_weights": self.sample_weight_buffer_.cpu() if live else self._all_samples("weights"),
            "sample_losses": self.sample_loss_buffer_.cpu() if live else self._all_samples("losses"),
        }
        history = getattr(self, "sample_weights_history_", None)
        if history is not None:
            state["sample_weights_history"] = torch.from_numpy(np.ascontiguousarray(history))
        return state

    def _all_samples(self, kind):
        """X's rows and, when trained on beside them, the meta rows: one float32 tensor."""
        parts = [getattr(self, f"sample_{kind}_"), getattr(self, f"meta_sample_{kind}_", np.empty(0))]
        return torch.as_tensor(np.concatenate(parts), dtype=torch.float32)

    def load_training_state_dict(self, state: dict):
        """Restore :meth:`training_state_dict` output (during training, into the live run)."""
        n_rows = len(state["sample_weights"])
        if hasattr(self, "sample_weight_buffer_") and len(self.sample_weight_buffer_) != n_rows:
            raise ValueError(
                f"the checkpoint was made with {n_rows} training rows but this fit has "
                f"{len(self.sample_weight_buffer_)}: resume with the same data"
            )
        self.n_steps_ = int(state["n_steps"])
        self.seed_ = int(state["seed"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if hasattr(self, "meta_sampler_"):
            self.train_generator_.set_state(state["train_generator"])
            self.meta_sampler_.load_state_dict(state["meta_sampler"])
            self.sample_weight_buffer_.copy_(state["sample_weights"])
            self.sample_loss_buffer_.copy_(state["sample_losses"])
        else:
            self.train_generator_state_ = state["train_generator"]
            self.meta_sampler_state_ = state["meta_sampler"]
            weights = state["sample_weights"].numpy().astype(np.float64)
            losses = state["sample_losses"].numpy().astype(np.float64)
            n_rows = getattr(self, "n_rows_", len(weights))
            self.sample_weights_, self.sample_losses_ = weights[:n_rows], losses[:n_rows]
            if len(weights) > n_rows:
                self.meta_sample_weights_, self.meta_sample_losses_ = weights[n_rows:], losses[n_rows:]
        if "sample_weights_history" in state:
            self.sample_weights_history_ = state["sample_weights_history"].numpy()
        return self

    def _begin_training(self, data):
        device = torch.device(self.device)
        seed = self.seed_ + 7919 * len(self.history)
        self.train_generator_ = torch.Generator().manual_seed(seed + 1)
        if getattr(self, "train_generator_state_", None) is not None:
            self.train_generator_.set_state(self.train_generator_state_)
        if self.data_on_device:
            for ds in (data.train, data.meta):
                if isinstance(ds, ArrayDataset):
                    ds.to(device)
        meta_batch_size = self.meta_batch_size or self.batch_size
        if meta_batch_size == -1:
            meta_batch_size = len(data.meta)
        sampler = MetaSampler(
            data.meta,
            meta_batch_size,
            torch.Generator().manual_seed(seed + 2),
            device,
            loader_kwargs=self.get_params_for("iterator_meta"),
        )
        previous = getattr(self, "meta_sampler_state_", None)
        if previous is not None:
            sampler.load_state_dict(previous)
        self.meta_sampler_ = sampler
        self.bilevel_ = BilevelStep(
            self.module_,
            self.weight_net_,
            self.criterion_,
            self.optimizer_,
            self.meta_optimizer_,
            meta_gradient=self.meta_gradient,
            meta_params=self.meta_params,
            normalize_weights=self.normalize_weights,
            detach_weight_input=self.detach_weight_input,
            fast_jvp=self.fast_jvp,
            autocast_dtype=PRECISIONS[self.precision],
        )
        n_rows = data.n_samples
        self.n_rows_ = data.n_rows
        keep = getattr(self, "sample_weights_", None)
        if keep is not None and len(keep) == data.n_rows:
            weights = torch.as_tensor(keep, dtype=torch.float32)
            losses = torch.as_tensor(self.sample_losses_, dtype=torch.float32)
            extra = n_rows - data.n_rows
            if extra:  # meta rows trained on beside X
                kept_meta = getattr(self, "meta_sample_weights_", None)
                kept_meta_losses = getattr(self, "meta_sample_losses_", None)
                if kept_meta is None or len(kept_meta) != extra:
                    kept_meta = kept_meta_losses = np.full(extra, np.nan)
                weights = torch.cat([weights, torch.as_tensor(kept_meta, dtype=torch.float32)])
                losses = torch.cat([losses, torch.as_tensor(kept_meta_losses, dtype=torch.float32)])
        else:
            weights = torch.full((n_rows,), float("nan"))
            losses = torch.full((n_rows,), float("nan"))
            self.sample_weights_history_ = (
                np.empty((0, data.n_rows), dtype=np.float32) if self.record_weights else None
            )
        self.sample_weight_buffer_ = weights.to(device)
        self.sample_loss_buffer_ = losses.to(device)
        self.epoch_stats_ = torch.zeros(4, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ monitoring
    def _observed_loss_range(self, quantiles=(0.05, 0.95)):
        """The 5th and 95th percentiles of the training losses seen so far (None before any)."""
        losses = self.sample_loss_buffer_
        losses = losses[torch.isfinite(losses)]
        if losses.numel() == 0:
            return None
        q = torch.quantile(losses.float(), torch.tensor(quantiles, device=losses.device))
        return float(q[0]), float(q[1])

    def _weight_function_live(self, losses):
        """The current weight net as a numpy function (for the monitor)."""
        param = next(self.weight_net_.parameters())
        was_training = self.weight_net_.training
        self.weight_net_.eval()
        try:
            with torch.no_grad():
                x = torch.as_tensor(np.asarray(losses), dtype=param.dtype, device=param.device).reshape(-1, 1)
                return self.weight_net_(x).reshape(-1).cpu().numpy()
        finally:
            self.weight_net_.train(was_training)

    def _meta_set_score(self, scoring):
        """Accuracy or negative log-loss of the classifier on the fit's meta set."""
        if scoring not in ("accuracy", "neg_log_loss"):
            raise ValueError(
                f"on the estimator's own meta set MetaScoring supports 'accuracy' and 'neg_log_loss', "
                f"got {scoring!r}; pass X_meta and y_meta for any other scorer"
            )
        dataset = self.meta_sampler_.source
        logits, labels = [], []
        for batch in self.get_iterator(dataset, training=False):
            with torch.no_grad():
                logits.append(self.evaluation_step(batch, training=False).float())
            labels.append(torch.as_tensor(batch[1]).to(logits[-1].device))
        logits, labels = torch.cat(logits), torch.cat(labels).long()
        if scoring == "accuracy":
            return (logits.argmax(1) == labels).double().mean().item()
        return -torch.nn.functional.cross_entropy(logits, labels).item()

    def _end_training(self):
        loss_range = self._observed_loss_range()
        weights = self.sample_weight_buffer_.cpu().numpy().astype(np.float64)
        losses = self.sample_loss_buffer_.cpu().numpy().astype(np.float64)
        n_rows = self.n_rows_
        self.sample_weights_, self.sample_losses_ = weights[:n_rows], losses[:n_rows]
        if len(weights) > n_rows:
            self.meta_sample_weights_, self.meta_sample_losses_ = weights[n_rows:], losses[n_rows:]
        else:
            for name in ("meta_sample_weights_", "meta_sample_losses_"):
                vars(self).pop(name, None)
        self.weight_function_ = WeightFunction(self.weight_net_, loss_range=loss_range)
        self.meta_sampler_state_ = self.meta_sampler_.state_dict()
        self.train_generator_state_ = self.train_generator_.get_state()
        # Data-holding helpers do not outlive fit (pickles stay small, no stale data).
        for name in ("meta_sampler_", "bilevel_", "sample_weight_buffer_", "sample_loss_buffer_",
                     "epoch_stats_", "train_generator_"):
            if hasattr(self, name):
                delattr(self, name)

    def train_step(self, batch, **fit_params):
        """One Meta-Weight-Net step (Algorithm 1, steps 3-7) on a training batch."""
        if fit_params:
            raise TypeError(
                f"MetaWeightClassifier does not pass fit parameters to module.forward; got {sorted(fit_params)}"
            )
        self._set_training(True)
        xi, yi = batch
        rows = xi[INDEX_KEY]
        x = self._device_input(xi[INPUT_KEY], training=True)
        y = to_device(torch.as_tensor(yi), self.device)
        update = self.n_steps_ % self.meta_interval == 0
        x_meta = y_meta = None
        if update:
            x_meta, y_meta = self.meta_sampler_.next()
            x_meta = self._device_input(x_meta, training=True)

        def on_grad_computed():
            self.notify(
                "on_grad_computed",
                named_parameters=TeeGenerator(self.module_.named_parameters()),
                batch=batch,
                training=True,
            )

        try:
            result = self.bilevel_.step(
                x, y, x_meta, y_meta, update_weight_net=update, on_grad_computed=on_grad_computed
            )
        except NonFiniteError as err:
            epoch = len(self.history)
            batch_no = len(self.history[-1, "batches"]) if self.history else 0
            msg = f"non-finite {err.stage} in epoch {epoch}, batch {batch_no}"
            if self.nan_policy == "raise":
                raise TrainingDivergedError(
                    msg + "; lower the learning rates, check the inputs, or pass nan_policy='skip'"
                ) from err
            self.n_steps_ += 1
            self.history.record_batch("skipped", 1)
            nan = torch.tensor(float("nan"), device=self.device)
            return {"loss": nan, "y_pred": torch.zeros(len(y), len(self.classes_inferred_), device=self.device)}

        self.n_steps_ += 1
        dev_rows = torch.as_tensor(rows).to(self.sample_weight_buffer_.device)
        self.sample_weight_buffer_[dev_rows] = result.weights.float()
        self.sample_loss_buffer_[dev_rows] = result.losses.float()
        stats = self.epoch_stats_
        stats[0] += result.weights.sum().double()
        stats[1] += (result.weights.double() ** 2).sum()
        stats[2] += len(result.weights)
        if result.meta_loss is not None:
            stats[3] += result.meta_loss.double()
            self.meta_steps_in_epoch_ = getattr(self, "meta_steps_in_epoch_", 0) + 1
        return {"loss": result.loss, "y_pred": result.logits}

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        if hasattr(self, "epoch_stats_"):
            self.epoch_stats_.zero_()
        self.meta_steps_in_epoch_ = 0

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        if not hasattr(self, "epoch_stats_"):
            return
        total, squares, count, meta_total = self.epoch_stats_.tolist()
        if count:
            mean = total / count
            self.history.record("weight_mean", mean)
            self.history.record("weight_std", float(np.sqrt(max(squares / count - mean**2, 0.0))))
        if self.meta_steps_in_epoch_:
            self.history.record("meta_loss", meta_total / self.meta_steps_in_epoch_)
        if self.record_weights:
            current = self.sample_weight_buffer_[: self.n_rows_].cpu().numpy().astype(np.float32)
            self.sample_weights_history_ = np.concatenate([self.sample_weights_history_, current[None]])

    # ------------------------------------------------------------------ prediction
    def __sklearn_is_fitted__(self):
        return bool(self.initialized_) and hasattr(self, "classes_inferred_")

    def predict_proba(self, X):
        """Class probabilities for X, columns in the order of ``classes_``."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first.")
        return super().predict_proba(X)

    def predict(self, X):
        """Class labels (in the original label space) for X."""
        codes = self.predict_proba(X).argmax(axis=1)
        return self.classes_[codes]
