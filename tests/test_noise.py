"""Tests of mwnet_sk.noise: noise models, long-tail subsampling, meta-set selection."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mwnet_sk.noise import (
    NOISE_TYPES,
    make_long_tailed,
    make_noisy_labels,
    meta_mask,
    noise_transition_matrix,
    train_meta_split,
)

N = 50_000
K = 10


@pytest.fixture(scope="module")
def y10() -> np.ndarray:
    return np.tile(np.arange(K), N // K)


def _empirical_transition(y, y_noisy, classes):
    classes = list(classes)
    pos = {c: i for i, c in enumerate(classes)}
    Kc = len(classes)
    counts = np.zeros((Kc, Kc))
    np.add.at(counts, ([pos[v] for v in y], [pos[v] for v in y_noisy]), 1)
    return counts / counts.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- semantics
def test_uniform_redraws_from_all_classes(y10):
    y_noisy = make_noisy_labels(y10, 0.4, noise_type="uniform", random_state=0)
    # The true class can be drawn again: the flip rate is r (K - 1) / K = 0.36.
    assert abs(np.mean(y_noisy != y10) - 0.36) < 0.01
    # Wrong labels are spread evenly over the other classes.
    wrong = y_noisy[(y10 == 3) & (y_noisy != 3)]
    frac = np.bincount(wrong, minlength=K) / len(wrong)
    assert frac[3] == 0
    np.testing.assert_allclose(np.delete(frac, 3), 1 / 9, atol=0.02)


def test_uniform_is_the_default(y10):
    a = make_noisy_labels(y10, 0.4, random_state=3)
    b = make_noisy_labels(y10, 0.4, noise_type="uniform", random_state=3)
    np.testing.assert_array_equal(a, b)


def test_symmetric_changes_exactly_rate(y10):
    y_noisy = make_noisy_labels(y10, 0.4, noise_type="symmetric", random_state=0)
    assert abs(np.mean(y_noisy != y10) - 0.40) < 0.01


def test_flip_maps_each_class_to_one_other_class(y10):
    y_noisy, T = make_noisy_labels(
        y10, 0.4, noise_type="flip", random_state=1, return_transition=True
    )
    assert abs(np.mean(y_noisy != y10) - 0.4) < 0.01
    for c in range(K):
        targets = set(np.unique(y_noisy[(y10 == c) & (y_noisy != c)]).tolist())
        assert len(targets) == 1 and c not in targets
        (t,) = targets
        assert T[c, t] == pytest.approx(0.4) and T[c, c] == pytest.approx(0.6)
    assert np.count_nonzero(T) == 2 * K


def test_flip2_maps_each_class_to_two_other_classes(y10):
    y_noisy, T = make_noisy_labels(
        y10, 0.4, noise_type="flip2", random_state=2, return_transition=True
    )
    for c in range(K):
        wrong = y_noisy[(y10 == c) & (y_noisy != c)]
        targets = np.unique(wrong)
        assert len(targets) == 2 and c not in targets
        np.testing.assert_allclose(T[c, targets], [0.2, 0.2])
        # r/2 each, within sampling error (5000 samples per class)
        frac = np.array([np.mean(wrong == t) for t in targets])
        np.testing.assert_allclose(frac, 0.5, atol=0.05)
    assert abs(np.mean(y_noisy != y10) - 0.4) < 0.01


def test_pair_uses_sorted_noncontiguous_classes():
    classes = np.array([3, 7, 11, 20])
    y = np.repeat(classes, 5000)
    y_noisy = make_noisy_labels(y, 0.3, noise_type="pair", random_state=0)
    nxt = {3: 7, 7: 11, 11: 20, 20: 3}
    changed = y != y_noisy
    assert all(nxt[a] == b for a, b in zip(y[changed], y_noisy[changed]))
    assert abs(changed.mean() - 0.3) < 0.015
    assert y_noisy.dtype == y.dtype


def test_pair_follows_given_class_order():
    y = np.repeat(["a", "b", "c"], 100)
    y_noisy, T = make_noisy_labels(
        y, 1.0, noise_type="pair", classes=["c", "a", "b"], random_state=0, return_transition=True
    )
    # rows/columns follow the given order: c -> a -> b -> c
    np.testing.assert_array_equal(T, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert set(zip(y.tolist(), y_noisy.tolist())) == {("c", "a"), ("a", "b"), ("b", "c")}


def test_empirical_transition_matches_matrix():
    y = np.repeat(np.arange(5), 20_000)
    for noise_type in NOISE_TYPES:
        y_noisy, T = make_noisy_labels(
            y, 0.45, noise_type=noise_type, random_state=7, return_transition=True
        )
        np.testing.assert_allclose(T.sum(axis=1), 1.0)
        assert np.all(T >= 0)
        np.testing.assert_allclose(_empirical_transition(y, y_noisy, range(5)), T, atol=0.015)


def test_user_matrix_is_used_and_zero_entries_never_sampled():
    T_user = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.0, 1.0]])
    y = np.repeat([0, 1, 2], 20_000)
    y_noisy, T = make_noisy_labels(
        y, None, noise_type=T_user, random_state=0, return_transition=True
    )
    np.testing.assert_allclose(T, T_user)
    emp = _empirical_transition(y, y_noisy, range(3))
    assert np.all(emp[T_user == 0] == 0)
    np.testing.assert_allclose(emp, T_user, atol=0.015)


def test_rate_zero_and_one():
    y = np.repeat(np.arange(4), 100)
    for noise_type in NOISE_TYPES:
        np.testing.assert_array_equal(
            make_noisy_labels(y, 0.0, noise_type=noise_type, random_state=0), y
        )
    for noise_type in ("symmetric", "flip", "flip2", "pair"):
        assert np.all(make_noisy_labels(y, 1.0, noise_type=noise_type, random_state=0) != y)


def test_noise_transition_matrix_formulas():
    np.testing.assert_allclose(
        noise_transition_matrix(0.4, 4, noise_type="uniform"), 0.6 * np.eye(4) + 0.1
    )
    np.testing.assert_allclose(
        noise_transition_matrix(0.3, ["x", "y", "z"], noise_type="symmetric"),
        [[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]],
    )
    np.testing.assert_allclose(
        noise_transition_matrix(0.2, 3, noise_type="pair"),
        [[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]],
    )


def test_transition_matrix_matches_the_one_used_for_the_same_seed(y10):
    for noise_type in ("flip", "flip2"):
        T = noise_transition_matrix(0.4, K, noise_type=noise_type, random_state=5)
        _, T_used = make_noisy_labels(
            y10, 0.4, noise_type=noise_type, random_state=5, return_transition=True
        )
        np.testing.assert_array_equal(T, T_used)
    # different seeds give different flip targets (for K = 10, with overwhelming probability)
    assert not np.array_equal(
        noise_transition_matrix(0.4, K, noise_type="flip", random_state=1),
        noise_transition_matrix(0.4, K, noise_type="flip", random_state=2),
    )


# --------------------------------------------------------------------------- label kinds
def test_string_labels_round_trip():
    y = np.array(["cat", "dog", "bird"] * 1000)
    y_noisy = make_noisy_labels(y, 0.5, noise_type="flip", random_state=0)
    assert isinstance(y_noisy, np.ndarray) and y_noisy.dtype == y.dtype
    assert set(y_noisy.tolist()) <= {"cat", "dog", "bird"}
    # lists are accepted too
    y_list = make_noisy_labels(list(y), 0.5, noise_type="flip", random_state=0)
    np.testing.assert_array_equal(y_list, y_noisy)


def test_object_labels_and_long_class_names_are_not_truncated():
    y = np.array(["a", "b"] * 50)  # dtype <U1
    y_noisy = make_noisy_labels(
        y, 1.0, noise_type="symmetric", classes=["a", "b", "a-much-longer-name"], random_state=0
    )
    assert "a-much-longer-name" in set(y_noisy.tolist())
    y_obj = np.array(["a", "b", "c"] * 10, dtype=object)
    out = make_noisy_labels(y_obj, 0.5, random_state=0)
    assert out.dtype == object


def test_int_dtypes_and_tensors_are_preserved():
    y = np.tile(np.arange(5, dtype=np.int32), 200)
    assert make_noisy_labels(y, 0.5, random_state=0).dtype == np.int32
    yt = torch.from_numpy(np.tile(np.arange(5), 200))
    out = make_noisy_labels(yt, 0.5, random_state=0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), make_noisy_labels(yt.numpy(), 0.5, random_state=0))


def test_classes_argument_allows_missing_classes():
    y = np.zeros(2000, dtype=int)  # only class 0 present
    y_noisy, T = make_noisy_labels(
        y, 0.5, noise_type="symmetric", classes=np.arange(4), random_state=0, return_transition=True
    )
    assert T.shape == (4, 4)
    assert set(np.unique(y_noisy).tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- randomness
def test_reproducible_and_global_state_untouched(y10):
    state = np.random.get_state()
    a = make_noisy_labels(y10, 0.4, noise_type="flip", random_state=42)
    b = make_noisy_labels(y10, 0.4, noise_type="flip", random_state=42)
    c = make_noisy_labels(y10, 0.4, noise_type="flip", random_state=np.random.RandomState(42))
    make_long_tailed(None, y10, imbalance_factor=10, random_state=0)
    meta_mask(y10, n_meta_per_class=5, random_state=0)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    d = make_noisy_labels(y10, 0.4, noise_type="flip", random_state=43)
    assert not np.array_equal(a, d)


def test_large_input_is_vectorised():
    y = np.random.RandomState(0).randint(0, 100, size=1_000_000)
    t0 = time.perf_counter()
    y_noisy = make_noisy_labels(y, 0.4, noise_type="symmetric", random_state=0)
    elapsed = time.perf_counter() - t0
    assert abs(np.mean(y_noisy != y) - 0.4) < 0.005
    assert elapsed < 5.0  # a per-sample Python loop would take far longer


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), float("inf"), "0.3", True, None])
def test_invalid_rate(rate, y10):
    with pytest.raises(ValueError, match="noise_rate"):
        make_noisy_labels(y10, rate)


def test_unknown_noise_type(y10):
    with pytest.raises(ValueError, match="Unknown noise_type 'gaussian'"):
        make_noisy_labels(y10, 0.2, noise_type="gaussian")


@pytest.mark.parametrize(
    "matrix, match",
    [
        (np.ones((3, 2)) / 2, "square"),
        (np.eye(4), r"there are 3 classes"),
        (np.array([[0.5, 0.4, 0.0], [0, 1, 0], [0, 0, 1]]), "not row-stochastic"),
        (np.array([[1.5, -0.5, 0.0], [0, 1, 0], [0, 0, 1]]), "negative"),
        (np.array([[np.nan, 0.5, 0.5], [0, 1, 0], [0, 0, 1]]), "NaN"),
    ],
)
def test_invalid_matrix(matrix, match):
    y = np.repeat([0, 1, 2], 10)
    with pytest.raises(ValueError, match=match):
        make_noisy_labels(y, None, noise_type=matrix)


def test_matrix_with_rate_is_ambiguous():
    with pytest.raises(ValueError, match="noise_rate must be None"):
        make_noisy_labels([0, 1, 1], 0.3, noise_type=np.eye(2))


def test_labels_not_in_classes():
    with pytest.raises(ValueError, match=r"not among the classes .*: 'z'"):
        make_noisy_labels(["a", "b", "z"], 0.2, classes=["a", "b"])


def test_too_few_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_noisy_labels([1, 1, 1], 0.2, noise_type="flip")
    with pytest.raises(ValueError, match="at least 3 classes"):
        make_noisy_labels([0, 1, 1], 0.2, noise_type="flip2")
    with pytest.raises(ValueError, match="at least 2 classes"):
        noise_transition_matrix(0.2, 1, noise_type="symmetric")
    # uniform noise on one class is a no-op, not an error
    np.testing.assert_array_equal(make_noisy_labels([4, 4], 0.5), [4, 4])


def test_bad_y():
    with pytest.raises(ValueError, match="empty"):
        make_noisy_labels([], 0.2)
    with pytest.raises(ValueError, match="1-dimensional"):
        make_noisy_labels(np.zeros((3, 2)), 0.2)
    with pytest.raises(ValueError, match="duplicate"):
        make_noisy_labels([0, 1], 0.2, classes=[0, 1, 1])


# --------------------------------------------------------------------------- long tail
def _lt_expected(n_max, imbalance_factor, K):
    return [int(n_max * (1 / imbalance_factor) ** (i / (K - 1))) for i in range(K)]


def test_long_tail_counts_match_formula():
    y = np.repeat(np.arange(10), 500)
    X = np.arange(y.size)
    X_lt, y_lt, idx = make_long_tailed(
        X, y, imbalance_factor=100, random_state=0, return_indices=True
    )
    counts = np.bincount(y_lt, minlength=10).tolist()
    assert counts == _lt_expected(500, 100, 10)
    assert counts[0] == 500 and counts[-1] == 5
    # rows stay aligned and in their original order
    np.testing.assert_array_equal(X_lt, idx)
    np.testing.assert_array_equal(y_lt, y[idx])
    assert np.all(np.diff(idx) > 0)


def test_long_tail_cifar_sizes():
    # CIFAR-10 after the 10-per-class meta split: n_max = 4990 (official LT code)
    y = np.repeat(np.arange(10), 4990)
    _, y_lt = make_long_tailed(None, y, imbalance_factor=200, random_state=0)
    assert np.bincount(y_lt).tolist() == _lt_expected(4990, 200, 10)


def test_long_tail_class_order_and_labels_kinds():
    y = np.repeat(["a", "b", "c"], 100)
    X = torch.arange(300).reshape(300, 1)
    X_lt, y_lt = make_long_tailed(
        X, list(y), imbalance_factor=100, class_order=["c", "b", "a"], random_state=1
    )
    assert isinstance(X_lt, torch.Tensor) and isinstance(y_lt, list)
    vals, counts = np.unique(y_lt, return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {"c": 100, "b": 10, "a": 1}
    np.testing.assert_array_equal(np.asarray(y)[X_lt[:, 0].numpy()], y_lt)
    # lists of samples and tensor labels
    X_list = [f"img{i}" for i in range(300)]
    yt = torch.from_numpy(np.repeat(np.arange(3), 100))
    Xl, yl = make_long_tailed(X_list, yt, imbalance_factor=10, random_state=0)
    assert isinstance(Xl, list) and isinstance(yl, torch.Tensor)
    assert np.bincount(yl.numpy()).tolist() == _lt_expected(100, 10, 3)


def test_long_tail_edge_cases():
    y = np.repeat(np.arange(4), [50, 30, 40, 2])
    # n_max is the largest class; a class smaller than its target keeps everything
    _, y_lt = make_long_tailed(None, y, imbalance_factor=5, random_state=0)
    target = _lt_expected(50, 5, 4)
    assert np.bincount(y_lt).tolist() == [min(t, c) for t, c in zip(target, [50, 30, 40, 2])]
    # imbalance factor 1 keeps everything
    _, y_all = make_long_tailed(None, y, imbalance_factor=1, random_state=0)
    np.testing.assert_array_equal(y_all, y)
    # reproducible
    a = make_long_tailed(None, y, imbalance_factor=5, random_state=3, return_indices=True)[2]
    b = make_long_tailed(None, y, imbalance_factor=5, random_state=3, return_indices=True)[2]
    np.testing.assert_array_equal(a, b)


def test_long_tail_errors():
    y = np.repeat(np.arange(3), 10)
    for bad in (0.5, 0, -2, float("nan"), "10"):
        with pytest.raises(ValueError, match="imbalance_factor"):
            make_long_tailed(None, y, imbalance_factor=bad)
    with pytest.raises(ValueError, match="class_order"):
        make_long_tailed(None, y, imbalance_factor=10, class_order=[0, 1])
    with pytest.raises(ValueError, match="class_order"):
        make_long_tailed(None, y, imbalance_factor=10, class_order=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="inconsistent"):
        make_long_tailed(np.zeros(5), y, imbalance_factor=10)


# --------------------------------------------------------------------------- meta split
def test_train_meta_split_balanced_disjoint_complete():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, size=2000)
    X = np.arange(2000) * 10
    X_tr, X_me, y_tr, y_me = train_meta_split(X, y, n_meta_per_class=7, random_state=0)
    assert np.bincount(y_me, minlength=10).tolist() == [7] * 10
    assert len(X_tr) + len(X_me) == 2000
    assert set(X_tr.tolist()).isdisjoint(X_me.tolist())
    assert set(X_tr.tolist()) | set(X_me.tolist()) == set(X.tolist())
    np.testing.assert_array_equal(y[X_tr // 10], y_tr)
    np.testing.assert_array_equal(y[X_me // 10], y_me)


def test_meta_mask_matches_split():
    y = np.repeat(np.arange(10), 30)
    X = np.arange(300)
    mask = meta_mask(y, meta_size=25, random_state=4)
    _, X_me, _, _ = train_meta_split(X, y, meta_size=25, random_state=4)
    np.testing.assert_array_equal(np.flatnonzero(mask), X_me)
    # remainder goes to the first classes in sorted order: 25 = 10 * 2 + 5
    assert np.bincount(y[mask]).tolist() == [3] * 5 + [2] * 5


def test_meta_split_containers():
    y = np.repeat(["x", "y"], 20)
    X_t = torch.arange(40)
    X_tr, X_me, y_tr, y_me = train_meta_split(X_t, list(y), n_meta_per_class=3, random_state=0)
    assert isinstance(X_tr, torch.Tensor) and isinstance(y_me, list)
    assert sorted(y_me) == ["x"] * 3 + ["y"] * 3
    ds = torch.utils.data.TensorDataset(torch.arange(40))
    D_tr, D_me, _, _ = train_meta_split(ds, y, n_meta_per_class=3, random_state=0)
    assert isinstance(D_me, torch.utils.data.Subset) and len(D_me) == 6 and len(D_tr) == 34
    np.testing.assert_array_equal([int(D_me[i][0]) for i in range(6)], X_me.numpy())


def test_meta_split_errors():
    y = np.repeat(np.arange(3), [10, 10, 2])
    with pytest.raises(ValueError, match="exactly one"):
        meta_mask(y)
    with pytest.raises(ValueError, match="exactly one"):
        meta_mask(y, n_meta_per_class=1, meta_size=3)
    with pytest.raises(ValueError, match=r"Class 2 has only 2 samples but 3 are needed"):
        meta_mask(y, n_meta_per_class=3)
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        meta_mask(y, meta_size=2)
    with pytest.raises(ValueError, match="n_meta_per_class"):
        meta_mask(y, n_meta_per_class=0)
    with pytest.raises(ValueError, match="inconsistent"):
        train_meta_split(np.zeros(3), y, n_meta_per_class=1)


def test_long_tail_that_would_empty_a_class_is_refused():
    y = np.repeat(np.arange(3), 50)
    with pytest.raises(ValueError, match=r"imbalance_factor=100 with at most 50 rows per class leaves no row of "
                                         r"class\(es\) \[2\]; use imbalance_factor <= 50"):
        make_long_tailed(None, y, imbalance_factor=100)
    assert np.bincount(make_long_tailed(None, y, imbalance_factor=50)[1]).tolist() == [50, 7, 1]
