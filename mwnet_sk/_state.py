"""TrainingState: everything beyond parameters and history that shapes the next training step.

One object holds the step counter, the generators of the training shuffle and of the meta
sampling (with the sampler's position), the per-sample weights and losses seen so far and,
optionally, the weights after every epoch. Its :meth:`TrainingState.state_dict` holds only
tensors, numbers and strings, so a checkpoint loads with ``torch.load(weights_only=True)``;
the estimator saves it whole and a resumed run continues exactly where the saved one stood.
"""

from __future__ import annotations

import numpy as np
import torch

from ._data import MetaSampler

__all__ = ["TrainingState"]

# Version of the state_dict layout (a checkpoint written by another layout is refused by name).
STATE_VERSION = 1


class TrainingState:
    """The training state of one fit (kept across ``partial_fit`` calls).

    Parameters
    ----------
    n_samples : int
        Sample indices the training batches carry: the rows of X, plus the rows of a
        separate meta set trained on beside them.
    n_rows : int
        Rows of X (the first ``n_rows`` samples); ``sample_weights_`` covers these.
    seed : int
        Base seed of the generators.
    record_weights : bool, default=False
        Keep the weights of X's rows after every epoch.

    Attributes
    ----------
    n_steps : int
        Training steps taken.
    sample_weights, sample_losses : torch.Tensor of shape (n_samples,)
        The weight and loss of every sample at its last visit (NaN before).
    weights_history : torch.Tensor of shape (n_epochs, n_rows) or None
        With ``record_weights``: ``sample_weights[:n_rows]`` after each epoch.
    resume_pending : bool
        Set by a checkpoint restore: the next fit trains only the epochs missing to
        ``max_epochs``.
    epochs_planned : int or None
        The epochs the running call to fit trains (what a progress report counts to).
    train_generator, meta_sampler : live only during fit (their positions persist).
    """

    def __init__(self, n_samples: int, n_rows: int, seed: int, record_weights: bool = False):
        self.n_samples = int(n_samples)
        self.n_rows = int(n_rows)
        self.seed = int(seed)
        self.n_steps = 0
        self.sample_weights = torch.full((self.n_samples,), float("nan"))
        self.sample_losses = torch.full((self.n_samples,), float("nan"))
        self.weights_history = torch.empty((0, self.n_rows)) if record_weights else None
        self.resume_pending = False
        self.epochs_planned = None
        # Positions of the two random streams; generators are built from them in start().
        self.train_rng = torch.Generator().manual_seed(self.seed + 1).get_state()
        self.meta_position = None
        self.train_generator = None
        self.meta_sampler = None
        self.visited = None

    # ------------------------------------------------------------------ live phase
    @property
    def live(self) -> bool:
        return self.train_generator is not None

    def start(self, device, meta_source=None, meta_batch_size=None, loader_kwargs=None, slicer=None,
              min_last=1):
        """Build the generators (and the meta sampler) at their saved positions; move the
        per-sample buffers to ``device``."""
        self.train_generator = torch.Generator()
        self.train_generator.set_state(self.train_rng)
        self.sample_weights = self.sample_weights.to(device)
        self.sample_losses = self.sample_losses.to(device)
        if meta_source is not None:
            sampler = MetaSampler(
                meta_source,
                meta_batch_size,
                torch.Generator().manual_seed(self.seed + 2),
                device,
                loader_kwargs=loader_kwargs,
                slicer=slicer,
                min_last=min_last,
            )
            if self.meta_position is not None:
                sampler.load_state_dict(self.meta_position)
            self.meta_sampler = sampler
        return self

    def stop(self):
        """Keep the positions, end the meta loader's workers, bring the buffers to the CPU."""
        if self.train_generator is not None:
            self.train_rng = self.train_generator.get_state()
        if self.meta_sampler is not None:
            self.meta_position = self.meta_sampler.state_dict()
            self.meta_sampler.close()
        self.train_generator = None
        self.meta_sampler = None
        self.sample_weights = self.sample_weights.cpu()
        self.sample_losses = self.sample_losses.cpu()
        return self

    # ------------------------------------------------------------------ recording
    def record(self, rows: torch.Tensor, weights: torch.Tensor, losses: torch.Tensor):
        rows = rows.to(self.sample_weights.device)
        self.sample_weights[rows] = weights.detach().float()
        self.sample_losses[rows] = losses.detach().float()
        if self.visited is not None:
            self.visited[rows] = True

    def begin_epoch(self, data_parallel: bool = False):
        """Start an epoch; in data-parallel training, note which rows this process visits."""
        self.visited = torch.zeros(self.n_samples, dtype=torch.bool, device=self.sample_weights.device) \
            if data_parallel else None

    def gather(self, reducer):
        """Data-parallel training: every process takes the values the others recorded this
        epoch (each row is visited by one process per epoch)."""
        if reducer is None or self.visited is None:
            return
        mask = self.visited.to(self.sample_weights.dtype)
        values = torch.stack([torch.where(self.visited, self.sample_weights, 0.0),
                              torch.where(self.visited, self.sample_losses, 0.0), mask])
        reducer.sum_([values])
        seen = values[2] > 0
        self.sample_weights = torch.where(seen, values[0] / values[2].clamp_min(1), self.sample_weights)
        self.sample_losses = torch.where(seen, values[1] / values[2].clamp_min(1), self.sample_losses)
        self.visited.zero_()

    def end_epoch(self):
        if self.weights_history is not None:
            current = self.sample_weights[: self.n_rows].detach().float().cpu()
            self.weights_history = torch.cat([self.weights_history, current[None]])

    def loss_range(self, quantiles=(0.05, 0.95)):
        """Percentiles of each row's latest loss, or None before any row was seen."""
        losses = self.sample_losses[torch.isfinite(self.sample_losses)]
        if losses.numel() == 0:
            return None
        q = torch.quantile(losses.float(), torch.tensor(quantiles, device=losses.device))
        return float(q[0]), float(q[1])

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Tensors, numbers and strings only (``torch.load(weights_only=True)`` reads it)."""
        train_rng = self.train_generator.get_state() if self.live else self.train_rng
        meta = self.meta_sampler.state_dict() if self.meta_sampler is not None else self.meta_position
        state = {
            "version": STATE_VERSION,
            "n_samples": self.n_samples,
            "n_rows": self.n_rows,
            "seed": self.seed,
            "n_steps": self.n_steps,
            "train_rng": train_rng.clone(),
            "sample_weights": self.sample_weights.detach().cpu().clone(),
            "sample_losses": self.sample_losses.detach().cpu().clone(),
        }
        if meta is not None:
            state["meta_position"] = {
                "order": None if meta["order"] is None else meta["order"].clone(),
                "offset": int(meta["offset"]),
                "generator": meta["generator"].clone(),
            }
        if self.weights_history is not None:
            state["weights_history"] = self.weights_history.clone()
        return state

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict` output; refuses one made for other data, saying so."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"training state of layout version {state.get('version')!r}; this "
                             f"version of mwnet-sk reads version {STATE_VERSION}")
        if int(state["n_samples"]) != self.n_samples or int(state["n_rows"]) != self.n_rows:
            raise ValueError(
                f"the training state was saved for {state['n_rows']} rows of X and "
                f"{state['n_samples']} training samples, but this fit has {self.n_rows} and "
                f"{self.n_samples}: resume with the same data"
            )
        device = self.sample_weights.device
        self.seed = int(state["seed"])
        self.n_steps = int(state["n_steps"])
        self.sample_weights = state["sample_weights"].to(device, torch.float32).clone()
        self.sample_losses = state["sample_losses"].to(device, torch.float32).clone()
        self.train_rng = state["train_rng"].clone()
        if self.train_generator is not None:
            self.train_generator.set_state(self.train_rng)
        self.meta_position = state.get("meta_position")
        if self.meta_sampler is not None and self.meta_position is not None:
            self.meta_sampler.load_state_dict(self.meta_position)
        if "weights_history" in state:
            self.weights_history = state["weights_history"].clone()
        elif self.weights_history is not None:
            self.weights_history = torch.empty((0, self.n_rows))
        return self

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        # Generators and the sampler (which holds the meta data) do not travel: their
        # positions do. A pickle taken mid-fit resumes from those positions.
        state = dict(self.__dict__)
        if self.train_generator is not None:
            state["train_rng"] = self.train_generator.get_state()
        if self.meta_sampler is not None:
            state["meta_position"] = self.meta_sampler.state_dict()
        state["train_generator"] = None
        state["meta_sampler"] = None
        state["visited"] = None
        state["sample_weights"] = self.sample_weights.detach().cpu()
        state["sample_losses"] = self.sample_losses.detach().cpu()
        return state

    # ------------------------------------------------------------------ views
    def weights_of_rows(self) -> np.ndarray:
        return self.sample_weights[: self.n_rows].detach().cpu().numpy().astype(np.float64)

    def losses_of_rows(self) -> np.ndarray:
        return self.sample_losses[: self.n_rows].detach().cpu().numpy().astype(np.float64)

    def weights_of_meta(self) -> np.ndarray | None:
        if self.n_samples == self.n_rows:
            return None
        return self.sample_weights[self.n_rows :].detach().cpu().numpy().astype(np.float64)

    def losses_of_meta(self) -> np.ndarray | None:
        if self.n_samples == self.n_rows:
            return None
        return self.sample_losses[self.n_rows :].detach().cpu().numpy().astype(np.float64)
