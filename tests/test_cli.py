"""The command line: exit codes, error messages naming file/line/field, nothing half-written."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from perm.analysis import reward_tensor_to_frames, synthetic_reward_tensor
from perm.cli import app

runner = CliRunner()


def test_bad_override_exits_2_naming_the_key(tmp_path):
    r = runner.invoke(app, ["testbed", f"out={tmp_path / 'x'}", "testbed.sede=3"])
    assert r.exit_code == 2
    assert "testbed.sede: unknown key" in r.output
    r = runner.invoke(app, ["testbed", "testbed.seed=abc"])
    assert r.exit_code == 2 and "testbed.seed: expected int" in r.output


def test_testbed_command_is_deterministic(tmp_path):
    small = ["testbed.n_corpus_docs=200", "testbed.n_sft=20", "testbed.n_prefs_train=40", "testbed.n_prefs_eval=20",
             "testbed.n_eval_prompts=5", "testbed.vocab_size=400", "--quiet"]
    for name in ("a", "b"):
        r = runner.invoke(app, ["testbed", f"out={tmp_path / name}", *small])
        assert r.exit_code == 0, r.output
    for f in ("corpus", "sft_train", "prefs_train", "prefs_eval", "eval_prompts"):
        assert (tmp_path / "a" / "data" / f"{f}.parquet").read_bytes() == (tmp_path / "b" / "data" / f"{f}.parquet").read_bytes()
    assert "n_sft: 20" in (tmp_path / "a" / "config.yaml").read_text()  # the resolved config is saved


def _user_tensor(tmp_path, **kw):
    rewards, models = reward_tensor_to_frames(synthetic_reward_tensor(n_prompts=20, pool_size=8, **kw))
    rewards.to_parquet(tmp_path / "rewards.parquet", index=False)
    models.to_parquet(tmp_path / "models.parquet", index=False)
    return rewards, models


def test_report_on_a_users_reward_tensor(tmp_path):
    _user_tensor(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["report", f"out={out}", "--rewards", str(tmp_path / "rewards.parquet"),
                            "--models", str(tmp_path / "models.parquet"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "report" / "index.html").exists()
    assert pq.read_table(out / "analysis" / "figure2.parquet").num_rows > 0
    assert not (out / "data").exists()  # nothing of a testbed was built for a user's tensor


def test_malformed_reward_tensor_exits_2_and_writes_nothing(tmp_path):
    rewards, _ = _user_tensor(tmp_path)
    rewards.loc[3, "reward"] = float("nan")
    rewards.to_parquet(tmp_path / "rewards.parquet", index=False)
    out = tmp_path / "run"
    r = runner.invoke(app, ["analyze", f"out={out}", "--rewards", str(tmp_path / "rewards.parquet"),
                            "--models", str(tmp_path / "models.parquet")])
    assert r.exit_code == 2
    assert "rewards.parquet" in r.output
    assert not (out / "analysis").exists()


def test_rewards_without_models_is_an_error(tmp_path):
    r = runner.invoke(app, ["analyze", "--rewards", "x.parquet"])
    assert r.exit_code == 2 and "--rewards and --models go together" in r.output


def test_bad_preference_file_exits_2_naming_line_and_field(tmp_path, tiny_backbone_dir):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n')
    out = tmp_path / "run"
    r = runner.invoke(app, ["testbed", f"out={out}", f"data.prefs={tmp_path / 'p.jsonl'}", "data.train_split=null",
                            f"pretrain.checkpoints=[{tiny_backbone_dir}]", f"sft.checkpoint={tiny_backbone_dir}",
                            "evaluator.enabled=false", "reward.pairs=testbed"])
    assert r.exit_code == 2
    assert "p.jsonl: line 2: field 'chosen'" in r.output
    assert not (out / "data").exists()


def test_own_pairs_with_policy_pairs_say_how_to_fix(tmp_path, tiny_backbone_dir):
    """reward.pairs: auto (the default) trains on your pairs with data.prefs; asking for the policy's own pairs,
    which need the testbed's gold reward, is an error that says how to fix it."""
    common = [f"data.prefs={tmp_path / 'p.jsonl'}", f"pretrain.checkpoints=[{tiny_backbone_dir}]",
              f"sft.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false", f"out={tmp_path / 'run'}"]
    r = runner.invoke(app, ["testbed", *common, "reward.pairs=policy"])
    assert r.exit_code == 2 and "set reward.pairs=testbed" in r.output
    (tmp_path / "p.jsonl").write_text('{"prompt": "w1 TL;DR:", "chosen": " good", "rejected": " bad"}\n' * 3)
    r = runner.invoke(app, ["testbed", *common, "data.train_split=null", f"data.prefs_eval={tmp_path / 'p.jsonl'}"])
    assert r.exit_code == 0, r.output
    assert "reward:\n" in (tmp_path / "run" / "config.yaml").read_text()
    assert "pairs: testbed" in (tmp_path / "run" / "config.yaml").read_text()


def test_analysis_of_a_users_tensor_resolves_nothing_of_the_config(tmp_path, monkeypatch):
    """Its key hashes the tensor's files alone: no checkpoint of the config is verified or pinned for it."""
    from perm.stages._checkpoints import Checkpoints

    def refuse(self, spec):
        raise AssertionError(f"resolved {spec}")

    monkeypatch.setattr(Checkpoints, "resolve", refuse)
    _user_tensor(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["analyze", f"out={out}", "--rewards", str(tmp_path / "rewards.parquet"),
                            "--models", str(tmp_path / "models.parquet"), "analysis.bootstrap=20", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "analysis" / "figure2.parquet").exists()
