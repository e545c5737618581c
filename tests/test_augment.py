"""Tests for mwnet_sk.augment: exact crop/flip semantics, layouts, determinism, vectorisation."""

import copy
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mwnet_sk.augment as augment_module
from mwnet_sk.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchAugment,
    cifar_augment,
)

MEAN = torch.tensor(CIFAR10_MEAN)[:, None, None]
STD = torch.tensor(CIFAR10_STD)[:, None, None]


def reference_normalise(x_nchw_uint8: torch.Tensor) -> torch.Tensor:
    return (x_nchw_uint8.float() / 255.0 - MEAN) / STD


def random_images(n=16, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def candidates(img_chw: torch.Tensor, pad: int, size, mode: str = "constant"):
    """All (crop, flip) outputs of a padded uint8 image, normalised.

    ``mode="reflect"`` pads like the official MW-Net code: ``F.pad`` on the float image.
    """
    ch, cw = size
    if mode == "reflect":
        padded = F.pad(img_chw[None].float(), (pad, pad, pad, pad), mode="reflect")[0].to(torch.uint8)
    else:
        padded = F.pad(img_chw, (pad, pad, pad, pad))
    out = {}
    for dy in range(padded.shape[1] - ch + 1):
        for dx in range(padded.shape[2] - cw + 1):
            crop = padded[:, dy : dy + ch, dx : dx + cw]
            for flip in (False, True):
                c = crop.flip(-1) if flip else crop
                out[(dy - pad, dx - pad, flip)] = reference_normalise(c[None])[0]
    return out


def match(sample: torch.Tensor, cands: dict):
    return [key for key, c in cands.items() if torch.equal(sample, c)]


def test_shape_dtype_and_default_stats():
    aug = cifar_augment()
    x = random_images(4)
    for mode in (aug.train(), aug.eval()):
        y = mode(x)
        assert y.shape == (4, 3, 32, 32) and y.dtype == torch.float32 and y.is_contiguous()
    torch.testing.assert_close(aug.mean, torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(aug.std, torch.tensor(CIFAR10_STD))
    aug100 = cifar_augment("cifar100")
    torch.testing.assert_close(aug100.mean, torch.tensor(CIFAR100_MEAN))
    torch.testing.assert_close(aug100.std, torch.tensor(CIFAR100_STD))
    with pytest.raises(ValueError, match="Unknown dataset"):
        cifar_augment("svhn")


def test_eval_equals_plain_normalisation_exactly():
    aug = cifar_augment().eval()
    x = random_images(8)
    assert torch.equal(aug(x), reference_normalise(x))
    assert torch.equal(aug(x.permute(0, 2, 3, 1).contiguous()), reference_normalise(x))
    # float input in [0, 1] is not rescaled
    xf = x.float() / 255.0
    assert torch.equal(aug(xf), reference_normalise(x))


def test_eval_is_deterministic_and_draws_no_randomness():
    aug = cifar_augment().eval()
    x = random_images(4)
    state = torch.get_rng_state()
    aug(x)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_train_outputs_are_padded_crops_possibly_flipped(layout):
    torch.manual_seed(0)
    aug = cifar_augment().train()
    x = random_images(24)
    inp = x if layout == "NCHW" else x.permute(0, 2, 3, 1).contiguous()
    y = aug(inp)
    offsets = set()
    for i in range(4):  # brute force over 81 x 2 candidates for a few samples
        keys = match(y[i], candidates(x[i], 4, (32, 32)))
        assert keys, f"sample {i} is not a padded crop of its input"
        assert all(-4 <= dy <= 4 and -4 <= dx <= 4 for dy, dx, _ in keys)
        offsets.add(keys[0][:2])
    assert len(offsets) > 1  # offsets are per sample


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reflect_padding_matches_the_official_codes_pad(layout):
    torch.manual_seed(0)
    aug = cifar_augment(padding_mode="reflect").train()
    x = random_images(24)
    inp = x if layout == "NCHW" else x.permute(0, 2, 3, 1).contiguous()
    y = aug(inp)
    border = set()
    for i in range(8):
        keys = match(y[i], candidates(x[i], 4, (32, 32), mode="reflect"))
        assert keys, f"sample {i} is not a reflect-padded crop of its input"
        border |= {(dy, dx) for dy, dx, _ in keys if dy or dx}
    assert border  # some crops reach into the mirrored border
    # a crop that reaches the border is not a zero-padded crop (the modes differ)
    constant = cifar_augment().train()
    torch.manual_seed(0)
    assert not torch.equal(constant(inp), y)


def test_reflect_padding_needs_larger_images_and_a_known_mode():
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, padding_mode="reflect")
    with pytest.raises(ValueError, match="reflect padding of 4"):
        aug(random_images(2, h=4, w=4))
    with pytest.raises(ValueError, match="padding_mode"):
        BatchAugment(CIFAR10_MEAN, CIFAR10_STD, padding_mode="edge")


def test_cifar100_with_the_official_codes_cifar10_statistics():
    aug = cifar_augment("CIFAR-100", normalize="cifar10")
    torch.testing.assert_close(aug.mean, torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(aug.std, torch.tensor(CIFAR10_STD))
    with pytest.raises(ValueError, match="Unknown normalize 'imagenet'"):
        cifar_augment("cifar100", normalize="imagenet")


def test_one_table_of_statistics():
    from mwnet_sk import datasets

    assert CIFAR10_MEAN == datasets.CIFAR10_MEAN == tuple(v / 255 for v in (125.3, 123.0, 113.9))
    assert CIFAR10_STD == datasets.CIFAR10_STD == tuple(v / 255 for v in (63.0, 62.1, 66.7))
    assert (CIFAR100_MEAN, CIFAR100_STD) == datasets.NORMALIZATION["cifar100"]
    assert augment_module.IMAGENET_MEAN == datasets.NORMALIZATION["imagenet"][0]


def test_padding_is_zero_before_normalisation():
    torch.manual_seed(3)
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, flip=False)
    x = torch.full((256, 3, 16, 16), 200, dtype=torch.uint8)
    y = aug(x)
    padded_value = reference_normalise(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, :, 0, 0]
    image_value = reference_normalise(torch.full((1, 3, 1, 1), 200, dtype=torch.uint8))[0, :, 0, 0]
    values = y.permute(0, 2, 3, 1).reshape(-1, 3).unique(dim=0)
    assert len(values) == 2
    assert any(torch.equal(v, padded_value) for v in values)
    assert any(torch.equal(v, image_value) for v in values)
    # recover each sample's offsets from its padded border; all of [-4, 4]^2 occur
    pad_mask = y[:, 0] == padded_value[0]  # (N, H, W)
    mid_col, mid_row = pad_mask[:, :, 8].int(), pad_mask[:, 8, :].int()
    top, bottom = mid_col.cumprod(1).sum(1), mid_col.flip(1).cumprod(1).sum(1)
    left, right = mid_row.cumprod(1).sum(1), mid_row.flip(1).cumprod(1).sum(1)
    assert bool(((top == 0) | (bottom == 0)).all() and ((left == 0) | (right == 0)).all())
    dy, dx = bottom - top, right - left
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-4, 5))
    assert int(pad_mask.sum()) == int((dy.abs() * 16 + dx.abs() * 16 - dy.abs() * dx.abs()).sum())


def test_flip_rate_about_half():
    torch.manual_seed(1)
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=0, flip=True)
    x = random_images(2000, 4, 4)
    y = aug(x)
    ref = reference_normalise(x)
    same = (y == ref).flatten(1).all(1)
    flipped = (y == ref.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    rate = flipped.float().mean().item()
    assert 0.45 < rate < 0.55


def test_deterministic_under_manual_seed_and_generator():
    aug = cifar_augment()
    x = random_images(32)
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(124)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug_g = cifar_augment(generator=torch.Generator().manual_seed(7))
    d = aug_g(x)
    aug_g.generator.manual_seed(7)
    assert torch.equal(d, aug_g(x))


def test_nchw_and_nhwc_give_identical_results():
    aug = cifar_augment()
    x = random_images(16)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    b = aug(x.permute(0, 2, 3, 1).contiguous())
    torch.manual_seed(5)
    c = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, layout="NHWC")(x.permute(0, 2, 3, 1))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_layout_detection_and_grayscale():
    gray = BatchAugment(0.5, 0.25).eval()
    x = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    y = gray(x)
    assert y.shape == (2, 1, 28, 28)
    assert torch.equal(y, (x[:, None].float() / 255.0 - 0.5) / 0.25)
    assert gray(x[..., None]).shape == (2, 1, 28, 28)  # NHWC with C=1
    assert gray(x[:, None]).shape == (2, 1, 28, 28)  # NCHW with C=1
    with pytest.raises(ValueError, match="channels"):
        cifar_augment()(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected a batch"):
        cifar_augment()(torch.zeros(8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="layout"):
        BatchAugment(CIFAR10_MEAN, CIFAR10_STD, layout="CHW")


def test_crop_size_train_and_eval():
    x = random_images(6, 12, 12)
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=2, crop_size=8)
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == (6, 3, 8, 8)
    for i in range(2):
        keys = match(y[i], candidates(x[i], 2, (8, 8)))
        assert keys and all(-2 <= dy <= 6 and -2 <= dx <= 6 for dy, dx, _ in keys)
    aug.eval()
    assert torch.equal(aug(x), reference_normalise(x[:, :, 2:10, 2:10]))
    with pytest.raises(ValueError, match="exceeds"):
        BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=0, crop_size=16).train()(x)


def test_no_augmentation_in_train_when_disabled():
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, crop_padding=0, flip=False)
    x = random_images(4)
    assert torch.equal(aug(x), reference_normalise(x))


def test_output_dtype_option_and_device_buffers():
    aug = BatchAugment(CIFAR10_MEAN, CIFAR10_STD, dtype=torch.float64).eval()
    y = aug(random_images(2))
    assert y.dtype == torch.float64
    assert "mean" not in aug.state_dict()  # non-persistent buffers
    assert aug.to("cpu").mean.device.type == "cpu"


def test_copy_and_pickle():
    aug = cifar_augment(generator=torch.Generator().manual_seed(0))
    x = random_images(4)
    clone = copy.deepcopy(aug)
    assert torch.equal(aug(x), clone(x))
    restored = pickle.loads(pickle.dumps(cifar_augment()))
    assert restored.training and restored.crop_padding == 4


def _count_lines_in_augment(fn):
    """Number of executed Python lines inside mwnet_sk/augment.py while running fn()."""
    filename = augment_module.__file__
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != filename:
            return None
        if event == "line":
            count += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


def test_no_python_loop_over_samples():
    aug = cifar_augment()
    small, large = random_images(2), random_images(256)
    n_small = _count_lines_in_augment(lambda: aug(small))
    n_large = _count_lines_in_augment(lambda: aug(large))
    assert n_small > 0 and n_small == n_large


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_stays_on_device():
    aug = cifar_augment()
    x = random_images(64).cuda()
    torch.manual_seed(0)
    y = aug(x)
    assert y.device == x.device and y.shape == (64, 3, 32, 32)
    keys = match(y[0].cpu(), candidates(x[0].cpu(), 4, (32, 32)))
    assert keys
    aug.eval()
    torch.testing.assert_close(aug(x).cpu(), reference_normalise(x.cpu()))


@pytest.mark.parametrize("kwargs", [{"crop_padding": 2.7}, {"crop_size": (8.9, 8.2)}, {"crop_size": True},
                                    {"crop_padding": True}, {"crop_size": "88"}])
def test_sizes_that_int_would_truncate_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        BatchAugment((0.5,), (0.25,), **kwargs)
    assert BatchAugment((0.5,), (0.25,), crop_size=np.int64(8), crop_padding=np.int64(2)).crop_size == (8, 8)
