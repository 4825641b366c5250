"""perm.analysis: loading/validation, each figure against a direct computation, planted effects."""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from perm import analysis, bon
from perm.analysis import RewardTensorError

# ---------------------------------------------------------------------------------------------------
# Loading and validation


def tiny_frames():
    """2 prompts × 3 pool samples + 1 reference sample, scored by 2 RMs and an evaluator."""
    rows = []
    for prompt in (10, 20):
        for sample in range(4):
            for j, model in enumerate(("rm-a", "rm-b", "ev")):
                rows.append((prompt, sample, model, float(prompt + 10 * sample + j), sample == 3))
    rewards = pd.DataFrame(rows, columns=["prompt_id", "sample_id", "model_id", "reward", "is_reference"])
    models = pd.DataFrame(
        {
            "model_id": ["rm-a", "rm-b", "ev"],
            "role": ["rm", "rm", "evaluator"],
            "pretrain_id": ["p0", "p1", None],
            "finetune_seed": pd.array([0, 0, None], dtype="Int64"),
        }
    )
    return rewards, models


def write(tmp_path, rewards, models):
    rp, mp = tmp_path / "rewards.parquet", tmp_path / "models.parquet"
    rewards.to_parquet(rp, index=False)
    models.to_parquet(mp, index=False)
    return rp, mp


def test_load_tiny_tensor(tmp_path):
    rewards, models = tiny_frames()
    # Shuffled rows must not matter.
    rp, mp = write(tmp_path, rewards.sample(frac=1.0, random_state=0), models)
    t = analysis.load_reward_tensor(rp, mp)
    assert t.pool.shape == (3, 2, 3) and t.reference.shape == (3, 2, 1)
    np.testing.assert_array_equal(t.prompt_ids, [10, 20])
    np.testing.assert_array_equal(t.sample_ids, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(t.pool[1, 1], [21.0, 31.0, 41.0])  # rm-b, prompt 20
    np.testing.assert_array_equal(t.reference[2, 0], [42.0])  # ev, prompt 10, sample 3
    assert t.roles == ("rm", "rm", "evaluator")
    assert t.pretrain_ids == ("p0", "p1", None) and t.finetune_seeds == (0, 0, None)


def test_round_trip_through_parquet(tmp_path):
    t = analysis.synthetic_reward_tensor(n_prompts=7, pool_size=5, n_reference=2)
    rp, mp = write(tmp_path, *analysis.reward_tensor_to_frames(t))
    back = analysis.load_reward_tensor(rp, mp)
    np.testing.assert_array_equal(back.pool, t.pool)
    np.testing.assert_array_equal(back.reference, t.reference)
    assert back.model_ids == t.model_ids and back.finetune_seeds == t.finetune_seeds


def test_accepts_categorical_ids_and_narrow_ints(tmp_path):
    rewards, models = tiny_frames()
    rewards = rewards.astype({"model_id": "category", "prompt_id": "int32", "reward": "float32"})
    rp, mp = write(tmp_path, rewards, models)
    t = analysis.load_reward_tensor(rp, mp)
    assert t.pool.dtype == np.float64 and t.prompt_ids.dtype == np.int64
    np.testing.assert_array_equal(t.pool[1, 1], [21.0, 31.0, 41.0])


def test_is_reference_optional(tmp_path):
    rewards, models = tiny_frames()
    t = analysis.reward_tensor_from_frames(rewards.drop(columns="is_reference"), models)
    assert t.pool.shape == (3, 2, 4) and t.reference is None


def _drop_row(df, **where):
    mask = np.logical_and.reduce([df[k] == v for k, v in where.items()])
    return df[~mask].reset_index(drop=True)


def _set(df, col, value, **where):
    df = df.copy()
    if where:
        mask = np.logical_and.reduce([df[k] == v for k, v in where.items()])
        df.loc[mask, col] = value
    else:
        df[col] = value
    return df


BAD_CASES = {
    # name: (edit(rewards, models) -> (rewards, models), which file, words in the message)
    "missing column": (lambda r, m: (r.drop(columns="reward"), m), "rewards", ["missing column", "reward"]),
    "missing models column": (lambda r, m: (r, m.drop(columns="role")), "models", ["missing column", "role"]),
    "reward as string": (
        lambda r, m: (r.assign(reward=r.reward.astype(str)), m),
        "rewards",
        ["'reward'", "dtype"],
    ),
    "prompt_id float": (
        lambda r, m: (r.assign(prompt_id=r.prompt_id + 0.5), m),
        "rewards",
        ["'prompt_id'", "dtype"],
    ),
    "is_reference int": (
        lambda r, m: (r.assign(is_reference=r.is_reference.astype(int)), m),
        "rewards",
        ["'is_reference'"],
    ),
    "unknown model": (
        lambda r, m: (_set(r, "model_id", "rm-zzz", model_id="rm-b"), m),
        "rewards",
        ["model_id", "rm-zzz"],
    ),
    "model without rewards": (lambda r, m: (r[r.model_id != "rm-b"], m), "rewards", ["no rewards", "rm-b"]),
    "duplicate row": (
        lambda r, m: (pd.concat([r, r.iloc[:1]]), m),
        "rewards",
        ["(prompt_id, sample_id, model_id)"],
    ),
    "unequal pool": (lambda r, m: (_drop_row(r, prompt_id=20, sample_id=2), m), "rewards", ["unequal pool"]),
    "unequal reference": (
        lambda r, m: (_drop_row(r, prompt_id=20, sample_id=3), m),
        "rewards",
        ["unequal reference"],
    ),
    "model missing for a sample": (
        lambda r, m: (_drop_row(r, prompt_id=10, sample_id=1, model_id="ev"), m),
        "rewards",
        ["lack a reward", "prompt_id=10", "sample_id=1", "ev"],
    ),
    "nan reward": (
        lambda r, m: (_set(r, "reward", np.nan, prompt_id=10, sample_id=0, model_id="rm-a"), m),
        "rewards",
        ["'reward'", "NaN"],
    ),
    "inf reward": (
        lambda r, m: (_set(r, "reward", np.inf, prompt_id=20, sample_id=1, model_id="ev"), m),
        "rewards",
        ["'reward'", "inf"],
    ),
    "mixed is_reference": (
        lambda r, m: (_set(r, "is_reference", True, prompt_id=10, sample_id=0, model_id="rm-a"), m),
        "rewards",
        ["is_reference", "differs"],
    ),
    "no rms": (
        lambda r, m: (
            r,
            _set(m, "role", "evaluator", model_id="rm-a").pipe(_set, "role", "gold", model_id="rm-b"),
        ),
        "models",
        ["no reward models"],
    ),
    "bad role": (lambda r, m: (r, _set(m, "role", "judge", model_id="ev")), "models", ["'role'", "judge"]),
    "duplicate model": (lambda r, m: (r, pd.concat([m, m.iloc[:1]])), "models", ["duplicate model_id"]),
    "rm without pretrain": (
        lambda r, m: (r, _set(m, "pretrain_id", None, model_id="rm-a")),
        "models",
        ["'pretrain_id'", "rm-a"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_load_rejects_bad_tensor(tmp_path, case):
    edit, which, words = BAD_CASES[case]
    rewards, models = edit(*tiny_frames())
    rp, mp = write(tmp_path, rewards, models)
    with pytest.raises(RewardTensorError) as info:
        analysis.load_reward_tensor(rp, mp)
    message = str(info.value)
    assert str(rp if which == "rewards" else mp) in message
    for word in words:
        assert word in message, message


def test_unreadable_file(tmp_path):
    rp = tmp_path / "rewards.parquet"
    rp.write_text("not parquet")
    _, models = tiny_frames()
    models.to_parquet(tmp_path / "models.parquet")
    with pytest.raises(RewardTensorError, match="rewards.parquet"):
        analysis.load_reward_tensor(rp, tmp_path / "models.parquet")


# ---------------------------------------------------------------------------------------------------
# Statistics


def test_mean_se_direct():
    x = np.array([[1.0, 2.0, 4.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mean, se = analysis.mean_se(x, axis=-1)
    np.testing.assert_allclose(mean, [4.0, 0.0])
    # Sample variance of [1,2,4,9]: deviations −3,−2,0,5 → (9+4+0+25)/3 = 38/3; se = sqrt(38/3)/2.
    np.testing.assert_allclose(se, [np.sqrt(38 / 3) / 2, 0.0])
    _, se_one = analysis.mean_se(np.array([3.0]))
    assert np.isnan(se_one)


def test_anova_fraction_matches_statsmodels():
    smf = pytest.importorskip("statsmodels.formula.api")
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)) + np.array([0.0, 0.5, -0.3, 1.0])  # prompts × scorers
    df = pd.DataFrame(
        {"y": x.reshape(-1), "prompt": np.repeat(np.arange(12), 4), "scorer": np.tile(np.arange(4), 12)}
    )
    table = sm.stats.anova_lm(smf.ols("y ~ C(prompt) + C(scorer)", data=df).fit())
    expected = table.loc["C(scorer)", "sum_sq"] / table.sum_sq.sum()
    assert analysis.anova_model_fraction(x) == pytest.approx(expected, rel=1e-10)
    batched = analysis.anova_model_fraction(np.stack([x, x * 2 + 1]))
    np.testing.assert_allclose(batched, [expected, expected])


# ---------------------------------------------------------------------------------------------------
# Figures against direct computation


@pytest.fixture(scope="module")
def small():
    return analysis.synthetic_reward_tensor(
        n_pretrains=3, n_finetune=2, n_prompts=15, pool_size=6, n_reference=3
    )


def _relation(t, i, k):
    if i == k:
        return "self"
    same_p = t.pretrain_ids[i] == t.pretrain_ids[k]
    same_f = t.finetune_seeds[i] == t.finetune_seeds[k]
    return "same_pretrain" if same_p else "same_finetune" if same_f else "neither"


@pytest.mark.parametrize("scale", [True, False])
def test_figure1_direct(small, scale):
    """Brute force: each (ranker, scorer) pair's expected pick reward (standardised per prompt by default;
    centred only, the paper's raw rewards, with scale=False), grouped by their relation; the prompt se is the
    plain one over prompts of the pair-averaged values; the seed-aware interval contains the mean."""
    df = analysis.figure1(small, ns=[1, 3], draws=200, scale=scale)
    rm = small.rm_indices
    centred = bon.standardize(small.pool, scale=scale)
    for n in (1, 3):
        groups = {"self": [], "same_pretrain": [], "same_finetune": [], "neither": []}
        for i in rm:
            for k in rm:
                groups[_relation(small, i, k)].append(bon.expected_best_of_n(small.pool[i], centred[k], n))
        assert set(df[df.n == n].relation) == set(groups)
        for g, values in groups.items():
            per_prompt = np.mean(values, axis=0)
            row = df[(df.n == n) & (df.relation == g)].iloc[0]
            assert row["mean"] == pytest.approx(per_prompt.mean(), abs=1e-12)
            assert row.n_pairs == len(values) and row.R == 3
            if n > 1:
                # the prompt-only bootstrap se is near the textbook one
                assert row.se_prompt == pytest.approx(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)), rel=0.35)
                assert row.lo <= row["mean"] <= row.hi and row.se > 0
    assert set(df[df.n == 1]["mean"].round(12)) == {0.0}  # a random pick has centred reward 0


def test_figure2_direct(small):
    df = analysis.figure2(small, ns=[2, 6], draws=200)
    rm = small.rm_indices
    for n in (2, 6):
        groups = {"same_pretrain": [], "same_finetune": [], "neither": []}
        for i, k in combinations(rm, 2):
            groups[_relation(small, i, k)].append(bon.expected_agreement(small.pool[i], small.pool[k], n))
        for g, values in groups.items():
            row = df[(df.n == n) & (df.relation == g)].iloc[0]
            assert row["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert row.chance == 1 / n and row.n_pairs == len(values)  # no texts: no duplicates known
            assert row.kappa == pytest.approx((row["mean"] - 1 / n) / (1 - 1 / n))


def test_paper_layout_relations_and_clean_contrast():
    """The paper layout (5 pretrains, 5 finetune seeds of the first): 10 same_pretrain, 10 same_finetune and
    16 neither pairs; the paper's 'different pretrain' group is same_finetune + neither (26 pairs); the
    contrasts table has the clean same_pretrain - neither and the paper's same_pretrain - different_pretrain."""
    full = analysis.synthetic_reward_tensor(n_pretrains=5, n_finetune=5, n_prompts=40, pool_size=8, seed=3)
    keep = [i for i in range(len(full.model_ids))
            if full.roles[i] != "rm" or full.pretrain_ids[i] == "p0" or full.finetune_seeds[i] == 0]
    t = analysis.RewardTensor(pool=full.pool[keep], reference=full.reference[keep],
                              model_ids=tuple(full.model_ids[i] for i in keep),
                              roles=tuple(full.roles[i] for i in keep),
                              pretrain_ids=tuple(full.pretrain_ids[i] for i in keep),
                              finetune_seeds=tuple(full.finetune_seeds[i] for i in keep),
                              prompt_ids=full.prompt_ids, sample_ids=full.sample_ids,
                              reference_ids=full.reference_ids)
    res = analysis.pair_statistics(t, ns=[4], draws=100)
    fig2 = res["figure2"].set_index("relation")
    assert fig2.n_pairs.to_dict() == {"same_pretrain": 10, "same_finetune": 10, "neither": 16}
    groups = res["paper_groups"][res["paper_groups"].figure == "figure2"].set_index("group")
    assert groups.n_pairs.to_dict() == {"same_pretrain": 10, "different_pretrain": 26}
    assert "only the finetuning differs" in groups.loc["same_pretrain", "varies"]
    c = res["contrasts"][res["contrasts"].figure == "figure2"].set_index("contrast")
    assert c.loc["same_pretrain - neither", "estimate"] == pytest.approx(
        fig2.loc["same_pretrain", "mean"] - fig2.loc["neither", "mean"])
    per_rm = analysis.pair_statistics(t, ns=[4], draws=50, scope="per_rm")["figure2"]
    assert set(per_rm.relation) == {"same_pretrain", "neither"}  # no shared finetune randomness
    # every same_pretrain pair is p0's: each such contrast's note says its interval cannot see their noise
    assert all(analysis.ONE_PRETRAIN in note and "(p0's finetunes)" in note for note in res["contrasts"].note)
    # the full layout has same_pretrain pairs in all five pretrains: no such clause
    notes = analysis.pair_statistics(full, ns=[4], draws=20)["contrasts"].note
    assert len(notes) and not any(analysis.ONE_PRETRAIN in note for note in notes)


def test_duplicate_texts_raise_the_chance_line():
    """A pool where two candidates are the same text: two random scorers agree more often than 1/n."""
    t = analysis.synthetic_reward_tensor(n_pretrains=2, n_finetune=2, n_prompts=5, pool_size=4, seed=0)
    texts = np.array([["a", "a", "b", "c"]] * 5, dtype=object)
    fig2 = analysis.pair_statistics(t, ns=[2, 4], texts=texts, draws=20)["figure2"]
    # n = 4: 3 distinct texts -> 1/3; n = 2: subsets {a,a} (1 of 6) agree surely, the other 5 have two texts
    assert fig2[fig2.n == 4].chance.iloc[0] == pytest.approx(1 / 3)
    assert fig2[fig2.n == 2].chance.iloc[0] == pytest.approx((1 + 5 * 0.5) / 6)


def test_seed_variance_recovers_a_planted_pretrain_share():
    """Scores = shared quality + a pretrain effect (σ² = 1) + own noise (σ² = 0.25), no finetune-seed effect:
    on the pool the pretraining seed's share is 1 / 1.25 = 0.8 and the finetuning seed's 0."""
    t = analysis.synthetic_reward_tensor(n_pretrains=6, n_finetune=3, n_prompts=300, pool_size=16,
                                         pretrain_effect=1.0, finetune_noise=0.5, seed=2)
    sv = analysis.seed_variance(t, ns=[1, 4, 16], draws=100)
    pool = sv[sv.weighting == "pool"].set_index("statistic")
    assert pool.loc["share_pt", "estimate"] == pytest.approx(0.8, abs=0.03)
    assert abs(pool.loc["share_ft", "estimate"]) < 0.02
    assert pool.loc["share_pt", "lo"] < pool.loc["share_pt", "estimate"] < pool.loc["share_pt", "hi"]
    assert set(sv[sv.weighting == "pick"].n) == {4, 16} and (sv.R == 6).all() and (sv.missing == "").all()


def mom_share(x: np.ndarray) -> float:
    """σ²_scorer / (σ²_scorer + σ²_res) of a prompts × scorers table by the textbook two-way random-effects
    ANOVA (one observation per cell), with explicit sums."""
    p, s = x.shape
    grand = x.mean()
    ss_scorer = p * sum((x[:, j].mean() - grand) ** 2 for j in range(s))
    ss_prompt = s * sum((x[i].mean() - grand) ** 2 for i in range(p))
    ss_res = sum((x[i, j] - x[i].mean() - x[:, j].mean() + grand) ** 2 for i in range(p) for j in range(s))
    ms_res = ss_res / ((p - 1) * (s - 1))
    sigma = (ss_scorer / (s - 1) - ms_res) / p
    assert ss_scorer + ss_prompt + ss_res == pytest.approx(((x - grand) ** 2).sum())
    return sigma / (sigma + ms_res)


@pytest.mark.parametrize("method", ["mom", "paper"])
@pytest.mark.parametrize("include_ranker", [False, True])
def test_figure3_direct(small, include_ranker, method):
    """Re-derive Figure 3 with explicit loops and the same random permutations: the method-of-moments share
    on standardised scores (default) and the paper's SS fraction on centred rewards."""
    ns, draws, seed = [1, 2, 6], 3, 7
    df = analysis.figure3(small, ns, draws=draws, seed=seed, include_ranker=include_ranker, method=method)
    rm = small.rm_indices
    centred = bon.standardize(small.pool[rm], scale=method == "mom")
    rng = np.random.default_rng(seed)
    p, size = small.n_prompts, small.pool_size
    values = {n: [] for n in ns}
    for _ in range(draws):
        perm = rng.permuted(np.broadcast_to(np.arange(size), (p, size)), axis=1)
        for n in ns:
            for m in range(len(rm)):
                scorers = [k for k in range(len(rm)) if include_ranker or k != m]
                x = np.empty((p, len(scorers)))
                for q in range(p):
                    subset = tuple(sorted(perm[q, :n]))  # ties → lower index, as in brute_pick
                    idx = np.array(subset)
                    pick = idx[np.argmax(small.pool[rm[m], q, idx])]
                    x[q] = centred[scorers, q, pick]
                values[n].append(analysis.anova_model_fraction(x) if method == "paper" else mom_share(x))
    for n in ns:
        row = df[df.n == n].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(values[n]), rel=1e-9, abs=1e-12)
        assert row.lo <= row["mean"] <= row.hi and row.R == 3 and row.method == method


def _rescaled(t, k: int, factor: float):
    pool = t.pool.copy()
    pool[t.rm_indices[k]] = pool[t.rm_indices[k]] * factor + 3.0
    return dataclasses.replace(t, pool=pool)


def test_figures_1_and_3_do_not_see_one_rms_reward_scale():
    """Rescaling (and shifting) one RM's rewards changes neither Figure 1 nor Figure 3 (mom) by default; the
    paper's raw versions do move."""
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=30, pool_size=8, seed=3)
    u = _rescaled(t, 0, 4.0)
    cols = ["mean", "se", "lo", "hi"]
    for scale in (True, False):
        a, b = (analysis.figure1(x, ns=[1, 4], draws=50, scale=scale)[cols].to_numpy() for x in (t, u))
        assert np.allclose(a, b, atol=1e-10) == scale
    for method in ("mom", "paper"):
        a, b = (analysis.figure3(x, [1, 4], draws=3, bootstrap=50, method=method)[cols + ["null"]].to_numpy()
                for x in (t, u))
        assert np.allclose(a, b, atol=1e-10) == (method == "mom")


def test_figure3_exchangeable_rms_with_unequal_scales():
    """Nine exchangeable RMs (no seed structure) whose reward scales differ from 0.5 to 2: the paper's SS
    fraction grows with n (it measures scale), the default share stays near 0, as does its null."""
    rng = np.random.default_rng(0)
    p, n_pool = 150, 32
    common = rng.standard_normal((p, n_pool))
    pool = np.stack([s * (common + rng.standard_normal((p, n_pool))) for s in np.linspace(0.5, 2.0, 9)])
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=3, n_prompts=p, pool_size=n_pool, seed=0)
    grid = dataclasses.replace(t, pool=t.pool.copy())
    assert len(grid.rm_indices) == 9
    grid.pool[list(grid.rm_indices)] = pool
    mom = analysis.figure3(grid, [1, 32], draws=3, bootstrap=50)
    paper = analysis.figure3(grid, [1, 32], draws=3, bootstrap=50, method="paper")
    assert paper["mean"].iloc[-1] > 5 * paper["mean"].iloc[0]
    assert abs(mom["mean"].iloc[-1]) < 0.02 and abs(mom["null"].iloc[-1]) < 0.02


def test_figure4_direct(small):
    df = analysis.figure4(small, ns=[4])
    ev, gold = small.role_index("evaluator"), small.role_index("gold")
    ev_c = bon.standardize(small.pool[ev])
    members = analysis.ensemble_members(small)
    expected = {
        ("single", "none", "reward"): np.mean(
            [bon.expected_best_of_n(small.pool[i], ev_c, 4) for i in small.rm_indices], axis=0
        ),
        ("single", "none", "win_rate"): np.mean(
            [bon.win_rate(small.pool[i], small.pool[ev], small.reference[ev], 4) for i in small.rm_indices],
            axis=0,
        ),
        ("evaluator", "none", "reward"): bon.expected_best_of_n(small.pool[ev], ev_c, 4),
        ("gold", "none", "win_rate"): bon.win_rate(small.pool[gold], small.pool[ev], small.reference[ev], 4),
    }
    for kind in ("finetune", "pretrain"):
        for agg in bon.AGGREGATORS:
            proxy = bon.aggregate(bon.standardize(small.pool[members[kind]]), agg)
            expected[(kind, agg, "reward")] = bon.expected_best_of_n(proxy, ev_c, 4)
            expected[(kind, agg, "win_rate")] = bon.win_rate(proxy, small.pool[ev], small.reference[ev], 4)
    ev_rows = df[df.target == "evaluator"].set_index(["ranker", "aggregator", "metric"])
    for key, per_prompt in expected.items():
        assert ev_rows.loc[key, "mean"] == pytest.approx(per_prompt.mean(), abs=1e-12), key
        assert ev_rows.loc[key, "se"] == pytest.approx(
            per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)), abs=1e-12
        )
    assert set(df.target) == {"evaluator", "gold"}
    assert df.kl_bound.iloc[0] == pytest.approx(bon.kl_bound(4))


def test_ensemble_members_choice():
    """p0 has 3 RMs (seeds 5, 0, 2), p1 has 1, p2 has 3 (seeds None, 1, 3): the finetune ensemble is
    p0 (tie with p2, p0 sorts first); the pretrain ensemble takes p0's seed 0, p1's RM and p2's seed 1."""
    pre = ["p0", "p0", "p0", "p1", "p2", "p2", "p2"]
    seeds = [5, 0, 2, 9, None, 1, 3]
    m = len(pre)
    t = analysis.RewardTensor(
        pool=np.zeros((m, 1, 2)),
        reference=None,
        model_ids=tuple(f"m{i}" for i in range(m)),
        roles=("rm",) * m,
        pretrain_ids=tuple(pre),
        finetune_seeds=tuple(seeds),
        prompt_ids=np.array([0]),
        sample_ids=np.array([[0, 1]]),
    )
    assert analysis.ensemble_members(t) == {"finetune": [0, 1, 2], "pretrain": [1, 3, 5]}


def test_scale_option_changes_ensemble():
    """One member on a 10⁶× scale dictates the order of a mean of centred scores (the others' spread
    is ~10⁶ times smaller than its gaps) but not of a mean of standardised ones."""
    t = analysis.synthetic_reward_tensor(
        n_pretrains=3, n_finetune=1, n_prompts=40, pool_size=8, pretrain_effect=1.0
    )
    pool = t.pool.copy()
    pool[0] *= 1e6
    t = analysis.RewardTensor(**{**t.__dict__, "pool": pool})
    centred = analysis.ranker_scores(t, scale=False)
    scaled = analysis.ranker_scores(t, scale=True)
    mean_c = next(s for r, a, s in centred if r == "pretrain" and a == "mean")[0]
    mean_s = next(s for r, a, s in scaled if r == "pretrain" and a == "mean")[0]
    np.testing.assert_array_equal(bon.beat_counts(mean_c), bon.beat_counts(pool[0]))
    assert not np.array_equal(bon.beat_counts(mean_s), bon.beat_counts(pool[0]))


def test_table1_layout(small):
    fig4 = analysis.figure4(small)
    tab = analysis.table1(fig4)
    assert list(tab.ensemble) == ["finetune"] * 4 + ["pretrain"] * 4 + ["single RM"]
    assert list(tab.aggregator[:4]) == list(bon.AGGREGATORS)
    assert (tab.n == 4).all() and (tab.target == "evaluator").all()  # largest default n for N = 6
    row = tab.iloc[-1]
    src = fig4[
        (fig4.n == 4) & (fig4.ranker == "single") & (fig4.target == "evaluator") & (fig4.metric == "win_rate")
    ]
    assert row["win rate"] == f"{src['mean'].iloc[0]:.3f} ± {src.se.iloc[0]:.3f}"


# ---------------------------------------------------------------------------------------------------
# Planted effects


def _gap_ok(df, n, hi, lo, sigmas=3.0):
    a = df[(df.n == n) & (df.relation == hi)].iloc[0]
    b = df[(df.n == n) & (df.relation == lo)].iloc[0]
    return a["mean"] - b["mean"], sigmas * np.hypot(a.se, b.se)


def test_planted_pretrain_effect_detected():
    t = analysis.synthetic_reward_tensor(
        n_pretrains=5, n_finetune=2, n_prompts=200, pool_size=16, pretrain_effect=1.0, seed=1
    )
    fig1, fig2 = analysis.figure1(t), analysis.figure2(t)
    for n in (2, 4, 8, 16):
        gap, tol = _gap_ok(fig2, n, "same_pretrain", "neither")
        assert gap > tol
        gap, tol = _gap_ok(fig1, n, "self", "same_pretrain")
        assert gap > tol
        gap, tol = _gap_ok(fig1, n, "same_pretrain", "neither")
        assert gap > tol
    fig3 = analysis.figure3(t, draws=5)
    assert fig3["mean"].iloc[-1] > fig3.hi.iloc[0] and fig3["mean"].iloc[-1] > 10 * abs(fig3.null.iloc[-1])


def test_no_pretrain_effect_no_gap():
    t = analysis.synthetic_reward_tensor(
        n_pretrains=5, n_finetune=2, n_prompts=200, pool_size=16, pretrain_effect=0.0, seed=1
    )
    fig1, fig2 = analysis.figure1(t), analysis.figure2(t)
    for n in (2, 4, 8, 16):
        gap, tol = _gap_ok(fig2, n, "same_pretrain", "neither")
        assert abs(gap) < tol
        gap, tol = _gap_ok(fig1, n, "same_pretrain", "neither")
        assert abs(gap) < tol
        gap, tol = _gap_ok(fig1, n, "self", "same_pretrain")
        assert gap > tol  # the winner's curse: a ranker always likes its own pick best


# ---------------------------------------------------------------------------------------------------
# Reward hacking, run and save


def test_copied_ngram_fraction_hand_values():
    """Summary 4-grams: 'the cat sat on', 'cat sat on the', 'sat on the hat'; the post contains the
    first two → 2/3. Fewer than 4 words → 0."""
    post = "Yesterday the cat sat on the mat."
    assert analysis.copied_ngram_fraction("The cat sat on the hat", post) == pytest.approx(2 / 3)
    assert analysis.copied_ngram_fraction("cat sat", post) == 0.0


def test_reward_hacking(small):
    rng = np.random.default_rng(0)
    p, n = small.n_prompts, small.pool_size
    words = "a b c d e f g h".split()
    samples = pd.DataFrame(
        {
            "prompt_id": np.repeat(small.prompt_ids, n),
            "sample_id": small.sample_ids.reshape(-1),
            "n_tokens": rng.integers(5, 30, p * n),
            "text": [" ".join(rng.choice(words, 6)) for _ in range(p * n)],
        }
    )
    posts = {int(q): " ".join(words) for q in small.prompt_ids}
    df = analysis.reward_hacking(small, samples, posts, ns=[1, 6])
    length = samples.n_tokens.to_numpy(float).reshape(p, n)
    n1 = df[(df.n == 1) & (df.feature == "n_tokens") & (df.ranker == "gold")].iloc[0]
    assert n1["mean"] == pytest.approx(length.mean(axis=1).mean())
    n6 = df[(df.n == 6) & (df.feature == "n_tokens") & (df.ranker == "gold")].iloc[0]
    best = length[np.arange(p), small.pool[small.role_index("gold")].argmax(axis=1)]
    assert n6["mean"] == pytest.approx(best.mean())
    assert set(df.feature) == {"n_tokens", "copy_4gram"}
    with pytest.raises(ValueError, match="not found"):
        analysis.reward_hacking(small, samples.iloc[1:], posts)


def test_run_and_save(tmp_path, small):
    results = analysis.run_analysis(small, anova_draws=2, seed=3)
    assert {"meta", "models", "figure1", "figure2", "figure3", "figure4", "table1"} <= set(results)
    written = analysis.save_analysis(results, tmp_path / "analysis")
    files = sorted(p.name for p in (tmp_path / "analysis").iterdir())
    assert files == sorted([f"{k}.parquet" for k in results] + ["summary.json"])  # no temp files left
    back = pd.read_parquet(written["figure2"])
    pd.testing.assert_frame_equal(back, results["figure2"].reset_index(drop=True), check_dtype=False)
    summary = json.loads(written["summary"].read_text())
    assert summary["meta"]["pool_size"] == small.pool_size
    assert len(summary["table1"]) == 18  # under the gold reward, then the evaluator
    assert [r["target"] for r in summary["table1"]][::9] == ["gold", "evaluator"]
    assert set(summary["headline"]["figure2"]) == {"n", "same_pretrain", "same_finetune", "neither"}
    assert set(summary["headline"]["seed_variance"]) == {"share_pt", "share_ft", "share_res"}
    again = analysis.run_analysis(small, anova_draws=2, seed=3)
    pd.testing.assert_frame_equal(again["figure3"], results["figure3"])  # seeded


def test_table1_averages_every_ensemble_of_the_full_layout():
    """Full layout 3 x 3: three finetune ensembles (one per pretrain) and three pretrain ensembles (one per
    finetune seed); each cell is the mean over them, the contrast paired, the jackknife by brute force."""
    from perm import seedstats

    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=3, n_prompts=30, pool_size=8, seed=4)
    rm = list(t.rm_indices)
    pids, fts = [t.pretrain_ids[i] for i in rm], [t.finetune_seeds[i] for i in rm]
    ens = seedstats.grid_ensembles(pids, fts)
    assert len(ens["finetune"]) == 3 and len(ens["pretrain"]) == 3
    assert all(len({pids[i] for i in e}) == 1 for e in ens["finetune"])
    assert all(len({fts[i] for i in e}) == 1 and len({pids[i] for i in e}) == 3 for e in ens["pretrain"])
    cells, contrasts = analysis.ensemble_intervals(t, n=4, draws=50)
    gold = t.role_index("gold")
    target = bon.standardize(t.pool[gold])
    pool = t.pool[rm]

    def kind_mean(kind, keep):
        vals = [seedstats.ensemble_pick_values(pool[[i for i in e if keep[i]]], target, 4, "mean").mean()
                for e in ens[kind] if sum(keep[i] for i in e) >= 2]
        return np.mean(vals)

    keep_all = np.ones(len(rm), dtype=bool)
    cell = cells[(cells.target == "gold") & (cells.metric == "reward") & (cells.aggregator == "mean")]
    for kind in ("finetune", "pretrain"):
        row = cell[cell.ensemble == kind].iloc[0]
        assert row.estimate == pytest.approx(kind_mean(kind, keep_all)) and row.n_ensembles == 3
    diff = contrasts[(contrasts.contrast == "pretrain - finetune") & (contrasts.target == "gold")
                     & (contrasts.metric == "reward") & (contrasts.aggregator == "mean")].iloc[0]
    assert diff.estimate == pytest.approx(kind_mean("pretrain", keep_all) - kind_mean("finetune", keep_all))
    # jackknife over pretrains, by hand: delete each pretrain's RMs
    thetas = []
    for p in sorted(set(pids)):
        keep = np.array([q != p for q in pids])
        thetas.append(kind_mean("pretrain", keep) - kind_mean("finetune", keep))
    thetas = np.array(thetas)
    var_pt = 2 / 3 * np.sum((thetas - thetas.mean()) ** 2)
    res = seedstats.grid_ensemble_intervals(pool, target, 4, ens, pids, fts, draws=50).set_index("statistic")
    assert res.loc["pretrain - finetune", "se_pretrain"] == pytest.approx(np.sqrt(var_pt))
    assert diff.lo < diff.estimate < diff.hi and diff.resamples.startswith("jackknife over pretrains")


def test_table1_paper_layout_has_one_ensemble_of_each_kind():
    from perm import seedstats

    pids = ["s0"] * 5 + ["s1", "s2", "s3", "s4"]
    fts = [0, 1, 2, 3, 4, 0, 0, 0, 0]
    ens = seedstats.grid_ensembles(pids, fts)
    assert ens == {"finetune": [[0, 1, 2, 3, 4]], "pretrain": [[0, 5, 6, 7, 8]]}


def test_a_tensor_declares_its_seed_design():
    """models.parquet's optional finetune_seed_scope column: a bring-your-own tensor says whether its finetune
    seeds are crossed with its pretrains (shared) or nested (per_rm); it overrides the run's setting."""
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=20, pool_size=6, seed=2)
    rewards, models = analysis.reward_tensor_to_frames(t)
    models["finetune_seed_scope"] = ["per_rm" if r == "rm" else None for r in models.role]
    declared = analysis.reward_tensor_from_frames(rewards, models)
    assert declared.seed_scope == "per_rm" and t.seed_scope is None
    assert analysis.reward_tensor_to_frames(declared)[1]["finetune_seed_scope"].tolist() == models[
        "finetune_seed_scope"].tolist()
    res = analysis.run_analysis(declared, ns=[1, 3], bootstrap=20, anova_draws=2, scope="shared")
    meta = res["meta"].iloc[0]
    assert meta.finetune_seed_scope == "per_rm" and meta.scope_from.startswith("the tensor")
    assert "same_finetune" not in set(res["figure2"].relation)
    assert "nested" in meta.resamples
    for bad in (["sometimes" if r == "rm" else None for r in models.role],
                ["shared", "per_rm"] * (len(models) // 2) + ["shared"] * (len(models) % 2)):
        models["finetune_seed_scope"] = bad
        with pytest.raises(RewardTensorError, match="finetune_seed_scope"):
            analysis.reward_tensor_from_frames(rewards, models, models_source="models.parquet")


def test_contrast_notes_name_both_relations_tied_to_one_seed():
    """The paper layout ties same_pretrain to one pretrain and same_finetune to one finetune seed; the notes
    say both. The full layout ties neither."""
    from perm.analysis import ONE_FINETUNE, ONE_PRETRAIN

    paper = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=3, n_prompts=20, pool_size=6, seed=5)
    keep = [i for i in range(len(paper.model_ids)) if paper.roles[i] != "rm" or paper.pretrain_ids[i] ==
            paper.pretrain_ids[paper.rm_indices[0]] or paper.finetune_seeds[i] == 0]
    sub = analysis.reward_tensor_from_frames(*[f[f.model_id.isin([paper.model_ids[i] for i in keep])]
                                              for f in analysis.reward_tensor_to_frames(paper)])
    notes = " ".join(analysis.pair_statistics(sub, [2], draws=20)["contrasts"].note)
    assert ONE_PRETRAIN in notes and ONE_FINETUNE in notes
    notes = " ".join(analysis.pair_statistics(paper, [2], draws=20)["contrasts"].note)
    assert ONE_PRETRAIN not in notes and ONE_FINETUNE not in notes
