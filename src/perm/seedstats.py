"""Seed-aware statistics of the reward tensor: pair relations, the seed variance decomposition, intervals
over pretrain seeds and prompts (MultiBERTs' Multi-Bootstrap), ensemble jackknives and duplicate-aware
chance agreement.

Pure functions: numpy arrays in, arrays / small dicts / DataFrames out, no I/O. Shapes follow
:mod:`perm.bon` and :mod:`perm.analysis`: ``pool`` is ``(M, P, N)`` (reward models × prompts × pool
candidates) and holds the RMs only (see :func:`rm_view`); per-pair values are ``(M, M, P)``.

Every interval here is conditional on the SFT policy, the pool's generation and the evaluator: they are
fixed. What varies is which prompts were drawn (the pool is drawn per prompt, so resampling prompts also
covers pool variance), which pretrain seeds were drawn and, nested in them, which finetune seeds.
See ``/work/shared/seed-statistics.md`` for the background.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from perm import bon

RELATIONS = ("same_pretrain", "same_finetune", "neither")
SCOPES = ("shared", "per_rm")
COMPONENTS = ("sigma2_pt", "sigma2_ft", "sigma2_res", "share_pt", "share_ft", "share_res")
ENSEMBLE_NOTES = {
    "pretrain": (
        "pretrain ensemble: leave-one-pretrain-out jackknife over its R members (not resampled with "
        "replacement: a duplicated member would shrink the ensemble's diversity) plus a prompt bootstrap; "
        "normal interval"
    ),
    "finetune": (
        "finetune ensemble of one pretrain: only prompts and finetune seeds vary (jackknife over its "
        "finetune seeds plus a prompt bootstrap); the pretrain is fixed, so between-pretrain variation is "
        "not covered; normal interval"
    ),
}


# ----------------------------------------------------------------------------------------------------
# Metadata: relations between RMs and pretrain units


def _is_missing(x) -> bool:
    """None, NaN or pd.NA: an unknown id, which never matches anything (not even another unknown)."""
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float) and math.isnan(x)


def _same(x, y) -> bool:
    return not _is_missing(x) and not _is_missing(y) and x == y


def pair_relations(pretrain_ids: Sequence, finetune_seeds: Sequence, scope: str = "shared") -> np.ndarray:
    """How each pair of RMs relates, as an ``(M, M)`` object array of strings.

    ``"self"`` on the diagonal; off it ``same_pretrain`` (same pretrain, different finetune seed),
    ``same_finetune`` (different pretrain, same finetune seed), ``neither``. Under ``scope="per_rm"`` an
    RM's finetuning randomness comes from (pretrain, seed) together, so equal seeds on different pretrains
    mean nothing and such pairs are ``neither``. Unknown ids (None/NaN) never match, so an RM with an
    unknown pretrain is a pretrain of its own. Two distinct RMs with the same pretrain *and* the same
    finetune seed were trained with the same randomness; they belong to no relation and get
    ``"duplicate"`` (every statistic by relation skips them).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    m = len(pretrain_ids)
    if len(finetune_seeds) != m:
        raise ValueError(f"pretrain_ids ({m}) and finetune_seeds ({len(finetune_seeds)}) differ in length")
    out = np.full((m, m), "self", dtype=object)
    for a, b in combinations(range(m), 2):
        same_pt = _same(pretrain_ids[a], pretrain_ids[b])
        same_ft = _same(finetune_seeds[a], finetune_seeds[b])
        if same_pt:
            rel = "duplicate" if same_ft else "same_pretrain"
        elif same_ft and scope == "shared":
            rel = "same_finetune"
        else:
            rel = "neither"
        out[a, b] = out[b, a] = rel
    return out


def relation_counts(relations: np.ndarray) -> dict[str, int]:
    """Number of unordered pairs of each relation (``self``: number of RMs)."""
    m = relations.shape[0]
    upper = relations[np.triu_indices(m, k=1)]
    counts = {r: int(np.sum(upper == r)) for r in (*RELATIONS, "duplicate")}
    return {"self": m, **counts}


def pretrain_units(pretrain_ids: Sequence) -> tuple[np.ndarray, tuple]:
    """Index of each RM's pretrain unit, ``(M,)`` int64, and the units' labels (first-seen order).

    The unit is what the seed bootstrap resamples. An unknown pretrain id is its own unit (label None).
    """
    index: dict = {}
    labels, units = [], []
    for i, p in enumerate(pretrain_ids):
        key = ("<unknown>", i) if _is_missing(p) else p
        if key not in index:
            index[key] = len(labels)
            labels.append(None if _is_missing(p) else p)
        units.append(index[key])
    return np.asarray(units, dtype=np.int64), tuple(labels)


def rm_view(tensor) -> tuple[np.ndarray, tuple, tuple]:
    """``(pool (M, P, N), pretrain_ids, finetune_seeds)`` of a :class:`perm.analysis.RewardTensor`'s RMs."""
    rm = tensor.rm_indices
    return (
        tensor.pool[rm],
        tuple(tensor.pretrain_ids[i] for i in rm),
        tuple(tensor.finetune_seeds[i] for i in rm),
    )


# ----------------------------------------------------------------------------------------------------
# Per-pair, per-prompt values (computed once; every bootstrap replicate is a weighted average of them)


def _pick_probabilities(pool: np.ndarray, n: int) -> np.ndarray:
    """``(M, P, N)``: each RM's exact best-of-n selection probabilities (:mod:`perm.bon`)."""
    return bon.selection_weights(pool.shape[-1], n)[bon.beat_counts(pool)]


def half_sq_diffs(pool, n: int | None = None, ranker=None) -> np.ndarray:
    """``(M, M, P)``: per prompt, a weighted mean over candidates of ½(s_a − s_b)² for every RM pair.

    ``s`` = :func:`perm.bon.standardize` (``scale=True``) of ``pool`` (``(M, P, N)``): centred and scaled
    to unit variance per prompt per RM over the whole pool, so the value is ``1 − corr(s_a, s_b)`` for the
    whole-pool weighting. ``n=None``: every candidate weighted 1/N. ``n`` given: "at the best-of-n picks":
    for pair (a, b) candidate i gets the mean best-of-n selection probability of the *other* RMs as rankers
    (rankers ≠ a, b, so neither member selects its own high scores; with fewer than one other RM, all RMs
    rank). ``ranker`` ``(P, N)`` given: the best-of-n selection probabilities of that one ranker instead,
    the same weights for every pair: a ranker in no pair (the evaluator, gold) relates to every relation
    alike, whereas the other RMs of the grid do not in the paper layout (4 of the 7 rankers of each
    ``neither`` pair there share ft0's effect with one member), which plants a seed share where there is
    none (``tests/test_seedstats.py``). The weights sum to 1 per prompt. The diagonal is 0.

    Efficiently: Σ_i w_i(s_a − s_b)² with ``w = (Σ_k p_k − p_a − p_b)/(M − 2)`` splits into one sum over
    all rankers and two corrections, each a batched Gram-like product (cost M²·P·N, not M³·P·N).
    """
    pool = np.asarray(pool, dtype=np.float64)
    if pool.ndim != 3:
        raise ValueError(f"pool must be (M, P, N), got shape {pool.shape}")
    s = bon.standardize(pool, scale=True)
    m, _, size = s.shape
    s2 = s * s
    if n is None:
        sq = s2.sum(axis=-1)  # (M, P)
        gram = np.einsum("apn,bpn->abp", s, s)
        return np.maximum(0.5 * (sq[:, None] + sq[None, :] - 2.0 * gram) / size, 0.0)
    if ranker is not None:
        ranker = np.asarray(ranker, dtype=np.float64)
        if ranker.shape != pool.shape[1:]:
            raise ValueError(f"ranker must be (P, N) = {pool.shape[1:]}, got {ranker.shape}")
        w = _pick_probabilities(ranker[None], n)[0]  # (P, N)
        ws2 = np.einsum("pn,apn->ap", w, s2)
        out = 0.5 * (ws2[:, None] + ws2[None, :] - 2.0 * np.einsum("apn,bpn->abp", s * w, s))
        out = np.maximum(out, 0.0)
        out[np.arange(m), np.arange(m)] = 0.0
        return out
    p = _pick_probabilities(pool, n)
    total = p.sum(axis=0)  # (P, N): all rankers
    ts2 = np.einsum("pn,apn->ap", total, s2)
    full = ts2[:, None] + ts2[None, :] - 2.0 * np.einsum("apn,bpn->abp", s * total, s)  # Σ total·(s_a−s_b)²
    if m - 2 < 1:
        out = full / m
    else:
        # own[a, b] = Σ_i p_a,i (s_a,i − s_b,i)²: the share of ranker a itself, removed from pair (a, b)
        own = (
            np.einsum("apn,apn->ap", p, s2)[:, None]
            - 2.0 * np.einsum("apn,bpn->abp", p * s, s)
            + np.einsum("apn,bpn->abp", p, s2)
        )
        out = (full - own - own.transpose(1, 0, 2)) / (m - 2)
    out = np.maximum(0.5 * out, 0.0)  # round-off can leave −1e-16 on sums of squares
    out[np.arange(m), np.arange(m)] = 0.0
    return out


def pick_rewards(pool, n: int, scale: bool = True) -> np.ndarray:
    """Figure 1's values, ``(M, M, P)``: ``[ranker, scorer, prompt] = Σ_i p_i^(ranker) r̃_scorer(i)``.

    ``r̃`` is the scorer's reward standardised per prompt over the pool (:func:`perm.bon.standardize`:
    centred, and with ``scale`` divided by its sd there, so the value is in the scorer's own per-prompt sd
    and rescaling one RM's rewards changes nothing); ``scale=False``: centred only (the paper's raw rewards,
    where an RM with a wider reward range weighs more).
    """
    pool = np.asarray(pool, dtype=np.float64)
    return np.einsum("mpn,kpn->mkp", _pick_probabilities(pool, n), bon.standardize(pool, scale=scale))


def pick_agreement(pool, ns: Sequence[int]) -> np.ndarray:
    """Figure 2's values, ``(len(ns), M, M, P)``: expected top-1 agreement of every RM pair at each n.

    :func:`perm.bon.expected_agreement`, symmetric; the diagonal is 1. The joint beat counts do not
    depend on n, so they are computed once.
    """
    pool = np.asarray(pool, dtype=np.float64)
    m, p, size = pool.shape
    out = np.ones((len(ns), m, m, p))
    pairs = list(combinations(range(m), 2))
    if not pairs:
        return out
    a, b = (np.array(x) for x in zip(*pairs, strict=True))
    beats = bon.beat_counts(pool)
    joint = bon._joint_counts_from_beats(beats[a], beats[b])  # (pairs, P, N)
    for i, n in enumerate(ns):
        agree = bon.selection_weights(size, n)[joint].sum(axis=-1)
        out[i, a, b] = out[i, b, a] = agree
    return out


# ----------------------------------------------------------------------------------------------------
# Seed variance decomposition


def variance_components(d_same_pretrain, d_same_finetune, d_neither) -> dict[str, np.ndarray]:
    """σ²_pt, σ²_ft, σ²_res and their shares of D_neither from the three mean half squared differences.

    Under ``s = μ + pretrain effect + finetune effect + residual`` (independent, per candidate):
    D_same_pretrain = σ²_ft + σ²_res, D_same_finetune = σ²_pt + σ²_res, D_neither = σ²_pt + σ²_ft + σ²_res,
    hence σ²_pt = D_nei − D_sp, σ²_ft = D_nei − D_sf, σ²_res = D_sp + D_sf − D_nei and share = σ²/D_nei
    (the three shares sum to 1). Nothing is truncated: sampling error (or a model that is not additive)
    can make a component or share negative, and that is reported as is. Scalars or arrays (broadcast);
    NaN inputs (a missing relation) give NaN for the components that need them.
    """
    sp, sf, nei = (np.asarray(x, dtype=np.float64) for x in (d_same_pretrain, d_same_finetune, d_neither))
    comps = {"sigma2_pt": nei - sp, "sigma2_ft": nei - sf, "sigma2_res": sp + sf - nei}
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(nei > 0, nei, np.nan)
        shares = {f"share_{k.split('_')[1]}": v / safe for k, v in comps.items()}
    return {**comps, **shares}


def _pairs_of(relations: np.ndarray, relation: str, ordered: bool) -> np.ndarray:
    """``(K, 2)`` index pairs with this relation (``a < b`` unless ``ordered``; ``self``: ``(m, m)``)."""
    m = relations.shape[0]
    if relation == "self":
        return np.stack([np.arange(m)] * 2, axis=1)
    if relation == "different_pretrain":
        mask = np.isin(relations, ("same_finetune", "neither"))
    else:
        mask = relations == relation
    if not ordered:
        mask = np.triu(mask, k=1)
    return np.argwhere(mask)


def variance_decomposition(pair_values: np.ndarray, relations: np.ndarray) -> dict:
    """The seed variance decomposition from :func:`half_sq_diffs` values.

    ``pair_values``: ``(M, M, P)``; ``relations``: ``(M, M)`` from :func:`pair_relations`. D_r = mean over
    prompts and unordered pairs of relation r (every pair and prompt weighted equally). Returns a dict:
    ``D_<relation>`` (float), the :func:`variance_components` (floats), ``n_<relation>`` (pair counts),
    ``missing`` (list of relations without pairs: their D and every component that needs them are NaN)
    and ``per_prompt`` (dict relation → ``(P,)`` D_r per prompt, NaN for a missing relation), from which
    per-prompt components follow by :func:`variance_components`.
    """
    per_prompt, counts = {}, {}
    p = pair_values.shape[-1]
    for r in RELATIONS:
        idx = _pairs_of(relations, r, ordered=False)
        counts[r] = len(idx)
        per_prompt[r] = pair_values[idx[:, 0], idx[:, 1]].mean(axis=0) if len(idx) else np.full(p, np.nan)
    d = {r: float(per_prompt[r].mean()) for r in RELATIONS}
    comps = {k: float(v) for k, v in variance_components(*(d[r] for r in RELATIONS)).items()}
    return {
        **{f"D_{r}": d[r] for r in RELATIONS},
        **comps,
        **{f"n_{r}": counts[r] for r in RELATIONS},
        "missing": [r for r in RELATIONS if counts[r] == 0],
        "per_prompt": per_prompt,
    }


def seed_variance_decomposition(
    pool, pretrain_ids: Sequence, finetune_seeds: Sequence, ns: Sequence[int] | None = None,
    scope: str = "shared", ranker=None,
) -> pd.DataFrame:
    """The decomposition on the whole pool and at the best-of-n picks for each n (:func:`half_sq_diffs`, of
    the other RMs or of ``ranker`` ``(P, N)``).

    Columns: ``weighting`` (``pool`` or ``pick``), ``n`` (Int64, NA for the pool row), ``D_same_pretrain,
    D_same_finetune, D_neither``, the :data:`COMPONENTS`, ``n_same_pretrain, n_same_finetune, n_neither``
    and ``missing`` (comma-separated relations without pairs, "" when none: the caller should say so and
    skip the NaN components). ``ns`` defaults to :func:`perm.bon.default_ns`.
    """
    pool = np.asarray(pool, dtype=np.float64)
    relations = pair_relations(pretrain_ids, finetune_seeds, scope)
    ns = bon.default_ns(pool.shape[-1]) if ns is None else list(ns)
    rows = []
    for weighting, n in [("pool", None)] + [("pick", n) for n in ns]:
        dec = variance_decomposition(half_sq_diffs(pool, n, ranker), relations)
        dec.pop("per_prompt")
        rows.append({"weighting": weighting, "n": n, **dec, "missing": ",".join(dec["missing"])})
    df = pd.DataFrame(rows)
    df["n"] = pd.array(df["n"].tolist(), dtype="Int64")
    return df


# ----------------------------------------------------------------------------------------------------
# Multi-Bootstrap over the seed design (pretrains, finetune seeds when crossed) and prompts


@dataclass(frozen=True)
class Arm:
    """One group of units whose weighted mean is a statistic's input.

    ``values``: ``(K, P)`` per-unit, per-prompt values; ``members``: for each unit the RM indices it
    involves (``(m,)`` for a single RM, ``(a, b)`` for a pair); ``weights``: ``(K,)`` fixed base weights
    (None: all 1). The arm's statistic is ``Σ_k Σ_p W_k w_p values[k, p] / (Σ_k W_k · Σ_p w_p)``.
    """

    values: np.ndarray
    members: tuple[tuple[int, ...], ...]
    weights: np.ndarray | None = None

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float64)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "members", tuple(tuple(int(i) for i in m) for m in self.members))
        if values.ndim != 2 or values.shape[0] != len(self.members) or values.shape[0] == 0:
            raise ValueError(f"values must be (K ≥ 1, P) with K = len(members), got {values.shape}")
        if any(len(m) == 0 for m in self.members):
            raise ValueError("every unit needs at least one member RM")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.shape != (len(self.members),) or np.any(w < 0):
                raise ValueError("weights must be (K,) and non-negative")
            object.__setattr__(self, "weights", w)


def relation_arms(
    pair_values: np.ndarray, relations: np.ndarray, ordered: bool = False, include_self: bool = False,
    include_different: bool = False,
) -> dict[str, Arm]:
    """One :class:`Arm` per relation with at least one pair, from ``(M, M, P)`` per-pair values.

    ``ordered``: use both (a, b) and (b, a) (Figure 1: ranker, scorer), else pairs a < b (Figure 2, the
    decomposition). ``include_self`` adds ``self`` (units (m, m) with member (m,)); ``include_different``
    adds ``different_pretrain`` = same_finetune ∪ neither (the grouping of :mod:`perm.analysis`).
    """
    names = (("self",) if include_self else ()) + RELATIONS
    names += ("different_pretrain",) if include_different else ()
    arms = {}
    for r in names:
        idx = _pairs_of(relations, r, ordered)
        if len(idx):
            members = tuple((int(a),) if a == b else (int(a), int(b)) for a, b in idx)
            arms[r] = Arm(pair_values[idx[:, 0], idx[:, 1]], members)
    return arms


def single_rm_arm(values, weights=None) -> Arm:
    """An :class:`Arm` of single RMs from ``(M, P)`` per-RM, per-prompt values (e.g. Figure 4 "single")."""
    values = np.asarray(values, dtype=np.float64)
    return Arm(values, tuple((m,) for m in range(values.shape[0])), weights)


@dataclass(frozen=True)
class SeedDesign:
    """The random seed factors behind a set of RMs, as the bootstrap resamples them.

    ``pretrain``: ``(M,)`` unit index of each RM's pretrain (:func:`pretrain_units`); ``finetune``: ``(M,)``
    unit index of its finetune seed when finetune seeds form a factor *crossed* with pretrains (scope
    ``shared``: a finetune seed is the same head init, data order and dropout on every backbone), else None
    (scope ``per_rm``: finetune seeds nested in their pretrain, which carries them, as MultiBERTs). An
    unknown id is a unit of its own. ``n_pretrains`` / ``n_finetune``: number of units (``n_finetune`` = 0
    when nested).
    """

    pretrain: np.ndarray
    finetune: np.ndarray | None
    n_pretrains: int
    n_finetune: int

    @property
    def crossed(self) -> bool:
        return self.finetune is not None

    def factors(self) -> dict[str, int]:
        """Number of units of each seed factor that varies (a factor with one unit cannot be resampled)."""
        out = {"pretrain": self.n_pretrains}
        if self.crossed:
            out["finetune"] = self.n_finetune
        return {k: v for k, v in out.items() if v >= 2}

    def describe(self) -> str:
        """What an interval over this design resamples, in words."""
        parts = [f"pretrains (R={self.n_pretrains})"]
        if self.crossed:
            parts.append(f"finetune seeds (F={self.n_finetune}, crossed with pretrains)")
        else:
            parts[0] += " with their finetune seeds nested"
        return " x ".join([*parts, "prompts"])


def seed_design(pretrain_ids: Sequence, finetune_seeds: Sequence | None = None,
                scope: str = "shared") -> SeedDesign:
    """The :class:`SeedDesign` of RMs with these pretrain ids and finetune seeds under ``scope``
    (:data:`SCOPES`); ``finetune_seeds=None`` means nested (no finetune factor)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    units, labels = pretrain_units(pretrain_ids)
    if finetune_seeds is None or scope == "per_rm":
        return SeedDesign(units, None, len(labels), 0)
    if len(finetune_seeds) != len(units):
        raise ValueError(f"pretrain_ids ({len(units)}) and finetune_seeds ({len(finetune_seeds)}) "
                         "differ in length")
    ft_units, ft_labels = pretrain_units(finetune_seeds)  # same grouping rule: equal known seeds share a unit
    return SeedDesign(units, ft_units, len(labels), len(ft_labels))


@dataclass(frozen=True)
class BootstrapWeights:
    """Multiplicities of one set of replicates: ``pretrain`` ``(B, R)``, ``finetune`` ``(B, F)`` or None
    (nested design), ``prompt`` ``(B, P)``; float64."""

    pretrain: np.ndarray
    finetune: np.ndarray | None
    prompt: np.ndarray

    def only(self, factor: str) -> BootstrapWeights:
        """The same draws with every factor but ``factor`` held at 1 (that factor's own variance)."""
        def keep(name, x):
            return x if (name == factor or x is None) else np.ones_like(x)
        return BootstrapWeights(keep("pretrain", self.pretrain), keep("finetune", self.finetune),
                                keep("prompt", self.prompt))


def draw_bootstrap_weights(n_pretrains: int, n_prompts: int, draws: int, seed: int,
                           n_finetune: int = 0) -> BootstrapWeights:
    """Multiplicities ~ Multinomial(K, 1/K) for each factor: pretrains ``(B, R)``, finetune seeds ``(B, F)``
    (only when ``n_finetune`` > 0: a crossed design) and prompts ``(B, P)``, from
    ``numpy.random.default_rng(seed)``.

    Multinomial (the classic bootstrap, as MultiBERTs) rather than Poisson(1): the total weight is fixed,
    so a replicate never loses every unit of a factor.
    """
    rng = np.random.default_rng(seed)

    def draw(k):
        return rng.multinomial(k, np.full(k, 1.0 / k), size=draws).astype(np.float64)

    c, w = draw(n_pretrains), draw(n_prompts)
    d = draw(n_finetune) if n_finetune > 0 else None
    return BootstrapWeights(c, d, w)


def _product_over_sets(members, units: np.ndarray, c: np.ndarray) -> np.ndarray:
    sets = [sorted({int(units[m]) for m in mem}) for mem in members]
    idx = np.full((len(sets), max(map(len, sets))), c.shape[1])  # pad with a column of ones
    for k, s in enumerate(sets):
        idx[k, : len(s)] = s
    padded = np.concatenate([c, np.ones((c.shape[0], 1))], axis=1)
    return padded[:, idx].prod(axis=-1)


def unit_weights(members: Sequence[Sequence[int]], units, c, finetune_units=None, d=None) -> np.ndarray:
    """``(B, K)`` seed weight of each unit: the product of ``c`` over the *distinct* pretrains it involves,
    times (crossed design) the product of ``d`` over its distinct finetune seeds.

    A single RM of pretrain p gets ``c_p`` (and ``d_f`` for its finetune seed f when crossed); a pair of two
    pretrains p ≠ q gets ``c_p·c_q`` (every drawn copy of p meets every drawn copy of q); a pair within one
    pretrain p gets ``c_p``, not ``c_p²``: a copy of p meeting another copy of p is the same pair again, never
    a "different-pretrain" pair, and pairs within p stay within p. Finetune seeds likewise: a
    ``same_finetune`` pair gets ``d_f`` once.
    """
    c = np.asarray(c, dtype=np.float64)
    out = _product_over_sets(members, np.asarray(units), c)
    if finetune_units is not None and d is not None:
        out = out * _product_over_sets(members, np.asarray(finetune_units), np.asarray(d, dtype=np.float64))
    return out


def arm_means(arm: Arm, design: SeedDesign, weights: BootstrapWeights) -> np.ndarray:
    """``(B,)`` weighted means of ``arm`` under one set of bootstrap weights (NaN where the total weight is 0,
    e.g. a relation none of whose pretrains was drawn)."""
    unit_w = unit_weights(arm.members, design.pretrain, weights.pretrain, design.finetune, weights.finetune)
    if arm.weights is not None:
        unit_w = unit_w * arm.weights
    ww = weights.prompt
    prompt_sums = ww @ arm.values.T  # (B, K)
    num = np.sum(unit_w * prompt_sums, axis=1)
    den = unit_w.sum(axis=1) * ww.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def corrected_interval(estimate: float, v_joint: float, v_factor: Mapping[str, float],
                       n_units: Mapping[str, int], level: float,
                       effective: Mapping[str, float] | None = None) -> dict:
    """A bootstrap standard error corrected for few seeds, and its t interval.

    The bootstrap variance of a mean over K units carries (K−1)/K; with K = 5 pretrains that, and normal
    tails on a variance estimated from 5 units, make a nominal 90% interval cover ~78%. So: each factor's
    own bootstrap variance ``v_factor[k]`` (the replicates with only that factor resampled) is scaled by
    K/(K−1) and the difference added to the joint variance, ``V = v_joint + Σ_k v_k/(K_k − 1)``, and the
    interval is ``estimate ± t_df · √V`` with Welch–Satterthwaite degrees of freedom
    ``df = V² / Σ_k (v_k·K_k/(K_k−1))² / df_k`` (the joint variance's part not attributed to any factor
    counts with the prompts' df). ``df_k = n_k − 1`` with ``n_k`` the factor's *effective* number of units
    (``effective``, Kish's (Σe)²/Σe² of the units' exposures, :func:`effective_units`; at most K_k): in the
    paper layout seed0 carries 5 of 9 RMs, so its 5 pretrains count as ~2.8. Chosen by simulation on perm's
    designs (tests/test_coverage.py).
    Returns ``se, lo, hi, df``.
    """
    if not np.isfinite(v_joint):
        return {"se": np.nan, "lo": np.nan, "hi": np.nan, "df": np.nan}
    inflated = {k: v * n_units[k] / (n_units[k] - 1) for k, v in v_factor.items() if n_units.get(k, 0) >= 2
                and np.isfinite(v)}
    total = v_joint + sum(v / (n_units[k] - 1) for k, v in v_factor.items() if k in inflated)
    dfs = {k: max(min(n_units[k], (effective or {}).get(k, np.inf)) - 1, 1.0) for k in inflated}
    parts = [(v, dfs[k]) for k, v in inflated.items()]
    if "prompt" in n_units and n_units["prompt"] >= 2:
        parts.append((max(total - sum(inflated.values()), 0.0), n_units["prompt"] - 1))
    return t_interval(estimate, total, parts, level)


def t_interval(estimate: float, total: float, parts, level: float) -> dict:
    """``estimate ± t_df · √total``, ``df`` by Welch–Satterthwaite from the variance ``parts`` ((variance, its
    df) each): ``df = total² / Σ v²/df_v``, at least 1 (a normal quantile when no part carries variance).
    Returns ``se, lo, hi, df``."""
    den = sum(v**2 / d for v, d in parts)
    df = float(max(total**2 / den, 1.0)) if den > 0 else np.inf
    se = math.sqrt(max(total, 0.0))
    q = float(student_t.ppf(0.5 + level / 2, df)) if np.isfinite(df) else float(norm.ppf(0.5 + level / 2))
    return {"se": se, "lo": estimate - q * se, "hi": estimate + q * se, "df": df}


SEED_COMPONENTS = {"share_pt": 1.0, "share_ft": 1.0, "sigma2_pt": np.inf, "sigma2_ft": np.inf}
"""The decomposition's seed components, whose intervals take their upper end partly on the log scale
(:func:`log_upper`), each with its ceiling (a share is at most 1)."""


def log_upper(estimate: float, se: float, lo: float, hi: float, df: float, level: float,
              ceiling: float = np.inf) -> float:
    """The upper end of a seed component's interval: the larger of the t interval's ``hi`` and
    ``estimate · exp(σ²/2 + t_df · σ)``, σ = se / estimate, the t interval of log(estimate) about the log of a
    log-normal's mean rather than its median, at most ``ceiling``. Where the t interval ``[lo, hi]`` reaches 0
    σ is held at its value there (1 / t_df), so the upper end never falls as the se grows, and an estimate
    small against its se keeps (about) the t interval.

    A variance component estimated from a few seeds whose effects differ in size is right-skewed, and its
    bootstrap se shrinks with it: where the estimate falls low the symmetric interval stops short of the truth
    (a nominal 90% covered 0.76–0.83 over 5 pretrains in the full layout, seeds' effect sizes log-sd 0.5; now
    0.86–0.87 over 4,000 grids). The log scale follows that skew; it cannot reach 0, so the lower end stays
    the t interval's; an unbounded σ where that interval reaches 0 would only blow the upper end up (an
    estimate of 2% ± 4% to 60%). Chosen by simulation on perm's designs (:mod:`perm.coverage`,
    tests/test_coverage.py).
    A non-finite se, ``lo`` or ``hi``, or an estimate ≤ 0: ``hi`` as it is."""
    if not (np.isfinite(se) and np.isfinite(hi) and np.isfinite(lo) and estimate > 0):
        return hi
    q = float(student_t.ppf(0.5 + level / 2, df)) if np.isfinite(df) else float(norm.ppf(0.5 + level / 2))
    sigma = min(se / estimate, 1 / q)  # the log-scale se (delta method), held where the t interval reaches 0
    up = estimate * float(np.exp(0.5 * sigma**2 + q * sigma))
    return float(min(max(hi, up), ceiling))


def _var(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.var(ddof=1)) if len(x) > 1 else np.nan


def _summary(name: str, point, reps: Mapping[str, np.ndarray], design: SeedDesign, n_prompts: int,
             level: float, draws: int, describe: str, effective: Mapping[str, float] | None = None) -> dict:
    point = float(np.asarray(point).reshape(-1)[0])
    joint = reps["joint"]
    valid = joint[np.isfinite(joint)]
    lo_p, hi_p = (np.percentile(valid, [50 * (1 - level), 50 * (1 + level)]) if len(valid)
                  else (np.nan, np.nan))
    n_units = {**design.factors(), "prompt": n_prompts}
    v_factor = {k: _var(reps[k]) for k in n_units if k in reps}
    iv = corrected_interval(point, _var(joint), v_factor, n_units, level, effective)
    if name in SEED_COMPONENTS:
        iv["hi"] = log_upper(point, iv["se"], iv["lo"], iv["hi"], iv["df"], level, SEED_COMPONENTS[name])
    return {
        "statistic": name,
        "estimate": point,
        "se": iv["se"],
        "lo": iv["lo"],
        "hi": iv["hi"],
        "df": iv["df"],
        "se_boot": math.sqrt(_var(joint)) if len(valid) > 1 else np.nan,
        "lo_pct": float(lo_p),
        "hi_pct": float(hi_p),
        "se_prompt": math.sqrt(v_factor["prompt"]) if np.isfinite(v_factor.get("prompt", np.nan)) else np.nan,
        "se_pretrain": (math.sqrt(v_factor["pretrain"]) if np.isfinite(v_factor.get("pretrain", np.nan))
                        else np.nan),
        "se_finetune": (math.sqrt(v_factor["finetune"]) if np.isfinite(v_factor.get("finetune", np.nan))
                        else np.nan),
        # MultiBERTs' one-sided "p": share of replicates ≤ 0, floored at 1/B
        "p_le_0": max(float(np.mean(valid <= 0)), 1.0 / draws) if len(valid) else np.nan,
        "R": design.n_pretrains,
        "F": design.n_finetune,
        "B": draws,
        "n_valid": len(valid),
        "level": level,
        "resamples": describe,
    }


def effective_units(arm: Arm, design: SeedDesign) -> dict[str, float]:
    """Kish's effective number of units of each seed factor of ``design`` in ``arm``: a unit's exposure is
    the arm's weight on it (a pair's weight split evenly over the distinct units it involves);
    ``n_eff = (Σ e)² / Σ e²``, equal to the number of units when they are equally exposed."""
    base = np.ones(len(arm.members)) if arm.weights is None else arm.weights
    out = {}
    for factor, units, k in (("pretrain", design.pretrain, design.n_pretrains),
                             ("finetune", design.finetune, design.n_finetune)):
        if units is None:
            continue
        exposure = np.zeros(k)
        for wt, mem in zip(base, arm.members, strict=True):
            s = sorted({int(units[m]) for m in mem})
            exposure[s] += wt / len(s)
        out[factor] = float(exposure.sum() ** 2 / np.sum(exposure**2)) if exposure.any() else 0.0
    return out


def multi_bootstrap(
    arms: Mapping[str, Arm],
    pretrain_ids: Sequence,
    statistics: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    contrasts: Sequence[tuple[str, str]] = (),
    draws: int = 500,
    level: float = 0.9,
    seed: int = 0,
    finetune_seeds: Sequence | None = None,
    scope: str = "shared",
) -> pd.DataFrame:
    """Point estimates and intervals over the seed design and prompts (MultiBERTs' Multi-Bootstrap,
    extended to crossed finetune seeds, with a small-sample correction).

    ``arms``: named :class:`Arm`, all with the same P; ``pretrain_ids`` (and ``finetune_seeds``): ``(M,)`` for
    the RM indices in the arms' members. The design (:func:`seed_design`): with ``finetune_seeds`` under
    ``scope="shared"`` finetune seeds are a second factor crossed with pretrains and resampled too; without
    them, or under ``per_rm``, they are nested in their pretrain. Replicate b draws multiplicities of every
    factor once (:func:`draw_bootstrap_weights`) and shares them by every arm, statistic and contrast, so
    contrasts are paired. Each arm's replicate is its weighted mean (:func:`arm_means`, seed weights by
    :func:`unit_weights`). ``statistics`` maps the dict of arm means (arrays of replicates) to a dict of
    named statistics, each a whole function of the means (ratios, shares: bootstrapped as a whole, never by
    propagating standard errors); default: one statistic per arm. ``contrasts`` adds ``"a - b"``.

    Returns one row per statistic: ``statistic, estimate`` (every unit and prompt weighted once), ``se`` and
    ``lo, hi`` (:func:`corrected_interval`: the bootstrap variance corrected for few seeds, t quantile on
    Satterthwaite ``df``; for the :data:`SEED_COMPONENTS` the upper end by :func:`log_upper`), ``se_boot``
    (raw bootstrap se), ``lo_pct, hi_pct`` (raw percentile interval),
    ``se_prompt`` / ``se_pretrain`` / ``se_finetune`` (one factor resampled, the others held),
    ``p_le_0``, ``R``, ``F`` (finetune seed units when crossed, else 0), ``B``, ``n_valid`` (replicates where
    the statistic is defined: a relation whose units were all left out of a draw has no value there, and the
    interval is conditional on it being drawn), ``level`` and ``resamples`` (in words).
    """
    if not arms:
        raise ValueError("need at least one arm")
    n_prompts = {a.values.shape[1] for a in arms.values()}
    if len(n_prompts) != 1:
        raise ValueError(f"arms disagree on the number of prompts: {sorted(n_prompts)}")
    n_prompts = n_prompts.pop()
    design = seed_design(pretrain_ids, finetune_seeds, scope)
    top = max(max(m) for a in arms.values() for m in a.members)
    if top >= len(design.pretrain):
        raise ValueError(f"arm members index RM {top}, but only {len(design.pretrain)} pretrain_ids "
                         "were given")
    weights = draw_bootstrap_weights(design.n_pretrains, n_prompts, draws, seed, design.n_finetune)

    def stats(bw: BootstrapWeights):
        means = {k: arm_means(a, design, bw) for k, a in arms.items()}
        out = dict(statistics(means)) if statistics is not None else dict(means)
        for a, b in contrasts:
            out[f"{a} - {b}"] = {**means, **out}[a] - {**means, **out}[b]
        return out

    ones = BootstrapWeights(np.ones((1, design.n_pretrains)),
                            np.ones((1, design.n_finetune)) if design.crossed else None,
                            np.ones((1, n_prompts)))
    point = stats(ones)
    reps = {"joint": stats(weights)}
    for factor in (*design.factors(), "prompt"):
        reps[factor] = stats(weights.only(factor))
    describe = design.describe()
    pooled = Arm(np.zeros((sum(len(a.members) for a in arms.values()), 1)),
                 tuple(m for a in arms.values() for m in a.members),
                 np.concatenate([np.ones(len(a.members)) if a.weights is None else a.weights
                                 for a in arms.values()]))
    effective = effective_units(pooled, design)  # the units' exposure over every arm a statistic may combine
    rows = [_summary(k, point[k], {f: r[k] for f, r in reps.items()}, design, n_prompts, level, draws,
                     describe, effective) for k in point]
    return pd.DataFrame(rows)


def decomposition_statistics(means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``statistics`` for :func:`multi_bootstrap` over :func:`relation_arms` of :func:`half_sq_diffs`:
    the D's and the :func:`variance_components`, NaN for a missing relation."""
    ref = next(iter(means.values()))
    d = {r: means.get(r, np.full_like(ref, np.nan)) for r in RELATIONS}
    return {**{f"D_{r}": d[r] for r in RELATIONS}, **variance_components(*(d[r] for r in RELATIONS))}


def decomposition_intervals(
    pool, pretrain_ids: Sequence, finetune_seeds: Sequence, n: int | None = None, scope: str = "shared",
    draws: int = 500, level: float = 0.9, seed: int = 0, ranker=None,
) -> pd.DataFrame:
    """:func:`multi_bootstrap` rows for the D's, σ²'s and shares, on the pool (``n=None``) or at the
    best-of-n picks (of the other RMs, or of ``ranker`` ``(P, N)``: :func:`half_sq_diffs`). Pair units are
    weighted by :func:`unit_weights`; the picks' ranker weights are held fixed (computed once)."""
    relations = pair_relations(pretrain_ids, finetune_seeds, scope)
    arms = relation_arms(half_sq_diffs(pool, n, ranker), relations)
    if not arms:
        raise ValueError("no pairs of RMs: need at least two RMs")
    df = multi_bootstrap(arms, pretrain_ids, decomposition_statistics, draws=draws, level=level, seed=seed,
                         finetune_seeds=finetune_seeds, scope=scope)
    df["note"] = ""
    without = one_unit_relations(relations, pretrain_ids, finetune_seeds)
    if without:  # the residual is D_same_pretrain + D_same_finetune - D_neither: it needs both
        without["res"] = "it is what the seed components leave, and " + (
            "they have none" if len(without) == 2 else "one of them has none")
    for factor, note in without.items():
        rows = df.statistic.isin([f"share_{factor}", f"sigma2_{factor}"])
        df.loc[rows, ["se", "lo", "hi", "df"]] = np.nan
        df.loc[rows, "note"] = note
    return df


def one_unit_relations(relations: np.ndarray, pretrain_ids: Sequence,
                       finetune_seeds: Sequence) -> dict[str, str]:
    """The seed components without an interval: ``{"pt": why}`` where every same_pretrain pair has one and
    the same pretrain (the paper layout: seed0's finetunes), ``{"ft": why}`` where every same_finetune pair
    has one and the same finetune seed (the paper layout under the shared scope: ft0).

    That relation's D then measures one unit, and how much its seed moves the RMs differs from seed to seed:
    no resampling of this design sees that, and an interval for the component's share covered ~0.4 of
    nominal 0.9 in simulation on the paper layout where seeds' effect sizes differ (log-sd 0.5;
    :mod:`perm.coverage`). The estimate stays, as one unit's."""
    out = {}
    m = relations.shape[0]
    for factor, relation, units, what in (("pt", "same_pretrain", pretrain_ids, "pretrain"),
                                          ("ft", "same_finetune", finetune_seeds, "finetune seed")):
        seen = {units[a] for a, b in combinations(range(m), 2) if relations[a, b] == relation}
        if len(seen) == 1:
            unit = next(iter(seen))
            out[factor] = (f"every {relation} pair has {what} {unit}: no interval over {what}s, whose "
                           f"effects may differ in size (the estimate is {what} {unit}'s)")
    return out


def anova_mean_variance(y) -> dict[str, float]:
    """Exact cross-check for the variance of the grand mean of a balanced pretrain × prompt array.

    ``y``: ``(R, C)``, one value per (pretrain, prompt). Two-way random effects ``y = μ + a_i + b_j + e_ij``
    without replication: ``MS_pretrain = C·Σ(ȳ_i· − ȳ)²/(R−1)``, ``MS_prompt = R·Σ(ȳ_·j − ȳ)²/(C−1)``,
    ``MS_resid = Σ(y − ȳ_i· − ȳ_·j + ȳ)²/((R−1)(C−1))``; since E[MS_pretrain] = σ²_e + Cσ²_a and
    E[MS_prompt] = σ²_e + Rσ²_b, ``var_mean = (MS_pretrain + MS_prompt − MS_resid)/(R·C)`` estimates
    Var(ȳ) = σ²_a/R + σ²_b/C + σ²_e/(RC) (truncated at 0). Also returns the MS's and the variance
    components (each truncated at 0).
    """
    y = np.asarray(y, dtype=np.float64)
    r, c = y.shape
    if r < 2 or c < 2:
        raise ValueError(f"need at least a 2 × 2 array, got {y.shape}")
    grand = y.mean()
    row, col = y.mean(axis=1), y.mean(axis=0)
    ms_pre = c * np.sum((row - grand) ** 2) / (r - 1)
    ms_prompt = r * np.sum((col - grand) ** 2) / (c - 1)
    ms_res = np.sum((y - row[:, None] - col[None, :] + grand) ** 2) / ((r - 1) * (c - 1))
    return {
        "ms_pretrain": float(ms_pre),
        "ms_prompt": float(ms_prompt),
        "ms_resid": float(ms_res),
        "var_mean": float(max(0.0, (ms_pre + ms_prompt - ms_res) / (r * c))),
        "sigma2_pretrain": float(max(0.0, (ms_pre - ms_res) / c)),
        "sigma2_prompt": float(max(0.0, (ms_prompt - ms_res) / r)),
        "sigma2_resid": float(ms_res),
    }


# ----------------------------------------------------------------------------------------------------
# Ensembles: jackknife over members crossed with a prompt bootstrap


def ensemble_pick_values(member_scores, target, n: int, aggregator: str = "mean", scale: bool = False):
    """``(P,)``: per prompt, the expected ``target`` of the best-of-n pick of the ensemble.

    ``member_scores``: ``(K, P, N)``, standardised per prompt (:func:`perm.bon.standardize`, ``scale``)
    and combined by ``aggregator`` (:func:`perm.bon.aggregate`), as :func:`perm.analysis.ranker_scores`;
    ``target``: ``(P, N)``, e.g. the evaluator's centred reward or win probabilities.
    """
    agg = bon.aggregate(bon.standardize(member_scores, scale=scale), aggregator)
    return np.sum(bon.selection_probabilities(agg, n) * np.asarray(target, dtype=np.float64), axis=-1)


def jackknife_interval(
    values: Mapping[str, tuple[np.ndarray, np.ndarray]], draws: int = 500, level: float = 0.9,
    seed: int = 0, note: str = "",
) -> pd.DataFrame:
    """Leave-one-member-out jackknife crossed with a prompt bootstrap, for prompt means.

    ``values``: name → ``(full (P,), loo (R, P))``: per-prompt values with all R members and with member a
    left out. θ = mean of ``full``; θ₋ₐ = mean of ``loo[a]``; ``Var_jk = (R−1)/R · Σ_a (θ₋ₐ − mean θ₋)²``
    (members, prompts fixed); ``Var_prompt`` = variance over B prompt-bootstrap replicates of the weighted
    mean of ``full`` (members fixed; the same prompt draws for every name, so contrasts are paired). The two
    are added: ``se = sqrt(Var_jk + Var_prompt)``; for y = μ + a + b + e this counts the interaction twice
    (≈ σ²_a/R + σ²_b/C + 2σ²_e/(RC)), mildly conservative like the pigeonhole bootstrap. Interval: normal
    approximation θ ± z·se. Rows: ``statistic, estimate, se, lo, hi, se_jackknife, se_prompt, R, B, level,
    note``. Contrasts of prompt means are prompt means of differences: pass ``(full_a − full_b, loo_a −
    loo_b)``.
    """
    z = float(norm.ppf(0.5 + level / 2))
    rows = []
    w = None
    for name, (full, loo) in values.items():
        full, loo = np.asarray(full, dtype=np.float64), np.asarray(loo, dtype=np.float64)
        r = loo.shape[0]
        if r < 2 or loo.shape[1:] != full.shape:
            raise ValueError(f"{name}: need loo (R ≥ 2, P) matching full (P,), got {loo.shape}, {full.shape}")
        if w is None:
            w = draw_bootstrap_weights(1, full.shape[0], draws, seed).prompt
        theta = float(full.mean())
        theta_loo = loo.mean(axis=1)
        var_jk = (r - 1) / r * float(np.sum((theta_loo - theta_loo.mean()) ** 2))
        var_prompt = float(np.var(w @ full / full.shape[0], ddof=1))
        se = math.sqrt(var_jk + var_prompt)
        rows.append({
            "statistic": name, "estimate": theta, "se": se, "lo": theta - z * se, "hi": theta + z * se,
            "se_jackknife": math.sqrt(var_jk), "se_prompt": math.sqrt(var_prompt), "R": r, "B": draws,
            "level": level, "note": note,
        })
    return pd.DataFrame(rows)


def ensemble_interval(
    member_scores, target, n: int, aggregator: str = "mean", scale: bool = False, kind: str = "pretrain",
    baseline=None, baseline_groups=None, draws: int = 500, level: float = 0.9, seed: int = 0,
) -> pd.DataFrame:
    """:func:`jackknife_interval` for an ensemble's best-of-n pick (:func:`ensemble_pick_values`).

    ``member_scores``: ``(R, P, N)``, one row per member (``kind="pretrain"``: one RM per pretrain;
    ``"finetune"``: the finetune seeds of one pretrain, see :data:`ENSEMBLE_NOTES`). Optional contrast:
    ``baseline`` ``(M_b, P)`` per-prompt values of other rankers (e.g. each single RM's Σ p t) and
    ``baseline_groups`` ``(M_b,)``: the member whose removal also removes that row (its pretrain, or −1 for
    never). Rows ``ensemble``, and with a baseline ``baseline`` (mean over its rows) and
    ``ensemble - baseline``, all from the same jackknife deletions and prompt draws.
    """
    if kind not in ENSEMBLE_NOTES:
        raise ValueError(f"kind must be one of {tuple(ENSEMBLE_NOTES)}, got {kind!r}")
    scores = np.asarray(member_scores, dtype=np.float64)
    r = scores.shape[0]
    if r < 2:
        raise ValueError(f"need at least two members for a jackknife, got {r}")
    full = ensemble_pick_values(scores, target, n, aggregator, scale)
    loo = np.stack([ensemble_pick_values(np.delete(scores, a, axis=0), target, n, aggregator, scale)
                    for a in range(r)])
    values = {"ensemble": (full, loo)}
    if baseline is not None:
        base = np.asarray(baseline, dtype=np.float64)
        groups = np.full(base.shape[0], -1) if baseline_groups is None else np.asarray(baseline_groups)
        if groups.shape != (base.shape[0],):
            raise ValueError("baseline_groups must have one entry per baseline row")
        base_loo = np.stack([base[groups != a].mean(axis=0) for a in range(r)])
        values["baseline"] = (base.mean(axis=0), base_loo)
        values["ensemble - baseline"] = (full - base.mean(axis=0), loo - base_loo)
    return jackknife_interval(values, draws, level, seed, ENSEMBLE_NOTES[kind])


def ensemble_size_curve(
    member_scores, target, n: int, aggregator: str = "mean", scale: bool = False,
    max_subsets: int | None = None, seed: int = 0,
) -> pd.DataFrame:
    """The ensemble statistic (prompt mean of :func:`ensemble_pick_values`) over size-k subsets of its
    members, k = 1..R: columns ``k, mean`` (over subsets), ``sd`` (between subsets, ddof=0),
    ``n_subsets``. All C(R, k) subsets, or ``max_subsets`` of them drawn at random (seeded) when more."""
    scores = np.asarray(member_scores, dtype=np.float64)
    r = scores.shape[0]
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(1, r + 1):
        subsets = list(combinations(range(r), k))
        if max_subsets is not None and len(subsets) > max_subsets:
            subsets = [subsets[i] for i in rng.choice(len(subsets), max_subsets, replace=False)]
        vals = np.array([ensemble_pick_values(scores[list(s)], target, n, aggregator, scale).mean()
                         for s in subsets])
        rows.append({"k": k, "mean": float(vals.mean()), "sd": float(vals.std()), "n_subsets": len(subsets)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Chance agreement of two random scorers, given duplicate texts


@lru_cache(maxsize=4096)
def _distinct_counts(dup_sizes: tuple[int, ...], singletons: int) -> tuple[tuple[int, ...], ...]:
    """``counts[j][d]``: number of j-subsets of the pool with exactly d distinct texts (exact integers).

    DP over the groups of size ≥ 2 (choose t of a group's g copies in C(g, t) ways; t ≥ 1 adds a distinct
    text); the singletons are added in closed form (t of them: C(S, t) ways, t distinct texts).
    """
    items, groups = sum(dup_sizes), len(dup_sizes)
    dp = [[0] * (groups + 1) for _ in range(items + 1)]
    dp[0][0] = 1
    used = 0
    for gi, g in enumerate(dup_sizes):
        new = [row[:] for row in dp]  # t = 0: this text not drawn
        for j in range(used + 1):
            for d in range(gi + 1):
                if dp[j][d]:
                    for t in range(1, g + 1):
                        new[j + t][d + 1] += dp[j][d] * math.comb(g, t)
        dp, used = new, used + g
    counts = [[0] * (groups + singletons + 1) for _ in range(items + singletons + 1)]
    for j in range(items + 1):
        for d in range(groups + 1):
            if dp[j][d]:
                for t in range(singletons + 1):
                    counts[j + t][d + t] += dp[j][d] * math.comb(singletons, t)
    return tuple(tuple(row) for row in counts)


def _check_groups(group_sizes) -> tuple[tuple[int, ...], int]:
    sizes = [int(g) for g in group_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"group sizes must be positive integers, got {list(group_sizes)}")
    return tuple(sorted(g for g in sizes if g > 1)), sum(g == 1 for g in sizes)


def chance_agreement(group_sizes: Sequence[int], n: int) -> float:
    """Probability that two independent random scorers pick the same candidate from a random n-subset.

    A random scorer is a function of the text: identical texts get identical scores, distinct texts i.i.d.
    continuous ones, ties to the lower index (as :mod:`perm.bon`). Both then pick the lowest-index copy of
    their favourite distinct text in S, so they agree iff they favour the same one of the D(S) distinct
    texts: chance = E_S[1/D(S)] over uniform n-subsets S. ``group_sizes``: number of copies of each
    distinct text (summing to N). Exact (integer counts, one rounding at the end): 1/n without duplicates.
    """
    dup, singles = _check_groups(group_sizes)
    total = sum(dup) + singles
    n = bon._check_n(n, total)
    row = _distinct_counts(dup, singles)[n]
    return float(sum(Fraction(c, d) for d, c in enumerate(row) if c) / math.comb(total, n))


def chance_agreement_curve(group_sizes: Sequence[int], ns: Sequence[int]) -> np.ndarray:
    """``(len(ns),)``: :func:`chance_agreement` at each n (one DP for all n)."""
    return np.array([chance_agreement(group_sizes, n) for n in ns])


def pool_chance_agreement(texts, ns: Sequence[int]) -> np.ndarray:
    """``(P, len(ns))``: per-prompt chance agreement from a ``(P, N)`` array of texts or text ids."""
    texts = np.asarray(texts, dtype=object)
    if texts.ndim != 2:
        raise ValueError(f"texts must be (P, N), got shape {texts.shape}")
    return np.stack([chance_agreement_curve(list(Counter(row.tolist()).values()), ns) for row in texts])


def kappa(agreement, chance):
    """Chance-adjusted agreement ``(a − chance)/(1 − chance)``; NaN where chance == 1. Broadcasts."""
    a, ch = np.asarray(agreement, dtype=np.float64), np.asarray(chance, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(ch < 1, (a - ch) / np.where(ch < 1, 1 - ch, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------------------------------
# Planted structure on a run's own design: what the intervals' coverage is checked against


def planted_pool(rng: np.random.Generator, pretrain_ids: Sequence, finetune_seeds: Sequence, n_prompts: int,
                 pool_size: int, sigma_pt: float, sigma_ft: float, sigma_res: float = 1.0,
                 sigma_common: float = 1.0, scale: Sequence[float] | None = None) -> np.ndarray:
    """``(M, P, N)`` scores with planted seed structure on a design: per candidate,
    ``s = σ_common·Q + σ_pt·A[pretrain] + σ_ft·F[finetune seed] + σ_res·E[rm]``, all standard normal and
    independent (Q shared by every RM: the pool's quality; A by every RM of a pretrain, F by every RM of a
    finetune seed, E its own), each RM's scores times ``scale[m]`` (Bradley–Terry rewards' arbitrary scales).
    Unknown ids are units of their own. On per-prompt standardised scores the population half squared
    differences are D_same_pretrain = σ²_ft + σ²_res, D_same_finetune = σ²_pt + σ²_res, D_neither = all three,
    over the total σ²_common + σ²_pt + σ²_ft + σ²_res (:func:`planted_shares`).
    """
    pu, _ = pretrain_units(pretrain_ids)
    fu, _ = pretrain_units(finetune_seeds)
    m = len(pu)
    shape = (n_prompts, pool_size)
    q = rng.standard_normal(shape)
    a = rng.standard_normal((pu.max() + 1, *shape))[pu]
    f = rng.standard_normal((fu.max() + 1, *shape))[fu]
    e = rng.standard_normal((m, *shape))
    out = sigma_common * q[None] + sigma_pt * a + sigma_ft * f + sigma_res * e
    if scale is not None:
        out = out * np.asarray(scale, dtype=np.float64)[:, None, None]
    return out


def planted_shares(sigma_pt: float, sigma_ft: float, sigma_res: float = 1.0) -> dict[str, float]:
    """The population shares of D_neither that :func:`planted_pool` plants."""
    total = sigma_pt**2 + sigma_ft**2 + sigma_res**2
    return {"share_pt": sigma_pt**2 / total, "share_ft": sigma_ft**2 / total,
            "share_res": sigma_res**2 / total}


# ----------------------------------------------------------------------------------------------------
# Table 1 over every ensemble of a layout: a jackknife over both seed factors, shared by every statistic


def grid_ensembles(pretrain_ids: Sequence, finetune_seeds: Sequence) -> dict[str, list[list[int]]]:
    """Every ensemble a grid layout has, as RM indices: ``finetune``: the RMs of each pretrain with two or
    more (one ensemble per pretrain); ``pretrain``: for each finetune seed shared by two or more pretrains,
    one RM per pretrain with that seed (the first in order). The paper layout has one of each (seed0's
    finetunes, ft0 across pretrains); the full layout R x F has R finetune and F pretrain ensembles."""
    by_pretrain: dict = {}
    by_seed: dict = {}
    for i, (p, f) in enumerate(zip(pretrain_ids, finetune_seeds, strict=True)):
        by_pretrain.setdefault(p, []).append(i)
        if not _is_missing(f):
            by_seed.setdefault(f, {}).setdefault(p, i)
    finetune = [v for _, v in sorted(by_pretrain.items(), key=lambda kv: str(kv[0])) if len(v) >= 2]
    pretrain = [sorted(v.values()) for _, v in sorted(by_seed.items(), key=lambda kv: str(kv[0]))
                if len(v) >= 2]
    return {"finetune": finetune, "pretrain": pretrain}


@dataclass(frozen=True)
class Jackknifed:
    """Per-prompt values of a statistic whose point value is their prompt mean: ``full`` ``(P,)`` with every
    unit, and ``parts``: seed factor (``pretrain``, ``finetune``, ``member``) → for each deletion of one unit
    of that factor, the values without it ``(P,)``, or None where the statistic is undefined without it (a
    kind left without ensembles). A statistic that does not depend on a factor has no entry for it."""

    full: np.ndarray
    parts: Mapping[str, tuple[np.ndarray | None, ...]] = field(default_factory=dict)

    def __sub__(self, other: Jackknifed) -> Jackknifed:
        return combine(np.subtract, self, other)


def combine(fn: Callable, *stats: Jackknifed) -> Jackknifed:
    """``fn`` of per-prompt values applied to the full values and to each deletion's: a statistic without a
    factor takes part in that factor's deletions with its full values (the parts are independent); None where
    any operand is None. Statistics sharing a factor must list the same deletions of it."""
    parts = {}
    for f in dict.fromkeys(f for s in stats for f in s.parts):
        sizes = {len(s.parts[f]) for s in stats if f in s.parts}
        if len(sizes) != 1:
            raise ValueError(f"factor {f!r}: the statistics list different deletions ({sorted(sizes)})")
        dels = []
        for d in range(sizes.pop()):
            vals = [s.parts[f][d] if f in s.parts else s.full for s in stats]
            dels.append(None if any(v is None for v in vals) else fn(*vals))
        parts[f] = tuple(dels)
    return Jackknifed(fn(*(s.full for s in stats)), parts)


def jackknife_prompt_interval(num: Jackknifed, prompt_w, level: float, den: Jackknifed | None = None) -> dict:
    """The interval of a prompt mean (of ``num``) or, with ``den``, of a ratio of prompt means
    ``mean(num) / mean(den)``: for each seed factor a delete-one jackknife over its usable deletions,
    ``(K−1)/K Σ (θ₋u − θ̄₋)²``, plus the variance of the statistic over the prompt-bootstrap multiplicities
    ``prompt_w`` ``(B, P)`` (units fixed; a ratio is of the prompt-weighted means); the factors' parts and the
    prompts' are summed as independent, and the interval is ``estimate ± t·se`` with Satterthwaite df from
    each factor's K−1 and the prompts' P−1 (:func:`t_interval`). Returns ``estimate, se, lo, hi, df``,
    ``var`` (factor → its variance, and ``prompt``) and ``k`` (factor → usable deletions)."""
    stats = (num,) if den is None else (num, den)

    def stat(*v) -> float:
        return float(v[0].mean()) if den is None else float(v[0].mean() / v[1].mean())

    est = stat(*(s.full for s in stats))
    v_f, k_f = {}, {}
    for f in dict.fromkeys(f for s in stats for f in s.parts):
        n_del = len(next(s.parts[f] for s in stats if f in s.parts))
        th = []
        for d in range(n_del):
            vals = [s.parts[f][d] if f in s.parts else s.full for s in stats]
            if all(v is not None for v in vals):
                th.append(stat(*vals))
        th = np.array(th)
        k_f[f] = len(th)
        v_f[f] = (len(th) - 1) / len(th) * float(np.sum((th - th.mean()) ** 2)) if len(th) >= 2 else 0.0
    n_prompts = num.full.shape[0]
    if den is None:
        reps = prompt_w @ num.full / n_prompts
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (prompt_w @ num.full) / (prompt_w @ den.full)
    v_p = _var(reps) if den is not None else float(np.var(reps, ddof=1))
    parts = [(v, k_f[f] - 1) for f, v in v_f.items() if k_f[f] >= 2] + [(v_p, max(n_prompts - 1, 1))]
    iv = t_interval(est, sum(v_f.values()) + v_p, parts, level)
    return {"estimate": est, **iv, "var": v_f | {"prompt": v_p}, "k": k_f}


@dataclass(frozen=True)
class GridValues:
    """The grid's Table 1 statistics for one target, n and aggregator as :class:`Jackknifed` per-prompt values
    (jackknifed over pretrains and, where crossed, finetune seeds): ``single``, each kind with ensembles
    (``finetune``, ``pretrain``: the mean over its ensembles) and the contrasts ``<kind> - single`` and
    ``pretrain - finetune``, in that order; with the ensembles, the kinds that have any, the seed design and
    the number of RMs behind them."""

    stats: Mapping[str, Jackknifed]
    ensembles: Mapping[str, Sequence[Sequence[int]]]
    kinds: tuple[str, ...]
    design: SeedDesign
    n_rms: int


def grid_ensemble_values(
    scores, target, n: int, ensembles: Mapping[str, Sequence[Sequence[int]]], pretrain_ids: Sequence,
    finetune_seeds: Sequence, single=None, aggregator: str = "mean", scale: bool = False,
) -> GridValues:
    """The per-prompt values behind :func:`grid_ensemble_intervals`, with every RM and with each pretrain (and
    crossed finetune seed) deleted: deleting a unit removes its RMs from every ensemble and from the single-RM
    mean; an ensemble left with one member is dropped; a kind left without ensembles is None there."""
    scores = np.asarray(scores, dtype=np.float64)
    m = scores.shape[0]
    target = np.asarray(target, dtype=np.float64)
    if single is None:
        single = np.sum(bon.selection_probabilities(scores, n) * target, axis=-1)
    single = np.asarray(single, dtype=np.float64)
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def ens_value(members) -> np.ndarray:
        key = tuple(sorted(members))
        if key not in cache:
            cache[key] = ensemble_pick_values(scores[list(key)], target, n, aggregator, scale)
        return cache[key]

    kinds = tuple(k for k in ("finetune", "pretrain") if ensembles.get(k))

    def per_prompt(keep: np.ndarray) -> dict[str, np.ndarray | None]:
        out: dict[str, np.ndarray | None] = {"single": single[keep].mean(axis=0) if keep.any() else None}
        for k in kinds:
            kept = [[i for i in e if keep[i]] for e in ensembles[k]]
            kept = [e for e in kept if len(e) >= 2]
            out[k] = np.mean([ens_value(e) for e in kept], axis=0) if kept else None
        return out

    full = per_prompt(np.ones(m, dtype=bool))
    design = seed_design(pretrain_ids, [None if _is_missing(f) else f for f in finetune_seeds], "shared")
    factors = {"pretrain": design.pretrain}
    if design.crossed:
        factors["finetune"] = design.finetune
    loo = {f: [per_prompt(units != u) for u in np.unique(units)] for f, units in factors.items()}
    stats = {name: Jackknifed(values, {f: tuple(d[name] for d in dels) for f, dels in loo.items()})
             for name, values in full.items() if values is not None}
    for k in kinds:
        if k in stats and "single" in stats:
            stats[f"{k} - single"] = stats[k] - stats["single"]
    if "pretrain" in stats and "finetune" in stats:
        stats["pretrain - finetune"] = stats["pretrain"] - stats["finetune"]
    return GridValues(stats, ensembles, kinds, design, m)


def _deletions(k: Mapping[str, int]) -> str:
    words = {"pretrain": "pretrains", "finetune": "finetune seeds", "member": "members"}
    return " and ".join(f"{words.get(f, f)} ({n} deletions)" for f, n in k.items())


def grid_ensemble_intervals(
    scores, target, n: int, ensembles: Mapping[str, Sequence[Sequence[int]]], pretrain_ids: Sequence,
    finetune_seeds: Sequence, single=None, aggregator: str = "mean", scale: bool = False, draws: int = 500,
    level: float = 0.9, seed: int = 0, values: GridValues | None = None,
) -> pd.DataFrame:
    """Table 1's cells averaged over every ensemble of each kind, the single-RM mean and the contrasts
    ``<kind> - single`` and ``pretrain - finetune``, with one interval machinery for all of them (paired).

    ``scores`` ``(M, P, N)`` of the grid's RMs; ``ensembles``: kind → lists of RM indices
    (:func:`grid_ensembles`); ``single`` ``(M, P)``: each RM's own best-of-n value (default: computed from
    ``scores``); ``values``: the same already computed (:func:`grid_ensemble_values`). A kind's statistic is
    the mean over its ensembles of the prompt mean of :func:`ensemble_pick_values`. Variance
    (:func:`jackknife_prompt_interval`): a delete-one jackknife over each seed factor, pretrains and
    finetune seeds (deleting a unit removes its RMs from every ensemble and from the single-RM mean; an
    ensemble left with one member is dropped; deletions that leave a kind without ensembles are skipped for
    it), ``(K−1)/K Σ (θ₋u − θ̄₋)²`` over the K usable deletions, plus a prompt bootstrap of the full
    statistic; the interval is the estimate ± t·se with Satterthwaite df from the factors' K−1 and the
    prompts'. Rows: ``statistic, estimate, se, lo, hi, df, se_pretrain, se_finetune, se_prompt,
    n_ensembles, R, F, level, resamples``.
    """
    grid = values if values is not None else grid_ensemble_values(
        scores, target, n, ensembles, pretrain_ids, finetune_seeds, single, aggregator, scale)
    n_prompts = np.asarray(target).shape[0]
    prompt_w = draw_bootstrap_weights(1, n_prompts, draws, seed).prompt
    rows = []
    for name, stat in grid.stats.items():
        iv = jackknife_prompt_interval(stat, prompt_w, level)
        kind = name.split(" ")[0]
        rows.append({
            "statistic": name, "estimate": iv["estimate"], **{k: iv[k] for k in ("se", "lo", "hi", "df")},
            "se_pretrain": math.sqrt(iv["var"].get("pretrain", np.nan)),
            "se_finetune": math.sqrt(iv["var"].get("finetune", np.nan)),
            "se_prompt": math.sqrt(iv["var"]["prompt"]),
            "n_ensembles": len(grid.ensembles.get(kind, [])) if kind in grid.kinds else grid.n_rms,
            "R": grid.design.n_pretrains, "F": grid.design.n_finetune, "level": level,
            "resamples": "jackknife over " + _deletions(iv["k"]) + " + prompt bootstrap",
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Named ensembles (cheap members on one backbone, or a user's own): a jackknife over their members


UNRESOLVED_GAIN = ("the pretrain ensemble's gain over a single RM is not resolved (its interval includes 0): "
                   "a share of it is undefined")


def named_ensemble_values(member_scores, target, n: int, aggregator: str = "mean",
                          scale: bool = False) -> Jackknifed:
    """A named ensemble's per-prompt best-of-n values (:func:`ensemble_pick_values`) with all its K members
    and, as factor ``member``, with each one deleted (the others stay). One member: its own best-of-n values
    (``aggregator`` unused) and no member factor."""
    scores = np.asarray(member_scores, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if scores.shape[0] == 1:
        return Jackknifed(np.sum(bon.selection_probabilities(scores[0], n) * target, axis=-1))
    full = ensemble_pick_values(scores, target, n, aggregator, scale)
    loo = tuple(ensemble_pick_values(np.delete(scores, a, axis=0), target, n, aggregator, scale)
                for a in range(scores.shape[0]))
    return Jackknifed(full, {"member": loo})


def gain_share_interval(gain: Jackknifed, baseline_gain: Jackknifed, prompt_w, level: float) -> dict:
    """``share = mean(gain) / mean(baseline_gain)`` (e.g. (named − single)/(pretrain − single)) with the
    interval of :func:`jackknife_prompt_interval` for a ratio, or NaN with ``note`` :data:`UNRESOLVED_GAIN`
    when the denominator's own interval includes 0. Returns ``estimate, se, lo, hi, df, var, k, note``."""
    den = jackknife_prompt_interval(baseline_gain, prompt_w, level)
    if not (den["lo"] > 0 or den["hi"] < 0):
        nan = float("nan")
        return {"estimate": nan, "se": nan, "lo": nan, "hi": nan, "df": nan, "var": {}, "k": den["k"],
                "note": UNRESOLVED_GAIN}
    return {**jackknife_prompt_interval(gain, prompt_w, level, den=baseline_gain), "note": ""}


def named_ensemble_intervals(
    member_scores, target, n: int, grid: GridValues | None = None, aggregator: str = "mean",
    scale: bool = False, draws: int = 500, level: float = 0.9, seed: int = 0, name: str = "named",
    condition: str = "conditional on its backbone",
) -> pd.DataFrame:
    """A named ensemble's best-of-n value and its contrasts with the grid, with intervals.

    ``member_scores`` ``(K, P, N)``: its members (one member: ranks by its own reward, aggregator ``none``);
    ``grid``: the grid's values for the same target and n (:func:`grid_ensemble_values`), with the aggregator
    to compare against (the same as this one's; the caller picks ``mean`` for a one-member ensemble). Rows
    (``statistic``): ``<name>``; with a grid ``<name> - single``, ``<name> - pretrain`` (the mean over the
    grid's pretrain ensembles) and ``share of pretrain gain`` = (name − single)/(pretrain − single), NaN where
    the denominator's interval includes 0 (:func:`gain_share_interval`). Variance
    (:func:`jackknife_prompt_interval`): a delete-one jackknife over the K members (each member a unit with
    its seeds; none with one member), the grid's jackknife over pretrains and finetune seeds for the grid side
    (the parts independent, summed) and the same prompt-bootstrap draws as :func:`grid_ensemble_intervals`
    with the same ``draws`` and ``seed`` (paired). ``condition`` says what the interval is conditional on (a
    set of members on one backbone cannot show pretrain-seed variation). Columns: ``statistic, estimate, se,
    lo, hi, df, se_member, se_pretrain, se_finetune, se_prompt, K, R, F, level, resamples, note``.
    """
    scores = np.asarray(member_scores, dtype=np.float64)
    k = scores.shape[0]
    named = named_ensemble_values(scores, target, n, aggregator, scale)
    prompt_w = draw_bootstrap_weights(1, named.full.shape[0], draws, seed).prompt
    stats: dict[str, tuple[Jackknifed, Jackknifed | None]] = {name: (named, None)}
    if grid is not None and "single" in grid.stats:
        stats[f"{name} - single"] = (named - grid.stats["single"], None)
        if "pretrain" in grid.stats:
            stats[f"{name} - pretrain"] = (named - grid.stats["pretrain"], None)
            stats["share of pretrain gain"] = (named - grid.stats["single"], grid.stats["pretrain - single"])
    members = f"jackknife over its {k} members" if k >= 2 else "no member jackknife (one member)"
    rows = []
    for stat_name, (num, den) in stats.items():
        if den is None:
            iv, note = jackknife_prompt_interval(num, prompt_w, level), ""
        else:
            iv = gain_share_interval(num, den, prompt_w, level)
            note = iv["note"]
        grid_part = {f: c for f, c in iv["k"].items() if f != "member"}
        resamples = members + (", and the grid's " + _deletions(grid_part) if grid_part else "")
        rows.append({
            "statistic": stat_name, "estimate": iv["estimate"],
            **{c: iv[c] for c in ("se", "lo", "hi", "df")},
            **{f"se_{f}": math.sqrt(iv["var"][f]) if f in iv["var"] else np.nan
               for f in ("member", "pretrain", "finetune", "prompt")},
            "K": k, "R": grid.design.n_pretrains if grid is not None else np.nan,
            "F": grid.design.n_finetune if grid is not None else np.nan, "level": level,
            "resamples": f"{resamples} + prompt bootstrap; {condition}", "note": note,
        })
    return pd.DataFrame(rows)
