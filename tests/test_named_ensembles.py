"""Named ensembles in the reward tensor and the analysis (issue 31): the `member` role and the `ensemble` / `kind`
columns of models.parquet, ensembles.parquet's costs, named ensembles as rankers in Figure 4 and Table 1, their
intervals (a jackknife over members plus the grid's prompt bootstrap: by brute force and by simulated coverage),
the `ensembles` table, and the analyze stage reading the costs beside a user's models file."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from perm import analysis, bon, seedstats
from perm import tensor as tensor_mod
from perm.analysis import RewardTensorError
from perm.coverage import planted_members, simulate_named_coverage

# ---------------------------------------------------------------------------------------------------
# Helpers


def with_members(t: analysis.RewardTensor, groups, seed: int = 0, noise: float = 0.8) -> analysis.RewardTensor:
    """``t`` with member models appended: ``groups`` = [(ensemble name, K, kind)]; each member scores the gold
    reward plus its own noise (pool and reference samples)."""
    rng = np.random.default_rng(seed)
    gi = t.role_index("gold")
    gold = np.concatenate([t.pool[gi], t.reference[gi]], axis=1)
    pools, refs, ids, kinds, ens = [], [], [], [], {}
    m = len(t.model_ids)
    for name, k, kind in groups:
        for j in range(k):
            scores = gold + rng.normal(0, noise, gold.shape)
            pools.append(scores[:, : t.pool_size])
            refs.append(scores[:, t.pool_size :])
            ens.setdefault(name, []).append(m + len(ids))
            ids.append(f"{name}-{j}")
            kinds.append(kind)
    return analysis.RewardTensor(
        pool=np.concatenate([t.pool, np.stack(pools)]), reference=np.concatenate([t.reference, np.stack(refs)]),
        model_ids=t.model_ids + tuple(ids), roles=t.roles + ("member",) * len(ids),
        pretrain_ids=t.pretrain_ids + (None,) * len(ids), finetune_seeds=t.finetune_seeds + (None,) * len(ids),
        prompt_ids=t.prompt_ids, sample_ids=t.sample_ids, reference_ids=t.reference_ids,
        ensembles=ens, kinds=(None,) * m + tuple(kinds))


@pytest.fixture(scope="module")
def grid():
    return analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=30, pool_size=8, n_reference=3,
                                            seed=1)


@pytest.fixture(scope="module")
def cheap(grid):
    """The grid plus a four-member LoRA ensemble and a one-member (weight-averaged) WARM model."""
    return with_members(grid, [("lora", 4, "lora"), ("warm", 1, "warm")])


def write(tmp_path, rewards, models):
    rp, mp = tmp_path / "rewards.parquet", tmp_path / "models.parquet"
    rewards.to_parquet(rp, index=False)
    models.to_parquet(mp, index=False)
    return rp, mp


# ---------------------------------------------------------------------------------------------------
# The tensor


def test_round_trip_with_ensembles_and_kinds(tmp_path, cheap):
    """Members (null pretrain_id) and their ensemble names and kinds survive Parquet; a grid RM may belong to a
    named ensemble too, and a model to two of them."""
    rewards, models = analysis.reward_tensor_to_frames(cheap)
    assert models.ensemble.tolist()[-5:] == ["lora"] * 4 + ["warm"] and models.kind.tolist()[-1] == "warm"
    models.loc[0, "ensemble"] = "top2"
    models.loc[1, "ensemble"] = "top2"
    models.loc[len(models) - 1, "ensemble"] = "warm,all-cheap.v1"
    models.loc[len(models) - 2, "ensemble"] = "lora, all-cheap.v1"
    back = analysis.load_reward_tensor(*write(tmp_path, rewards, models))
    m = len(cheap.model_ids)
    assert dict(back.ensembles) == {"top2": (0, 1), "lora": tuple(range(m - 5, m - 1)), "warm": (m - 1,),
                                    "all-cheap.v1": (m - 2, m - 1)}
    assert back.kinds == cheap.kinds and back.roles == cheap.roles and back.pretrain_ids == cheap.pretrain_ids
    np.testing.assert_array_equal(back.pool, cheap.pool)
    again = analysis.reward_tensor_from_frames(*analysis.reward_tensor_to_frames(back))
    assert dict(again.ensembles) == dict(back.ensembles) and again.kinds == back.kinds
    with pytest.raises(TypeError):
        back.ensembles["x"] = (0,)  # read-only
    plain_t = analysis.synthetic_reward_tensor(n_prompts=3, pool_size=4)
    rewards, plain = analysis.reward_tensor_to_frames(plain_t)
    assert "ensemble" not in plain.columns and "kind" not in plain.columns  # nothing new where nothing is set
    declared_none = analysis.reward_tensor_from_frames(rewards, plain.assign(ensemble=np.nan, kind=np.nan))
    assert dict(declared_none.ensembles) == {} and set(declared_none.kinds) == {None}


BAD_ENSEMBLES = {
    # name: (edit of the models table, words in the message)
    "reserved name": (lambda m: m.assign(ensemble=["pretrain"] + [None] * (len(m) - 1)), ["reserved", "rm-p0-f0"]),
    "bad characters": (lambda m: m.assign(ensemble=[None, "lo ra!"] + [None] * (len(m) - 2)),
                       ["[A-Za-z0-9_.+-]+", "'lo ra!'", "rm-p0-f1"]),
    "empty name in a list": (lambda m: m.assign(ensemble=["a,,b"] + [None] * (len(m) - 1)), ["''", "rm-p0-f0"]),
    "on the evaluator": (lambda m: m.assign(ensemble=[None] * (len(m) - 2) + ["judges", None]),
                         ["evaluator", "judges", "not the evaluator"]),
    "member without an ensemble": (lambda m: m.assign(role=["rm"] * (len(m) - 3) + ["member", "evaluator", "gold"],
                                                      pretrain_id=list(m.pretrain_id[:-3]) + [None] * 3),
                                   ["'member'", "rm-p1-f1"]),
}


@pytest.mark.parametrize("case", list(BAD_ENSEMBLES))
def test_bad_ensemble_fields_name_file_field_and_rows(tmp_path, case):
    edit, words = BAD_ENSEMBLES[case]
    rewards, models = analysis.reward_tensor_to_frames(
        analysis.synthetic_reward_tensor(n_pretrains=2, n_finetune=2, n_prompts=3, pool_size=4, n_reference=0))
    rp, mp = write(tmp_path, rewards, edit(models))
    with pytest.raises(RewardTensorError) as info:
        analysis.load_reward_tensor(rp, mp)
    message = str(info.value)
    assert str(mp) in message and "field 'ensemble'" in message, message
    for word in words:
        assert word in message, message


def test_member_rows_need_no_pretrain_but_rms_still_do():
    t = analysis.synthetic_reward_tensor(n_pretrains=2, n_finetune=1, n_prompts=3, pool_size=4, n_reference=0)
    rewards, models = analysis.reward_tensor_to_frames(t)
    models["role"] = ["member", "rm", "evaluator", "gold"]
    models["pretrain_id"] = [None, "p1", None, None]
    models["ensemble"] = ["solo", None, None, None]
    x = analysis.reward_tensor_from_frames(rewards, models)
    assert x.rm_indices == [1] and dict(x.ensembles) == {"solo": (0,)}
    models["role"] = ["rm", "rm", "evaluator", "gold"]
    with pytest.raises(RewardTensorError, match="'pretrain_id'"):
        analysis.reward_tensor_from_frames(rewards, models)


def test_members_leave_every_grid_statistic_unchanged(grid, cheap):
    """Figures 1–3, the pair contrasts and the seed variance see only role `rm`: appending member models changes
    none of their numbers."""
    assert cheap.rm_indices == grid.rm_indices
    assert analysis.ensemble_members(cheap) == analysis.ensemble_members(grid)
    for a, b in ((analysis.pair_statistics(grid, [1, 4], draws=40), analysis.pair_statistics(cheap, [1, 4], draws=40)),):
        for name in ("figure1", "figure2", "paper_groups", "contrasts"):
            pd.testing.assert_frame_equal(a[name], b[name], check_exact=False, atol=1e-12, rtol=0)
    pd.testing.assert_frame_equal(analysis.seed_variance(grid, [1, 4], draws=40),
                                  analysis.seed_variance(cheap, [1, 4], draws=40), check_exact=False, atol=1e-12, rtol=0)
    pd.testing.assert_frame_equal(analysis.figure3(grid, [1, 4], draws=2, bootstrap=40),
                                  analysis.figure3(cheap, [1, 4], draws=2, bootstrap=40), check_exact=False,
                                  atol=1e-12, rtol=0)


def test_load_ensemble_costs(tmp_path):
    missing = tensor_mod.load_ensemble_costs(tmp_path / "ensembles.parquet")
    assert missing.empty and list(missing.columns) == list(tensor_mod.COST_COLUMNS)
    costs = pd.DataFrame({"ensemble": ["single", "lora"], "kind": ["rm", "lora"], "n_members": [1, 4],
                          "params_trained": [160_000_000, 2_000_000], "params_held": [160_000_000, 170_000_000],
                          "forwards_per_candidate": [1, 1], "train_s": [100.0, np.nan], "score_s": [10, 12],
                          "note": ["", None]})
    path = tmp_path / "ensembles.parquet"
    costs.to_parquet(path, index=False)
    back = tensor_mod.load_ensemble_costs(path)
    assert back.params_trained.tolist() == [160_000_000, 2_000_000] and back.score_s.dtype == np.float64
    assert np.isnan(back.train_s.iloc[1]) and back.note.tolist() == ["", None]
    for edit, words in ((lambda c: c.drop(columns="params_held"), ["missing column", "params_held"]),
                        (lambda c: c.assign(train_s=["fast", "slow"]), ["'train_s'", "dtype"]),
                        (lambda c: c.assign(n_members=[1.5, 4.0]), ["'n_members'"]),
                        (lambda c: c.assign(ensemble=["lora", "lora"]), ["'ensemble'", "repeats", "lora"])):
        edit(costs).to_parquet(path, index=False)
        with pytest.raises(RewardTensorError) as info:
            tensor_mod.load_ensemble_costs(path)
        assert str(path) in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


# ---------------------------------------------------------------------------------------------------
# Rankers: Figure 4 and Table 1


def test_a_users_named_ensemble_appears_in_table1(tmp_path):
    """Issue 31's acceptance: a bring-your-own models.parquet declares a named ensemble over some of its RMs; Table
    1 lists it after the finetune and pretrain ensembles and before the single RM, under the gold reward and the
    evaluator, with the value of its members' standardised mean (and each aggregator) reranking the pool."""
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=20, pool_size=6, n_reference=2,
                                         seed=3)
    rewards, models = analysis.reward_tensor_to_frames(t)
    mine = ["rm-p0-f1", "rm-p1-f1", "rm-p2-f0"]
    models["ensemble"] = [("best3" if mid in mine else None) for mid in models.model_id]
    x = analysis.load_reward_tensor(*write(tmp_path, rewards, models))
    res = analysis.run_analysis(x, ns=[1, 4], anova_draws=2, bootstrap=40)
    tab = res["table1"]
    for target in ("gold", "evaluator"):
        part = tab[tab.target == target]
        assert list(part.ensemble) == ["finetune"] * 4 + ["pretrain"] * 4 + ["best3"] * 4 + ["single RM"]
        assert list(part[part.ensemble == "best3"].aggregator) == list(bon.AGGREGATORS)
        idx = [x.model_ids.index(mid) for mid in mine]
        judge = bon.standardize(x.pool[x.role_index(target)])
        for agg in bon.AGGREGATORS:
            direct = bon.expected_best_of_n(bon.aggregate(bon.standardize(x.pool[idx]), agg), judge, 4).mean()
            row = part[(part.ensemble == "best3") & (part.aggregator == agg)].iloc[0]
            assert row.reward_mean == pytest.approx(direct, abs=1e-12) and row.R == 3
            assert row.reward_lo < row.reward_mean < row.reward_hi
    c = res["contrasts"]
    named = c[c.figure == "ensembles"]
    assert set(named.contrast) == {"best3 - single", "best3 - pretrain", "best3: share of pretrain gain"}
    assert named.note.str.contains("grid RMs too").all()  # its members are the user's RMs: said how they are treated
    assert named.resamples.str.contains("come from 3 pretrains").all()
    # the grid's own numbers are those of the same tensor without the declaration
    plain = analysis.run_analysis(t, ns=[1, 4], anova_draws=2, bootstrap=40)
    pd.testing.assert_frame_equal(plain["table1"], tab[tab.ensemble != "best3"].reset_index(drop=True))
    pd.testing.assert_frame_equal(plain["contrasts"], c[c.figure != "ensembles"].reset_index(drop=True))


def test_one_member_ensemble_is_its_own_best_of_n(cheap):
    """A weight-averaged model (one member) ranks by its own reward: aggregator `none`, the value of the
    model's exact best-of-n picks; a several-member ensemble ranks by each aggregator of standardised members."""
    fig4 = analysis.figure4(cheap, ns=[1, 4, 8])
    warm = cheap.ensembles["warm"][0]
    gold = cheap.role_index("gold")
    judge = bon.standardize(cheap.pool[gold])
    wins = bon.win_probabilities(cheap.pool[gold], cheap.reference[gold])
    for n in (1, 4, 8):
        p = bon.selection_probabilities(cheap.pool[warm], n)
        rows = fig4[(fig4.ranker == "warm") & (fig4.n == n) & (fig4.target == "gold")].set_index("metric")
        assert list(fig4[fig4.ranker == "warm"].aggregator.unique()) == ["none"]
        assert rows.loc["reward", "mean"] == pytest.approx(np.sum(p * judge, axis=-1).mean(), abs=1e-12)
        assert rows.loc["win_rate", "mean"] == pytest.approx(np.sum(p * wins, axis=-1).mean(), abs=1e-12)
        lora = list(cheap.ensembles["lora"])
        for agg in bon.AGGREGATORS:
            direct = bon.expected_best_of_n(bon.aggregate(bon.standardize(cheap.pool[lora]), agg), judge, n)
            row = fig4[(fig4.ranker == "lora") & (fig4.aggregator == agg) & (fig4.n == n) & (fig4.target == "gold")
                       & (fig4.metric == "reward")].iloc[0]
            assert row["mean"] == pytest.approx(direct.mean(), abs=1e-12)
    tab = analysis.table1(fig4, target="gold")
    assert list(tab.ensemble) == ["finetune"] * 4 + ["pretrain"] * 4 + ["lora"] * 4 + ["warm", "single RM"]
    assert tab[tab.ensemble == "warm"].aggregator.tolist() == ["none"]
    # the reward-hacking diagnostics rank by the same rankers
    length = np.arange(cheap.n_prompts * cheap.pool_size) % 7 + 5
    samples = pd.DataFrame({"prompt_id": np.repeat(cheap.prompt_ids, cheap.pool_size),
                            "sample_id": cheap.sample_ids.reshape(-1), "n_tokens": length})
    hack = analysis.reward_hacking(cheap, samples, ns=[8])
    row = hack[hack.ranker == "warm"].iloc[0]
    assert row.aggregator == "none" and row["mean"] == pytest.approx(
        np.sum(bon.selection_probabilities(cheap.pool[warm], 8) * length.reshape(cheap.n_prompts, -1), axis=-1).mean())
    assert list(hack[hack.ranker == "lora"].aggregator) == list(bon.AGGREGATORS)


# ---------------------------------------------------------------------------------------------------
# Intervals


def test_named_interval_by_brute_force(grid, cheap):
    """The named ensemble's jackknife over members, the paired prompt bootstrap (the grid's own draws) and the
    contrasts' parts, recomputed by hand."""
    n, draws, seed, level = 4, 60, 5, 0.9
    gold = grid.role_index("gold")
    target = bon.standardize(grid.pool[gold])
    rm = grid.rm_indices
    pids, fts = [grid.pretrain_ids[i] for i in rm], [grid.finetune_seeds[i] for i in rm]
    ens = seedstats.grid_ensembles(pids, fts)
    g = seedstats.grid_ensemble_values(grid.pool[rm], target, n, ens, pids, fts)
    members = cheap.pool[list(cheap.ensembles["lora"])]
    res = seedstats.named_ensemble_intervals(members, target, n, g, draws=draws, level=level, seed=seed,
                                             name="lora").set_index("statistic")
    k, p = members.shape[0], grid.n_prompts
    full = seedstats.ensemble_pick_values(members, target, n, "mean")
    thetas = np.array([seedstats.ensemble_pick_values(np.delete(members, a, axis=0), target, n).mean()
                       for a in range(k)])
    v_member = (k - 1) / k * np.sum((thetas - thetas.mean()) ** 2)
    w = seedstats.draw_bootstrap_weights(1, p, draws, seed).prompt
    v_prompt = np.var(w @ full / p, ddof=1)
    row = res.loc["lora"]
    assert row.estimate == pytest.approx(full.mean(), abs=1e-12)
    assert row.se_member == pytest.approx(math.sqrt(v_member), rel=1e-12)
    assert row.se_prompt == pytest.approx(math.sqrt(v_prompt), rel=1e-12)
    assert row.se == pytest.approx(math.sqrt(v_member + v_prompt), rel=1e-12)
    df = (v_member + v_prompt) ** 2 / (v_member**2 / (k - 1) + v_prompt**2 / (p - 1))
    assert row.df == pytest.approx(df, rel=1e-10)
    q = student_t.ppf(0.5 + level / 2, df)
    assert (row.lo, row.hi) == pytest.approx((row.estimate - q * row.se, row.estimate + q * row.se), rel=1e-10)
    assert "jackknife over its 4 members" in row.resamples and "conditional on its backbone" in row.resamples
    # the grid's cells draw the same prompt weights: their single-RM se_prompt is this w's
    cells = seedstats.grid_ensemble_intervals(grid.pool[rm], target, n, ens, pids, fts, draws=draws, seed=seed,
                                              values=g).set_index("statistic")
    single = g.stats["single"]
    assert cells.loc["single", "se_prompt"] == pytest.approx(np.std(w @ single.full / p, ddof=1), rel=1e-12)
    # lora - single: the member part is lora's, the pretrain part single's, the prompt part the paired difference
    diff = res.loc["lora - single"]
    assert diff.estimate == pytest.approx(full.mean() - single.full.mean(), abs=1e-12)
    assert diff.se_member == pytest.approx(row.se_member, rel=1e-12)
    assert diff.se_pretrain == pytest.approx(cells.loc["single", "se_pretrain"], rel=1e-12)
    assert diff.se_prompt == pytest.approx(np.std(w @ (full - single.full) / p, ddof=1), rel=1e-12)
    # the share of the pretrain ensemble's gain: (lora - single) / (pretrain - single), each part by hand
    pre = g.stats["pretrain"]
    share = res.loc["share of pretrain gain"]
    gain = pre.full.mean() - single.full.mean()
    assert share.estimate == pytest.approx((full.mean() - single.full.mean()) / gain, rel=1e-12)
    by_member = (thetas - single.full.mean()) / gain
    by_pretrain = np.array([(full.mean() - s.mean()) / (pr.mean() - s.mean())
                            for s, pr in zip(single.parts["pretrain"], pre.parts["pretrain"], strict=True)
                            if s is not None and pr is not None])
    jk = [(len(x) - 1) / len(x) * np.sum((x - x.mean()) ** 2) for x in (by_member, by_pretrain)]
    ratio = (w @ (full - single.full)) / (w @ (pre.full - single.full))
    assert share.se_member == pytest.approx(math.sqrt(jk[0]), rel=1e-10)
    assert share.se_pretrain == pytest.approx(math.sqrt(jk[1]), rel=1e-10)
    assert share.se_prompt == pytest.approx(np.std(ratio, ddof=1), rel=1e-10)
    # one member: no member part, and said so
    solo = seedstats.named_ensemble_intervals(members[:1], target, n, g, draws=draws, seed=seed, name="solo")
    solo = solo.set_index("statistic")
    assert np.isnan(solo.loc["solo", "se_member"]) and "no member jackknife (one member)" in solo.loc["solo", "resamples"]
    assert solo.loc["solo", "estimate"] == pytest.approx(
        np.sum(bon.selection_probabilities(members[0], n) * target, axis=-1).mean(), abs=1e-12)


def test_share_of_an_unresolved_gain_is_nan():
    """A pretrain gain whose interval includes 0 has no share: NaN, with the reason."""
    rng = np.random.default_rng(0)
    p = 40
    w = seedstats.draw_bootstrap_weights(1, p, 100, 0).prompt
    noise = seedstats.Jackknifed(rng.normal(0, 1, p), {"pretrain": tuple(rng.normal(0, 1, p) for _ in range(3))})
    gain = seedstats.Jackknifed(rng.normal(0.5, 1, p))
    out = seedstats.gain_share_interval(gain, noise, w, 0.9)
    assert np.isnan(out["estimate"]) and out["note"] == seedstats.UNRESOLVED_GAIN
    clear = seedstats.Jackknifed(rng.normal(2.0, 0.5, p))
    resolved = seedstats.gain_share_interval(gain, clear, w, 0.9)
    assert resolved["lo"] < resolved["estimate"] < resolved["hi"] and resolved["note"] == ""


def test_named_interval_covers_the_expectation_over_members_and_prompts():
    """Coverage of the named ensemble's 90% interval: it resamples members (jackknife) and prompts (bootstrap), so
    its target is the expectation over both of a K-member ensemble's best-of-n value (the prompt mean of
    :func:`ensemble_pick_values` of freshly drawn members on fresh prompts), computed here from 400 draws of
    members each on 500 prompts (its Monte Carlo se ~0.005, against an se of ~0.1 per replicate). In 200
    replicates, each with fresh members and 60 fresh prompts, the interval should hold it about 90% of the time."""
    k, n, size, prompts = 4, 4, 8, 60
    rng = np.random.default_rng(123)
    truth = np.mean([seedstats.ensemble_pick_values(*planted_members(rng, 500, size, k), n).mean() for _ in range(400)])
    rng = np.random.default_rng(0)
    hits = []
    for r in range(200):
        members, target = planted_members(rng, prompts, size, k)
        row = seedstats.named_ensemble_intervals(members, target, n, draws=200, level=0.9, seed=r).iloc[0]
        hits.append(row.lo <= truth <= row.hi)
    coverage = float(np.mean(hits))
    assert 0.8 <= coverage <= 0.97, coverage


def test_the_analysis_simulates_the_coverage_of_its_named_ensembles_intervals():
    """perm.coverage.simulate_named_coverage at each named ensemble's size, in the run's coverage table (and so
    in the report's): nominal 90%, 150 simulated 5-member ensembles."""
    cov = simulate_named_coverage([5, 1, 5], sims=150, seed=3)
    assert list(cov.statistic) == ["named ensemble (5 members)"] and cov.sigma_pt.isna().all()
    assert 0.8 <= cov.coverage.iloc[0] <= 0.97, cov.coverage.iloc[0]
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=20, pool_size=8, n_reference=2)
    named = with_members(t, [("lora", 3, "lora"), ("warm", 1, "warm")])
    res = analysis.run_analysis(named, anova_draws=2, bootstrap=20, coverage_sims=5)
    assert "named ensemble (3 members)" in set(res["coverage"].statistic)


# ---------------------------------------------------------------------------------------------------
# The ensembles table, and the analyze stage


COSTS = pd.DataFrame({"ensemble": ["single", "finetune", "pretrain", "lora"], "kind": ["rm", "grid", "grid", "lora"],
                      "n_members": [1, 2, 3, 4], "params_trained": [160, 180, 480, 2], "params_held": [160, 320, 480, 170],
                      "forwards_per_candidate": [1, 2, 3, 1], "train_s": [100.0, 200.0, 2400.0, 130.0],
                      "score_s": [10.0, 20.0, 30.0, 12.0], "note": ["", "", "", "4 adapters"]})


def test_ensembles_table(tmp_path, grid, cheap):
    res = analysis.run_analysis(cheap, ns=[1, 8], anova_draws=2, bootstrap=40, costs=COSTS)
    e = res["ensembles"]
    assert list(e.columns) == analysis.ENSEMBLE_TABLE_COLUMNS and (e.n == 8).all() and (e.metric == "reward").all()
    assert list(e.target.unique()) == ["gold", "evaluator"]
    gold = e[e.target == "gold"]
    assert list(gold.ensemble) == ["single"] + ["finetune"] * 4 + ["pretrain"] * 4 + ["lora"] * 4 + ["warm"]
    assert list(gold.aggregator) == ["none", *bon.AGGREGATORS * 3, "none"]
    lora = gold[gold.ensemble == "lora"].set_index("aggregator")
    assert lora.loc["mean", "train_s"] == 130.0 and lora.loc["mean", "note"] == "4 adapters"
    assert lora.loc["mean", "members"] == 4 and "conditional on its backbone" in lora.loc["mean", "resamples"]
    assert np.isnan(gold[gold.ensemble == "warm"].params_trained).all()  # no costs for it: NaN
    assert gold[gold.ensemble == "single"].share.iloc[0] == 0.0 and (gold[gold.ensemble == "pretrain"].share == 1).all()
    c = res["contrasts"]
    share = c[(c.contrast == "lora: share of pretrain gain") & (c.target == "gold") & (c.metric == "reward")]
    assert share.set_index("aggregator").estimate.to_dict() == pytest.approx(lora.share.to_dict(), nan_ok=True)
    one = c[(c.contrast == "warm - pretrain")]
    assert (one.aggregator == "none").all() and one.note.str.contains("pretrain ensembles' mean aggregator").all()
    cells = res["table1"].set_index(["target", "ensemble", "aggregator"])
    assert cells.loc[("gold", "lora", "mean"), "reward_lo"] == pytest.approx(lora.loc["mean", "lo"])
    assert res["models"].ensemble.tolist()[-5:] == ["lora"] * 4 + ["warm"]
    assert res["meta"].named_ensembles.iloc[0] == "lora(4),warm(1)"
    written = analysis.save_analysis(res, tmp_path / "analysis")
    pd.testing.assert_frame_equal(pd.read_parquet(written["ensembles"]), e, check_dtype=False)
    # no named ensembles: empty without costs, the grid's rows with them
    plain = analysis.run_analysis(grid, ns=[1, 8], anova_draws=2, bootstrap=40)
    assert plain["ensembles"].empty and list(plain["ensembles"].columns) == analysis.ENSEMBLE_TABLE_COLUMNS
    assert "named_ensembles" not in plain["meta"].columns
    costed = analysis.run_analysis(grid, ns=[1, 8], anova_draws=2, bootstrap=40, costs=COSTS)["ensembles"]
    assert set(costed.ensemble) == {"single", "finetune", "pretrain"} and costed.train_s.notna().all()


def test_analyze_reads_the_costs_beside_a_users_models(tmp_path, cheap):
    """`perm analyze --rewards --models`: ensembles.parquet beside the models file is read and keys the analysis
    (adding it reruns); without it the key is what it always was."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from perm.cli import app
    from perm.config import RunConfig, to_dict
    from perm.stages import analyze
    from perm.store import hash_obj

    cfg = RunConfig()
    old = hash_obj({"analysis": to_dict(cfg.analysis), "tensor": {"rewards": "r", "models": "m"}, "version": 4,
                    "scope": cfg.reward.finetune_seed_scope})
    assert analyze.keys(cfg, {"rewards": "r", "models": "m"})["analyze"] == old
    assert analyze.keys(cfg, {"rewards": "r", "models": "m", "ensembles": "e"})["analyze"] != old
    rp, mp = write(tmp_path, *analysis.reward_tensor_to_frames(cheap))
    out = tmp_path / "run"
    args = ["analyze", f"out={out}", "--rewards", str(rp), "--models", str(mp), "analysis.bootstrap=20",
            "analysis.anova_draws=1", "analysis.coverage_sims=0", "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    table = pq.read_table(out / "analysis" / "ensembles.parquet").to_pandas()
    assert "lora" in set(table.ensemble) and table.train_s.isna().all()
    COSTS.to_parquet(tmp_path / "ensembles.parquet", index=False)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    table = pq.read_table(out / "analysis" / "ensembles.parquet").to_pandas()
    assert table[table.ensemble == "lora"].train_s.eq(130.0).all()


def test_agreement_with_the_pretrain_ensembles_pick_by_brute_force():
    """Each ranker's best-of-n pick agrees with the pretrain ensemble's (mean aggregator) as often as
    enumerating every n-subset of the pool says; the pretrain ensemble agrees with itself always."""
    from itertools import combinations

    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=4, pool_size=6, n_reference=2)
    named = with_members(t, [("lora", 3, "lora")])
    table = analysis.pretrain_agreement(named, ns=[1, 2, 3, 6]).set_index(["ranker", "aggregator", "n"])
    scores = {(r, a): s for r, a, s in analysis.ranker_scores(named)}
    ref = scores[("pretrain", "mean")][0]
    for key in (("lora", "median"), ("finetune", "min"), ("single", "none")):
        for n in (1, 2, 3, 6):
            want = np.mean([np.mean([np.mean([row[p, list(c)].argmax() == ref[p, list(c)].argmax()
                                              for c in combinations(range(6), n)]) for p in range(4)])
                            for row in scores[key]])
            assert table.loc[(*key, n), "mean"] == pytest.approx(want, abs=1e-12), (key, n)
    assert np.allclose(table.xs(("pretrain", "mean"), level=("ranker", "aggregator"))["mean"], 1.0, atol=1e-12)


def test_rerun_runs_a_complete_stage_again_once(tmp_path, cheap):
    """`--rerun analyze` runs the analysis again where the manifest holds it complete for the same inputs (perm's
    code changed; keys do not hash it), once per run; an unknown stage exits 2 naming the known ones."""
    from typer.testing import CliRunner

    from perm.cli import app

    rp, mp = write(tmp_path, *analysis.reward_tensor_to_frames(cheap))
    out = tmp_path / "run"
    args = ["analyze", f"out={out}", "--rewards", str(rp), "--models", str(mp), "analysis.bootstrap=20",
            "analysis.anova_draws=1", "analysis.coverage_sims=0", "--quiet"]

    def finished():
        return json.loads((out / "manifest.json").read_text())["stages"]["analyze"]["finished"]

    assert CliRunner().invoke(app, args).exit_code == 0
    first = finished()
    time.sleep(1.1)
    assert CliRunner().invoke(app, args).exit_code == 0 and finished() == first  # complete: skipped
    r = CliRunner().invoke(app, [*args, "--rerun", "analyze"])
    assert r.exit_code == 0, r.output
    assert finished() != first
    r = CliRunner().invoke(app, [*args, "--rerun", "analyse"])
    assert r.exit_code == 2 and "--rerun: unknown stage(s) ['analyse']" in r.output
