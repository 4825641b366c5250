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


def test_heterogeneous_share_reduces_to_the_planted_one():
    assert heterogeneous_share_pt(0.5, 0.0, h=0.0) == pytest.approx(ss.planted_shares(0.5, 0.0)["share_pt"])
    assert heterogeneous_share_pt(0.0, 0.5) == 0.0
    assert 0 < heterogeneous_share_pt(0.5, 0.5) < heterogeneous_share_pt(0.5, 0.0)


def test_simulate_coverage_table_and_share_statistic():
    df = simulate_coverage(*PAPER, sims=4, draws=20, n_prompts=10, pool_size=4, scenarios=((0.5, 0.0),))
    assert list(df.statistic) == ["single mean", "share_pt"]
    assert set(df.columns) >= {"sigma_pt", "sigma_ft", "coverage", "mc_se", "width", "sims", "level", "resamples"}
    assert df.coverage.between(0, 1).all() and (df.width > 0).all()
    assert "finetune seeds (F=5, crossed with pretrains)" in df.resamples.iloc[0]
