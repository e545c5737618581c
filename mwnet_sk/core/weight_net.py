"""The weighting function V(loss; Θ) of Meta-Weight-Net and its fitted, picklable form."""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["WeightNet", "ClassAwareWeightNet", "PerClassWeightNet", "WeightFunction", "WeightProfile", "weight_profile",
           "size_groups"]

#: A weighting function whose weights differ by less than this fraction of their largest value
#: over the losses seen is "flat": every sample gets (nearly) the same weight, so the step is
#: plain training with a rescaled learning rate.
FLAT_SPREAD = 0.1


@dataclass(frozen=True)
class WeightProfile:
    """The shape of a weighting function over a range of losses.

    Attributes
    ----------
    loss_range : tuple of float
        The losses it was evaluated on (low, high), e.g. the 5th and 95th percentiles of the
        training losses.
    weight_range : tuple of float
        Smallest and largest weight over that range (over every class, for a class-aware
        function).
    spread : float
        ``(max - min) / max`` of the weights: 0 for a constant function, 1 when some loss gets
        weight 0. Scale-free, so it means the same with and without ``normalize_weights``.
    trend : {"decreasing", "increasing", "flat", "non-monotonic", "class-dependent"}
        ``"flat"`` when ``spread < FLAT_SPREAD``; decreasing weights down-weight high-loss
        samples (label noise, Fig. 1e of the paper), increasing ones up-weight them (class
        imbalance, Fig. 1d). A class-aware function has the trend its classes share, or
        ``"class-dependent"`` when they differ (e.g. decreasing for some classes and
        increasing for others under flip noise, or another level per class).
    class_trends : tuple of str or None
        For a class-aware function, the trend of each class's curve (index = class index).
    """

    loss_range: tuple
    weight_range: tuple
    spread: float
    trend: str
    class_trends: tuple | None = None

    def __str__(self) -> str:
        lo, hi = self.loss_range
        trend = self.trend
        if trend == "class-dependent" and self.class_trends:  # e.g. "(8 decreasing, 2 increasing)"
            counts = collections.Counter(self.class_trends)
            trend += " (" + ", ".join(f"{n} {t}" for t, n in counts.most_common()) + ")"
        return (f"{trend}, weights {self.weight_range[0]:.3g}-{self.weight_range[1]:.3g} "
                f"over losses {lo:.3g}-{hi:.3g} (spread {self.spread:.2f})")


def _trend(weights: np.ndarray, high: float) -> str:
    """The trend of one curve; steps within 1% of ``high`` (the largest weight) are float noise."""
    low_c, high_c = float(weights.min()), float(weights.max())
    if high_c - low_c < FLAT_SPREAD * high:
        return "flat"
    steps = np.diff(weights)
    tol = 0.01 * max(high, 1e-12)
    if np.all(steps <= tol):
        return "decreasing"
    if np.all(steps >= -tol):
        return "increasing"
    return "non-monotonic"


def weight_profile(weight_fn, loss_low: float, loss_high: float, n_points: int = 33, labels=None) -> WeightProfile:
    """Evaluate ``weight_fn`` (losses -> weights, ndarray in and out) on ``[loss_low, loss_high]``.

    A tolerance of 1% of the largest weight separates a monotonic function from a
    non-monotonic one, so float noise on a plateau does not count as a turn. With ``labels``
    (class indices) the function is class-aware, called as ``weight_fn(losses, label)`` for
    each class: the spread is taken over every class's weights, so curves that cancel out on
    average (flip noise) do not count as flat.
    """
    if not np.isfinite(loss_low) or not np.isfinite(loss_high):
        raise ValueError(f"the loss range must be finite, got ({loss_low}, {loss_high})")
    if loss_high < loss_low:
        raise ValueError(f"the loss range must be (low, high) with low <= high, got ({loss_low}, {loss_high})")
    grid = np.linspace(float(loss_low), float(max(loss_high, loss_low)), int(n_points))
    if labels is None:
        curves = np.asarray(weight_fn(grid), dtype=np.float64).reshape(1, -1)
    else:
        curves = np.stack([np.asarray(weight_fn(grid, k), dtype=np.float64).reshape(-1) for k in labels])
    low, high = float(curves.min()), float(curves.max())
    spread = (high - low) / high if high > 0 else 0.0
    trends = tuple(_trend(curve, high) for curve in curves)
    if spread < FLAT_SPREAD:
        trend = "flat"
    elif len(set(trends)) == 1 and (labels is None or trends[0] != "flat"):
        trend = trends[0]
    else:
        trend = "class-dependent"
    return WeightProfile((float(grid[0]), float(grid[-1])), (low, high), float(spread), trend,
                         None if labels is None else trends)


class WeightNet(nn.Module):
    """The Meta-Weight-Net: an MLP mapping a per-sample loss to a weight in [0, 1].

    ``Linear(1, hidden_size) -> ReLU -> Linear(hidden_size, 1) -> sigmoid`` applied to the
    raw (unnormalised) loss, as in Fig. 1(c) of Shu et al. (2019) and their code.

    Parameters
    ----------
    hidden_size : int, default=100
        Width of the hidden layer (100 in the paper).
    loss_scale : float, default=1.0
        The net reads ``loss / loss_scale``: the scale of losses over which the freshly
        initialised hidden layer varies (its units bend at inputs of order 1). 1 is the
        paper's raw loss; a smaller value resolves small losses (e.g. a network that fits
        almost every row), a larger one large losses (many classes). The robustness study
        (docs/user-guide/choosing-a-method.md) measured 0.1 and 10 against 1.

    Examples
    --------
    >>> import torch
    >>> net = WeightNet(hidden_size=100)
    >>> net(torch.tensor([[0.1], [2.3]])).shape
    torch.Size([2, 1])
    """

    #: read by nets pickled before ``loss_scale`` existed: the raw loss
    loss_scale = 1.0

    def __init__(self, hidden_size: int = 100, loss_scale: float = 1.0):
        super().__init__()
        if int(hidden_size) < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.hidden_size = int(hidden_size)
        self.loss_scale = _check_loss_scale(loss_scale)
        self.hidden = nn.Linear(1, self.hidden_size)
        self.relu = nn.ReLU(inplace=False)
        self.output = nn.Linear(self.hidden_size, 1)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """Weights for ``losses`` of shape ``(n, 1)``; returns shape ``(n, 1)`` in [0, 1]."""
        return torch.sigmoid(self.output(self.relu(self.hidden(losses / self.loss_scale))))


def _check_loss_scale(loss_scale) -> float:
    """A positive, finite float; a division by 1.0 leaves every loss bit for bit as it was."""
    try:
        value = float(loss_scale)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(loss_scale, bool) or not (np.isfinite(value) and value > 0):
        raise ValueError(f"loss_scale must be a positive, finite number (1.0 reads the raw loss, as the "
                         f"paper), got {loss_scale!r}")
    return value


def size_groups(class_counts, n_groups: int = 3) -> np.ndarray:
    """Cluster classes by their training size: group 0 holds the rarest classes.

    One-dimensional k-means on the log of the counts (CMW-Net clusters classes by size); with
    fewer distinct sizes than groups, each size is its own group.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or np.any(counts < 0):
        raise ValueError(f"class_counts must be a 1-d array of non-negative counts, got {class_counts!r}")
    values = np.log1p(counts)
    distinct = np.unique(values)
    if len(distinct) <= n_groups:
        return np.searchsorted(distinct, values).astype(np.int64)
    # Lloyd's iterations from evenly spaced quantiles of the distinct sizes: deterministic, fine
    # in one dimension, and the starting centres differ (quantiles of the values coincide when
    # most classes have one size, and a group would start, and stay, empty)
    centers = np.quantile(distinct, (np.arange(n_groups) + 0.5) / n_groups)
    for _ in range(100):
        groups = np.abs(values[:, None] - centers[None]).argmin(1)
        new = np.array([values[groups == g].mean() if np.any(groups == g) else centers[g] for g in range(n_groups)])
        if np.allclose(new, centers):
            break
        centers = new
    order = np.argsort(centers)
    return np.argsort(order)[np.abs(values[:, None] - centers[None]).argmin(1)].astype(np.int64)


class ClassAwareWeightNet(nn.Module):
    """A class-aware weighting function (CMW-Net, Shu et al., TPAMI 2023): the weight of a
    sample depends on its loss and on the group of its (given) class.

    A shared hidden layer reads the loss and each group has its own output head:
    ``sigmoid(head_g(ReLU(Linear(1, hidden_size)(loss))))`` for a sample whose class is in group
    g. With ``n_groups`` an integer, the classes are clustered by their training size
    (:func:`size_groups`), so rare classes can learn another loss-to-weight map than common
    ones, which a loss-only weight net cannot express under class imbalance. With
    ``n_groups=None`` every class is its own group (:class:`PerClassWeightNet` adds a shared
    output to such heads). ``MetaWeightClassifier`` sets the groups from the training labels at the
    start of a fit (:meth:`set_class_counts`) and passes the labels to the net
    (``uses_labels``).

    Parameters
    ----------
    n_groups : int or None, default=3
        Number of class-size groups (3 in CMW-Net); None for one group per class.
    hidden_size : int, default=100
        Width of the shared hidden layer.
    loss_scale : float, default=1.0
        The net reads ``loss / loss_scale`` (see :class:`WeightNet`).

    Attributes
    ----------
    class_groups : torch.Tensor of int64, shape (n_classes,)
        The group of each class (a buffer, saved with the net); empty before the counts are set,
        when every sample is read with the first group's head.

    Examples
    --------
    >>> import torch
    >>> net = ClassAwareWeightNet(n_groups=2)
    >>> net.set_class_counts([500, 480, 20, 9])
    >>> net.class_groups.tolist()
    [1, 1, 0, 0]
    >>> net(torch.tensor([[0.3], [2.0]]), torch.tensor([0, 3])).shape
    torch.Size([2, 1])
    """

    uses_labels = True
    #: read by nets pickled before ``loss_scale`` existed: the raw loss
    loss_scale = 1.0

    def __init__(self, n_groups: int | None = 3, hidden_size: int = 100, loss_scale: float = 1.0):
        super().__init__()
        if (n_groups is not None and int(n_groups) < 1) or int(hidden_size) < 1:
            raise ValueError(f"n_groups (None or a positive integer) and hidden_size must be positive integers, "
                             f"got {n_groups!r}, {hidden_size!r}")
        self.n_groups = None if n_groups is None else int(n_groups)
        self.hidden_size = int(hidden_size)
        self.loss_scale = _check_loss_scale(loss_scale)
        self.hidden = nn.Linear(1, self.hidden_size)
        self.relu = nn.ReLU(inplace=False)
        # one group per class: one head until the classes are known (set_class_counts)
        self.heads = nn.Linear(self.hidden_size, 1 if self.n_groups is None else self.n_groups)
        self.register_buffer("class_groups", torch.zeros(0, dtype=torch.long))

    def set_class_counts(self, class_counts):
        """Group the classes by these training counts (index = class index).

        With one group per class, the head is copied for every class: each class starts from
        the same function, and the parameters stay the same objects (an optimizer built over
        them keeps working; nothing random is drawn).
        """
        device = self.heads.weight.device
        if self.n_groups is None:
            n_classes = len(np.asarray(class_counts).reshape(-1))
            if n_classes < 1:
                raise ValueError("class_counts must name at least one class")
            if self.class_groups.numel() and self.heads.out_features != n_classes:
                raise ValueError(
                    f"this weight net has one head per class for {self.heads.out_features} classes (e.g. a "
                    f"transferred weighting function), but the data has {n_classes}: a per-class function "
                    "only carries over to the same classes in the same order (pass classes=...), or use a "
                    "loss-only WeightNet"
                )
            self._resize_heads(n_classes, from_first=True)
            self.class_groups = torch.arange(n_classes, device=device)
        else:
            self.class_groups = torch.as_tensor(size_groups(class_counts, self.n_groups), device=device)

    def _resize_heads(self, n_heads: int, from_first: bool):
        if self.heads.out_features == n_heads:
            return
        with torch.no_grad():
            weight, bias = self.heads.weight, self.heads.bias
            if from_first:
                new_weight, new_bias = weight[:1].repeat(n_heads, 1), bias[:1].repeat(n_heads)
            else:  # overwritten by the state dict being loaded
                new_weight = weight.new_zeros(n_heads, weight.shape[1])
                new_bias = bias.new_zeros(n_heads)
            weight.data, bias.data = new_weight, new_bias
        self.heads.out_features = n_heads

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the saved net's groups (and, with one group per class, its heads) size this one
        groups = state_dict.get(prefix + "class_groups")
        if groups is not None and groups.shape != self.class_groups.shape:
            self.class_groups = torch.zeros_like(groups, device=self.class_groups.device)
        heads = state_dict.get(prefix + "heads.weight")
        if self.n_groups is None and heads is not None and heads.ndim == 2:
            self._resize_heads(heads.shape[0], from_first=False)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weights for ``losses`` of shape ``(n, 1)`` and class indices ``labels`` of shape ``(n,)``."""
        return torch.sigmoid(self._group_outputs(self._features(losses), labels))

    def _features(self, losses: torch.Tensor) -> torch.Tensor:
        """The shared hidden layer's output, ``ReLU(Linear(loss / loss_scale))``."""
        return self.relu(self.hidden(losses / self.loss_scale))

    def _group_outputs(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each sample's own group head applied to its hidden features, shape ``(n, 1)``."""
        out = self.heads(hidden)
        if self.class_groups.numel():
            groups = self.class_groups[labels.long().reshape(-1)]
        else:
            groups = torch.zeros(len(hidden), dtype=torch.long, device=hidden.device)
        return out.gather(1, groups[:, None])


class PerClassWeightNet(ClassAwareWeightNet):
    """The paper's weighting function plus a learned correction per class:
    ``V(loss, c) = sigmoid(output(h) + head_c(h))`` with ``h = ReLU(Linear(1, hidden_size)(loss))``
    for a sample labelled c.

    The library's default weight net. ``output`` is the paper's :class:`WeightNet` output layer,
    shared by every class and learned from the whole meta batch; ``head_c`` starts at zero, so
    the function starts as a loss-only one, and learns from the meta rows how class c departs
    from it. A loss-only function cannot tell corrupted from clean rows when the noise depends
    on the class (flip noise): where the classifier has taken up a flipped class, its corrupted
    rows have the *low* losses, and one curve for every class learns the average of opposite
    signals. In the robustness study (docs/user-guide/choosing-a-method.md) this net's weights
    never ranked the corrupted rows above the clean ones under flip noise, where the loss-only
    net's did on 8 of 40 runs, it did about as well as the loss-only net under uniform noise,
    and on long tails it learned a level per class where the loss-only function ended flat on
    25 of 30 runs. ``weight_net=WeightNet`` is the paper's choice.

    Parameters
    ----------
    hidden_size : int, default=100
        Width of the shared hidden layer.
    loss_scale : float, default=1.0
        The net reads ``loss / loss_scale`` (see :class:`WeightNet`).

    Attributes
    ----------
    class_groups : torch.Tensor of int64, shape (n_classes,)
        ``arange(n_classes)`` once the classes are set (:meth:`set_class_counts`); empty before,
        when every sample is read with the first class's head.

    Examples
    --------
    >>> import torch
    >>> net = PerClassWeightNet(hidden_size=8)
    >>> net.set_class_counts([50, 40, 30])
    >>> net.class_groups.tolist()
    [0, 1, 2]
    >>> net(torch.tensor([[0.3], [2.0]]), torch.tensor([0, 2])).shape
    torch.Size([2, 1])
    """

    def __init__(self, hidden_size: int = 100, loss_scale: float = 1.0):
        super().__init__(n_groups=None, hidden_size=hidden_size, loss_scale=loss_scale)
        self.output = nn.Linear(self.hidden_size, 1)
        with torch.no_grad():  # the per-class corrections start at zero
            self.heads.weight.zero_()
            self.heads.bias.zero_()

    def forward(self, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weights for ``losses`` of shape ``(n, 1)`` and class indices ``labels`` of shape ``(n,)``."""
        hidden = self._features(losses)
        return torch.sigmoid(self.output(hidden) + self._group_outputs(hidden, labels))


class WeightFunction:
    """The learned loss-to-weight map of a fitted :class:`MetaWeightClassifier`.

    A frozen CPU copy of the weight net, safe to pickle and to call after the estimator
    moves on. ndarray in gives ndarray out; a tensor in gives a tensor out (on the
    tensor's device and dtype).

    Parameters
    ----------
    weight_net : torch.nn.Module
        A module mapping a ``(n, 1)`` float tensor of losses to ``(n, 1)`` weights.
    loss_range : tuple of float or None, default=None
        The training losses it was learned on (the estimator stores the 5th and 95th
        percentiles): the range :meth:`profile` summarises by default.

    Examples
    --------
    >>> import numpy as np
    >>> f = WeightFunction(WeightNet())
    >>> f(np.array([0.0, 1.0, 5.0])).shape
    (3,)
    >>> losses, weights = f.curve(0.0, 10.0, n_points=5)
    """

    def __init__(self, weight_net: nn.Module, loss_range=None):
        net = copy.deepcopy(weight_net).to("cpu").float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.weight_net = net
        self.loss_range = None if loss_range is None else (float(loss_range[0]), float(loss_range[1]))

    @property
    def uses_labels(self) -> bool:
        """Whether the function is class-aware (then it is called with the class indices too)."""
        return bool(getattr(self.weight_net, "uses_labels", False))

    def __call__(self, losses, labels=None):
        if self.uses_labels:
            if labels is None:
                raise ValueError("this weighting function is class-aware: pass the class index of each loss "
                                 "(weight_function_(losses, labels)); positions in the estimator's classes_")
            label_t = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                                      dtype=torch.long).reshape(-1)
            known = int(getattr(self.weight_net, "class_groups", torch.empty(0)).numel())
            if known and label_t.numel() and (int(label_t.min()) < 0 or int(label_t.max()) >= known):
                raise ValueError(f"class indices must be in [0, {self.n_classes}) (positions in the estimator's "
                                 f"classes_), got {int(label_t.min())}..{int(label_t.max())}")
        is_tensor = isinstance(losses, torch.Tensor)
        if is_tensor:
            device, dtype = losses.device, losses.dtype
            flat = losses.detach().to("cpu", torch.float32).reshape(-1, 1)
            shape = losses.shape
        else:
            arr = np.asarray(losses, dtype=np.float32)
            shape = arr.shape
            flat = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1, 1))
        with torch.no_grad():
            if self.uses_labels:
                if len(label_t) == 1 and len(flat) > 1:  # one class for every loss (curves)
                    label_t = label_t.expand(len(flat))
                weights = self.weight_net(flat, label_t).reshape(shape)
            else:
                weights = self.weight_net(flat).reshape(shape)
        if is_tensor:
            return weights.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32)
        out = weights.numpy().astype(np.float64)
        return out if out.ndim else float(out)

    def curve(self, loss_min: float = 0.0, loss_max: float = 10.0, n_points: int = 200, label=None):
        """Evaluate the function on an evenly spaced grid of losses.

        Parameters
        ----------
        loss_min, loss_max : float
            Range of losses (cross-entropy losses are >= 0).
        n_points : int, default=200
            Number of grid points.
        label : int or None, default=None
            For a class-aware function: the class index to evaluate for; None averages over
            the classes.

        Returns
        -------
        losses, weights : ndarray of shape (n_points,)
        """
        if not loss_max > loss_min:
            raise ValueError(f"loss_max ({loss_max}) must be greater than loss_min ({loss_min})")
        losses = np.linspace(loss_min, loss_max, int(n_points))
        return losses, self._of_losses(losses, label)

    def profile(self, loss_min: float | None = None, loss_max: float | None = None, label=None) -> WeightProfile:
        """The function's shape over ``[loss_min, loss_max]`` (default: the losses seen in fit).

        One line tells whether Meta-Weight-Net learned something: ``clf.weight_function_.profile()``
        gives e.g. ``decreasing, weights 0.03-0.61 over losses 0.02-4.1 (spread 0.95)``; a
        ``flat`` profile means every sample got nearly the same weight (plain training).
        """
        if loss_min is None or loss_max is None:
            if self.loss_range is None:
                raise ValueError("no loss range was recorded for this function: pass loss_min and loss_max")
            loss_min = self.loss_range[0] if loss_min is None else loss_min
            loss_max = self.loss_range[1] if loss_max is None else loss_max
        if self.uses_labels and label is None:  # every class's curve
            return weight_profile(lambda losses, k: self(losses, [k]), loss_min, loss_max,
                                  labels=range(self.n_classes))
        return weight_profile(lambda losses: self._of_losses(losses, label), loss_min, loss_max)

    def _of_losses(self, losses, label=None):
        """The weights of ``losses``; a class-aware function is read for ``label`` or averaged
        over the classes."""
        if not self.uses_labels:
            return self(losses)
        if label is not None:
            return self(losses, [label])
        return np.mean([self(losses, [k]) for k in range(self.n_classes)], axis=0)

    @property
    def n_classes(self) -> int:
        """The classes a class-aware function was set up for (1 before its class counts were set)."""
        return max(int(self.weight_net.class_groups.numel()), 1)

    def __repr__(self) -> str:
        if self.loss_range is None:
            return f"WeightFunction({self.weight_net!r})"
        return f"WeightFunction({self.profile()})"
