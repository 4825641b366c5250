"""Best-of-n over a fixed pool of candidates: exact selection probabilities and what follows from them.

Pure numpy, no I/O. Shapes: the **last axis is the pool** of N candidates for one prompt; any leading
axes (prompts, models, pairs of models) are a batch, so a ``(P, N)`` input gives ``(P,)`` results.

Best-of-n is the policy "draw n of the prompt's N candidates uniformly without replacement, keep the one
the proxy scores highest". Everything here is the *exact* expectation over that draw (no Monte Carlo).

Ties. Sample i *beats* j under scores s iff ``s_i > s_j`` or ``s_i == s_j and i < j``: ties go to the
lower pool index, which makes "beats" a strict total order, so every n-subset has exactly one pick.
Scores must be finite (NaN has no place in that order).

The key fact: a candidate that beats exactly ``b`` others is the pick iff the other n−1 drawn candidates
all come from those b, so ``p = C(b, n−1) / C(N, n)``. Those weights depend only on ``b``, N and n
(:func:`selection_weights`); every quantity below is a lookup into that table.
"""

from __future__ import annotations

import numpy as np

AGGREGATORS = ("mean", "median", "min", "mean_minus_std")

# Bound on the size of the temporary boolean (rows, N, N) comparison in joint_beat_counts.
_MAX_COMPARISON_ELEMENTS = 1 << 24


def _as_scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name}: need at least one candidate on the last axis, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: scores must be finite (found NaN or inf)")
    return arr


def _check_n(n, pool_size: int) -> int:
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"n must be an integer, got {n!r}")
    n = int(n)
    if not 1 <= n <= pool_size:
        raise ValueError(f"n must be in 1..{pool_size} (the pool size), got {n}")
    return n


def selection_weights(pool_size: int, n: int) -> np.ndarray:
    """Probability that a candidate which beats exactly ``b`` others is the best-of-n pick.

    Returns ``w`` of shape ``(N,)`` with ``w[b] = C(b, n−1) / C(N, n)`` for ``b = 0 … N−1``. Computed as
    a product of ratios from the top, ``w[N−1] = n/N`` and ``w[b−1] = w[b]·(b−n+1)/b``, so nothing
    overflows for large N and the relative error stays near N·eps. ``w`` sums to 1 (hockey-stick
    identity) and is zero for ``b < n−1``.
    """
    if isinstance(pool_size, bool) or int(pool_size) != pool_size or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
    pool_size = int(pool_size)
    n = _check_n(n, pool_size)
    b = np.arange(1, pool_size, dtype=np.float64)
    ratios = np.maximum(b - n + 1, 0.0) / b  # ratios[b-1] = w[b-1] / w[b]
    w = np.empty(pool_size, dtype=np.float64)
    w[-1] = n / pool_size
    w[:-1] = w[-1] * np.cumprod(ratios[::-1])[::-1]
    return w


def beat_counts(proxy) -> np.ndarray:
    """``b_i = #{j ≠ i : i beats j}`` under ``proxy`` (shape ``(..., N)``), as int64 of the same shape.

    Along the last axis b is a permutation of ``0 … N−1``: N−1 for the proxy's favourite, 0 for its
    least favourite. A stable sort of ``−s`` puts ties in ascending index order, i.e. lower index first.
    """
    s = _as_scores(proxy, "proxy")
    pool_size = s.shape[-1]
    order = np.argsort(-s, axis=-1, kind="stable")  # best first
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(pool_size), axis=-1)
    return (pool_size - 1) - position


def selection_probabilities(proxy, n: int) -> np.ndarray:
    """Exact probability that each candidate is the best-of-n pick of ``proxy``.

    ``proxy``: ``(N,)`` or ``(..., N)``; returns float64 of the same shape, summing to 1 over the last
    axis: ``p_i = C(b_i, n−1) / C(N, n)`` (see :func:`selection_weights`). n = 1 gives 1/N everywhere;
    n = N gives 1 on the proxy's favourite.
    """
    b = beat_counts(proxy)
    return selection_weights(b.shape[-1], n)[b]


def expected_best_of_n(proxy, target, n: int) -> np.ndarray:
    """Expected ``target`` score of the best-of-n pick of ``proxy``: ``Σ_i p_i t_i``.

    ``proxy``, ``target``: ``(..., N)``, broadcastable; returns shape ``(...)``.
    """
    t = _as_scores(target, "target")
    return np.sum(selection_probabilities(proxy, n) * t, axis=-1)


def joint_beat_counts(proxy_a, proxy_b) -> np.ndarray:
    """``d_j = #{k ≠ j : j beats k under a and under b}``, int64 of shape ``(..., N)``.

    Batched over leading axes (broadcast); the (rows, N, N) comparison is chunked over rows to keep its
    memory under ~16M booleans.
    """
    ba, bb = np.broadcast_arrays(beat_counts(proxy_a), beat_counts(proxy_b))
    return _joint_counts_from_beats(ba, bb)


def _joint_counts_from_beats(ba: np.ndarray, bb: np.ndarray) -> np.ndarray:
    # Beat counts are a strict order: j beats k under a iff ba[j] > ba[k].
    shape = ba.shape
    pool_size = shape[-1]
    fa = ba.reshape(-1, pool_size).astype(np.int32)
    fb = bb.reshape(-1, pool_size).astype(np.int32)
    out = np.empty(fa.shape, dtype=np.int64)
    rows = max(1, _MAX_COMPARISON_ELEMENTS // (pool_size * pool_size))
    for lo in range(0, fa.shape[0], rows):
        a, b = fa[lo : lo + rows], fb[lo : lo + rows]
        both = (a[:, :, None] > a[:, None, :]) & (b[:, :, None] > b[:, None, :])  # (rows, N, N)
        out[lo : lo + rows] = both.sum(axis=-1)
    return out.reshape(shape)


def expected_agreement(proxy_a, proxy_b, n: int) -> np.ndarray:
    """Probability that proxies a and b pick the same candidate from one random n-subset.

    ``Σ_j C(d_j, n−1) / C(N, n)`` with d from :func:`joint_beat_counts`: j is both picks iff the other
    n−1 drawn candidates all lie among those j beats under both. Shapes ``(..., N)`` → ``(...)``.
    Equals 1 when a and b order the pool alike; chance level for unrelated proxies is 1/n.
    """
    d = joint_beat_counts(proxy_a, proxy_b)
    return selection_weights(d.shape[-1], n)[d].sum(axis=-1)


def win_probabilities(target, target_reference) -> np.ndarray:
    """``q_i = mean_k w(t_i, t_ref_k)``, w = 1 if greater, 0.5 if equal, 0 if less.

    ``target``: ``(..., N)``; ``target_reference``: ``(..., K)`` (the target's scores of K separate
    reference samples); returns ``(..., N)``.
    """
    t = _as_scores(target, "target")
    ref = _as_scores(target_reference, "target_reference")
    return np.mean(0.5 * (np.sign(t[..., :, None] - ref[..., None, :]) + 1.0), axis=-1)


def win_rate(proxy, target, target_reference, n: int) -> np.ndarray:
    """Expected win rate of the best-of-n pick of ``proxy`` against the reference samples.

    ``Σ_i p_i · mean_k w(t_i, t_ref_k)``; shapes ``(..., N)``, ``(..., N)``, ``(..., K)`` → ``(...)``.
    """
    q = win_probabilities(target, target_reference)
    return np.sum(selection_probabilities(proxy, n) * q, axis=-1)


def standardize(scores, scale: bool = False) -> np.ndarray:
    """Centre each pool (last axis) to zero mean; with ``scale`` also to unit population variance.

    A reward model trained with Bradley–Terry is only defined up to a shift (and, across models, its
    scale is arbitrary), so ensemble members are put on a common footing per prompt before aggregating.
    A constant pool becomes all zeros (no division by zero). Shape is preserved.
    """
    s = _as_scores(scores, "scores")
    constant = np.all(s == s[..., :1], axis=-1, keepdims=True)
    centred = np.where(constant, 0.0, s - s.mean(axis=-1, keepdims=True))
    if not scale:
        return centred
    std = centred.std(axis=-1, keepdims=True)
    return centred / np.where(constant | (std == 0), 1.0, std)


def aggregate(scores, method: str, axis: int = 0) -> np.ndarray:
    """Combine ensemble members' scores per candidate.

    ``scores``: ``(M, P, N)`` (members on ``axis``) → ``(P, N)``. Methods: ``mean``, ``median``,
    ``min`` and ``mean_minus_std`` (mean − population std, ddof=0, across members: a pessimistic score
    that penalises candidates the members disagree on).
    """
    s = _as_scores(scores, "scores")
    if method == "mean":
        return s.mean(axis=axis)
    if method == "median":
        return np.median(s, axis=axis)
    if method == "min":
        return s.min(axis=axis)
    if method == "mean_minus_std":
        return s.mean(axis=axis) - s.std(axis=axis)
    raise ValueError(f"unknown aggregator {method!r}; allowed: {', '.join(AGGREGATORS)}")


def kl_bound(n):
    """Upper bound on KL(best-of-n ‖ base policy): ``log n − (n−1)/n`` (0 at n = 1). Scalar or array."""
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    out = np.log(n_arr) - (n_arr - 1.0) / n_arr
    return float(out) if out.ndim == 0 else out


def default_ns(pool_size: int) -> list[int]:
    """The paper's grid of n: powers of two ``1, 2, 4, …`` up to ``pool_size``.

    A pool size that is not a power of two is *not* appended: at n = N the pick is deterministic and the
    point would break the log-2 spacing of the curves. Pass ``ns`` explicitly to include it.
    """
    if isinstance(pool_size, bool) or int(pool_size) != pool_size or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
    ns, n = [], 1
    while n <= pool_size:
        ns.append(n)
        n *= 2
    return ns
