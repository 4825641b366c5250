"""perm.estimate (what `perm check --gpu` prints): the FLOP and memory arithmetic, on hand-checkable shapes."""

from __future__ import annotations

import pytest

from perm.config import config_from_overrides
from perm.estimate import BYTES_TRAIN, GPUS, MFU, Shape, estimate, table


def test_train_rm_hours_and_memory_are_the_stated_arithmetic():
    cfg = config_from_overrides(["reward.max_length=100", "reward.batch_size=10", "reward.epochs=2",
                                 "evaluator.enabled=false"])
    grid = Shape.of(10**9, 10, 1000)
    est = {e.stage: e for e in estimate(cfg, {"grid": grid, "policy": grid}, n_pairs=1000, n_prompts=10,
                                        gpu="h100")}
    tokens = 1000 * 2 * (100 + 25)  # pairs x epochs x (a sequence + the other completion)
    assert est["train-rm"].jobs == 9  # the paper layout of 5 pretrains x 5 finetune seeds
    assert est["train-rm"].gpu_hours == pytest.approx(9 * 6 * 1e9 * tokens / (GPUS["h100"][0] * MFU["train"]) / 3600)
    assert est["train-rm"].peak_gb == pytest.approx((BYTES_TRAIN * 1e9 + 34 * 1000 * 10 * 10 * 125) / 1e9)
    assert est["sample"].peak_gb < est["train-rm"].peak_gb and "score" in est
    micro = config_from_overrides(["reward.max_length=100", "reward.batch_size=10", "reward.micro_batch_size=2",
                                   "evaluator.enabled=false"])
    small = {e.stage: e for e in estimate(micro, {"grid": grid}, 1000, 10)}["train-rm"]
    assert small.peak_gb < est["train-rm"].peak_gb  # gradient accumulation: activations of 2 pairs, not 10


def test_shape_from_parameters_alone_is_near_pythias():
    for params, layers, hidden in ((162_322_944, 12, 768), (1_011_781_632, 16, 2048)):
        guess = Shape.of(params)
        assert not guess.exact and 0.6 < guess.layers * guess.hidden / (layers * hidden) < 1.7


def test_the_table_flags_a_job_larger_than_the_card():
    cfg = config_from_overrides(["reward.max_length=640", "evaluator.enabled=false"])
    lines = table(estimate(cfg, {"grid": Shape.of(10**9, 16, 2048)}, 10**5, 500, "l4"), "l4", 1)
    assert lines[0].startswith("estimated on l4") and "MORE THAN THE CARD HOLDS" in "\n".join(lines)
    assert lines[-1].startswith("  total")
    with pytest.raises(ValueError, match="unknown GPU kind"):
        estimate(cfg, {}, 1, 1, "tpu")


def test_perm_check_prints_the_estimate_of_the_default(capsys):
    from typer.testing import CliRunner

    from perm.cli import app

    out = CliRunner().invoke(app, ["check", "--gpu", "a100"])
    assert out.exit_code == 0, out.output
    assert "estimated on a100" in out.output and "train-rm    9 jobs" in out.output
    bad = CliRunner().invoke(app, ["check", "--gpu", "tpu"])
    assert bad.exit_code == 2 and "unknown card" in bad.output


def test_a_sampling_budget_sizes_the_estimated_decode_batches():
    cfg = config_from_overrides(["sample.memory_gb=0.001", "evaluator.enabled=false"])
    policy = Shape.of(10**9, 16, 2048)
    est = {e.stage: e for e in estimate(cfg, {"policy": policy}, None, 10, "h100")}["sample"]
    assert "decode batches of 72 rows" in est.note  # one prompt's pool and references: the least a batch holds
    whole = {e.stage: e for e in estimate(config_from_overrides(["evaluator.enabled=false"]), {"policy": policy},
                                            None, 10, "h100")}["sample"]
    assert "decode batches of 576 rows" in whole.note and whole.peak_gb > est.peak_gb


def test_trained_rms_loaded_as_the_grid_train_nothing_and_are_scored():
    cfg = config_from_overrides(["reward.rm_checkpoints=[p0:0=/a, p1:0=/b]", "evaluator.enabled=false",
                                 "pretrain.checkpoints=[x, y]"])
    est = {e.stage: e for e in estimate(cfg, {"grid": Shape.of(10**8, 12, 768)}, 1000, 10, "h100")}
    assert "train-rm" not in est and est["score"].jobs == 2


def test_perm_checks_estimate_counts_every_pair_file_the_rms_train_on(tmp_path):
    """`mix` trains the grid on the policy pairs and the testbed's; the evaluator on its extra posts' pairs
    too (perm.stages._grid.pair_count, as the run's plan counts them)."""
    from perm.stages._grid import evaluator_pair_files, pair_count, pair_files

    base = [f"out={tmp_path}", "reward.pairs_from=null", "evaluator.rm_checkpoint=null"]
    policy = config_from_overrides([*base, "reward.pairs=policy"])
    mix = config_from_overrides([*base, "reward.pairs=mix"])
    n_policy, _ = pair_count(policy, tmp_path, pair_files(policy))
    n_mix, _ = pair_count(mix, tmp_path, pair_files(mix))
    assert n_mix == n_policy + mix.testbed.n_prefs_train
    n_ev, _ = pair_count(mix, tmp_path, evaluator_pair_files(mix))
    assert n_ev > n_mix  # the evaluator's extra posts
    from typer.testing import CliRunner

    from perm.cli import app

    out = CliRunner().invoke(app, ["check", "--gpu", "h100", *base, "reward.pairs=mix"])
    assert out.exit_code == 0 and f"{n_mix:,} pairs" in out.output, out.output
    grid = Shape.of(10**8, 12, 768)
    one = {e.stage: e for e in estimate(mix, {"grid": grid, "evaluator": grid}, n_mix, 10, "h100")}["train-rm"]
    more = {e.stage: e for e in estimate(mix, {"grid": grid, "evaluator": grid}, n_mix, 10, "h100",
                                         evaluator_pairs=n_ev)}["train-rm"]
    assert more.gpu_hours > one.gpu_hours
