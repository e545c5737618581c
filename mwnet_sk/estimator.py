"""MetaWeightClassifier: the Meta-Weight-Net bilevel loop as a skorch ``NeuralNetClassifier``."""

from __future__ import annotations

import numbers

import copy
from numbers import Real

import numpy as np
import torch

from ._base import MetaSetClassifier, TrainingDivergedError, _has_batchnorm, _plain
from ._distributed import shard_slicer
from ._validation import parameter_constraints
from .callbacks import WeightMonitor
from .core.bilevel import META_GRADIENTS, PRECISIONS, BilevelStep
from .core.weight_net import PerClassWeightNet, WeightFunction

__all__ = ["MetaWeightClassifier", "TrainingDivergedError"]

# The weight net's SGD unless routed otherwise (meta_optimizer__momentum=...): the authors' 2019 scripts.
_SGD_META_DEFAULTS = {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


class MetaWeightClassifier(MetaSetClassifier):
    """Meta-Weight-Net (Shu et al., NeurIPS 2019) for classification with biased training data.

    Trains any PyTorch classifier on noisy or imbalanced data while learning, from a small
    clean and balanced meta set, a weighting function ``V(loss; Θ)`` (an MLP) that maps each
    training sample's loss to its weight. Every training step is Algorithm 1 of the paper:
    a virtual SGD step of the classifier with the current weights (Eq. 3), one step of the
    weight net on the meta loss at the virtual weights (Eq. 4), and the real classifier step
    with the updated weights (Eq. 5). By default the weight-net gradient is computed exactly
    with first-order quantities only (Eq. 6, one forward-mode JVP), without the second-order
    graph of the paper's code.

    The defaults come from a robustness study (the "Choosing a method" page) and differ from
    the paper in four settings: the weighting function has a learned correction per class on
    top of the paper's loss-to-weight curve (``weight_net=PerClassWeightNet``; a loss-only
    curve cannot separate flipped labels), the weights are normalised by their batch sum
    (``normalize_weights=True``, as in the authors' 2019 scripts), the clean meta rows are
    trained on too (``train_on_meta=True``), and predictions are made for the meta set's class
    frequencies (``target_prior="meta"``: a long tail, or noisy labels' skewed frequencies, no
    longer bias them). The weight net learns from the first step, as in the paper, and is
    trained by SGD with momentum, as in the authors' 2019 scripts, at 1e-2.
    ``weight_net=WeightNet, normalize_weights=False, train_on_meta=False,
    target_prior="train"`` is the paper (Eq. 1, the 1-100-1 MLP, the meta set
    held out, the network's own probabilities); the authors' exact settings are presets in
    :mod:`mwnet_sk.reproduce.protocols`.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        The classifier; it must return logits (one per class). Constructor arguments route
        with ``module__name=value``. An instance is copied at initialisation, so refits and
        clones start from the weights you passed, never from trained ones. A dict input X
        is passed as keyword arguments (``module(**x)``).
    criterion : loss class or instance, default=torch.nn.CrossEntropyLoss
        Per-sample loss on logits; it is built with ``reduction="none"``. A plain function is
        refused (wrap it in an ``nn.Module``).
    optimizer : torch optimizer class, default=torch.optim.SGD
        Classifier optimizer; ``optimizer__*`` routes to it and ``lr`` is its learning rate.
        It trains the classifier's and the criterion's parameters. Its current learning rate
        (per parameter group) is the step size α of the virtual step, so learning-rate
        schedules apply to both. Closure optimizers (LBFGS) are supported: the closure
        re-evaluates Eq. 5's objective (weights fixed) at the moved weights.
    lr : float, default=0.01
        Classifier learning rate.
    meta_lr : float, default=1e-2
        Learning rate of the weight-net optimizer (β in Eq. 4). 0 freezes the weighting
        function (e.g. a transferred ``weight_function_``); ``meta`` is then optional.
    meta_optimizer : torch optimizer class, default=torch.optim.SGD
        Optimizer of the weight net; ``meta_optimizer__*`` routes to it. SGD gets momentum 0.9
        (Nesterov) and weight decay 5e-4 unless you route other values (the authors' 2019
        scripts); any other optimizer gets only what you pass.
    meta_batch_size : int or None, default=None
        Meta batch size m; None means ``batch_size``, -1 the whole meta set. A size larger
        than the meta set is capped at the meta set's size.
    weight_net : torch.nn.Module class or instance, or WeightFunction, default=PerClassWeightNet
        The weighting function; ``weight_net__hidden_size``, ``weight_net__loss_scale`` (the net
        reads ``loss / loss_scale``; 1, the raw loss, as the paper) etc. route to it.
        :class:`~mwnet_sk.core.weight_net.PerClassWeightNet` reads the loss and the given label
        (the paper's curve plus a per-class correction); ``WeightNet`` is the paper's 1-100-1
        MLP of the loss alone. A custom module
        must map a ``(n, 1)`` tensor of losses to ``(n, 1)`` weights in [0, 1] (checked at
        initialisation); one with ``uses_labels = True`` gets the labels too
        (``weight_net(losses, labels)``, e.g. :class:`~mwnet_sk.core.weight_net.ClassAwareWeightNet`).
        A fitted ``WeightFunction`` starts from what another fit learned (with ``meta_lr=0``:
        applied frozen, no meta set needed); to carry a function over to other data, learn it
        with ``weight_net=WeightNet``: a per-class function's corrections belong to the data
        they were learned on (see the "Choosing a method" page).
    meta_gradient : {"exact", "unrolled", "finite_difference"}, default="exact"
        ``"exact"``: first-order Eq. 6 with one JVP (fast, equal to ``"unrolled"`` up to
        float rounding); ``"unrolled"``: differentiate through the virtual step with a
        second-order graph (the paper's code; the reference); ``"finite_difference"``:
        central differences for the train/meta gradient similarities.
    meta_interval : int, default=1
        Update the weight net every ``meta_interval`` steps (the classifier steps every
        step with the current weights). 1 is the paper.
    warmup_epochs : int or float, default=0
        Train plainly (every weight 1, the weight net untouched) for this many epochs first; a
        float in [0, 1) is a fraction of ``max_epochs``. 0 is the paper and the default: in the
        robustness study a warm-up of 20% of the epochs left the weighting function flat on 2
        of 30 long-tail runs and tied plain training on one, where without it every one of the
        120 runs gained and no function ended flat. A run resumed with a
        larger ``max_epochs`` keeps weighting once it has begun (the warm-up never comes back).
    meta_params : "all", "last" or list of str, default="all"
        Parameters that take the virtual step. ``"last"`` restricts the virtual step and the
        meta-gradient to the last layer (a FaMUS-like approximation); "all" is the paper.
        Frozen parameters (``requires_grad=False``, e.g. by skorch's ``Freezer``) never do.
    normalize_weights : bool, default=True
        Divide the weighted loss by the sum of the weights (the authors' 2019 scripts) instead
        of the batch size (Eq. 1). Without it the weight net can raise every weight at once
        and flatten into a constant, or invert (in the robustness study, on the "Choosing a
        method" page, 12 of 50 uniform-noise runs ranked corrupted rows first without it).
    detach_weight_input : bool, default=True
        Feed the weight net the detached loss in the virtual step (Eq. 3 as written, and the
        authors' noisy-label scripts). False lets the virtual step's gradient flow through the
        weight net's input too, as the authors' 2019 class-imbalance script does.
    train_on_meta : bool, default=True
        Also train on the meta rows (weighted by the weight net like every training row): a
        mask's rows stay in the training set, a separate meta set's rows are appended to it.
        False is the paper (the meta set is held out of training).
    fast_jvp : bool, default=True
        With ``meta_gradient="exact"``: reuse the real forward's convolution and pooling
        outputs in the JVP and use a fused batch-norm tangent rule (exact either way).
    random_state : int, RandomState instance or None, default=None
        Fixes the initialisation of both networks, the shuffling of the training data and the
        meta sampling. It seeds torch's global generator at initialisation (dropout and user
        modules draw from it), so an int gives the same fit on CPU every time.
    nan_policy : {"raise", "skip"}, default="raise"
        What to do when a loss, weight or gradient is NaN/inf: raise
        :class:`TrainingDivergedError` naming the epoch and batch, or skip the batch. Either
        way the batch leaves no trace (parameters, BatchNorm statistics, both optimizers and
        the weight net are as before it); an epoch in which every batch is skipped raises.
    record_weights : bool, default=False
        Keep the weight of every training row after every epoch in
        ``sample_weights_history_`` (for the weight-variation plots, Fig. 6).
    batch_transform : torch.nn.Module or None, default=None
        Applied on the device to every input batch (train, meta, and prediction), in train
        mode during training and eval mode for prediction: e.g.
        :class:`mwnet_sk.augment.BatchAugment` for GPU crop/flip/normalisation of uint8 images.
        With a batch transform, integer inputs are kept as they are (the transform scales
        them); without one they become float32.
    data_on_device : bool, default=False
        For array inputs, keep the whole training and meta arrays on ``device`` and slice
        batches there (no host-to-device copies, no per-sample Python).
    precision : {None, "bf16", "fp16"}, default=None
        Run forwards under ``torch.autocast`` with this dtype.
    channels_last : bool, default=False
        Convert the classifier and 4-d image batches to ``torch.channels_last``.
    sync_batchnorm : bool, default=False
        In a data-parallel fit (``torchrun``), normalise training-mode batch norm with the
        statistics of the global batch instead of each process's part (DDP's default), so a
        model with BatchNorm equals one process with the global batch, up to float rounding.
        It costs two small all-reduces per batch-norm layer and forward (and two in the
        backward), and the exact meta-gradient's JVP then runs without ``fast_jvp``'s shortcuts.
        Works on CPU (gloo) and CUDA (NCCL), not with ``compile=True``; without a process group
        it changes nothing.
    target_prior : {"meta", "train"} or array-like of shape (n_classes,), default="meta"
        The class frequencies that ``predict_proba``, ``predict`` and ``score`` predict for.
        The network learns the class frequencies of its training rows; where the data it is
        for has others, Bayes' rule shifts each class's logit by ``log target − log train``
        (:mod:`mwnet_sk.core.prior`; Saerens et al. 2002, the logit adjustment of Menon et al.
        2021). ``"meta"``: the meta set's frequencies, since Meta-Weight-Net takes the clean
        meta set to be drawn from the data the model is for (a balanced meta set gives
        balanced predictions); without a meta set, as ``"train"``. ``"train"``: the
        training rows' frequencies, i.e. the network's own probabilities (the paper). An
        array: known frequencies, one per class in the order of ``classes_``. The shift
        applies to predictions only; training, the losses and ``forward`` are unchanged, so
        ``set_params(target_prior=...)`` on a fitted estimator changes its predictions at once,
        without refitting. If your meta set's class mix is not that of the data you predict on
        (e.g. a balanced meta set for naturally imbalanced data), pass the real frequencies or
        ``"train"``.
    iterator_meta__num_workers : int, optional
        For a meta set given as a torch Dataset: DataLoader worker processes that load and
        prefetch meta batches (ended when ``fit`` ends). Any other DataLoader option routes
        the same way, e.g. ``iterator_meta__pin_memory=True``. The meta batches drawn are the
        same either way.
    train_split : callable or None, default=None
        skorch's internal validation split. None (the default) trains on every training row,
        as the paper does; pass e.g. ``skorch.dataset.ValidSplit(5, stratified=True)`` to
        monitor a held-out part of the (biased) training data.
    **kwargs
        Everything else skorch's ``NeuralNetClassifier`` accepts (``max_epochs``,
        ``batch_size``, ``device``, ``callbacks``, ``iterator_train__*``, ``compile``, ...).

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained classifier.
    weight_net_ : torch.nn.Module
        The trained weight net (on ``device``).
    optimizer_, meta_optimizer_ : torch.optim.Optimizer
        The two optimizers (``meta_optimizer_`` is None for a frozen weight net without
        parameters).
    classes_ : ndarray of shape (n_classes,)
        Class labels, in the order of the classifier's outputs.
    weight_function_ : WeightFunction
        A picklable CPU copy of the learned loss-to-weight map;
        ``weight_function_.profile()`` summarises it in one line.
    train_prior_, target_prior_ : ndarray of shape (n_classes,)
        The class frequencies of the rows trained on (meta rows included when trained on; a
        class without rows counts as one) and those predictions are made for (see
        ``target_prior``); equal when predictions are the network's own.
    sample_weights_ : ndarray of shape (n_rows,)
        The weight each row of X got at its last visit; NaN for rows never trained on (held
        out meta rows, rows held out by ``train_split``).
    sample_losses_ : ndarray of shape (n_rows,)
        The training loss of each row at its last visit (NaN likewise).
    meta_sample_weights_, meta_sample_losses_ : ndarray of shape (n_meta,)
        Only when a separate meta set (pair or Dataset) is trained on: its rows' weights and
        losses.
    sample_weights_history_ : ndarray of shape (n_epochs, n_rows)
        Only with ``record_weights=True``: ``sample_weights_`` after each epoch.
    n_steps_ : int
        Training steps taken so far (the weight net is updated on steps where
        ``n_steps_ % meta_interval == 0``).
    training_state_ : TrainingState
        Everything beyond parameters that shapes the next step (saved whole by
        :class:`mwnet_sk.callbacks.Checkpoint`).
    n_features_in_ : int
        Number of features of 2-d array input.
    feature_names_in_ : ndarray of str
        Column names of a DataFrame X (a predict with other columns is refused).
    history_ : skorch History
        Per epoch: ``train_loss`` (weighted), ``meta_loss``, ``weight_mean``, ``weight_std``,
        and the weighting function's ``weight_fn_spread`` / ``weight_fn_trend`` (see
        :class:`~mwnet_sk.callbacks.WeightMonitor`).

    Notes
    -----
    Differences from skorch's ``NeuralNetClassifier``, by design: the criterion must give
    per-sample losses on logits; fit parameters reach ``train_split`` but never
    ``module.forward`` (refused with a ``TypeError``); sparse input is refused; the weight net
    is a registered module (saved with ``f_weight_net``); overriding ``get_loss`` or ``infer``
    changes validation and prediction but not the bilevel step, which computes its own losses;
    skorch's own ``Checkpoint``/``LoadInitState``/``TrainEndCheckpoint`` are refused (they would
    save or restore only part of a run: use :mod:`mwnet_sk.callbacks`); with
    ``train_split=None`` there is no ``valid_loss``, so monitor ``"meta_loss"`` (e.g.
    ``EarlyStopping(monitor="meta_loss")``) or pass a ``train_split``.

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

    _auxiliary_modules = ("weight_net", "batch_transform")
    _fit_attributes = MetaSetClassifier._fit_attributes + ("weight_function_",)
    _parameter_constraints = parameter_constraints(META_GRADIENTS, PRECISIONS, ("raise", "skip"))

    def __init__(
        self,
        module,
        *,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        meta_lr=1e-2,
        meta_optimizer=torch.optim.SGD,
        meta_batch_size=None,
        weight_net=PerClassWeightNet,
        meta_gradient="exact",
        meta_interval=1,
        warmup_epochs=0,
        meta_params="all",
        normalize_weights=True,
        detach_weight_input=True,
        train_on_meta=True,
        fast_jvp=True,
        random_state=None,
        nan_policy="raise",
        record_weights=False,
        batch_transform=None,
        data_on_device=False,
        precision=None,
        channels_last=False,
        sync_batchnorm=False,
        target_prior="meta",
        **kwargs,
    ):
        self.meta_lr = meta_lr
        self.meta_optimizer = meta_optimizer
        self.meta_batch_size = meta_batch_size
        self.weight_net = weight_net
        self.meta_gradient = meta_gradient
        self.meta_interval = meta_interval
        self.warmup_epochs = warmup_epochs
        self.meta_params = meta_params
        self.normalize_weights = normalize_weights
        self.detach_weight_input = detach_weight_input
        self.fast_jvp = fast_jvp
        self.record_weights = record_weights
        super().__init__(
            module,
            criterion=criterion,
            train_split=train_split,
            train_on_meta=train_on_meta,
            random_state=random_state,
            nan_policy=nan_policy,
            batch_transform=batch_transform,
            data_on_device=data_on_device,
            precision=precision,
            channels_last=channels_last,
            sync_batchnorm=sync_batchnorm,
            target_prior=target_prior,
            **kwargs,
        )

    # ------------------------------------------------------------------ callbacks & params
    @property
    def _default_callbacks(self):
        callbacks = super()._default_callbacks
        return callbacks[:-1] + [("weight_monitor", WeightMonitor())] + callbacks[-1:]

    def _meta_required(self) -> bool:
        """Whether the weight net learns: its effective learning rate (a routed
        ``meta_optimizer__lr`` overrides ``meta_lr``) is not 0."""
        lr = self.get_params_for("meta_optimizer").get("lr", self.meta_lr)
        return not (isinstance(lr, Real) and lr == 0)

    # ------------------------------------------------------------------ initialisation
    def initialize_module(self):
        """Build the classifier, the weight net (checked) and the batch transform."""
        super().initialize_module()
        kwargs = self.get_params_for("weight_net")
        weight_net = self.weight_net
        if isinstance(weight_net, WeightFunction):
            if kwargs:
                raise ValueError("weight_net__* parameters cannot rebuild a fitted WeightFunction")
            weight_net = copy.deepcopy(weight_net.weight_net)
            for p in weight_net.parameters():
                p.requires_grad_(True)
            self.weight_net_ = weight_net.train()
        else:
            self.weight_net_ = self._instance("weight_net")
        self._check_weight_net(self.weight_net_)
        return self

    def _check_weight_net(self, net):
        """The weight-net contract: (n, 1) losses -> (n, 1) weights in [0, 1], with parameters
        to learn (unless ``meta_lr=0``)."""
        name = type(net).__name__
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"weight_net must build a torch.nn.Module, got {name}")
        params = [p for p in net.parameters() if p.requires_grad]
        if not params and self._meta_required():
            raise ValueError(
                f"the weight net {name} has no trainable parameters, so there is nothing to learn; "
                "give it parameters, or pass meta_lr=0 to use it as a fixed weighting function"
            )
        dtype = params[0].dtype if params else torch.float32
        probe = torch.tensor([[0.0], [0.5], [2.0], [8.0]], dtype=dtype)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = net(probe, torch.zeros(4, dtype=torch.long)) if getattr(net, "uses_labels", False) else net(probe)
        finally:
            net.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4, 1):
            raise ValueError(
                f"the weight net {name} must map a (n, 1) tensor of losses to (n, 1) weights; for n=4 it "
                f"returned {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        if not bool(torch.isfinite(out).all()) or float(out.min()) < 0 or float(out.max()) > 1:
            raise ValueError(
                f"the weight net {name} must return weights in [0, 1] (e.g. end with a sigmoid); for losses "
                f"0, 0.5, 2, 8 it returned {out.reshape(-1).tolist()}"
            )

    def initialize_optimizer(self, triggered_directly=None):
        """The classifier optimizer (classifier and criterion parameters) and the meta optimizer."""
        super().initialize_optimizer(triggered_directly)
        params = [(n, p) for n, p in self.weight_net_.named_parameters() if p.requires_grad]
        if not params:
            self.meta_optimizer_ = None
            return self
        margs, mkwargs = self.get_params_for_optimizer("meta_optimizer", params)
        if "lr" not in self.get_params_for("meta_optimizer"):
            mkwargs["lr"] = self.meta_lr
        if self.meta_optimizer is torch.optim.SGD:
            # the default's settings, as in the authors' 2019 scripts
            for key, value in _SGD_META_DEFAULTS.items():
                mkwargs.setdefault(key, value)
            if "nesterov" not in self.get_params_for("meta_optimizer") and (
                    not mkwargs.get("momentum") or mkwargs.get("dampening", 0)):
                mkwargs["nesterov"] = False  # Nesterov needs momentum and no dampening: routed ones win
        self.meta_optimizer_ = self.meta_optimizer(*margs, **mkwargs)
        return self

    def initialize_virtual_params(self):
        super().initialize_virtual_params()
        # ``meta_lr`` set on a fitted estimator updates the live meta optimizer, like ``lr``.
        self._register_virtual_param("meta_lr", MetaWeightClassifier._set_meta_lr)

    def _set_meta_lr(self, _param, value):
        self.meta_lr = value
        if self.meta_optimizer_ is not None:
            for group in self.meta_optimizer_.param_groups:
                group["lr"] = value

    # ------------------------------------------------------------------ training
    def _meta_batch_size(self, data):
        size = self.meta_batch_size or self.batch_size
        return len(data.meta) if size == -1 else size

    def _meta_source(self, data) -> dict:
        if data.meta is None or not self._meta_required():
            return {}
        reducer = self._reducer()
        world = 1 if reducer is None else reducer.world_size
        return {
            # a global meta batch of meta_batch_size per process; each process loads its part
            "meta_source": data.meta,
            "meta_batch_size": self._meta_batch_size(data) * world,
            "loader_kwargs": self.get_params_for("iterator_meta"),
            "slicer": None if reducer is None else shard_slicer(reducer.rank, world),
            "min_last": self._min_batch(),
        }

    def _check_components(self, data):
        super()._check_components(data)
        if _has_batchnorm(self.module_):
            if self.batch_size == 1:
                raise ValueError("batch_size=1 cannot train a module with BatchNorm (it cannot normalise one "
                                 "sample in training mode): use batch_size >= 2")
            if data.meta is not None and self._meta_required():
                if len(data.meta) == 1:
                    raise ValueError("the meta set has 1 row, but the module has BatchNorm, which needs meta "
                                     "batches of at least 2 rows: use a larger meta set")
                if self._meta_batch_size(data) == 1:
                    raise ValueError("meta_batch_size=1 cannot evaluate a module with BatchNorm in training mode: "
                                     "use meta_batch_size >= 2")

    def _replicated_modules(self):
        return super()._replicated_modules() + [self.weight_net_]

    def _check_data_parallel(self):
        super()._check_data_parallel()
        if self.meta_gradient == "unrolled":
            raise ValueError(
                "meta_gradient='unrolled' (the second-order graph) does not compose with data-parallel "
                "training; the exact first-order meta-gradient (meta_gradient='exact', the default) does"
            )

    def _begin_training(self, data):
        fresh = getattr(self, "training_state_", None) is None
        unset = getattr(self.weight_net_, "class_groups", None) is not None and self.weight_net_.class_groups.numel() == 0
        if (fresh or unset) and callable(getattr(self.weight_net_, "set_class_counts", None)):
            # a class-aware weight net groups the classes by their training sizes (also one rebuilt by
            # set_params(weight_net__...) between a fit and a partial_fit)
            self.weight_net_.set_class_counts(np.bincount(data.y_train, minlength=len(data.classes)))
        if self._meta_required() and self.meta_optimizer_ is None:
            raise ValueError(
                "the weight net has no trainable parameters, so there is nothing to learn at meta_lr="
                f"{self.meta_lr!r}; give it parameters, or keep meta_lr=0 to use it as a fixed weighting function"
            )
        super()._begin_training(data)
        self.epoch_stats_ = torch.zeros(4, dtype=torch.float64, device=torch.device(self.device))
        self.meta_steps_in_epoch_ = 0

    def _end_training(self):
        super()._end_training()
        self._set_weight_function()
        for name in ("bilevel_", "bilevel_key_", "epoch_stats_", "meta_steps_in_epoch_"):
            vars(self).pop(name, None)

    def _set_weight_function(self):
        state = getattr(self, "training_state_", None)
        loss_range = state.loss_range() if state is not None else None
        self.weight_function_ = WeightFunction(self.weight_net_, loss_range=loss_range)

    def _after_load(self):
        if getattr(self, "weight_net_", None) is not None:
            self._set_weight_function()

    def _reducer(self):
        from ._distributed import current_reducer

        return current_reducer()

    def _bilevel(self) -> BilevelStep:
        """The step, built again whenever the classifier, an optimizer, the criterion or the
        set of trainable parameters changed (a callback may have rebuilt or frozen them)."""
        module = _plain(self.module_)
        key = (id(module), id(self.module_), id(self.optimizer_), id(self.weight_net_), id(self.meta_optimizer_),
               id(self.criterion_), tuple(p.requires_grad for p in module.parameters()),
               tuple(len(g["params"]) for g in self.optimizer_.param_groups))
        if getattr(self, "bilevel_key_", None) != key:
            if self._reducer() is not None and any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
                raise ValueError(
                    "the module has torch.nn.SyncBatchNorm layers, whose autograd function has no forward-mode "
                    "derivative, which the exact meta-gradient needs in a data-parallel fit. Keep plain "
                    "BatchNorm layers (do not call convert_sync_batchnorm) and pass sync_batchnorm=True for "
                    "global batch statistics."
                )
            self.bilevel_ = BilevelStep(
                module,
                self.weight_net_,
                self.criterion_,
                self.optimizer_,
                self.meta_optimizer_,
                meta_gradient=self.meta_gradient,
                meta_params=self.meta_params,
                normalize_weights=self.normalize_weights,
                detach_weight_input=self.detach_weight_input,
                # the fast JVP's batch-norm rule uses each process's own statistics
                fast_jvp=self.fast_jvp and not (self.sync_batchnorm and self._reducer() is not None),
                autocast_dtype=PRECISIONS[self.precision],
                # a compiled forward cannot be differentiated twice: the unrolled mode runs eager
                forward_module=self.module_ if self.module_ is not module and self.meta_gradient != "unrolled" else None,
                reducer=self._reducer(),
            )
            self.bilevel_key_ = key
        return self.bilevel_

    def _warmup(self) -> int:
        """Warm-up length in epochs (a float ``warmup_epochs`` is a fraction of ``max_epochs``)."""
        if isinstance(self.warmup_epochs, numbers.Integral):
            return int(self.warmup_epochs)
        return int(round(float(self.warmup_epochs) * self.max_epochs))  # any real, numpy's too

    def _in_warmup(self) -> bool:
        """Whether the current epoch (history[-1]) trains plainly: within the warm-up, and no
        earlier epoch updated the weight net. A run resumed with a larger ``max_epochs`` (a
        fractional warm-up grows with it) never falls back into warm-up once weighting began."""
        if len(self.history) > self._warmup():
            return False
        return not any(np.isfinite(row.get("meta_loss", np.nan)) for row in self.history[:-1])

    def _step(self, x, y, batch, on_grad_computed):
        state = self.training_state_
        warming_up = self.epoch_in_warmup_
        update = not warming_up and state.meta_sampler is not None and state.n_steps % self.meta_interval == 0
        x_meta = y_meta = None
        if update:
            x_meta, y_meta = state.meta_sampler.next()
            x_meta = self._device_input(x_meta, training=True)
        return self._bilevel().step(x, y, x_meta, y_meta, update_weight_net=update, uniform=warming_up,
                                    on_grad_computed=on_grad_computed)

    def _after_step(self, result):
        stats = self.epoch_stats_
        stats[0] += result.weights.sum().double()
        stats[1] += (result.weights.double() ** 2).sum()
        stats[2] += len(result.weights)
        if result.meta_loss is not None:
            stats[3] += result.meta_loss.double()
            self.meta_steps_in_epoch_ += 1

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        self.epoch_in_warmup_ = self._in_warmup()  # once per epoch, not per step
        if hasattr(self, "epoch_stats_"):
            self.epoch_stats_.zero_()
            self.meta_steps_in_epoch_ = 0

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if hasattr(self, "epoch_stats_"):
            reducer = self._reducer()
            if reducer is not None:  # the meta losses are already averaged over the processes
                reducer.sum_([self.epoch_stats_[:3]])
            total, squares, count, meta_total = self.epoch_stats_.tolist()
            if count:
                mean = total / count
                self.history.record("weight_mean", mean)
                self.history.record("weight_std", float(np.sqrt(max(squares / count - mean**2, 0.0))))
            # NaN in an epoch without a meta step (warm-up): every row of the table has the column
            meta_loss = meta_total / self.meta_steps_in_epoch_ if self.meta_steps_in_epoch_ else float("nan")
            if self.meta_steps_in_epoch_ or self._meta_required():
                self.history.record("meta_loss", meta_loss)
        super().on_epoch_end(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)

    # ------------------------------------------------------------------ monitoring
    def _observed_loss_range(self, quantiles=(0.05, 0.95)):
        """Percentiles of each training row's latest loss (None before any row was seen)."""
        state = getattr(self, "training_state_", None)
        return None if state is None else state.loss_range(quantiles)

    def _live_weight_function(self) -> WeightFunction:
        """The current weight net as a :class:`WeightFunction` (a frozen CPU copy, for the monitor):
        one way to read a weighting function, class-aware or not, during fit and after it."""
        return WeightFunction(self.weight_net_)

    # ------------------------------------------------------------------ fitted attributes
    def _state_view(self, name):
        state = vars(self).get("training_state_")
        if state is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} before fit")
        return state

    @property
    def sample_weights_(self):
        return self._state_view("sample_weights_").weights_of_rows()

    @property
    def sample_losses_(self):
        return self._state_view("sample_losses_").losses_of_rows()

    @property
    def meta_sample_weights_(self):
        values = self._state_view("meta_sample_weights_").weights_of_meta()
        if values is None:
            raise AttributeError("meta_sample_weights_ exists only when a separate meta set is trained on")
        return values

    @property
    def meta_sample_losses_(self):
        values = self._state_view("meta_sample_losses_").losses_of_meta()
        if values is None:
            raise AttributeError("meta_sample_losses_ exists only when a separate meta set is trained on")
        return values

    @property
    def sample_weights_history_(self):
        history = self._state_view("sample_weights_history_").weights_history
        if history is None:
            raise AttributeError("sample_weights_history_ exists only with record_weights=True")
        return history.numpy()
