"""The weighting function V(loss; Θ) of Meta-Weight-Net and its fitted, picklable form."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["WeightNet", "WeightFunction"]


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

    Examples
    --------
    >>> import numpy as np
    >>> f = WeightFunction(WeightNet())
    >>> f(np.array([0.0, 1.0, 5.0])).shape
    (3,)
    >>> losses, weights = f.curve(0.0, 10.0, n_points=5)
    """

    def __init__(self, weight_net: nn.Module):
        net = copy.deepcopy(weight_net).to("cpu").float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.weight_net = net

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

    def __repr__(self) -> str:
        return f"WeightFunction({self.weight_net!r})"
