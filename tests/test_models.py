"""Tests for mwnet_sk.models: shapes, parameter counts, the ``fc`` contract, weights loading."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

from mwnet_sk.models import (
    MLP,
    MODEL_NAMES,
    CifarResNet,
    ResNet50,
    SmallCNN,
    WideResNet,
    get_model,
    resnet20,
    resnet32,
    resnet50,
    wrn28_10,
)
from mwnet_sk.models.resnet_cifar import _ShortcutA


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def last_param_module_name(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return names[-1]


def assert_fc_is_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model output must be the very tensor returned by ``model.fc``."""
    seen = {}
    handle = model.fc.register_forward_hook(lambda mod, inp, out: seen.update(out=out, inp=inp[0]))
    try:
        out = model(x)
    finally:
        handle.remove()
    assert out is seen["out"]
    assert last_param_module_name(model) == "fc"
    feats = model.forward_features(x)
    torch.testing.assert_close(feats, seen["inp"])
    torch.testing.assert_close(model.fc(feats), out)
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- CIFAR ResNets
@pytest.mark.parametrize(
    "depth, expected",
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_resnet_param_counts(depth, expected):
    assert n_params(CifarResNet(depth, 10)) == expected


def test_resnet32_100_classes_count():
    # only the classifier changes: 64 * 90 extra weights + 90 biases
    assert n_params(resnet32(num_classes=100)) == 464_154 + 64 * 90 + 90


@pytest.mark.parametrize("factory", [resnet20, resnet32])
def test_cifar_resnet_forward_and_fc_contract(factory):
    model = factory(num_classes=7).eval()
    out = assert_fc_is_output(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert model.fc.in_features == 64


def test_cifar_resnet_structure():
    model = resnet32()
    for layer in (model.layer1, model.layer2, model.layer3):
        assert len(layer) == 5
    assert [layer[0].conv1.out_channels for layer in (model.layer1, model.layer2, model.layer3)] == [16, 32, 64]
    shortcuts = [m for m in model.modules() if isinstance(m, _ShortcutA)]
    assert len(shortcuts) == 2  # entering stages 2 and 3
    assert all(n_params(s) == 0 and len(list(s.buffers())) == 0 for s in shortcuts)


def test_option_a_shortcut_subsamples_and_zero_pads():
    sc = _ShortcutA(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


@pytest.mark.parametrize("depth", [0, 8.0, 21, 30, 33, "32"])
def test_cifar_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(depth)


def test_cifar_resnet_trains_one_step():
    model = resnet20(num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()


# --------------------------------------------------------------------------- Wide ResNets
def test_wrn28_10_param_count():
    model = wrn28_10()
    assert n_params(model) == 36_479_194
    assert model.fc.in_features == 640 and last_param_module_name(model) == "fc"
    assert n_params(wrn28_10(num_classes=100)) == 36_479_194 + 640 * 90 + 90


def test_wrn16_2_forward_and_fc_contract():
    model = WideResNet(depth=16, widen_factor=2, num_classes=10, dropout=0.3).eval()
    assert n_params(model) == 691_674
    out = assert_fc_is_output(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # pre-activation blocks, 1x1 shortcut only where the shape changes
    convs_1x1 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(convs_1x1) == 3 and all(m.bias is None for m in convs_1x1)


def test_wrn_dropout_active_only_in_train():
    model = WideResNet(depth=10, widen_factor=1, num_classes=3, dropout=0.5)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("depth", [27, 12, 4])
def test_wrn_bad_depth(depth):
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=depth, widen_factor=1)


# --------------------------------------------------------------------------- ResNet-50
@pytest.fixture(scope="module")
def r50_file(tmp_path_factory):
    """A random (shifted) 1000-class torchvision ResNet-50 saved as a plain state dict."""
    torch.manual_seed(0)
    src = torchvision.models.resnet50()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    path = tmp_path_factory.mktemp("weights") / "r50.pth"
    torch.save(src.state_dict(), path)
    return path, src.state_dict()


def test_resnet50_forward_and_counts():
    model = resnet50(num_classes=14).eval()
    assert isinstance(model, torchvision.models.ResNet)
    assert n_params(model) == 23_536_718  # 25,557,032 - 2048*986 - 986
    assert n_params(resnet50(num_classes=1000)) == 25_557_032
    with torch.no_grad():
        out = assert_fc_is_output(model, torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 14)


def test_resnet50_state_dict_keys_match_torchvision():
    assert set(resnet50().state_dict()) == set(torchvision.models.resnet50().state_dict())


def test_resnet50_loads_local_weights_and_drops_fc(r50_file):
    path, ref = r50_file
    for weights in (path, str(path)):
        model = resnet50(num_classes=14, weights=weights)
        for k, v in model.state_dict().items():
            if k.startswith("fc."):
                continue
            assert torch.equal(v, ref[k]), k
        assert model.fc.out_features == 14 and model.fc.weight.shape == (14, 2048)
    # same number of classes: the head is kept too
    model = resnet50(num_classes=1000, weights=path)
    assert torch.equal(model.fc.weight, ref["fc.weight"])


def test_resnet50_unwraps_checkpoint_and_module_prefix(r50_file, tmp_path):
    _, ref = r50_file
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3}, path)
    model = resnet50(num_classes=14, weights=path)
    assert torch.equal(model.conv1.weight, ref["conv1.weight"])


def test_resnet50_wrong_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resnet50(weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="could not read"):
        resnet50(weights=junk)
    other = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(ValueError, match="not a torchvision ResNet-50 state dict"):
        resnet50(weights=other)
    notdict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), notdict)
    with pytest.raises(ValueError, match="state dict"):
        resnet50(weights=notdict)


def test_resnet50_enum_without_cache_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("attempted download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    for weights in ("IMAGENET1K_V1", "DEFAULT", torchvision.models.ResNet50_Weights.IMAGENET1K_V2):
        with pytest.raises(FileNotFoundError, match="never downloads.*give its path as the weights"):
            resnet50(weights=weights)
    with pytest.raises(ValueError, match="unknown ResNet-50 weights"):
        resnet50(weights="IMAGENET22K")
    with pytest.raises(ValueError, match="unsupported weights"):
        resnet50(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)


def test_resnet50_enum_loads_from_hub_cache(r50_file, tmp_path, monkeypatch):
    path, ref = r50_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    enum = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / enum.url.rsplit("/", 1)[-1]).symlink_to(path)
    model = ResNet50(num_classes=14, weights="IMAGENET1K_V1")
    assert torch.equal(model.layer4[2].conv3.weight, ref["layer4.2.conv3.weight"])


# --------------------------------------------------------------------------- small models
def test_small_cnn_shapes_and_contract():
    model = SmallCNN(num_classes=5, in_channels=3, width=8).eval()
    out = assert_fc_is_output(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    assert SmallCNN(num_classes=4, in_channels=1, width=8)(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    assert SmallCNN(width=8)(torch.randn(2, 3, 64, 48)).shape == (2, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # float64 input (from numpy) is accepted
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), 64 * 128 + 128 + 128 * 10 + 10),
        (dict(hidden=()), 64 * 10 + 10),
        (dict(hidden=(32, 16), batchnorm=True, dropout=0.2), 64 * 32 + 32 + 64 + 32 * 16 + 16 + 32 + 16 * 10 + 10),
        (dict(hidden=20), 64 * 20 + 20 + 20 * 10 + 10),
    ],
)
def test_mlp(kwargs, expected):
    model = MLP(64, 10, **kwargs).eval()
    assert n_params(model) == expected
    out = assert_fc_is_output(model, torch.randn(3, 64))
    assert out.shape == (3, 10)
    assert model(torch.randn(3, 8, 8, dtype=torch.float64)).shape == (3, 10)


def test_mlp_any_n_features():
    assert MLP(n_features=5, num_classes=2)(torch.randn(4, 5)).shape == (4, 2)


def test_models_pickle_roundtrip():
    for model in (resnet20(), SmallCNN(width=4), MLP(4, 2), WideResNet(10, 1)):
        clone = pickle.loads(pickle.dumps(model))
        x = torch.randn(2, 3, 8, 8) if not isinstance(model, MLP) else torch.randn(2, 4)
        model.eval(), clone.eval()
        torch.testing.assert_close(model(x), clone(x))


# --------------------------------------------------------------------------- registry
def test_registry_names_and_build():
    assert set(MODEL_NAMES) == {
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "wrn28_10", "resnet50", "small_cnn", "mlp",
    }
    assert isinstance(get_model("resnet32", num_classes=100), CifarResNet)
    assert get_model("resnet32", num_classes=100).fc.out_features == 100
    assert n_params(get_model("resnet44")) == 658_586
    assert isinstance(get_model("small_cnn", width=4), SmallCNN)
    assert get_model("mlp", n_features=64, num_classes=10).fc.in_features == 128
    assert isinstance(get_model("RESNET20"), CifarResNet)


def test_registry_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet32.*wrn28_10.*mlp"):
        get_model("resnet18")


def test_model_key_is_the_one_spelling_rule():
    from mwnet_sk.models import model_key

    assert model_key("WRN28-10") == "wrn28_10" and model_key("Small-CNN") == "small_cnn"
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        model_key("vgg")
