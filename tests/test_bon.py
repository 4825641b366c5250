"""Closed forms of perm.bon against brute force over every n-subset, plus hand-derived values."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest

from perm import bon


def brute_pick(scores: np.ndarray, subset: tuple[int, ...]) -> int:
    """Best of the subset: highest score, ties to the lower index (np.argmax takes the first)."""
    idx = np.array(subset)
    return int(idx[np.argmax(scores[idx])])


def brute_probabilities(scores: np.ndarray, n: int) -> np.ndarray:
    subsets = list(combinations(range(len(scores)), n))
    p = np.zeros(len(scores))
    for sub in subsets:
        p[brute_pick(scores, sub)] += 1
    return p / len(subsets)


def tied_pools(seed: int = 0, sizes=range(1, 9)):
    """Small pools drawn from 3 values, so most contain ties."""
    rng = np.random.default_rng(seed)
    for size in sizes:
        for _ in range(3):
            yield rng.integers(0, 3, size).astype(float)


@pytest.mark.parametrize("seed", [0, 1])
def test_selection_probabilities_match_brute_force_with_ties(seed):
    for s in tied_pools(seed):
        for n in range(1, len(s) + 1):
            p = bon.selection_probabilities(s, n)
            np.testing.assert_allclose(p, brute_probabilities(s, n), atol=1e-14)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_selection_probabilities_hand_example():
    """s = [1, 1, 0, 2], n = 2. Order (best first): 3, 0, 1, 2 (index 0 beats 1 on the tie), so
    b = [2, 1, 0, 3] and p = b / C(4, 2) = b / 6 = [1/3, 1/6, 0, 1/2]."""
    s = np.array([1.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(bon.beat_counts(s), [2, 1, 0, 3])
    np.testing.assert_allclose(bon.selection_probabilities(s, 2), [1 / 3, 1 / 6, 0, 1 / 2])
    np.testing.assert_allclose(bon.selection_probabilities(s, 1), [0.25] * 4)
    np.testing.assert_array_equal(bon.selection_probabilities(s, 4), [0, 0, 0, 1])


def test_all_tied_pool_prefers_lower_index():
    """All equal: index i beats every j > i, so b_i = N−1−i and best-of-N always picks index 0."""
    s = np.zeros(5)
    np.testing.assert_array_equal(bon.beat_counts(s), [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(bon.selection_probabilities(s, 5), [1, 0, 0, 0, 0])


def test_batched_equals_row_by_row():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 4, size=(2, 3, 7)).astype(float)
    t = rng.normal(size=(2, 3, 7))
    p = bon.selection_probabilities(s, 3)
    ebn = bon.expected_best_of_n(s, t, 3)
    assert p.shape == s.shape and ebn.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(p[i, j], bon.selection_probabilities(s[i, j], 3))
            assert ebn[i, j] == pytest.approx(bon.expected_best_of_n(s[i, j], t[i, j], 3))


def test_weights_exact_against_fractions():
    size = 30
    for n in (1, 2, 7, 30):
        w = bon.selection_weights(size, n)
        exact = [Fraction(math.comb(b, n - 1), math.comb(size, n)) for b in range(size)]
        np.testing.assert_allclose(w, [float(x) for x in exact], rtol=1e-13, atol=0)


def test_large_pool_is_finite_and_sums_to_one():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3000))
    p = bon.selection_probabilities(s, 64)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-12, rtol=0)
    assert p.max() == pytest.approx(64 / 3000)


def test_expected_best_of_n_matches_brute_force():
    rng = np.random.default_rng(1)
    for s in tied_pools(2):
        t = rng.integers(-2, 3, len(s)).astype(float)
        for n in range(1, len(s) + 1):
            subsets = list(combinations(range(len(s)), n))
            brute = np.mean([t[brute_pick(s, sub)] for sub in subsets])
            assert bon.expected_best_of_n(s, t, n) == pytest.approx(brute, abs=1e-12)


def test_expected_agreement_matches_brute_force():
    rng = np.random.default_rng(2)
    for a in tied_pools(4):
        b = rng.integers(0, 3, len(a)).astype(float)
        for n in range(1, len(a) + 1):
            subsets = list(combinations(range(len(a)), n))
            brute = np.mean([brute_pick(a, sub) == brute_pick(b, sub) for sub in subsets])
            assert bon.expected_agreement(a, b, n) == pytest.approx(brute, abs=1e-12)


def test_agreement_hand_values():
    """Identical orders agree always; reversed orders have d_j = 0 for all j, so they agree only when
    the subset is a single candidate (n = 1: Σ_j C(0, 0)/N = 1)."""
    s = np.array([0.3, 1.0, -2.0, 5.0, 0.0])
    for n in range(1, 6):
        assert bon.expected_agreement(s, s, n) == pytest.approx(1.0)
        assert bon.expected_agreement(s, -s, n) == pytest.approx(1.0 if n == 1 else 0.0)


def test_joint_beat_counts_chunking(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 40, 9))
    whole = bon.joint_beat_counts(a, b)
    np.testing.assert_array_equal(bon.joint_beat_counts(a, a), bon.beat_counts(a))
    monkeypatch.setattr(bon, "_MAX_COMPARISON_ELEMENTS", 3 * 81)  # 3 rows per chunk
    np.testing.assert_array_equal(bon.joint_beat_counts(a, b), whole)


def test_win_rate_matches_brute_force():
    rng = np.random.default_rng(6)
    for s in tied_pools(7):
        t = rng.integers(0, 3, len(s)).astype(float)
        ref = rng.integers(0, 3, 4).astype(float)
        for n in range(1, len(s) + 1):
            subsets = list(combinations(range(len(s)), n))
            wins = []
            for sub in subsets:
                ti = t[brute_pick(s, sub)]
                wins.append(np.mean([1.0 if ti > r else 0.5 if ti == r else 0.0 for r in ref]))
            assert bon.win_rate(s, t, ref, n) == pytest.approx(np.mean(wins), abs=1e-12)


def test_win_probabilities_hand_values():
    """t = 1 against refs [0, 1, 2]: win, tie, loss → (1 + 0.5 + 0) / 3 = 0.5."""
    np.testing.assert_allclose(bon.win_probabilities([1.0, 3.0, -1.0], [0.0, 1.0, 2.0]), [0.5, 1.0, 0.0])


def test_standardize_hand_values():
    """[1, 2, 3, 6]: mean 3 → [−2, −1, 0, 3]; population variance (4+1+0+9)/4 = 3.5."""
    s = np.array([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0]])
    np.testing.assert_allclose(bon.standardize(s), [[-2, -1, 0, 3], [0, 0, 0, 0]])
    np.testing.assert_allclose(
        bon.standardize(s, scale=True), [np.array([-2, -1, 0, 3]) / np.sqrt(3.5), [0, 0, 0, 0]]
    )
    const = bon.standardize(np.full((1, 3), 0.1), scale=True)
    np.testing.assert_array_equal(const, np.zeros((1, 3)))


def test_aggregate_hand_values():
    """Three members (M=3), one prompt, two candidates: candidate 0 scored [1, 2, 6], candidate 1
    [4, 0, 2]. mean [3, 2]; median [2, 2]; min [1, 0]; population variances (4+1+9)/3 = 14/3 and
    (4+4+0)/3 = 8/3, so mean_minus_std = [3 − √(14/3), 2 − √(8/3)]."""
    scores = np.array([[[1.0, 4.0]], [[2.0, 0.0]], [[6.0, 2.0]]])  # (M=3, P=1, N=2)
    np.testing.assert_allclose(bon.aggregate(scores, "mean"), [[3, 2]])
    np.testing.assert_allclose(bon.aggregate(scores, "median"), [[2, 2]])
    np.testing.assert_allclose(bon.aggregate(scores, "min"), [[1, 0]])
    np.testing.assert_allclose(
        bon.aggregate(scores, "mean_minus_std"), [[3 - np.sqrt(14 / 3), 2 - np.sqrt(8 / 3)]]
    )
    with pytest.raises(ValueError, match="mean, median, min, mean_minus_std"):
        bon.aggregate(scores, "max")


def test_kl_bound_and_default_ns():
    assert bon.kl_bound(1) == 0.0
    assert bon.kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    np.testing.assert_allclose(bon.kl_bound(np.array([4, 64])), [math.log(4) - 0.75, math.log(64) - 63 / 64])
    assert bon.default_ns(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bon.default_ns(100) == [1, 2, 4, 8, 16, 32, 64]
    assert bon.default_ns(1) == [1]


@pytest.mark.parametrize("n", [0, 5, 2.5])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="n must"):
        bon.selection_probabilities(np.arange(4.0), n)


def test_non_finite_scores_raise():
    with pytest.raises(ValueError, match="finite"):
        bon.selection_probabilities(np.array([1.0, np.nan]), 1)
