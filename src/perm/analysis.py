"""The paper's numbers (Figures 1–4, Table 1), the seed variance decomposition and reward-hacking
diagnostics, from the reward tensor (perm.tensor: loading and validation).

The figure functions are pure functions of a :class:`perm.tensor.RewardTensor` built on :mod:`perm.bon`
(exact best-of-n expectations) and :mod:`perm.seedstats` (pair relations, intervals over seeds);
:func:`run_analysis` runs them all and :func:`save_analysis` writes the tables (Parquet) and a JSON summary.

Conventions shared by every table:

* Best-of-n expectations are exact (see :mod:`perm.bon`), except Figure 3, which draws random subsets.
* "Reward" of a pick means the scorer's reward **centred per prompt over the pool**, i.e. relative to
  the expected reward of a random pool sample (n = 1 is exactly 0): Bradley–Terry rewards are only
  defined up to a shift, so absolute values would mostly measure each model's offset.
* ``mean`` is over prompts of per-prompt values (averaged over model pairs, rankers, …). ``se`` and the
  ``lo``–``hi`` interval are over pretrain seeds (finetune seeds nested in them) *and* prompts
  (:func:`perm.seedstats.multi_bootstrap`; ensembles: a jackknife over their members), with ``R`` the
  number of pretrains behind them; ``se_prompt`` is over prompts only. Figure 4's bands stay over prompts.
  Every interval is conditional on the SFT policy, its pool and the evaluator.
* Named ensembles (models.parquet's ``ensemble`` column: cheap members on one backbone, or a user's own
  choice) rank beside the finetune and pretrain ensembles; their intervals jackknife their members with the
  grid's prompt draws and are conditional on their backbone. Grid statistics (Figures 1–3, the seed variance)
  use the models of role ``rm`` only.
* The pool of a prompt is ordered by ascending ``sample_id``; best-of-n ties go to the lower one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from perm import bon, seedstats
from perm.tensor import (  # noqa: F401  (re-exported: the tensor API has always been importable from here)
    COST_COLUMNS,
    MODEL_COLUMNS,
    REWARD_COLUMNS,
    ROLES,
    RewardTensor,
    RewardTensorError,
    _example,
    load_ensemble_costs,
    load_reward_tensor,
    reward_tensor_from_frames,
    reward_tensor_to_frames,
    synthetic_reward_tensor,
)

FIGURE1_RELATIONS = ("self", "same_pretrain", "same_finetune", "neither")
FIGURE2_RELATIONS = ("same_pretrain", "same_finetune", "neither")
ENSEMBLE_KINDS = ("finetune", "pretrain")


# ----------------------------------------------------------------------------------------------------
# Statistics


def mean_se(values, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error ``std(ddof=1) / sqrt(count)`` along ``axis`` (NaN se for one value)."""
    v = np.asarray(values, dtype=np.float64)
    count = v.shape[axis]
    mean = v.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, v.std(axis=axis, ddof=1) / math.sqrt(count)


def anova_model_fraction(x) -> np.ndarray:
    """Fraction of variance explained by the scorer in a two-way additive ANOVA (one obs per cell).

    ``x``: ``(..., P, S)`` — prompts × scorers. ``SS_total = Σ (x − x̄)²``, ``SS_scorer =
    P · Σ_s (x̄_·s − x̄)²``; returns ``SS_scorer / SS_total`` of shape ``(...)`` (NaN where SS_total = 0).
    In a balanced design this equals statsmodels' ``anova_lm(ols('y ~ C(prompt) + C(scorer)'))`` sum of
    squares for ``C(scorer)`` over the sum of all rows.
    """
    x = np.asarray(x, dtype=np.float64)
    grand = x.mean(axis=(-2, -1), keepdims=True)
    ss_total = np.sum((x - grand) ** 2, axis=(-2, -1))
    col = x.mean(axis=-2, keepdims=True)
    ss_model = x.shape[-2] * np.sum((col - grand) ** 2, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_total > 0, ss_model / np.where(ss_total > 0, ss_total, 1.0), np.nan)


def _check_ns(ns, pool_size: int) -> list[int]:
    ns = bon.default_ns(pool_size) if ns is None else sorted({int(n) for n in ns})
    if not ns or ns[0] < 1 or ns[-1] > pool_size:
        raise ValueError(f"ns must lie in 1..{pool_size} (the pool size), got {ns}")
    return ns


def _summary_row(per_prompt: np.ndarray, **keys) -> dict:
    mean, se = mean_se(per_prompt)
    return {**keys, "mean": float(mean), "se": float(se)}


# ----------------------------------------------------------------------------------------------------
# Figures 1–3: underspecification among the reward models


PAPER_GROUPS = {
    "same_pretrain": "same pretrain, different finetune seed: only the finetuning differs",
    "different_pretrain": "different pretrain (same_finetune + neither pairs): the backbone differs, and in "
                          "neither pairs the finetuning too",
}
FIGURE_COLUMNS = ["n", "relation", "mean", "se", "lo", "hi", "df", "se_prompt", "R", "F", "n_pairs",
                  "resamples"]
CONTRAST_COLUMNS = ["figure", "contrast", "n", "target", "metric", "aggregator", "estimate", "se", "lo", "hi",
                    "df", "se_prompt", "p_le_0", "R", "F", "resamples", "note"]


def _rm_meta(tensor: RewardTensor) -> tuple[np.ndarray, list, list]:
    rm = tensor.rm_indices
    return tensor.pool[rm], [tensor.pretrain_ids[i] for i in rm], [tensor.finetune_seeds[i] for i in rm]


def _interval_rows(df: pd.DataFrame, **keys) -> dict[str, dict]:
    """multi_bootstrap rows by statistic, renamed to the figure tables' columns."""
    out = {}
    for r in df.itertuples(index=False):
        out[r.statistic] = {**keys, "mean": r.estimate, "se": r.se, "lo": r.lo, "hi": r.hi, "df": r.df,
                            "se_prompt": r.se_prompt, "R": r.R, "F": r.F, "p_le_0": r.p_le_0,
                            "resamples": r.resamples}
    return out


ONE_PRETRAIN = "same_pretrain pairs from one pretrain only"


ONE_FINETUNE = "same_finetune pairs from one finetune seed only"


def _one_unit(arm, labels) -> str | None:
    """The one label every member of ``arm``'s pairs carries (a pretrain id, a finetune seed), else None."""
    if arm is None:
        return None
    held = {str(labels[i]) for m in arm.members for i in m}
    return held.pop() if len(held) == 1 else None


def one_seed_caveat(arm, fseeds) -> str:
    """The clause a contrast's note gets when every same_finetune pair shares one finetune seed (the paper
    layout: ft0 across the pretrains), so that relation too is tied to one seed's draw. Empty otherwise."""
    held = _one_unit(arm, fseeds)
    if held is None:
        return ""
    return (f"; {ONE_FINETUNE} (ft{held} across pretrains): the different_pretrain group leans on that one "
            "seed's draw")


def same_pretrain_caveat(arm, pids) -> str:
    """The clause a same_pretrain contrast's note gets when every same_pretrain pair comes from one pretrain
    (the paper layout: one pretrain's finetune seeds): the interval, over pretrain seeds and prompts, then
    cannot see how far that pretrain's finetuning noise moves the contrast, which replicate runs measured at
    about twice its se (docs/history/results.md, 2026-12-02). Empty otherwise."""
    held = _one_unit(arm, pids)
    if held is None:
        return ""
    return (f"; {ONE_PRETRAIN} ({held}'s finetunes): the interval cannot see how far their finetuning noise "
            "moves it; check with replicate runs (perm compare) or reward.layout: full")


def pair_statistics(tensor: RewardTensor, ns=None, texts: np.ndarray | None = None, scope: str = "shared",
                    draws: int = 500, level: float = 0.9, seed: int = 0,
                    scale: bool = True) -> dict[str, pd.DataFrame]:
    """Figures 1 and 2 by pair relation, the paper's two groups, and the clean contrasts, with intervals over
    pretrain seeds and prompts (:func:`perm.seedstats.multi_bootstrap`).

    Figure 1: for ranker m and scorer m′, ``Σ_i p_i^(m) r̃_m′(i)`` (r̃ standardised per prompt: in the scorer's
    per-prompt sd, so no RM's reward scale counts; ``scale=False``: centred only, the paper's raw rewards,
    :func:`perm.seedstats.pick_rewards`), by relation of m′ to
    m: ``self``, ``same_pretrain``, ``same_finetune``, ``neither`` (:func:`perm.seedstats.pair_relations`;
    no ``same_finetune`` under ``scope="per_rm"``). Figure 2: expected top-1 agreement of two distinct RMs by
    relation, with the chance agreement of two random scorers given the pool's duplicate ``texts`` ``(P, N)``
    (1/n without texts or duplicates) and ``kappa`` = (a − chance)/(1 − chance) (mean chance over prompts).

    Tables: ``figure1`` / ``figure2`` (:data:`FIGURE_COLUMNS`, figure2 + ``chance, kappa, kappa_lo,
    kappa_hi``): ``mean`` over pairs and prompts, ``se`` and the ``lo``-``hi`` interval at ``level`` over
    the seed design and prompts (:func:`perm.seedstats.multi_bootstrap`: pretrains and, under ``shared``
    scope, finetune seeds as a crossed factor; ``resamples`` says which), ``df`` its t degrees of freedom,
    ``se_prompt`` over prompts only, ``R`` pretrains, ``F`` finetune seed units (0: nested);
    ``paper_groups`` (the paper's grouping, :data:`PAPER_GROUPS`, with what each varies); ``contrasts``:
    ``same_pretrain - neither`` (the clean test: > 0 is the paper's finding) and the paper's ``same_pretrain
    - different_pretrain``, same draws for both arms. The intervals are conditional on the SFT policy, its
    pool and the evaluator. Draws where a relation's pretrains were all left out are dropped (see
    :func:`perm.seedstats.multi_bootstrap`).
    """
    ns = _check_ns(ns, tensor.pool_size)
    pool, pids, fseeds = _rm_meta(tensor)
    relations = seedstats.pair_relations(pids, fseeds, scope)
    chance = None
    if texts is not None:
        chance = seedstats.pool_chance_agreement(texts, ns).mean(axis=0)  # (len(ns),)
    agreement = seedstats.pick_agreement(pool, ns) if len(pids) > 1 else None
    rows = {"figure1": [], "figure2": [], "paper_groups": [], "contrasts": []}
    for i, n in enumerate(ns):
        for fig, values, ordered in (("figure1", seedstats.pick_rewards(pool, n, scale=scale), True),
                                     ("figure2", None if agreement is None else agreement[i], False)):
            if values is None:
                continue
            arms = seedstats.relation_arms(values, relations, ordered=ordered, include_self=fig == "figure1",
                                           include_different=True)
            contrasts = [(a, b) for a, b in (("same_pretrain", "neither"),
                                             ("same_pretrain", "different_pretrain"))
                         if a in arms and b in arms]
            if not arms:
                continue
            stats = seedstats.multi_bootstrap(arms, pids, contrasts=contrasts, draws=draws, level=level,
                                              seed=seed + n, finetune_seeds=fseeds, scope=scope)
            by = _interval_rows(stats, n=n)
            c = (chance[i] if chance is not None else 1.0 / n)
            for rel in ("self", *seedstats.RELATIONS):
                if rel in arms:
                    row = {k: by[rel][k] for k in FIGURE_COLUMNS if k in by[rel]} | {
                        "relation": rel, "n_pairs": len(arms[rel].members)}
                    if fig == "figure2":
                        row |= {"chance": c, **{f"kappa{s}": float(seedstats.kappa(by[rel][k], c))
                                                for s, k in (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))}}
                    rows[fig].append(row)
            for group, varies in PAPER_GROUPS.items():
                if group in arms:
                    rows["paper_groups"].append({"figure": fig, "group": group, "varies": varies,
                                                 "n_pairs": len(arms[group].members), **by[group]})
            note = "> 0: RMs sharing a pretrain agree more (the paper's finding)" + same_pretrain_caveat(
                arms.get("same_pretrain"), pids) + one_seed_caveat(arms.get("same_finetune"), fseeds)
            for a, b in contrasts:
                r = by[f"{a} - {b}"]
                rows["contrasts"].append({
                    "figure": fig, "contrast": f"{a} - {b}", "n": n, "target": None, "metric": None,
                    "aggregator": None, "estimate": r["mean"],
                    **{k: r[k] for k in ("se", "lo", "hi", "df", "se_prompt", "p_le_0", "R", "F",
                                         "resamples")},
                    "note": note})
    fig2_cols = FIGURE_COLUMNS + ["chance", "kappa", "kappa_lo", "kappa_hi"]
    return {
        "figure1": pd.DataFrame(rows["figure1"], columns=FIGURE_COLUMNS),
        "figure2": pd.DataFrame(rows["figure2"], columns=fig2_cols),
        "paper_groups": pd.DataFrame(rows["paper_groups"],
                                     columns=["figure", "n", "group", "varies", "mean", "se", "lo", "hi",
                                              "df", "se_prompt", "R", "F", "n_pairs", "resamples"]),
        "contrasts": pd.DataFrame(rows["contrasts"], columns=CONTRAST_COLUMNS),
    }


def figure1(tensor: RewardTensor, ns=None, **kwargs) -> pd.DataFrame:
    """Reward of ranker m's best-of-n pick under scorer m′, by relation (:func:`pair_statistics`)."""
    return pair_statistics(tensor, ns, **kwargs)["figure1"]


def figure2(tensor: RewardTensor, ns=None, **kwargs) -> pd.DataFrame:
    """Expected top-1 agreement of two distinct RMs by relation, vs n (:func:`pair_statistics`)."""
    return pair_statistics(tensor, ns, **kwargs)["figure2"]


PICK_RANKERS = ("auto", "evaluator", "gold", "grid")


def pick_ranker(tensor: RewardTensor, ranker: str = "auto") -> tuple[str, np.ndarray | None]:
    """The ranker whose best-of-n picks weight the pick-level decomposition: ``auto`` = the evaluator, else
    gold, else ``grid``; ``grid`` = the other RMs of each pair (None scores), unbiased only where the layout
    treats every relation alike (the full layout), not in the paper layout."""
    if ranker not in PICK_RANKERS:
        raise ValueError(f"pick ranker must be one of {PICK_RANKERS}, got {ranker!r}")
    order = ("evaluator", "gold") if ranker == "auto" else (() if ranker == "grid" else (ranker,))
    for role in order:
        idx = tensor.role_index(role)
        if idx is not None:
            return role, tensor.pool[idx]
    if ranker not in ("auto", "grid"):
        raise ValueError(f"pick ranker {ranker!r}: the reward tensor has no {ranker} model")
    return "grid", None


def seed_variance(tensor: RewardTensor, ns=None, scope: str = "shared", draws: int = 500, level: float = 0.9,
                  seed: int = 0, ranker: str = "auto") -> pd.DataFrame:
    """How much of the RM-to-RM variation comes from the pretraining seed, the finetuning seed and neither.

    On per-prompt standardised scores, D_r = mean over prompts, candidates and pairs of relation r of
    ½(s_a − s_b)²; σ²_pt = D_neither − D_same_pretrain, σ²_ft = D_neither − D_same_finetune, σ²_res =
    D_same_pretrain + D_same_finetune − D_neither, shares = each / D_neither
    (:func:`perm.seedstats.variance_decomposition`), on the whole pool (``weighting = pool``) and at the
    best-of-n picks for each n (``pick``) of a ranker in no pair (:func:`pick_ranker`: the evaluator, else
    gold; ``ranker="grid"``: the other RMs of each pair, which in the paper layout relate differently to
    each relation and plant shares under a null). One row per (weighting, n, statistic) with the
    multi-bootstrap interval over the seed design and prompts (ratios bootstrapped whole); ``ranker`` names
    the picks' ranker. ``missing`` names relations without pairs: their components are NaN (under
    ``per_rm`` scope only σ²_pt is identified).
    """
    ns = _check_ns(ns, tensor.pool_size)
    pool, pids, fseeds = _rm_meta(tensor)
    columns = ["weighting", "n", "ranker", "statistic", "estimate", "se", "lo", "hi", "df", "se_prompt", "R",
               "F", "resamples", "missing", "note"]
    if len(pids) < 2:
        return pd.DataFrame(columns=columns)
    counts = seedstats.relation_counts(seedstats.pair_relations(pids, fseeds, scope))
    missing = ",".join(r for r in seedstats.RELATIONS if not counts.get(r))
    ranker_name, ranker_scores_ = pick_ranker(tensor, ranker)
    rows = []
    for weighting, n in [("pool", None)] + [("pick", n) for n in ns if n > 1]:
        df = seedstats.decomposition_intervals(pool, pids, fseeds, n=n, scope=scope, draws=draws, level=level,
                                               seed=seed + (n or 0), ranker=ranker_scores_)
        for r in df.itertuples(index=False):
            rows.append({"weighting": weighting, "n": n, "ranker": ranker_name if n else None,
                         "statistic": r.statistic, "estimate": r.estimate, "se": r.se, "lo": r.lo, "hi": r.hi,
                         "df": r.df, "se_prompt": r.se_prompt, "R": r.R, "F": r.F, "resamples": r.resamples,
                         "missing": missing, "note": r.note})
    out = pd.DataFrame(rows, columns=columns)
    out["n"] = pd.array(out["n"].tolist(), dtype="Int64")
    return out


FIGURE3_METHODS = {
    "mom": "method-of-moments share of variance due to the scoring RM, on per-prompt standardised scores",
    "paper": "the paper's: SS_RM / SS_total of a two-way ANOVA on rewards centred per prompt (raw scale)",
}


def _weighted_fractions(x: np.ndarray, w: np.ndarray, v: np.ndarray, method: str = "paper") -> np.ndarray:
    """The Figure 3 statistic of ``x`` ``(M, P, S)`` (ranker × prompts × scorers) under prompt weights
    ``w`` ``(B, P)`` and scorer weights ``v`` ``(B, M, S)`` (bootstrap multiplicities: the statistic of the
    resampled table), for B replicates at once: ``(B, M)``.

    Weighted two-way additive ANOVA (product weights w_p·v_s, W = Σ w, V = Σ v): x̄ = Σ w v x / (W V),
    SS_scorer = W Σ_s v_s (x̄_·s − x̄)², SS_prompt = V Σ_p w_p (x̄_p· − x̄)², SS_total = Σ w_p v_s (x_ps − x̄)².
    ``paper``: SS_scorer / SS_total (:func:`anova_model_fraction` with unit weights). ``mom``: the random-
    effects method of moments, MS_scorer = SS_scorer / (V − 1), MS_res = SS_res / ((W − 1)(V − 1)),
    σ²_RM = (MS_scorer − MS_res) / W and the share σ²_RM / (σ²_RM + MS_res): ≈ 0 when the scorers are
    exchangeable (SS_scorer / SS_total is then ≈ (S − 1)/(PS − 1) and grows with unequal scales); not
    truncated at 0."""
    a1 = np.einsum("bp,mps->bms", w, x, optimize=True)
    a2 = np.einsum("bp,mps->bms", w, x * x, optimize=True)
    big_w = w.sum(axis=1)[:, None, None]
    col = a1 / big_w
    big_v = v.sum(axis=-1, keepdims=True)
    # every scorer of a ranker left out: NaN, dropped later
    with np.errstate(invalid="ignore", divide="ignore"):
        grand = np.sum(v * col, axis=-1, keepdims=True) / big_v
        ss_model = big_w[..., 0] * np.sum(v * (col - grand) ** 2, axis=-1)
        ss_total = np.sum(v * (a2 - 2 * grand * a1 + grand**2 * big_w), axis=-1)
        if method == "paper":
            return np.where(ss_total > 1e-300, ss_model / np.where(ss_total > 1e-300, ss_total, 1.0), np.nan)
        r1 = np.einsum("bms,mps->bmp", v, x, optimize=True)  # Σ_s v_s x_ps
        g, vv, ww = grand[..., 0], big_v[..., 0], big_w[..., 0]
        ss_prompt = (np.einsum("bp,bmp->bm", w, r1 * r1, optimize=True) / vv - 2 * g * np.sum(v * a1, axis=-1)
                     + g**2 * ww * vv)
        ms_model = ss_model / (vv - 1)
        ms_res = (ss_total - ss_model - ss_prompt) / ((ww - 1) * (vv - 1))
        sigma_rm = (ms_model - ms_res) / ww
        den = sigma_rm + ms_res
        # a replicate with fewer than two distinct scorers (or prompts) has no between-scorer
        # variance to share
        ok = (np.abs(den) > 1e-300) & ((v > 0).sum(axis=-1) >= 2) & ((w > 0).sum(axis=-1) >= 2)[:, None]
        return np.where(ok, sigma_rm / np.where(ok, den, 1.0), np.nan)


def figure3(
    tensor: RewardTensor, ns=None, draws: int = 20, seed: int = 0, include_ranker: bool = False,
    bootstrap: int = 500, level: float = 0.9, method: str = "mom", scope: str = "shared",
) -> pd.DataFrame:
    """How much of the variance in the scores of best-of-n picks follows which RM scores them.

    For each draw, each prompt gets one uniformly random permutation of its pool; the n-subset is its
    first n entries (nested across n, which makes the curve smoother without biasing any point). For
    ranker m, ``pick`` is its argmax on the subset (ties to the lower index) and ``X[prompt, m′]`` the
    scorer m′'s score of it: standardised per prompt over the pool (``method="mom"``, the default: centred
    and divided by the scorer's per-prompt sd, so no RM's reward scale counts) or only centred (``"paper"``:
    the paper's raw rewards, where RMs with wider reward ranges explain more). Scorers are the *other* RMs
    (as in the paper: one RM reranks, the others score), or all with ``include_ranker``. The statistic
    (:func:`_weighted_fractions`, :data:`FIGURE3_METHODS`) is averaged over rankers and draws (``mean``);
    ``null`` is the same with each prompt's scores permuted across scorers (an exchangeable null: no RM
    differs from another), the value ``mean`` would take without any RM effect.

    Interval over the seed design and prompts, as :func:`perm.seedstats.multi_bootstrap`: the whole
    statistic recomputed under multiplicities of prompts, of pretrains and (``scope="shared"``, crossed) of
    finetune seeds; a ranker weighted by its units, a scorer by those of its units it does not share with
    the ranker; the variance of the mean over ``draws`` random subsets added (``se_draws``); the interval
    :func:`perm.seedstats.corrected_interval`. Columns: ``n, mean, se, lo, hi, df, null, se_prompt,
    se_draws, R, F, n_rankers, draws, method``.
    """
    if method not in FIGURE3_METHODS:
        raise ValueError(f"figure3 method must be one of {tuple(FIGURE3_METHODS)}, got {method!r}")
    ns = _check_ns(ns, tensor.pool_size)
    rm = tensor.rm_indices
    n_rm, n_prompts, pool_size = len(rm), tensor.n_prompts, tensor.pool_size
    columns = ["n", "mean", "se", "lo", "hi", "df", "null", "se_prompt", "se_draws", "R", "F", "n_rankers",
               "draws", "method"]
    if draws < 1 or n_rm < (1 if include_ranker else 3):
        return pd.DataFrame(columns=columns)
    scores = tensor.pool[rm]
    values = bon.standardize(scores, scale=method == "mom")  # (M, P, N)
    beats = bon.beat_counts(scores)
    if include_ranker:
        scorer_idx = np.broadcast_to(np.arange(n_rm), (n_rm, n_rm))
    else:
        scorer_idx = np.array([[k for k in range(n_rm) if k != m] for m in range(n_rm)])
    design = seedstats.seed_design([tensor.pretrain_ids[i] for i in rm],
                                   [tensor.finetune_seeds[i] for i in rm], scope)
    bw = seedstats.draw_bootstrap_weights(design.n_pretrains, n_prompts, bootstrap, seed + 1,
                                          design.n_finetune)

    def ranker_scorer(weights: seedstats.BootstrapWeights):
        def part(units, c):
            r = c[:, units]  # (B, M)
            s = np.where(units[scorer_idx][None] == units[:, None][None], 1.0, c[:, units[scorer_idx]])
            return r, s
        r, s = part(design.pretrain, weights.pretrain)
        if design.crossed:
            rf, sf = part(design.finetune, weights.finetune)
            r, s = r * rf, s * sf
        return weights.prompt, r, s

    ones = seedstats.BootstrapWeights(np.ones((1, design.n_pretrains)),
                                      np.ones((1, design.n_finetune)) if design.crossed else None,
                                      np.ones((1, n_prompts)))
    reps = {"point": ranker_scorer(ones), "joint": ranker_scorer(bw)}
    for factor in (*design.factors(), "prompt"):
        reps[factor] = ranker_scorer(bw.only(factor))
    rng, null_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    prompt_idx = np.arange(n_prompts)[None, :]
    sums = {name: np.zeros((len(ns), r[0].shape[0], n_rm)) for name, r in reps.items()}
    per_draw = np.zeros((len(ns), draws))
    null = np.zeros(len(ns))
    p1, _, s1 = reps["point"]
    for d in range(draws):
        perm = rng.permuted(np.broadcast_to(np.arange(pool_size), (n_prompts, pool_size)), axis=1)
        for i, n in enumerate(ns):
            subset = perm[:, :n]  # (P, n)
            sub_beats = np.take_along_axis(beats, np.broadcast_to(subset, (n_rm, n_prompts, n)), axis=-1)
            pick = np.take_along_axis(subset[None], sub_beats.argmax(axis=-1)[..., None], axis=-1)[..., 0]
            x = values[:, prompt_idx, pick].transpose(1, 2, 0)  # (ranker, P, scorer)
            x = np.take_along_axis(x, scorer_idx[:, None, :], axis=-1)
            for name, (ww, _, sw) in reps.items():
                frac = _weighted_fractions(x, ww, sw, method)
                sums[name][i] += frac
                if name == "point":
                    per_draw[i, d] = float(np.nanmean(frac))
            null[i] += float(np.nanmean(_weighted_fractions(null_rng.permuted(x, axis=-1), p1, s1, method)))
    rows = []
    for i, n in enumerate(ns):
        frac = {}
        for name, (_, rw, _) in reps.items():
            per_ranker = sums[name][i] / draws  # (B, M)
            with np.errstate(invalid="ignore"):
                frac[name] = np.nansum(rw * per_ranker, axis=1) / np.sum(rw * np.isfinite(per_ranker), axis=1)
        mean = float(frac["point"][0])
        v_factor = {k: seedstats._var(frac[k]) for k in (*design.factors(), "prompt")}
        v_draws = float(np.var(per_draw[i], ddof=1)) / draws if draws > 1 else 0.0
        n_units = {**design.factors(), "prompt": n_prompts}
        iv = seedstats.corrected_interval(mean, seedstats._var(frac["joint"]) + v_draws, v_factor, n_units,
                                          level)
        rows.append({"n": n, "mean": mean, "se": iv["se"], "lo": iv["lo"], "hi": iv["hi"], "df": iv["df"],
                     "null": null[i] / draws, "se_prompt": math.sqrt(v_factor["prompt"]),
                     "se_draws": math.sqrt(v_draws), "R": design.n_pretrains, "F": design.n_finetune,
                     "n_rankers": n_rm, "draws": draws, "method": method})
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------------
# Figure 4 / Table 1: ensembles judged by the evaluator (and the gold reward)


def ensemble_members(tensor: RewardTensor) -> dict[str, list[int]]:
    """Model indices of the two ensembles of the paper.

    * ``finetune``: every RM of the pretrain with the most RMs (finetune seeds); ties go to the
      pretrain_id that sorts first. Empty if no pretrain has two RMs.
    * ``pretrain``: one RM per pretrain, the one with the lowest finetune seed (null seeds last, then
      model order). Empty if there is only one pretrain.
    """
    rm = tensor.rm_indices
    by_pretrain: dict[str, list[int]] = {}
    for i in rm:
        by_pretrain.setdefault(tensor.pretrain_ids[i], []).append(i)
    largest = max(len(v) for v in by_pretrain.values())
    finetune = by_pretrain[min(k for k, v in by_pretrain.items() if len(v) == largest)] if largest > 1 else []

    def seed_key(i):
        s = tensor.finetune_seeds[i]
        return (s is None, s if s is not None else 0, i)

    pretrain = sorted(min(v, key=seed_key) for v in by_pretrain.values()) if len(by_pretrain) > 1 else []
    return {"finetune": list(finetune), "pretrain": pretrain}


def ranker_scores(tensor: RewardTensor, scale: bool = False) -> list[tuple[str, str, np.ndarray]]:
    """The proxies whose best-of-n picks Figure 4 compares, as ``(ranker, aggregator, scores)``.

    ``scores`` is ``(R, P, N)``: R = number of RMs for ``single`` (results are averaged over them per
    prompt), 1 otherwise. Ensembles (``finetune``, ``pretrain``, then each named ensemble of the tensor under
    its name): members standardised per prompt (:func:`perm.bon.standardize`, ``scale`` for unit variance
    too), then each aggregator; a named ensemble of one member ranks by its own reward (aggregator ``none``).
    ``evaluator`` and ``gold`` rank by themselves, giving the ceilings for their own targets (aggregator
    ``none``).
    """
    out = [("single", "none", tensor.pool[tensor.rm_indices])]
    groups = {**ensemble_members(tensor), **{k: list(v) for k, v in tensor.ensembles.items()}}
    for kind, members in groups.items():
        if len(members) == 1 and kind in tensor.ensembles:
            out.append((kind, "none", tensor.pool[members]))
        elif members:
            std = bon.standardize(tensor.pool[members], scale=scale)
            out += [(kind, agg, bon.aggregate(std, agg)[None]) for agg in bon.AGGREGATORS]
    for role in ("evaluator", "gold"):
        idx = tensor.role_index(role)
        if idx is not None:
            out.append((role, "none", tensor.pool[idx][None]))
    return out


def pretrain_agreement(tensor: RewardTensor, ns=None, scale: bool = False) -> pd.DataFrame:
    """How often each ranker's best-of-n pick is the pretrain ensemble's (its ``mean`` aggregator): the exact
    expected top-1 agreement over random n-subsets of the pool (:func:`perm.seedstats.pick_agreement`), per
    prompt, averaged over the ranker's R score rows (``single``: every grid RM) and the prompts. Columns
    ``n, ranker, aggregator, mean, se, n_members``; empty without a pretrain ensemble."""
    columns = ["n", "ranker", "aggregator", "mean", "se", "n_members"]
    ns = _check_ns(ns, tensor.pool_size)
    rankers = ranker_scores(tensor, scale)
    ref = next((s[0] for r, a, s in rankers if r == "pretrain" and a == "mean"), None)
    if ref is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for ranker, agg, scores in rankers:
        agree = np.stack([seedstats.pick_agreement(np.stack([ref, row]), ns)[:, 0, 1, :] for row in scores])
        per_prompt = agree.mean(axis=0)  # (len(ns), P): averaged over the ranker's rows
        for i, n in enumerate(ns):
            rows.append(_summary_row(per_prompt[i], n=n, ranker=ranker, aggregator=agg)
                        | {"n_members": scores.shape[0]})
    return pd.DataFrame(rows)[columns]


def _expected_table(rankers, targets: Mapping[tuple[str, str], np.ndarray], ns, pool_size: int, key_names):
    """Rows of mean ± se over prompts of ``Σ_i p_i T_i`` for every ranker × target × n."""
    rows = []
    for ranker, agg, scores in rankers:
        beats = bon.beat_counts(scores)  # (R, P, N)
        for n in ns:
            p = bon.selection_weights(pool_size, n)[beats]
            for key, values in targets.items():
                per_prompt = np.sum(p * values, axis=-1).mean(axis=0)  # averaged over R rankers
                row = _summary_row(per_prompt, n=n, ranker=ranker, aggregator=agg)
                rows.append({**row, **dict(zip(key_names, key, strict=True)), "n_members": scores.shape[0]})
    return rows


def figure4(tensor: RewardTensor, ns=None, scale: bool = False) -> pd.DataFrame:
    """Quality of best-of-n picks of single RMs and of the ensembles (the two of the paper, then each named
    ensemble) × aggregators, vs n.

    Targets: ``evaluator`` and ``gold`` (whichever exist). Metrics: ``reward`` (the target's reward
    centred per prompt) and ``win_rate`` vs the reference samples (when the tensor has them). Rankers:
    see :func:`ranker_scores`. Columns: ``n, ranker, aggregator, target, metric, mean, se, n_members,
    kl_bound`` (for ``single``, n_members is the number of RMs averaged over).
    """
    ns = _check_ns(ns, tensor.pool_size)
    targets = {}
    for role in ("evaluator", "gold"):
        idx = tensor.role_index(role)
        if idx is None:
            continue
        targets[(role, "reward")] = bon.standardize(tensor.pool[idx])
        if tensor.reference is not None:
            targets[(role, "win_rate")] = bon.win_probabilities(tensor.pool[idx], tensor.reference[idx])
    columns = ["n", "ranker", "aggregator", "target", "metric", "mean", "se", "n_members", "kl_bound"]
    if not targets:
        return pd.DataFrame(columns=columns)
    rows = _expected_table(ranker_scores(tensor, scale), targets, ns, tensor.pool_size, ("target", "metric"))
    df = pd.DataFrame(rows)
    df["kl_bound"] = bon.kl_bound(df.n.to_numpy())
    return df[columns]


def _fmt(mean: float, se: float) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.3f} ± {se:.3f}" if np.isfinite(se) else f"{mean:.3f}"


def named_ensembles(tensor: RewardTensor) -> dict[str, list[int]]:
    """The tensor's named ensembles, name → model indices (:attr:`perm.tensor.RewardTensor.ensembles`)."""
    return {name: list(idx) for name, idx in tensor.ensembles.items()}


BACKBONE = "conditional on its backbone (one backbone cannot show pretrain-seed variation)"


def named_condition(tensor: RewardTensor, members) -> str:
    """What a named ensemble's interval is conditional on: its backbone when its members share one pretrain
    (or name none: cheap members of one backbone); otherwise its members' pretrains, which the member
    jackknife resamples as units."""
    pids = {tensor.pretrain_ids[i] for i in members if tensor.pretrain_ids[i] is not None}
    if len(pids) <= 1:
        return BACKBONE
    return f"its members come from {len(pids)} pretrains, resampled only as members"


def _named_note(tensor: RewardTensor, name: str, members) -> str:
    kinds = sorted({tensor.kinds[i] for i in members if tensor.kinds[i] is not None})
    what = f"named ensemble {name}: {len(members)} member{'s' if len(members) != 1 else ''}"
    what += f" ({', '.join(kinds)})" if kinds else ""
    if len(members) == 1:
        what += ", ranking by its own reward"
    if any(tensor.roles[i] == "rm" for i in members):
        what += ("; members that are grid RMs too are deleted independently of the grid's jackknife in its "
                 "contrasts")
    return what


CELL_COLUMNS = ["ensemble", "aggregator", "target", "metric", "estimate", "se", "lo", "hi", "df", "se_prompt",
                "R", "n_ensembles", "members", "resamples", "note", "share", "share_se", "share_lo",
                "share_hi", "share_note"]


def _share(iv: Mapping | None, value: float | None = None, note: str = "") -> dict:
    """The share-of-pretrain-gain columns of a cell: from an interval, or a value that holds by definition."""
    if iv is None:
        v = np.nan if value is None else value
        return {"share": v, "share_se": np.nan, "share_lo": np.nan, "share_hi": np.nan, "share_note": note}
    return {"share": iv["estimate"], "share_se": iv["se"], "share_lo": iv["lo"], "share_hi": iv["hi"],
            "share_note": iv.get("note", "")}


def ensemble_intervals(tensor: RewardTensor, n: int | None = None, scale: bool = False, draws: int = 500,
                       level: float = 0.9, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed-aware intervals of Table 1's cells and contrasts at best-of-``n`` (default: the pool size), over
    every ensemble the layout has (:func:`perm.seedstats.grid_ensembles`: in the full layout one finetune
    ensemble per pretrain and one pretrain ensemble per finetune seed; in the paper layout one of each), and
    over each named ensemble of the tensor.

    For each target (evaluator, gold) and metric (reward, win rate): the single-RM mean, each kind ×
    aggregator averaged over its ensembles, ``<kind> - single`` and ``pretrain - finetune``, all from one
    delete-one jackknife over pretrains and over finetune seeds plus a prompt bootstrap
    (:func:`perm.seedstats.grid_ensemble_intervals`): every contrast is paired (the same deletions and prompt
    draws for both sides, which share RMs). A named ensemble
    (:func:`perm.seedstats.named_ensemble_intervals`): its value with a jackknife over its members plus the
    same prompt draws, and (figure ``ensembles``) ``<name> - single``, ``<name> - pretrain`` and ``<name>:
    share of pretrain gain``; a one-member ensemble (aggregator ``none``) is compared with the pretrain
    ensembles' ``mean`` aggregator. Every cell carries the share of the pretrain ensembles' gain over a single
    RM it recovers, ``share`` (0 for the single RM and 1 for the pretrain ensembles by definition; NaN where
    that gain's interval includes 0) with its interval. Returns ``(cells, contrasts)``: cells with
    :data:`CELL_COLUMNS` (``members``: models per ensemble, or RMs averaged for ``single``); contrasts with
    :data:`CONTRAST_COLUMNS` (figure ``table1`` or ``ensembles``). Conditional on the SFT policy, its pool and
    the evaluator.
    """
    n = tensor.pool_size if n is None else int(n)
    pool, pids, fseeds = _rm_meta(tensor)
    ensembles = seedstats.grid_ensembles(pids, fseeds)
    named = named_ensembles(tensor)
    prompt_w = seedstats.draw_bootstrap_weights(1, tensor.n_prompts, draws, seed).prompt
    cells, contrasts = [], []
    kind_note = {k: f"mean of {len(v)} {k} ensemble{'s' if len(v) != 1 else ''} ("
                 + ("one per pretrain with several finetune seeds" if k == "finetune" else
                    "one per finetune seed shared by several pretrains") + ")"
                 for k, v in ensembles.items() if v}
    kind_members = {k: float(np.mean([len(e) for e in v])) for k, v in ensembles.items() if v}
    for role in ("gold", "evaluator"):
        idx = tensor.role_index(role)
        if idx is None:
            continue
        targets = {"reward": bon.standardize(tensor.pool[idx])}
        if tensor.reference is not None:
            targets["win_rate"] = bon.win_probabilities(tensor.pool[idx], tensor.reference[idx])
        for metric, target in targets.items():
            single = np.sum(bon.selection_probabilities(pool, n) * target, axis=-1)  # (M, P)
            grids = {}
            for agg in bon.AGGREGATORS:
                grid = grids[agg] = seedstats.grid_ensemble_values(pool, target, n, ensembles, pids, fseeds,
                                                                   single=single, aggregator=agg, scale=scale)
                res = seedstats.grid_ensemble_intervals(
                    pool, target, n, ensembles, pids, fseeds, draws=draws, level=level, seed=seed,
                    values=grid,
                ).set_index("statistic")
                gain = grid.stats.get("pretrain - single")
                if agg == bon.AGGREGATORS[0] and "single" in res.index:
                    r = res.loc["single"]
                    cells.append({"ensemble": "single", "aggregator": "none", "target": role,
                                  "metric": metric,
                                  **{k: r[k] for k in ("estimate", "se", "lo", "hi", "df", "se_prompt", "R")},
                                  "n_ensembles": len(pids), "members": len(pids), "resamples": r.resamples,
                                  "note": f"mean of the {len(pids)} single RMs",
                                  **(_share(None, 0.0, "by definition") if gain is not None
                                     else _share(None))})
                for kind in ENSEMBLE_KINDS:
                    if kind not in res.index:
                        continue
                    e = res.loc[kind]
                    if kind == "pretrain":
                        share = _share(None, 1.0, "by definition")
                    elif gain is not None and f"{kind} - single" in grid.stats:
                        share = _share(seedstats.gain_share_interval(grid.stats[f"{kind} - single"], gain,
                                                                     prompt_w, level))
                    else:
                        share = _share(None)
                    cells.append({"ensemble": kind, "aggregator": agg, "target": role, "metric": metric,
                                  **{k: e[k] for k in ("estimate", "se", "lo", "hi", "df", "se_prompt", "R")},
                                  "n_ensembles": int(e.n_ensembles), "members": kind_members[kind],
                                  "resamples": e.resamples, "note": kind_note[kind], **share})
                for name, note in ((f"{k} - single", f"> 0: the {k} ensembles beat a single RM")
                                   for k in ENSEMBLE_KINDS):
                    if name in res.index:
                        contrasts.append(_table1_contrast(res.loc[name], name, n, role, metric, agg, note))
                if "pretrain - finetune" in res.index:
                    contrasts.append(_table1_contrast(
                        res.loc["pretrain - finetune"], "pretrain - finetune", n, role, metric, agg,
                        "> 0: the pretrain ensembles beat the finetune ensembles "
                        "(the paper's finding); paired"))
            for name, members in named.items():
                note = _named_note(tensor, name, members)
                for agg in bon.AGGREGATORS if len(members) >= 2 else ("none",):
                    versus = agg if agg != "none" else "mean"
                    res = seedstats.named_ensemble_intervals(
                        tensor.pool[members], target, n, grids[versus], aggregator=versus, scale=scale,
                        draws=draws, level=level, seed=seed, name=name,
                        condition=named_condition(tensor, members),
                    ).set_index("statistic")
                    e = res.loc[name]
                    share = (res.loc["share of pretrain gain"] if "share of pretrain gain" in res.index
                             else None)
                    cells.append({"ensemble": name, "aggregator": agg, "target": role, "metric": metric,
                                  **{k: e[k] for k in ("estimate", "se", "lo", "hi", "df", "se_prompt")},
                                  "R": len(members), "n_ensembles": 1, "members": len(members),
                                  "resamples": e.resamples, "note": note,
                                  **_share(None if share is None else share.to_dict())})
                    vs = "" if agg != "none" else "; compared with the pretrain ensembles' mean aggregator"
                    for stat, what in ((f"{name} - single", f"> 0: {name} beats a single RM"),
                                       (f"{name} - pretrain", f"> 0: {name} beats the pretrain ensembles"),
                                       ("share of pretrain gain", f"share of the pretrain ensembles' gain "
                                                                  f"over a single RM that {name} recovers")):
                        if stat in res.index:
                            r = res.loc[stat]
                            label = stat if stat != "share of pretrain gain" else f"{name}: {stat}"
                            text = "; ".join(t for t in (what + vs, str(r.note or ""), note) if t)
                            contrasts.append({"figure": "ensembles", "contrast": label, "n": n,
                                              "target": role, "metric": metric, "aggregator": agg,
                                              "estimate": r.estimate,
                                              **{k: r[k] for k in ("se", "lo", "hi", "df", "se_prompt", "R",
                                                                   "F", "resamples")},
                                              "p_le_0": np.nan, "note": text})
    return pd.DataFrame(cells, columns=CELL_COLUMNS), pd.DataFrame(contrasts, columns=CONTRAST_COLUMNS)


def _table1_contrast(r, name: str, n: int, role: str, metric: str, agg: str, note: str) -> dict:
    return {"figure": "table1", "contrast": name, "n": n, "target": role, "metric": metric, "aggregator": agg,
            **{k: r[k] for k in ("estimate", "se", "lo", "hi", "df", "se_prompt", "R", "F", "resamples")},
            "p_le_0": np.nan, "note": note}


def table1(fig4: pd.DataFrame, n: int | None = None, target: str | None = None,
           intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 of the paper from :func:`figure4`'s table, at the largest n (or ``n``).

    Paper layout: one row per (ensemble, aggregator) for ``finetune`` and ``pretrain``, then each named
    ensemble of the tensor (aggregator ``none`` for one of one member), then the ``single RM`` baseline;
    columns ``reward`` and ``win rate`` as "mean ± se" strings, plus the numbers (``reward_mean, reward_se,
    win_rate_mean, win_rate_se``) and ``n``, ``target``. The target is the evaluator, or the gold reward when
    there is no evaluator. With ``intervals`` (the cells of :func:`ensemble_intervals` at this n) the se is
    the seed-aware one, ``<metric>_lo/_hi`` give the interval, ``<metric>_se_prompt`` the prompt-only se and
    ``R`` the number of seeds behind it.
    """
    numbers = ["reward_mean", "reward_se", "win_rate_mean", "win_rate_se"]
    extra = ["reward_lo", "reward_hi", "reward_se_prompt", "win_rate_lo", "win_rate_hi", "win_rate_se_prompt",
             "R"]
    columns = ["ensemble", "aggregator", "reward", "win rate", "n", "target", *numbers]
    columns += extra if intervals is not None else []
    if fig4.empty:
        return pd.DataFrame(columns=columns)
    if target is None:
        target = "evaluator" if (fig4.target == "evaluator").any() else "gold"
    n = int(fig4.n.max()) if n is None else int(n)
    sel = fig4[(fig4.n == n) & (fig4.target == target)]
    cells = None if intervals is None else intervals[intervals.target == target].set_index(
        ["ensemble", "aggregator", "metric"])
    rows = []
    named = [r for r in dict.fromkeys(sel.ranker)
             if r not in (*ENSEMBLE_KINDS, "single", "evaluator", "gold")]
    for ranker in (*ENSEMBLE_KINDS, *named, "single"):
        part = sel[sel.ranker == ranker]
        aggs = (("none",) if ranker == "single"
                else (*bon.AGGREGATORS, "none") if ranker in named else bon.AGGREGATORS)
        for agg in aggs:
            cell = part[part.aggregator == agg].set_index("metric")
            if cell.empty:
                continue
            single = "single RM" if ranker == "single" else None
            row = {"ensemble": single or ranker, "aggregator": single or agg, "n": n, "target": target}
            for metric, label in (("reward", "reward"), ("win_rate", "win rate")):
                mean = float(cell.loc[metric, "mean"]) if metric in cell.index else float("nan")
                se = float(cell.loc[metric, "se"]) if metric in cell.index else float("nan")
                if cells is not None:
                    iv = cells.loc[(ranker, agg, metric)] if (ranker, agg, metric) in cells.index else None
                    row.update({f"{metric}_se_prompt": se, f"{metric}_lo": np.nan, f"{metric}_hi": np.nan})
                    if iv is not None:
                        se = float(iv.se)
                        row.update({f"{metric}_lo": float(iv.lo), f"{metric}_hi": float(iv.hi),
                                    "R": int(iv.R)})
                row.update({label: _fmt(mean, se), f"{metric}_mean": mean, f"{metric}_se": se})
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------------
# Reward-hacking diagnostics


_WORD = re.compile(r"\w+")


def copied_ngram_fraction(summary: str, post: str, k: int = 4) -> float:
    """Fraction of the summary's word k-grams (lower-cased ``\\w+`` words) that also occur in the post.

    Counts k-gram occurrences in the summary (a repeated copied k-gram counts each time). A summary with
    fewer than k words has no k-grams and gets 0.
    """
    sw = _WORD.findall(summary.lower())
    if len(sw) < k:
        return 0.0
    pw = _WORD.findall(post.lower())
    post_grams = {tuple(pw[i : i + k]) for i in range(len(pw) - k + 1)}
    grams = [tuple(sw[i : i + k]) for i in range(len(sw) - k + 1)]
    return sum(g in post_grams for g in grams) / len(grams)


def hacking_features(
    tensor: RewardTensor, samples: pd.DataFrame, posts: Mapping[int, str] | None = None
) -> dict[str, np.ndarray]:
    """Per-candidate features of the pool, each ``(P, N)``: ``n_tokens`` and (with ``posts``)
    ``copy_4gram`` (:func:`copied_ngram_fraction` of the sample text against its prompt's post)."""
    need = ["prompt_id", "sample_id", "n_tokens"] + (["text"] if posts is not None else [])
    missing = [c for c in need if c not in samples.columns]
    if missing:
        raise ValueError(f"samples: missing column(s) {missing}")
    pool = pd.DataFrame(
        {
            "prompt_id": np.repeat(tensor.prompt_ids, tensor.pool_size),
            "sample_id": tensor.sample_ids.reshape(-1),
        }
    )
    merged = pool.merge(samples[need].drop_duplicates(["prompt_id", "sample_id"]), how="left", validate="1:1")
    lacking = merged[merged.n_tokens.isna()]
    if len(lacking):
        raise ValueError(
            f"samples: {len(lacking)} pool sample(s) not found, e.g. "
            f"{_example(lacking, ['prompt_id', 'sample_id'])}"
        )
    shape = (tensor.n_prompts, tensor.pool_size)
    out = {"n_tokens": merged.n_tokens.to_numpy(dtype=np.float64).reshape(shape)}
    if posts is not None:
        no_post = sorted(set(tensor.prompt_ids.tolist()) - set(posts))
        if no_post:
            raise ValueError(f"posts: no post text for prompt_id(s) {no_post[:10]}")
        copy = [
            copied_ngram_fraction(str(t), posts[p])
            for p, t in zip(merged.prompt_id, merged.text, strict=True)
        ]
        out["copy_4gram"] = np.asarray(copy, dtype=np.float64).reshape(shape)
    return out


def reward_hacking(
    tensor: RewardTensor,
    samples: pd.DataFrame,
    posts: Mapping[int, str] | None = None,
    ns=None,
    scale: bool = False,
) -> pd.DataFrame:
    """Expected length and copying of the best-of-n pick vs n, per ranker (as in :func:`figure4`).

    Columns: ``n, ranker, aggregator, feature, mean, se, n_members``; n = 1 is the SFT policy's value.
    """
    ns = _check_ns(ns, tensor.pool_size)
    feats = {(name,): v for name, v in hacking_features(tensor, samples, posts).items()}
    rows = _expected_table(ranker_scores(tensor, scale), feats, ns, tensor.pool_size, ("feature",))
    return pd.DataFrame(rows, columns=["n", "ranker", "aggregator", "feature", "mean", "se", "n_members"])


# ----------------------------------------------------------------------------------------------------
# Everything at once, and saving


def models_table(tensor: RewardTensor) -> pd.DataFrame:
    """The models with their roles and ensemble membership (``in_finetune``, ``in_pretrain``; ``ensemble``:
    the comma-separated named ensembles it belongs to, or None) and ``kind`` (what it is, or None)."""
    members = ensemble_members(tensor)
    m = len(tensor.model_ids)
    return pd.DataFrame(
        {
            "model_id": list(tensor.model_ids),
            "role": list(tensor.roles),
            "pretrain_id": pd.Series(list(tensor.pretrain_ids), dtype=object),
            "finetune_seed": pd.array(list(tensor.finetune_seeds), dtype="Int64"),
            "in_finetune": [i in members["finetune"] for i in range(m)],
            "in_pretrain": [i in members["pretrain"] for i in range(m)],
            "ensemble": pd.Series([",".join(tensor.ensembles_of(i)) or None for i in range(m)], dtype=object),
            "kind": pd.Series(list(tensor.kinds), dtype=object),
        }
    )


ENSEMBLE_TABLE_COLUMNS = ["ensemble", "aggregator", "target", "metric", "n", "estimate", "se", "lo", "hi",
                          "df", "members", "resamples", "share", "share_lo", "share_hi", "share_note",
                          *[c for c in COST_COLUMNS if c != "ensemble"]]


def ensemble_table(cells: pd.DataFrame, costs: pd.DataFrame | None = None,
                   n: int | None = None) -> pd.DataFrame:
    """One row per ensemble (``single``, ``finetune``, ``pretrain``, each named ensemble) × aggregator ×
    target (gold first, then the evaluator) of the reward of the best-of-``n`` pick, from the cells of
    :func:`ensemble_intervals`: ``estimate, se, lo, hi, df``, ``members`` (models per ensemble; RMs averaged
    for ``single``), ``resamples``, the share of the pretrain ensembles' gain over a single RM it recovers
    (``share, share_lo, share_hi, share_note``), joined on ``ensemble`` with the costs of
    ``ensembles.parquet`` (:func:`perm.tensor.load_ensemble_costs`: ``kind, n_members, params_trained,
    params_held, forwards_per_candidate, train_s, score_s, note``; NaN where an ensemble has no costs).
    Columns :data:`ENSEMBLE_TABLE_COLUMNS`; empty when there is neither a named ensemble nor a cost.
    """
    costs = costs if costs is not None else pd.DataFrame(columns=list(COST_COLUMNS))
    has_named = bool(len(cells)) and not set(cells.ensemble) <= {"single", *ENSEMBLE_KINDS}
    if cells.empty or (not has_named and costs.empty):
        return pd.DataFrame(columns=ENSEMBLE_TABLE_COLUMNS)
    rows = cells[cells.metric == "reward"].copy()
    order = {"target": {"gold": 0, "evaluator": 1},
             "ensemble": {e: i for i, e in
                          enumerate(dict.fromkeys(["single", *ENSEMBLE_KINDS, *rows.ensemble]))},
             "aggregator": {a: i for i, a in enumerate(("none", *bon.AGGREGATORS))}}
    rows = rows.sort_values(list(order), key=lambda c: c.map(order[c.name]), kind="stable")
    rows["n"] = n
    out = rows.drop(columns=["note"]).merge(costs, on="ensemble", how="left")
    return out[ENSEMBLE_TABLE_COLUMNS].reset_index(drop=True)


def pool_texts(tensor: RewardTensor, samples: pd.DataFrame) -> np.ndarray:
    """``(P, N)`` texts of the pool's candidates (object array) from a samples table, in the tensor's
    order."""
    pool = pd.DataFrame({"prompt_id": np.repeat(tensor.prompt_ids, tensor.pool_size),
                         "sample_id": tensor.sample_ids.reshape(-1)})
    merged = pool.merge(
        samples[["prompt_id", "sample_id", "text"]].drop_duplicates(["prompt_id", "sample_id"]),
        how="left", validate="1:1")
    if merged.text.isna().any():
        lacking = merged[merged.text.isna()]
        raise ValueError(f"samples: {len(lacking)} pool sample(s) without text, e.g. "
                         f"{_example(lacking, ['prompt_id', 'sample_id'])}")
    return merged.text.to_numpy(dtype=object).reshape(tensor.n_prompts, tensor.pool_size)


def run_analysis(
    tensor: RewardTensor,
    ns=None,
    anova_draws: int = 20,
    seed: int = 0,
    samples: pd.DataFrame | None = None,
    posts: Mapping[int, str] | None = None,
    scale: bool = False,
    include_ranker: bool = False,
    scope: str = "shared",
    bootstrap: int = 500,
    level: float = 0.9,
    figure3_method: str = "mom",
    pick_ranker_name: str = "auto",
    coverage_sims: int = 0,
    costs: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """All analyses of the reward tensor.

    Returns tables ``meta`` (one row: sizes and settings), ``models`` (:func:`models_table`),
    ``figure1``, ``figure2`` (by pair relation), ``paper_groups``, ``contrasts``, ``seed_variance``,
    ``figure3``, ``figure4``, ``table1`` (under the gold reward first, then the evaluator, with seed-aware
    intervals), ``ensembles`` (:func:`ensemble_table`: every ensemble, named ones included, at the largest n
    with the share of the pretrain ensembles' gain it recovers and its ``costs``, the table of
    :func:`perm.tensor.load_ensemble_costs`) and, with ``samples``, ``hacking``. Named ensembles of the tensor
    are rankers in Figure 4, Table 1, ``hacking`` and ``ensembles``; every grid statistic uses the RMs of
    role ``rm`` only. ``ns`` defaults to :func:`perm.bon.default_ns`;
    ``anova_draws`` and ``seed`` drive Figure 3's random subsets and the bootstrap; ``scale`` also scales
    ensemble members to unit variance; ``include_ranker`` keeps the ranker among Figure 3's scorers;
    ``scope`` is what a finetune seed means (``shared``: the same head init, data order and dropout on every
    backbone, so pairs of different pretrains with one finetune seed are ``same_finetune``; ``per_rm``: no
    such pairs, and finetune seeds are nested in pretrains for the intervals; a tensor that declares its scope
    in models.parquet, ``tensor.seed_scope``, overrides it); ``bootstrap`` replicates give
    intervals at ``level`` over the seed design and prompts; ``figure3_method`` (:data:`FIGURE3_METHODS`) and
    ``pick_ranker_name`` (:func:`pick_ranker`) choose Figure 3's statistic and the pick-level decomposition's
    ranker. With ``samples`` (texts), Figure 2's chance line knows the pool's duplicate texts. With
    ``coverage_sims`` > 0, ``coverage``: the simulated coverage of the intervals on this tensor's seed design
    (:func:`perm.coverage.simulate_coverage`).
    """
    ns = _check_ns(ns, tensor.pool_size)
    if tensor.seed_scope is not None:  # a tensor that declares its seed design overrides the run's setting
        scope = tensor.seed_scope
    ev, gold = tensor.role_index("evaluator"), tensor.role_index("gold")
    meta = {
        "n_prompts": tensor.n_prompts,
        "pool_size": tensor.pool_size,
        "n_reference": 0 if tensor.reference is None else tensor.reference.shape[2],
        "n_rms": len(tensor.rm_indices),
        "n_pretrains": len({tensor.pretrain_ids[i] for i in tensor.rm_indices}),
        "evaluator": None if ev is None else tensor.model_ids[ev],
        "gold": None if gold is None else tensor.model_ids[gold],
        "ns": ",".join(map(str, ns)),
        "anova_draws": anova_draws,
        "seed": seed,
        "scale": scale,
        "include_ranker": include_ranker,
        "finetune_seed_scope": scope,
        "scope_from": "the tensor (its models table)" if tensor.seed_scope is not None else "the config",
        "bootstrap": bootstrap,
        "level": level,
        "figure3_method": figure3_method,
        "pick_ranker": pick_ranker(tensor, pick_ranker_name)[0],
        "resamples": seedstats.seed_design([tensor.pretrain_ids[i] for i in tensor.rm_indices],
                                           [tensor.finetune_seeds[i] for i in tensor.rm_indices],
                                           scope).describe(),
        "chance": ("duplicate-aware (pool texts)" if samples is not None
                   else "1/n (no texts: duplicates unknown)"),
    }
    if tensor.ensembles:
        meta["named_ensembles"] = ",".join(f"{k}({len(v)})" for k, v in tensor.ensembles.items())
    texts = pool_texts(tensor, samples) if samples is not None else None
    iv = dict(draws=bootstrap, level=level, seed=seed)
    pairs = pair_statistics(tensor, ns, texts=texts, scope=scope, **iv)
    fig4 = figure4(tensor, ns, scale=scale)
    cells, ens_contrasts = ensemble_intervals(tensor, max(ns), scale=scale, **iv)
    tables = [table1(fig4, target=t, intervals=cells) for t in ("gold", "evaluator")
              if (fig4.target == t).any()]
    contrasts = [c for c in (pairs["contrasts"], ens_contrasts) if not c.empty]
    results = {
        "meta": pd.DataFrame([meta]),
        "models": models_table(tensor),
        "figure1": pairs["figure1"],
        "figure2": pairs["figure2"],
        "paper_groups": pairs["paper_groups"],
        "contrasts": pd.concat(contrasts, ignore_index=True) if contrasts else ens_contrasts,
        "seed_variance": seed_variance(tensor, ns, scope=scope, ranker=pick_ranker_name, **iv),
        "figure3": figure3(tensor, ns, draws=anova_draws, seed=seed, include_ranker=include_ranker,
                           bootstrap=bootstrap, level=level, method=figure3_method, scope=scope),
        "figure4": fig4,
        "agreement_pretrain": pretrain_agreement(tensor, ns, scale=scale),
        "table1": pd.concat(tables, ignore_index=True) if tables else table1(fig4),
        "ensembles": ensemble_table(cells, costs, max(ns)),
    }
    if samples is not None:
        results["hacking"] = reward_hacking(tensor, samples, posts, ns, scale=scale)
    if coverage_sims > 0 and len(tensor.rm_indices) >= 2:
        from perm.coverage import simulate_coverage

        rm = tensor.rm_indices
        results["coverage"] = simulate_coverage(
            [tensor.pretrain_ids[i] for i in rm], [tensor.finetune_seeds[i] for i in rm], scope,
            n_prompts=min(tensor.n_prompts, 60), pool_size=min(tensor.pool_size, 64), sims=coverage_sims,
            draws=min(bootstrap, 200), level=level, seed=seed)
        sizes = [len(v) for v in tensor.ensembles.values() if len(v) >= 2]
        if sizes:
            from perm.coverage import simulate_named_coverage

            results["coverage"] = pd.concat([results["coverage"], simulate_named_coverage(
                sizes, n_prompts=min(tensor.n_prompts, 60), pool_size=min(tensor.pool_size, 16),
                sims=coverage_sims, draws=min(bootstrap, 200), level=level, seed=seed)], ignore_index=True)
    return results


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA:
        return None
    return value


def summarize(results: Mapping[str, pd.DataFrame]) -> dict:
    """The JSON summary: settings, table shapes, Table 1 and the headline numbers at the largest n."""
    summary = {
        "meta": results["meta"].iloc[0].to_dict() if "meta" in results else {},
        "tables": {k: {"rows": len(v), "columns": list(map(str, v.columns))} for k, v in results.items()},
    }
    headline = {}
    for name in ("figure1", "figure2"):
        df = results.get(name)
        if df is not None and not df.empty:
            last = df[df.n == df.n.max()]
            headline[name] = {"n": int(last.n.iloc[0]), **{
                r.relation: {"mean": r.mean, "se": r.se, "lo": r.lo, "hi": r.hi, "se_prompt": r.se_prompt,
                             "R": r.R}
                for r in last.itertuples()}}
    df = results.get("figure3")
    if df is not None and not df.empty:
        headline["figure3"] = df.iloc[[0, -1]][["n", "mean", "se", "lo", "hi", "R"]].to_dict("records")
    df = results.get("seed_variance")
    if df is not None and not df.empty:
        pool = df[df.weighting == "pool"].set_index("statistic")
        headline["seed_variance"] = {k: pool.loc[k, ["estimate", "se", "lo", "hi", "R"]].to_dict()
                                     for k in ("share_pt", "share_ft", "share_res") if k in pool.index}
    df = results.get("contrasts")
    if df is not None and not df.empty:
        headline["contrasts"] = df[df.n == df.n.max()].to_dict("records")
    summary["headline"] = headline
    if "table1" in results:
        summary["table1"] = results["table1"].to_dict("records")
    if results.get("ensembles") is not None and not results["ensembles"].empty:
        summary["ensembles"] = results["ensembles"].to_dict("records")
    return _jsonable(summary)


def save_analysis(results: Mapping[str, pd.DataFrame], out_dir) -> dict[str, Path]:
    """Write each table as ``<name>.parquet`` and ``summary.json`` into ``out_dir``, atomically.

    Returns the written paths by name (``summary`` for the JSON).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, df in results.items():
        path = out / f"{name}.parquet"
        _atomic_write(path, lambda tmp, df=df: df.to_parquet(tmp, index=False))
        written[name] = path
    path = out / "summary.json"
    text = json.dumps(summarize(results), indent=2, ensure_ascii=False)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    written["summary"] = path
    return written
