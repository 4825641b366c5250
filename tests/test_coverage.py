"""Coverage of perm's seed-aware intervals on the default's designs (5 pretrains, finetune seeds crossed under
the shared scope), by simulation through perm.coverage, and its pieces."""

from __future__ import annotations

import numpy as np
import pytest

from perm import seedstats as ss
from perm.coverage import heterogeneous_share_pt, simulate_coverage

PAPER = (["seed0"] * 5 + ["seed1", "seed2", "seed3", "seed4"], [0, 1, 2, 3, 4, 0, 0, 0, 0])
FULL = ([f"seed{p}" for p in range(5) for _ in range(5)], [f for _ in range(5) for f in range(5)])


@pytest.mark.parametrize("layout", [PAPER, FULL], ids=["paper", "full"])
def test_single_mean_intervals_cover_on_the_default_designs(layout):
    """300 simulated grids per scenario (no seed effect, pretrain only, finetune only, both; an RM-level
    interaction throughout): the 90% interval of a mean over RMs and prompts covers 85-97%. (Without any
    seed effect the interaction is seen by both seed factors, so that scenario is conservative, ~96%.)"""
    df = simulate_coverage(*layout, sims=300, draws=200, n_prompts=40, statistics=("single mean",))
    assert len(df) == 4 and (df.sims == 300).all()
    assert df.coverage.between(0.85, 0.97).all(), df
    seeded = df[(df.sigma_pt > 0) | (df.sigma_ft > 0)]
    assert seeded.coverage.between(0.85, 0.95).all(), df


def test_nested_view_of_a_crossed_design_under_covers():
    """The old intervals (finetune seeds nested in pretrains, no small-sample correction) on a crossed
    finetune effect: the design matters, and perm.coverage sees it."""
    rng = np.random.default_rng(0)
    pids, fts = FULL
    pu, _ = ss.pretrain_units(pids)
    fu, _ = ss.pretrain_units(fts)
    hits_nested, hits_crossed = [], []
    for i in range(150):
        y = (0.5 * rng.standard_normal(5)[fu] + 0.3 * rng.standard_normal(25))[:, None] + rng.standard_normal((25, 40))
        arm = {"y": ss.single_rm_arm(y)}
        nested = ss.multi_bootstrap(arm, pids, draws=200, seed=i).iloc[0]
        crossed = ss.multi_bootstrap(arm, pids, draws=200, seed=i, finetune_seeds=fts).iloc[0]
        hits_nested.append(nested.lo_pct <= 0 <= nested.hi_pct)
        hits_crossed.append(crossed.lo <= 0 <= crossed.hi)
    assert np.mean(hits_nested) < 0.75 < 0.85 <= np.mean(hits_crossed)


@pytest.mark.slow
def test_seed_shares_cover_in_the_full_layout():
    """The full layout (every pretrain x finetune seed) at the default's pool of 64: 1,000 grids per scenario
    whose seeds differ in effect size (log-sd 0.5; Monte Carlo se of a coverage ~0.011); the 90% intervals of
    both seed shares cover 85-95% where the share is not 0 (their upper end on the log scale where resolved:
    seedstats.log_upper; the symmetric t interval alone covered 0.76-0.83 here). 300 grids (0.82-0.88) could
    not tell this from a little under 85%; 4,000 more at other seeds gave 0.86-0.87 (docs/results.md).
    Where the share is 0 they cover at least 0.85."""
    df = simulate_coverage(*FULL, sims=1000, draws=200, n_prompts=60, pool_size=64,
                           statistics=("share_pt", "share_ft"), scenarios=((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)))
    seeded = df[((df.statistic == "share_pt") & (df.sigma_pt > 0)) | ((df.statistic == "share_ft") & (df.sigma_ft > 0))]
    assert len(seeded) == 4 and seeded.coverage.between(0.85, 0.95).all(), df
    assert (df.drop(seeded.index).coverage >= 0.85).all(), df


def test_paper_layout_gives_the_seed_shares_no_interval():
    """In the paper layout every same_pretrain pair is seed0's and every same_finetune pair ft0's: the shares
    keep their estimates, lose their intervals (with the reason), and have no coverage rows."""
    rng = np.random.default_rng(3)
    pids, fts = PAPER
    pool = ss.planted_pool(rng, pids, fts, 20, 8, 0.5, 0.5)
    df = ss.decomposition_intervals(pool, pids, fts, draws=50).set_index("statistic")
    for k in ("share_pt", "share_ft", "sigma2_pt", "sigma2_ft"):
        assert np.isfinite(df.loc[k, "estimate"]) and np.isnan(df.loc[k, ["se", "lo", "hi"]].astype(float)).all()
    assert "pretrain seed0" in df.loc["share_pt", "note"] and "finetune seed 0" in df.loc["share_ft", "note"]
    assert np.isnan(df.loc["share_res", "lo"]) and "seed components leave" in df.loc["share_res", "note"]
    assert np.isfinite(df.loc["D_neither", "lo"]) and df.loc["D_neither", "note"] == ""
    full = ss.decomposition_intervals(ss.planted_pool(rng, *FULL, 20, 8, 0.5, 0.5), *FULL, draws=50)
    assert (full.note == "").all() and np.isfinite(full.lo).all()
    cov = simulate_coverage(*PAPER, sims=3, draws=20, n_prompts=10, pool_size=4, scenarios=((0.5, 0.0),))
    assert list(cov.statistic) == ["single mean"]
    per_rm = simulate_coverage(*FULL, scope="per_rm", sims=3, draws=20, n_prompts=10, pool_size=4,
                               scenarios=((0.5, 0.0),))
    assert list(per_rm.statistic) == ["single mean", "share_pt"]  # no same_finetune pairs: no finetune share


def test_log_upper_follows_the_skew_and_never_falls_as_the_se_grows():
    # estimate 0.1, se 0.05 (sigma 0.5 < 1/1.645), df inf: 0.1 exp(0.125 + 1.645 * 0.5) = 0.2578
    assert ss.log_upper(0.1, 0.05, 0.0178, 0.1822, np.inf, 0.9) == pytest.approx(
        0.1 * np.exp(0.125 + 1.6449 * 0.5), rel=1e-4)
    assert ss.log_upper(0.6, 0.2, 0.17, 1.03, 4.0, 0.9, ceiling=1.0) == 1.0  # a share stops at 1
    assert ss.log_upper(-0.02, 0.05, -0.1, 0.06, 4.0, 0.9) == 0.06  # no log scale at or below 0
    assert np.isnan(ss.log_upper(0.1, np.nan, np.nan, np.nan, 4.0, 0.9))  # NaN kept
    q = 1.6449  # where the t interval reaches 0 (se >= estimate / q) sigma is held at 1 / q: continuous, and
    ups = [ss.log_upper(0.1, se, 0.1 - q * se, 0.1 + q * se, np.inf, 0.9) for se in np.linspace(0.01, 0.2, 40)]
    assert all(b >= a - 1e-12 for a, b in zip(ups, ups[1:], strict=False))  # never falls as the se grows
    small = ss.log_upper(0.02, 0.04, 0.02 - q * 0.04, 0.02 + q * 0.04, np.inf, 0.9)
    assert small == pytest.approx(0.02 + q * 0.04)  # a small estimate keeps its t interval (not 2% to 60%)


def test_heterogeneous_share_reduces_to_the_planted_one():
    assert heterogeneous_share_pt(0.5, 0.0, h=0.0) == pytest.approx(ss.planted_shares(0.5, 0.0)["share_pt"])
    assert heterogeneous_share_pt(0.0, 0.5) == 0.0
    assert 0 < heterogeneous_share_pt(0.5, 0.5) < heterogeneous_share_pt(0.5, 0.0)


def test_simulate_coverage_table_and_share_statistic():
    df = simulate_coverage(*FULL, sims=4, draws=20, n_prompts=10, pool_size=4, scenarios=((0.5, 0.0),))
    assert list(df.statistic) == ["single mean", "share_pt", "share_ft"]
    assert set(df.columns) >= {"sigma_pt", "sigma_ft", "coverage", "mc_se", "width", "sims", "level", "resamples"}
    assert df.coverage.between(0, 1).all() and (df.width > 0).all()
    assert "finetune seeds (F=5, crossed with pretrains)" in df.resamples.iloc[0]
