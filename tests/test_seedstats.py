"""perm.seedstats against hand-derived values, brute force and planted-truth simulations."""

from __future__ import annotations

import math
import time
from itertools import combinations, permutations

import numpy as np
import pytest

from perm import analysis, bon
from perm import seedstats as ss

# The paper layout: seed0-ft0..ft4, then seed1-ft0..seed4-ft0.
PAPER_PRETRAINS = ["seed0"] * 5 + ["seed1", "seed2", "seed3", "seed4"]
PAPER_SEEDS = [0, 1, 2, 3, 4, 0, 0, 0, 0]

U = np.array([1.0, 1.0, -1.0, -1.0])
V = np.array([1.0, -1.0, 1.0, -1.0])


def toy_2x2():
    """Pretrains A, B × finetune seeds 0, 1, one prompt, N = 4. Raw scores are affine images of the
    ±1 patterns u, v (which standardise back to u, v): A0 = 3u+5, A1 = u/2−2, B0 = 2v+1, B1 = −4u."""
    pool = np.stack([3 * U + 5, 0.5 * U - 2, 2 * V + 1, -4 * U])[:, None, :]
    return pool, ["A", "A", "B", "B"], [0, 1, 0, 1]


# ----------------------------------------------------------------------------------------------------
# Relations


def test_relations_paper_layout():
    """5 finetunes of seed0 give C(5,2) = 10 same_pretrain pairs; the five ft0 RMs on different pretrains
    give C(5,2) = 10 same_finetune pairs; the rest, 36 − 20 = 16 (seed0-ft1..4 × seed1..4-ft0), neither."""
    rel = ss.pair_relations(PAPER_PRETRAINS, PAPER_SEEDS)
    assert rel.shape == (9, 9)
    assert all(rel[i, i] == "self" for i in range(9))
    assert (rel == rel.T).all()
    counts = ss.relation_counts(rel)
    assert counts == {"self": 9, "same_pretrain": 10, "same_finetune": 10, "neither": 16, "duplicate": 0}
    assert rel[0, 5] == "same_finetune" and rel[5, 6] == "same_finetune" and rel[1, 5] == "neither"


def test_relations_per_rm_scope_has_no_same_finetune():
    """Under per_rm the 10 same_finetune pairs become neither: 10 / 0 / 26."""
    rel = ss.pair_relations(PAPER_PRETRAINS, PAPER_SEEDS, scope="per_rm")
    counts = ss.relation_counts(rel)
    assert counts["same_finetune"] == 0
    assert counts["same_pretrain"] == 10 and counts["neither"] == 26
    with pytest.raises(ValueError, match="scope"):
        ss.pair_relations(PAPER_PRETRAINS, PAPER_SEEDS, scope="global")


def test_relations_unknown_ids_never_match_and_duplicates_flagged():
    """None seeds never match (so p/None vs q/None is neither, p/None vs p/None same_pretrain); a None
    pretrain is its own unit; same pretrain and same seed on two RMs is a duplicate."""
    rel = ss.pair_relations(["p", "p", "q", None, None, "p"], [None, None, None, 1, 1, None])
    assert rel[0, 1] == "same_pretrain" and rel[0, 2] == "neither"
    assert rel[3, 4] == "same_finetune"  # different (unknown) pretrains, same seed
    rel2 = ss.pair_relations(["p", "p"], [1, 1])
    assert rel2[0, 1] == "duplicate"
    units, labels = ss.pretrain_units(["p", None, "q", None, "p"])
    assert units.tolist() == [0, 1, 2, 3, 0] and labels == ("p", None, "q", None)


# ----------------------------------------------------------------------------------------------------
# Seed variance decomposition


def test_decomposition_hand_values_on_pool():
    """Standardised: A0 = u, A1 = u, B0 = v, B1 = −u; ½·mean(s_a − s_b)² = 1 − corr: 0 for equal, 1 for
    orthogonal (u ⟂ v), 2 for opposite.
    same_pretrain: A0A1 = 0, B0B1 (v, −u) = 1 → D_sp = 0.5;
    same_finetune: A0B0 (u, v) = 1, A1B1 (u, −u) = 2 → D_sf = 1.5;
    neither: A0B1 (u, −u) = 2, A1B0 (u, v) = 1 → D_nei = 1.5.
    σ²_pt = 1.5 − 0.5 = 1, σ²_ft = 1.5 − 1.5 = 0, σ²_res = 0.5 + 1.5 − 1.5 = 0.5; shares 2/3, 0, 1/3."""
    pool, pre, seeds = toy_2x2()
    df = ss.seed_variance_decomposition(pool, pre, seeds, ns=[4])
    row = df[df.weighting == "pool"].iloc[0]
    assert row.D_same_pretrain == pytest.approx(0.5)
    assert row.D_same_finetune == pytest.approx(1.5)
    assert row.D_neither == pytest.approx(1.5)
    assert (row.sigma2_pt, row.sigma2_ft, row.sigma2_res) == pytest.approx((1.0, 0.0, 0.5), abs=1e-12)
    assert (row.share_pt, row.share_ft, row.share_res) == pytest.approx((2 / 3, 0.0, 1 / 3), abs=1e-12)
    assert row.missing == "" and (row.n_same_pretrain, row.n_same_finetune, row.n_neither) == (2, 2, 2)


def test_decomposition_hand_values_at_picks():
    """n = N = 4: each ranker's pick is its favourite (ties to the lower index): A0, A1 (u) and B0
    (v = (1,−1,1,−1)) pick index 0, B1 (−u) picks index 2. Pair (a, b) weights the others' picks:
    A0A1: others B0, B1 → ½ at 0, ½ at 2; A0 = A1 → 0.
    B0B1: others A0, A1 → 1 at 0; v₀ = 1, −u₀ = −1 → ½·2² = 2.           D_sp = (0 + 2)/2 = 1.
    A0B0: others A1, B1 → ½ at 0 (u₀ = v₀: 0), ½ at 2 (−1 vs 1: 2) → 1.
    A1B1: others A0, B0 → 1 at 0; 1 vs −1 → 2.                            D_sf = (1 + 2)/2 = 1.5.
    A0B1: others A1, B0 → 1 at 0 → 2.  A1B0: others A0, B1 → ½·0 + ½·2 = 1. D_nei = 1.5.
    σ²_pt = 0.5, σ²_ft = 0, σ²_res = 1."""
    pool, pre, seeds = toy_2x2()
    row = ss.seed_variance_decomposition(pool, pre, seeds, ns=[4]).query("weighting == 'pick'").iloc[0]
    assert row.n == 4
    assert (row.D_same_pretrain, row.D_same_finetune, row.D_neither) == pytest.approx((1.0, 1.5, 1.5))
    assert (row.sigma2_pt, row.sigma2_ft, row.sigma2_res) == pytest.approx((0.5, 0.0, 1.0), abs=1e-12)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_half_sq_diffs_matches_direct_weighting(m):
    """The sum-minus-members shortcut equals weighting by the mean p of the other rankers directly (all
    rankers when there is no other one, m = 2), on random pools with ties."""
    rng = np.random.default_rng(m)
    pool = rng.integers(0, 4, size=(m, 3, 6)).astype(float)
    s = bon.standardize(pool, scale=True)
    for n in (None, 1, 2, 3, 6):
        got = ss.half_sq_diffs(pool, n)
        for a, b in combinations(range(m), 2):
            if n is None:
                w = np.full((3, 6), 1 / 6)
            else:
                p = bon.selection_probabilities(pool, n)
                others = [k for k in range(m) if k not in (a, b)] or list(range(m))
                w = p[others].mean(axis=0)
            want = np.sum(w * 0.5 * (s[a] - s[b]) ** 2, axis=-1)
            np.testing.assert_allclose(got[a, b], want, atol=1e-12)
            np.testing.assert_allclose(got[b, a], want, atol=1e-12)


def planted_scores(var_pt, var_ft, var_res, n_pre=4, n_ft=4, prompts=100, size=32, seed=0):
    """s_{p,f} = σ_pt·α_p + σ_ft·β_f + σ_res·ε_{p,f}, each standard normal per (prompt, candidate); β_f is
    shared by every pretrain (the shared scope). Full layout: every pretrain × every seed."""
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal((n_pre, prompts, size))
    beta = rng.standard_normal((n_ft, prompts, size))
    rows, pre, fts = [], [], []
    for p in range(n_pre):
        for f in range(n_ft):
            eps = rng.standard_normal((prompts, size))
            rows.append(math.sqrt(var_pt) * alpha[p] + math.sqrt(var_ft) * beta[f] + math.sqrt(var_res) * eps)
            pre.append(f"p{p}")
            fts.append(f)
    return np.stack(rows), pre, fts


def test_decomposition_recovers_planted_components():
    """Planted σ² = 0.5, 0.3, 0.2 (total 1): shares 0.5 / 0.3 / 0.2. Each D averages ~3,200 independent
    candidates × many pairs, and per-RM scaling by the sample std only adds O(1/√N) noise, so 0.03 is
    several standard errors."""
    pool, pre, fts = planted_scores(0.5, 0.3, 0.2)
    row = ss.seed_variance_decomposition(pool, pre, fts, ns=[]).iloc[0]
    assert row.missing == ""
    assert row.share_pt == pytest.approx(0.5, abs=0.03)
    assert row.share_ft == pytest.approx(0.3, abs=0.03)
    assert row.share_res == pytest.approx(0.2, abs=0.03)
    assert row.share_pt + row.share_ft + row.share_res == pytest.approx(1.0)
    # no planted finetune effect: σ²_ft ≈ 0, and the point estimate is not truncated
    row0 = ss.seed_variance_decomposition(*planted_scores(0.6, 0.0, 0.4, seed=1), ns=[]).iloc[0]
    assert row0.share_ft == pytest.approx(0.0, abs=0.02)


def test_missing_relation_gives_nan_and_names_it():
    """per_rm scope on the paper layout: no same_finetune pairs, so σ²_ft, σ²_res (and their shares) are
    NaN, while σ²_pt = D_nei − D_sp still exists."""
    rng = np.random.default_rng(3)
    pool = rng.standard_normal((9, 5, 8))
    df = ss.seed_variance_decomposition(pool, PAPER_PRETRAINS, PAPER_SEEDS, ns=[2], scope="per_rm")
    assert (df.missing == "same_finetune").all()
    assert df.sigma2_ft.isna().all() and df.sigma2_res.isna().all() and df.share_res.isna().all()
    assert df.sigma2_pt.notna().all()
    dec = ss.variance_decomposition(ss.half_sq_diffs(pool), ss.pair_relations(PAPER_PRETRAINS, PAPER_SEEDS,
                                                                              "per_rm"))
    assert dec["missing"] == ["same_finetune"] and np.isnan(dec["per_prompt"]["same_finetune"]).all()
    assert dec["per_prompt"]["neither"].shape == (5,)
    out = ss.decomposition_intervals(pool, PAPER_PRETRAINS, PAPER_SEEDS, scope="per_rm", draws=50)
    ft = out.set_index("statistic").loc["sigma2_ft"]
    assert np.isnan(ft.estimate) and ft.n_valid == 0


def test_decomposition_intervals_point_matches_decomposition():
    """The bootstrap's point estimate (every pair and prompt weighted once) is the decomposition itself."""
    pool, pre, fts = planted_scores(0.5, 0.3, 0.2, n_pre=3, n_ft=3, prompts=40, size=8)
    for n in (None, 4):
        table = ss.seed_variance_decomposition(pool, pre, fts, ns=[4])
        want = table[table.weighting == ("pool" if n is None else "pick")].iloc[0]
        got = ss.decomposition_intervals(pool, pre, fts, n=n, draws=100).set_index("statistic")
        for k in ("D_neither", *ss.COMPONENTS):
            assert got.loc[k, "estimate"] == pytest.approx(want[k])
        assert (got.R == 3).all() and (got.lo <= got.hi).all()


# ----------------------------------------------------------------------------------------------------
# Multi-Bootstrap


def test_unit_weights_pairs_within_and_across_pretrains():
    """Units of RMs 0, 1 (pretrain 0), 2 (pretrain 1), 3 (pretrain 2); draw c = (2, 0, 1):
    single RM 0 → c₀ = 2; pair (0, 1) within pretrain 0 → c₀ = 2 (not 4: a copy of pretrain 0 meeting
    its copy is no new pair); pair (0, 3) → c₀·c₂ = 2; pair (2, 3) → c₁·c₂ = 0; single RM 2 → 0."""
    units = np.array([0, 0, 1, 2])
    w = ss.unit_weights([(0,), (0, 1), (0, 3), (2, 3), (2,)], units, np.array([[2.0, 0.0, 1.0]]))
    assert w.tolist() == [[2.0, 2.0, 2.0, 0.0, 0.0]]


def test_multi_bootstrap_basics():
    """Point = plain mean over RMs and prompts; prompt-only se ≈ sd of prompt means / √P; a contrast of an
    arm with itself has se 0 (same draws); the seed se exceeds the prompt se when pretrains differ."""
    rng = np.random.default_rng(0)
    pre = [f"p{i // 2}" for i in range(10)]
    values = rng.standard_normal((10, 300)) + np.repeat(rng.normal(0, 1, 5), 2)[:, None]
    arm = ss.single_rm_arm(values)
    out = ss.multi_bootstrap({"a": arm, "b": arm}, pre, contrasts=[("a", "b")], draws=400, seed=1)
    row = out.set_index("statistic").loc["a"]
    assert row.estimate == pytest.approx(values.mean())
    assert row.se_prompt == pytest.approx(values.mean(axis=0).std(ddof=1) / math.sqrt(300), rel=0.15)
    assert row.se > 2 * row.se_prompt and row.R == 5 and row.B == 400 and row.n_valid == 400
    assert row.lo < row.estimate < row.hi
    diff = out.set_index("statistic").loc["a - b"]
    assert diff.se == 0 and diff.estimate == 0
    again = ss.multi_bootstrap({"a": arm}, pre, draws=400, seed=1)
    assert again.se.iloc[0] == row.se  # seeded


def test_figure_arms_match_brute_force():
    """Relation arms of pick_rewards / pick_agreement reproduce brute-force means from perm.bon (groups: self,
    same_pretrain, different_pretrain = same_finetune ∪ neither, as the paper groups them)."""
    from itertools import combinations

    from perm import bon

    tensor = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=20, pool_size=8)
    pool, pre, fts = ss.rm_view(tensor)
    rel = ss.pair_relations(pre, fts)
    m = len(pre)
    for scale in (True, False):  # standardised (the default) and the paper's centred raw rewards
        centred = bon.standardize(pool, scale=scale)
        want1 = {"self": [], "same_pretrain": [], "different_pretrain": []}
        for i in range(m):
            for k in range(m):
                g = "self" if i == k else "same_pretrain" if pre[i] == pre[k] else "different_pretrain"
                want1[g].append(bon.expected_best_of_n(pool[i], centred[k], 4).mean())
        arms = ss.relation_arms(ss.pick_rewards(pool, 4, scale=scale), rel, ordered=True, include_self=True,
                                include_different=True)
        out1 = ss.multi_bootstrap(arms, pre, draws=20).set_index("statistic")
        for g, values in want1.items():
            assert out1.loc[g, "estimate"] == pytest.approx(np.mean(values))
    want2 = {"same_pretrain": [], "different_pretrain": []}
    for i, k in combinations(range(m), 2):
        want2["same_pretrain" if pre[i] == pre[k] else "different_pretrain"].append(
            bon.expected_agreement(pool[i], pool[k], 4).mean())
    arms2 = ss.relation_arms(ss.pick_agreement(pool, [4])[0], rel, include_different=True)
    out2 = ss.multi_bootstrap(arms2, pre, draws=20).set_index("statistic")
    for g, values in want2.items():
        assert out2.loc[g, "estimate"] == pytest.approx(np.mean(values))


def test_pair_statistics_are_fast():
    """M = 9, P = 200, N = 64, B = 500: Figure 1 and 2 values at one n plus both bootstraps in seconds."""
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((9, 200, 64))
    rel = ss.pair_relations(PAPER_PRETRAINS, PAPER_SEEDS)
    start = time.perf_counter()
    arms1 = ss.relation_arms(ss.pick_rewards(pool, 16), rel, ordered=True, include_self=True)
    arms2 = ss.relation_arms(ss.pick_agreement(pool, [16])[0], rel)
    for arms in (arms1, arms2):
        ss.multi_bootstrap(arms, PAPER_PRETRAINS, contrasts=[("same_pretrain", "neither")])
    assert time.perf_counter() - start < 5.0


def simulate_single_rm(rng, n_pre=10, n_ft=2, prompts=100, mu=0.3):
    """y[m, j] = μ + a_pretrain(m) + f_m + b_j + e_mj with σ_a = 0.5, σ_f = 0.3, σ_b = 1, σ_e = 1; the
    true mean is μ. Var(ȳ) = 0.25/10 + 0.09/20 + 1/100 + 1/2000 = 0.04."""
    a = np.repeat(rng.normal(0, 0.5, n_pre), n_ft)
    f = rng.normal(0, 0.3, n_pre * n_ft)
    b = rng.normal(0, 1.0, prompts)
    e = rng.normal(0, 1.0, (n_pre * n_ft, prompts))
    return mu + (a + f)[:, None] + b[None, :] + e, [f"p{i // n_ft}" for i in range(n_pre * n_ft)]


def test_interval_coverage_single_rm_mean():
    """The 90% interval covers μ in 80–97% of 300 simulated datasets (binomial sd ≈ 1.8 points). Expected
    ≈ 86–88%: the seed part of the bootstrap variance carries (R−1)/R = 0.9 and R = 10 pretrains give
    t-like tails."""
    rng = np.random.default_rng(123)
    hits = 0
    sims = 300
    for i in range(sims):
        y, pre = simulate_single_rm(rng)
        row = ss.multi_bootstrap({"single": ss.single_rm_arm(y)}, pre, draws=200, seed=i).iloc[0]
        hits += row.lo <= 0.3 <= row.hi
    assert 0.80 <= hits / sims <= 0.97


def test_anova_cross_check_against_bootstrap_and_truth():
    """Balanced pretrain × prompt array, σ_a = σ_b = σ_e = 1, R = 20, C = 100: true Var(ȳ) = 1/20 + 1/100 +
    1/2000 ≈ 0.0605; the bootstrap's ≈ 0.95/20 + 1/100 + 3/2000 ≈ 0.059. They agree within 1.5×.
    Also, averaged over many small arrays, the untruncated ANOVA estimate is unbiased for Var(ȳ)."""
    rng = np.random.default_rng(7)
    r, c = 20, 100
    y = rng.normal(0, 1, (r, 1)) + rng.normal(0, 1, (1, c)) + rng.normal(0, 1, (r, c))
    av = ss.anova_mean_variance(y)
    boot = ss.multi_bootstrap({"y": ss.single_rm_arm(y)}, [f"p{i}" for i in range(r)], draws=1000).iloc[0]
    assert 1 / 1.5 < boot.se**2 / av["var_mean"] < 1.5
    sims = rng.normal(0, 1, (4000, 5, 1)) + rng.normal(0, 1, (4000, 1, 8)) + rng.normal(0, 1, (4000, 5, 8))
    means = sims.mean(axis=(1, 2))
    fits = [ss.anova_mean_variance(s) for s in sims]
    est = np.array([a["ms_pretrain"] + a["ms_prompt"] - a["ms_resid"] for a in fits]) / 40
    truth = 1 / 5 + 1 / 8 + 1 / 40  # 0.35
    assert est.mean() == pytest.approx(truth, rel=0.05)
    assert means.var() == pytest.approx(truth, rel=0.1)


# ----------------------------------------------------------------------------------------------------
# Ensembles


def test_jackknife_hand_values():
    """R = 3, full ensemble value 3 on every prompt (so the prompt bootstrap variance is 0); leave-one-out
    values 1, 2, 4 on every prompt: mean 7/3, Σ(θ₋ₐ − 7/3)² = 16/9 + 1/9 + 25/9 = 14/3,
    Var_jk = (2/3)·(14/3) = 28/9."""
    full = np.full(4, 3.0)
    loo = np.array([[1.0] * 4, [2.0] * 4, [4.0] * 4])
    row = ss.jackknife_interval({"ens": (full, loo)}, draws=50, note="x").iloc[0]
    se = math.sqrt(28 / 9)
    assert row.estimate == 3.0 and row.se_prompt == 0.0
    assert row.se_jackknife == pytest.approx(se) and row.se == pytest.approx(se)
    assert (row.lo, row.hi) == pytest.approx((3 - 1.6448536 * se, 3 + 1.6448536 * se))
    assert row.R == 3 and row.note == "x"


def test_ensemble_interval_jackknife_and_contrast():
    """ensemble_interval's jackknife uses the ensemble recomputed without each member; the prompt part is
    the bootstrap variance of the full ensemble; the contrast with single RMs uses the same deletions."""
    tensor = analysis.synthetic_reward_tensor(n_pretrains=4, n_finetune=1, n_prompts=60, pool_size=8)
    pool, pre, _ = ss.rm_view(tensor)
    target = bon.standardize(tensor.pool[tensor.role_index("evaluator")])
    out = ss.ensemble_interval(pool, target, 4, "mean", baseline=np.sum(
        bon.selection_probabilities(pool, 4) * target, axis=-1), baseline_groups=np.arange(4), draws=300)
    out = out.set_index("statistic")
    loo = [ss.ensemble_pick_values(np.delete(pool, a, 0), target, 4).mean() for a in range(4)]
    var_jk = 3 / 4 * np.sum((np.array(loo) - np.mean(loo)) ** 2)
    assert out.loc["ensemble", "se_jackknife"] == pytest.approx(math.sqrt(var_jk))
    assert out.loc["ensemble", "estimate"] == pytest.approx(ss.ensemble_pick_values(pool, target, 4).mean())
    single = np.sum(bon.selection_probabilities(pool, 4) * target, axis=-1)
    assert out.loc["baseline", "estimate"] == pytest.approx(single.mean())
    d = out.loc["ensemble - baseline"]
    assert d.estimate == pytest.approx(out.loc["ensemble", "estimate"] - single.mean())
    assert out.note.str.contains("leave-one-pretrain-out").all()
    fin = ss.ensemble_interval(pool[:2], target, 4, kind="finetune", draws=20)
    assert "only prompts and finetune seeds vary" in fin.note.iloc[0]
    with pytest.raises(ValueError):
        ss.ensemble_interval(pool[:1], target, 4)


def test_ensemble_size_curve():
    """k = 1 is the mean over single members; k = R is the full ensemble (one subset)."""
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((4, 10, 8))
    target = rng.standard_normal((10, 8))
    curve = ss.ensemble_size_curve(scores, target, 4)
    assert curve.k.tolist() == [1, 2, 3, 4] and curve.n_subsets.tolist() == [4, 6, 4, 1]
    singles = [np.sum(bon.selection_probabilities(s, 4) * target, -1).mean() for s in scores]
    assert curve["mean"].iloc[0] == pytest.approx(np.mean(singles))
    assert curve["mean"].iloc[-1] == pytest.approx(ss.ensemble_pick_values(scores, target, 4).mean())
    assert ss.ensemble_size_curve(scores, target, 4, max_subsets=2).n_subsets.tolist() == [2, 2, 2, 1]


# ----------------------------------------------------------------------------------------------------
# Chance agreement


POOLS = [list("aabcccd"), list("aaaa"), list("abab"), list("aabbc"), list("abcde")]


def group_sizes(texts):
    return [texts.count(t) for t in dict.fromkeys(texts)]


@pytest.mark.parametrize("texts", POOLS)
def test_chance_matches_subset_enumeration(texts):
    """E_S[1/D(S)] by listing every n-subset and counting its distinct texts."""
    for n in range(1, len(texts) + 1):
        subsets = list(combinations(texts, n))
        brute = np.mean([1 / len(set(s)) for s in subsets])
        assert ss.chance_agreement(group_sizes(texts), n) == pytest.approx(brute, abs=1e-14)


@pytest.mark.parametrize("texts", POOLS)
def test_chance_matches_random_scorers(texts):
    """Two independent random scorers: i.i.d. continuous scores per distinct text ⇔ a uniformly random
    ranking of the distinct texts. Average bon.expected_agreement (exact over subsets, ties to the lower
    index) over every pair of rankings; identical texts share a score."""
    distinct = list(dict.fromkeys(texts))
    rankings = [dict(zip(distinct, perm, strict=True)) for perm in permutations(range(len(distinct)))]
    scores = np.array([[float(r[t]) for t in texts] for r in rankings])  # (K!, N)
    a = np.repeat(scores, len(scores), axis=0)
    b = np.tile(scores, (len(scores), 1))
    for n in range(1, len(texts) + 1):
        sim = bon.expected_agreement(a, b, n).mean()
        assert ss.chance_agreement(group_sizes(texts), n) == pytest.approx(sim, abs=1e-12)


def test_chance_without_duplicates_is_exactly_one_over_n():
    for size in (1, 2, 7, 16, 64):
        for n in range(1, size + 1):
            assert ss.chance_agreement([1] * size, n) == 1.0 / n
    assert ss.chance_agreement([4], 3) == 1.0  # one text: both always agree
    with pytest.raises(ValueError):
        ss.chance_agreement([2, 1], 4)


def test_pool_chance_and_kappa():
    """Per-prompt chance from text ids; κ = (a − c)/(1 − c): κ(0.5, 0.25) = 0.25/0.75 = 1/3, κ(c, c) = 0,
    κ(1, c) = 1, NaN when chance is 1."""
    texts = np.array([["x", "y", "z", "w"], ["x", "x", "y", "y"]], dtype=object)
    got = ss.pool_chance_agreement(texts, [1, 2, 4])
    # second prompt, n = 2: of C(4,2) = 6 pairs, 2 are copies (D = 1) and 4 mixed (D = 2): (2 + 4/2)/6 = 2/3
    np.testing.assert_allclose(got, [[1, 0.5, 0.25], [1, 2 / 3, 0.5]])
    assert ss.kappa(0.5, 0.25) == pytest.approx(1 / 3)
    np.testing.assert_allclose(ss.kappa([0.3, 1.0], 0.3), [0.0, 1.0])
    assert math.isnan(ss.kappa(1.0, 1.0))


@pytest.mark.parametrize("layout", ["paper", "full"])
def test_pick_level_decomposition_under_a_planted_null(layout):
    """No pretrain effect planted, a finetune effect (and its mirror): at n = 16 and 64 the pick-level shares
    weighted by a ranker outside the grid (gold) stay near 0 (mean of 4 pools of 300 prompts; at n = 64 a
    pool's share has sd ~0.04: one pick per prompt); the grid's own rankers plant a share in the paper layout
    (~0.12 here), where they relate differently to each relation."""
    if layout == "paper":
        pids, fts = PAPER_PRETRAINS, PAPER_SEEDS
    else:
        pids, fts = [f"s{p}" for p in range(5) for _ in range(5)], [f for _ in range(5) for f in range(5)]
    rng = np.random.default_rng(11)
    p, size = 300, 64
    for sigma_pt, sigma_ft, null in ((0.0, 1.0, "share_pt"), (1.0, 0.0, "share_ft")):
        ext, grid = {16: [], 64: []}, []
        for _ in range(4):
            quality = rng.standard_normal((p, size))
            pool = quality[None] + ss.planted_pool(rng, pids, fts, p, size, sigma_pt, sigma_ft, sigma_common=0.0)
            gold = quality + 0.5 * rng.standard_normal((p, size))
            dec = ss.seed_variance_decomposition(pool, pids, fts, ns=[16, 64], ranker=gold)
            for row in dec[dec.weighting == "pick"].itertuples():
                ext[int(row.n)].append(getattr(row, null))
            dec = ss.seed_variance_decomposition(pool, pids, fts, ns=[64])
            grid.append(getattr(dec[dec.weighting == "pick"].iloc[0], null))
        for n, values in ext.items():
            assert abs(np.mean(values)) < (0.03 if n == 16 else 0.06), (layout, null, n, values)
        if layout == "paper" and null == "share_pt":  # the bias the external ranker removes
            assert np.mean(grid) > 0.08 and np.mean(grid) > abs(np.mean(ext[64])) + 0.04


def test_half_sq_diffs_with_an_external_ranker_by_brute_force():
    rng = np.random.default_rng(2)
    pool, ranker = rng.standard_normal((4, 3, 6)), rng.standard_normal((3, 6))
    got = ss.half_sq_diffs(pool, 3, ranker)
    s = bon.standardize(pool, scale=True)
    w = bon.selection_weights(6, 3)[bon.beat_counts(ranker[None])][0]
    for a in range(4):
        for b in range(4):
            want = 0.0 if a == b else 0.5 * np.sum(w * (s[a] - s[b]) ** 2, axis=-1)
            assert got[a, b] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="ranker must be"):
        ss.half_sq_diffs(pool, 3, ranker[:2])
