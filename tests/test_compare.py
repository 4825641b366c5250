"""perm compare: replicate runs side by side (between-run sd vs within-run se, contrasts per run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perm import analysis
from perm.cli import app
from perm.compare import CompareError, compare_runs, run_statistics, summary_markdown, write_comparison


def _run(root, seed, effect):
    """A run directory whose analysis/ comes from a synthetic grid (3 pretrains x 2 finetunes)."""
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=60, pool_size=8,
                                         pretrain_effect=effect, seed=seed)
    run = root / f"run{seed}-{effect}"
    analysis.save_analysis(analysis.run_analysis(t, anova_draws=2, seed=0, bootstrap=100), run / "analysis")
    return run


@pytest.fixture(scope="module")
def replicates(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicates")
    return [_run(root, s, 1.0) for s in (1, 2, 3)]


def test_summary_is_mean_sd_and_se_of_the_runs(replicates):
    per_run, summary = compare_runs(replicates)
    assert set(per_run.run) == {str(r) for r in replicates}
    for _, row in summary.sample(20, random_state=0).iterrows():
        v = per_run[(per_run.statistic == row.statistic) & (per_run.key == row.key) & (per_run.n == row.n)]
        assert len(v) == 3
        assert row["mean"] == pytest.approx(v.value.mean())
        assert row["sd"] == pytest.approx(v.value.std(ddof=1))
        assert row["se_between"] == pytest.approx(v.value.std(ddof=1) / np.sqrt(3))
        assert row["se_within"] == pytest.approx(v.se.mean())  # contrasts carry their own seed-aware se
        assert row["se_prompt"] == pytest.approx(v.se_prompt.mean())
    # the values are the runs' own analysis numbers
    f2 = pd.read_parquet(replicates[0] / "analysis" / "figure2.parquet")
    mine = per_run[(per_run.run == str(replicates[0])) & (per_run.statistic == "agreement")]
    got = mine.set_index(["key", "n"]).value
    for _, r in f2.iterrows():
        assert got[(r["relation"], r["n"])] == r["mean"]


def test_contrasts_are_signed_as_the_paper_and_counted(replicates, tmp_path):
    _, summary = compare_runs(replicates)
    agree = summary[(summary.statistic == "agreement: same_pretrain - neither") & (summary.n == 4)].iloc[0]
    assert agree.contrast and agree.positive == 3  # a planted pretrain effect: same pretrain agrees more
    pick = summary[(summary.statistic == "pick reward: same_pretrain - neither") & (summary.n == 4)].iloc[0]
    assert pick.positive == 3 and pick.se_within > 0
    paper = summary[(summary.statistic == "agreement: same_pretrain - different_pretrain") & (summary.n == 4)]
    assert paper.iloc[0].positive == 3
    null = [_run(tmp_path, s, 0.0) for s in (4, 5, 6)]
    _, s0 = compare_runs(null)
    a0 = s0[(s0.statistic == "agreement: same_pretrain - neither") & (s0.n == 4)].iloc[0]
    assert abs(a0["mean"]) < agree["mean"] / 2


def test_identical_runs_have_no_spread(replicates, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(replicates[0], twin)
    _, summary = compare_runs([replicates[0], twin])
    assert (summary.sd == 0).all()


def test_run_statistics_has_every_figure(replicates):
    stats = set(run_statistics(replicates[0]).statistic)
    assert {"agreement", "pick reward under other RMs", "variance explained by the RM",
            "agreement: same_pretrain - neither", "pick reward: same_pretrain - neither",
            "seed variance share_pt", "table1 gold reward: pretrain - finetune"} <= stats


def test_errors_name_the_run(replicates, tmp_path):
    with pytest.raises(CompareError, match="at least two runs"):
        compare_runs(replicates[:1])
    with pytest.raises(CompareError, match="named twice"):
        compare_runs([replicates[0], replicates[0]])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CompareError, match=r"bare: no analysis/figure1\.parquet"):
        compare_runs([replicates[0], bare])


def test_markdown_and_files(replicates, tmp_path):
    _, summary = compare_runs(replicates)
    md = summary_markdown(summary, replicates)
    assert md.startswith(f"# 3 runs compared at n = {summary.n.max()}")
    assert "| agreement: same_pretrain - neither | contrast |" in md and "3/3" in md
    path = write_comparison(replicates, tmp_path / "cmp", n=2)
    assert path.read_text().startswith("# 3 runs compared at n = 2")
    assert len(pd.read_parquet(tmp_path / "cmp" / "summary.parquet")) == len(summary)
    with pytest.raises(CompareError, match="--n 3"):
        write_comparison(replicates, tmp_path / "cmp2", n=3)
    assert not (tmp_path / "cmp2" / "summary.md").exists()


def test_cli(replicates, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", *map(str, replicates), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "runs compared" in res.output and (tmp_path / "c" / "per_run.parquet").exists()
    res = runner.invoke(app, ["compare", str(replicates[0]), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing: no analysis/figure1.parquet" in res.output
