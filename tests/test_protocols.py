"""Each protocol preset gives the step of the authors' script it names.

The estimator, configured by a preset, trains four steps (two epochs of two batches, the
learning rate divided by 10 after the first epoch) in float64. An independent
re-implementation written the way the authors' scripts compute a step then takes the same
four steps: copy the model, a virtual SGD step of every parameter with the scheduled learning
rate differentiated with ``create_graph=True``, the meta loss of the virtual model on the meta
batch, a step of the weight net's optimizer, and the real step of the classifier with the
updated weight net's detached weights, normalised as the script normalises them. Both must
end with the same classifier, running statistics and weight net to float precision.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skorch.callbacks import Callback, LRScheduler
from torch import nn
from torch.func import functional_call

from mwnet_sk import MetaWeightClassifier, WeightNet
from mwnet_sk.reproduce.protocols import PROTOCOLS, get_protocol

N_FEATURES, N_CLASSES, BATCH = 6, 3, 8
LRS = (0.1, 0.01)  # epoch 1, epoch 2 (MultiStepLR, milestone 1, gamma 0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


class Net64(nn.Module):
    """A float64 classifier with batch norm (its buffers must match too)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, N_CLASSES)
        self.double()

    def forward(self, x):
        return self.fc(self.body(x.double()))


class WeightNet64(WeightNet):
    def __init__(self, hidden_size=100):
        super().__init__(hidden_size)
        self.double()


class SnapshotAtStart(Callback):
    """Copies of both networks as training starts: the reference starts from them."""

    def on_train_begin(self, net, **kwargs):
        self.module_ = copy.deepcopy(net.module_)
        self.weight_net_ = copy.deepcopy(net.weight_net_)


def make_data(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(2 * BATCH, N_FEATURES)).astype(np.float32)
    y = np.arange(2 * BATCH) % N_CLASSES
    rng.shuffle(y)
    X_meta = rng.normal(size=(5, N_FEATURES)).astype(np.float32)
    y_meta = np.array([0, 1, 2, 0, 1])
    return X, y, X_meta, y_meta


def fit_with_preset(name, data):
    X, y, X_meta, y_meta = data
    snapshot = SnapshotAtStart()
    # the preset's WeightNet, in float64
    params = {**get_protocol(name).estimator_params, "batch_size": BATCH, "weight_net": WeightNet64}
    clf = MetaWeightClassifier(
        Net64,
        max_epochs=len(LRS),
        iterator_train__shuffle=False,  # batches are rows 0-7 and 8-15, as in the reference
        callbacks=[LRScheduler("MultiStepLR", milestones=[1], gamma=0.1), snapshot],
        random_state=0,
        verbose=0,
        **params,
    )
    clf.fit(X, y, meta=(X_meta, y_meta))
    return clf, snapshot


def authors_step_reference(model, vnet, data, *, detach_input, normalize, meta_optimizer, nesterov):
    """The scripts' training loop, written out: returns the trained (model, vnet)."""
    model, vnet = copy.deepcopy(model), copy.deepcopy(vnet)
    X, y, X_meta, y_meta = (torch.as_tensor(a) for a in data)
    X, X_meta = X.double(), X_meta.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LRS[0], momentum=0.9, nesterov=nesterov,
                                weight_decay=5e-4)  # fmt: skip
    v_optimizer = meta_optimizer(vnet.parameters())

    def weighted(cost, v):
        if normalize:  # the 2019 scripts: v / sum(v) (unless the sum is 0)
            norm = v.sum()
            return (cost * (v / norm if norm != 0 else v)).sum()
        return (cost * v).sum() / len(cost)  # MW-Net.py: the batch mean

    for lr in LRS:
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        for rows in (slice(0, BATCH), slice(BATCH, 2 * BATCH)):
            inputs, targets = X[rows], y[rows]
            # virtual step on a copy of the model, with the scheduled learning rate
            meta_model = copy.deepcopy(model)
            names = [n for n, _ in meta_model.named_parameters()]
            params = [p for _, p in meta_model.named_parameters()]
            cost = F.cross_entropy(meta_model(inputs), targets, reduction="none").reshape(-1, 1)
            v_lambda = vnet(cost.detach() if detach_input else cost)
            grads = torch.autograd.grad(weighted(cost, v_lambda), params, create_graph=True)
            fast = {n: p - lr * g for n, p, g in zip(names, params, grads)}
            # meta loss of the virtual model (batch statistics), one weight-net step
            meta_loss = F.cross_entropy(functional_call(meta_model, fast, (X_meta,)), y_meta)
            v_optimizer.zero_grad()
            meta_loss.backward()
            v_optimizer.step()
            # real step with the updated weight net's detached weights
            cost_w = F.cross_entropy(model(inputs), targets, reduction="none").reshape(-1, 1)
            with torch.no_grad():
                w_new = vnet(cost_w)
            loss = weighted(cost_w, w_new)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, vnet


def sgd_2019(lr):
    return lambda params: torch.optim.SGD(params, lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def adam_2020(params):
    return torch.optim.Adam(params, 1e-3, weight_decay=1e-4)


# the script each preset names: how it weights, feeds V, and trains V and the classifier
SCRIPTS = {
    "mwnet-2019-noise": dict(detach_input=True, normalize=True, meta_optimizer=sgd_2019(1e-3), nesterov=True),
    "mwnet-2019-imbalance": dict(detach_input=False, normalize=True, meta_optimizer=sgd_2019(1e-5), nesterov=True),
    "mwnet-2020": dict(detach_input=True, normalize=False, meta_optimizer=adam_2020, nesterov=False),
}  # fmt: skip
# a change of the script that the comparison must notice
VARIANTS = {
    "mwnet-2019-noise": {"normalize": False},
    "mwnet-2019-imbalance": {"detach_input": True},
    "mwnet-2020": {"meta_optimizer": sgd_2019(1e-3)},
}


def assert_same_networks(clf, model, vnet, start_vnet):
    for (name, a), b in zip(clf.module_.state_dict().items(), model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"classifier {name}")
        else:
            assert torch.equal(a, b), name
    # the weight net's change, relative to its own size (1e-5 steps move it little)
    for (name, a), b, a0 in zip(clf.weight_net_.state_dict().items(), vnet.state_dict().values(),
                                start_vnet.state_dict().values()):  # fmt: skip
        torch.testing.assert_close(a - a0, b - a0, rtol=1e-7, atol=1e-15, msg=f"weight net {name}")


def weight_net_change(vnet, start):
    return torch.cat([(a - b).reshape(-1) for a, b in zip(vnet.state_dict().values(), start.state_dict().values())])


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_preset_step_equals_the_authors_step(name):
    assert set(SCRIPTS) == set(PROTOCOLS)
    data = make_data()
    clf, start = fit_with_preset(name, data)
    model, vnet = authors_step_reference(start.module_, start.weight_net_, data, **SCRIPTS[name])
    assert_same_networks(clf, model, vnet, start.weight_net_)
    moved = weight_net_change(vnet, start.weight_net_)
    assert moved.abs().max() > 0  # the weight net was trained
    # the comparison tells the script from a close variant of it
    _, other = authors_step_reference(start.module_, start.weight_net_, data, **{**SCRIPTS[name], **VARIANTS[name]})
    gap = (weight_net_change(other, start.weight_net_) - moved).abs().max()
    assert gap > 1e-4 * moved.abs().max()


def test_presets_state_every_weight_net_setting():
    for protocol in PROTOCOLS.values():
        params = protocol.estimator_params
        for key in ("meta_optimizer", "meta_lr", "meta_optimizer__weight_decay", "normalize_weights",
                    "detach_weight_input", "optimizer", "optimizer__nesterov", "optimizer__momentum"):
            assert key in params, (protocol.name, key)
        assert params["weight_net"] is WeightNet  # the paper's loss-only net, not the library's default
        assert protocol.describe()["estimator_params"]["weight_net"] == "mwnet_sk.core.weight_net.WeightNet"
        assert dict(protocol.augment) == {"padding_mode": "reflect", "normalize": "cifar10"}
        assert protocol.describe()["estimator_params"]["optimizer"] == "torch.optim.sgd.SGD"
    with pytest.raises(ValueError, match="known protocols: mwnet-2019-noise"):
        get_protocol("mwnet-2018")
    with pytest.raises(TypeError):
        PROTOCOLS["mwnet-2020"].estimator_params["meta_lr"] = 1.0  # presets are read-only
