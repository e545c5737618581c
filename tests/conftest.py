import os

import numpy as np
import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch and one BLAS thread. The networks of the tests are tiny: on a 2-core machine
    shared with another job two threads per op wait on each other (a 10-epoch fit measured
    0.15 s with one thread, 10 s with two, 2026-12-01); forked children must not inherit a busy
    intra-op pool; and runs compared bit for bit must sum floats in the same order."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """Digits scaled to [0, 1] as float32, plus a class-balanced meta mask (10 per class)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.RandomState(0)
    mask = np.zeros(len(y), dtype=bool)
    for c in range(10):
        mask[rng.choice(np.flatnonzero(y == c), 10, replace=False)] = True
    return X, y, mask


class TinyMLP(torch.nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear ``fc``: small, with running statistics."""

    def __init__(self, n_features=64, num_classes=10, hidden=32, dropout=0.0):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
        )
        self.fc = torch.nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture
def tiny_mlp():
    return TinyMLP
