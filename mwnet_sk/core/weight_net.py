"""The weighting function V(loss; Θ) of Meta-Weight-Net and its fitted, picklable form."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["WeightNet", "WeightFunction", "WeightProfile", "weight_profile"]

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
        Smallest and largest weight over that range.
    spread : float
        ``(max - min) / max`` of the weights: 0 for a constant function, 1 when some loss gets
        weight 0. Scale-free, so it means the same with and without ``normalize_weights``.
    trend : {"decreasing", "increasing", "flat", "non-monotonic"}
        ``"flat"`` when ``spread < FLAT_SPREAD``; decreasing weights down-weight high-loss
        samples (label noise, Fig. 1e of the paper), increasing ones up-weight them (class
        imbalance, Fig. 1d).
    """

    loss_range: tuple
    weight_range: tuple
    spread: float
    trend: str

    def __str__(self) -> str:
        lo, hi = self.loss_range
        return (f"{self.trend}, weights {self.weight_range[0]:.3g}-{self.weight_range[1]:.3g} "
                f"over losses {lo:.3g}-{hi:.3g} (spread {self.spread:.2f})")


def weight_profile(weight_fn, loss_low: float, loss_high: float, n_points: int = 33) -> WeightProfile:
    """Evaluate ``weight_fn`` (losses -> weights, ndarray in and out) on ``[loss_low, loss_high]``.

    A tolerance of 1% of the largest weight separates a monotonic function from a
    non-monotonic one, so float noise on a plateau does not count as a turn.
    """
    if not np.isfinite(loss_low) or not np.isfinite(loss_high):
        raise ValueError(f"the loss range must be finite, got ({loss_low}, {loss_high})")
    grid = np.linspace(float(loss_low), float(max(loss_high, loss_low)), int(n_points))
    weights = np.asarray(weight_fn(grid), dtype=np.float64).reshape(-1)
    low, high = float(weights.min()), float(weights.max())
    spread = (high - low) / high if high > 0 else 0.0
    steps = np.diff(weights)
    tol = 0.01 * max(high, 1e-12)
    if spread < FLAT_SPREAD:
        trend = "flat"
    elif np.all(steps <= tol):
        trend = "decreasing"
    elif np.all(steps >= -tol):
        trend = "increasing"
    else:
        trend = "non-monotonic"
    return WeightProfile((float(grid[0]), float(grid[-1])), (low, high), float(spread), trend)


class WeightNet(nn.Module):
    """The Meta-Weight-Net: an MLP mapping a per-sample loss to a weight in [0, 1].

    ``Linear(1, hidden_size) -> ReLU -> Linear(hidden_size, 1) -> sigmoid`` applied to the
    raw (unnormalised) loss, as in Fig. 1(c) of Shu et al. (2019) and their code.

    Parameters
    ----------
    hidden_size : int, default=100
        Width of the hidden layer (100 in the paper).

    Examples
    --------
    >>> import torch
    >>> net = WeightNet(hidden_size=100)
    >>> net(torch.tensor([[0.1], [2.3]])).shape
    torch.Size([2, 1])
    """

    def __init__(self, hidden_size: int = 100):
        super().__init__()
        if int(hidden_size) < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.hidden_size = int(hidden_size)
        self.hidden = nn.Linear(1, self.hidden_size)
        self.relu = nn.ReLU(inplace=False)
        self.output = nn.Linear(self.hidden_size, 1)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """Weights for ``losses`` of shape ``(n, 1)``; returns shape ``(n, 1)`` in [0, 1]."""
        return torch.sigmoid(self.output(self.relu(self.hidden(losses))))


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

    def __call__(self, losses):
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
            weights = self.weight_net(flat).reshape(shape)
        if is_tensor:
            return weights.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32)
        out = weights.numpy().astype(np.float64)
        return out if out.ndim else float(out)

    def curve(self, loss_min: float = 0.0, loss_max: float = 10.0, n_points: int = 200):
        """Evaluate the function on an evenly spaced grid of losses.

        Parameters
        ----------
        loss_min, loss_max : float
            Range of losses (cross-entropy losses are >= 0).
        n_points : int, default=200
            Number of grid points.

        Returns
        -------
        losses, weights : ndarray of shape (n_points,)
        """
        if not loss_max > loss_min:
            raise ValueError(f"loss_max ({loss_max}) must be greater than loss_min ({loss_min})")
        losses = np.linspace(loss_min, loss_max, int(n_points))
        return losses, self(losses)

    def profile(self, loss_min: float | None = None, loss_max: float | None = None) -> WeightProfile:
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
        return weight_profile(self, loss_min, loss_max)

    def __repr__(self) -> str:
        if self.loss_range is None:
            return f"WeightFunction({self.weight_net!r})"
        return f"WeightFunction({self.profile()})"
