"""The `train-members` stage end to end on configs/quick.yaml: every member kind trained, scored into the reward
tensor (role `member`, its ensemble and kind), named ensembles, the costs table, and what reruns."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from perm.config import ConfigError, configs_dir, load_config
from perm.pipeline import Pipeline
from perm.progress import Progress

pytestmark = pytest.mark.slow
KINDS = ["ensembles.kinds=[multihead, lora, warm, mcdropout]", "ensembles.size=2",
         "ensembles.named=[top=seed0-ft0+seed1-ft0]"]


def _run(out, *overrides, until="score"):
    cfg = load_config(configs_dir() / "quick.yaml", [f"out={out}", "threads=1", *KINDS, *overrides])
    Pipeline(cfg, Progress("quiet")).run(until)
    return json.loads((out / "manifest.json").read_text())["stages"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("members") / "run"
    _run(out, until="report")
    return out


def test_every_kind_is_trained_scored_and_declared(run):
    models = pd.read_parquet(run / "models.parquet").set_index("model_id")
    members = models[models.role == "member"]
    assert sorted(members.index) == sorted(["multihead-h0", "multihead-h1", "lora-0", "lora-1", "warm-0", "warm-1",
                                            "warm", "grid-soup", "mcdropout-0", "mcdropout-1"])
    assert members.loc["lora-0", "ensemble"] == "lora" and members.loc["warm-1", "ensemble"] == "warm-members"
    assert members.pretrain_id.eq("seed0").all()
    assert models.loc["seed0-ft0", "ensemble"] == "top" and models.loc["seed1-ft0", "ensemble"] == "top"
    rewards = pd.read_parquet(run / "rewards.parquet")
    wide = rewards[~rewards.is_reference].pivot_table(index=["prompt_id", "sample_id"], columns="model_id",
                                                      values="reward")
    assert not wide.isna().any().any()
    for a, b in (("multihead-h0", "multihead-h1"), ("lora-0", "lora-1"), ("mcdropout-0", "mcdropout-1"),
                 ("warm", "warm-0")):
        assert not (wide[a] == wide[b]).all(), (a, b)
    assert (run / "members/lora-0/adapter_model.safetensors").is_file()
    lora = json.loads((run / "members/lora-0/rm.json").read_text())
    assert 0 < lora["params_trained"] < lora["params_total"] / 2
    assert json.loads((run / "members/warm/rm.json").read_text())["averaged"] == ["members/warm-0",
                                                                                  "members/warm-1"]


def test_the_costs_table_has_every_ensemble(run):
    costs = pd.read_parquet(run / "ensembles.parquet").set_index("ensemble")
    assert set(costs.index) == {"single", "finetune", "pretrain", "multihead", "lora", "warm", "warm-members",
                                "grid-soup", "mcdropout", "top"}
    assert costs.loc["multihead", "forwards_per_candidate"] == 1 and costs.loc["lora", "forwards_per_candidate"] == 2
    assert costs.loc["warm", "params_held"] == costs.loc["single", "params_held"]
    assert costs.loc["lora", "params_trained"] < costs.loc["finetune", "params_trained"]
    assert costs.loc["pretrain", "params_trained"] > costs.loc["finetune", "params_trained"]  # pretraining counted
    assert (costs.drop(index="top").train_s > 0).all() and (costs.score_s > 0).all()


def test_the_analysis_and_report_show_every_ensemble_beside_its_cost(run):
    table = pd.read_parquet(run / "analysis/ensembles.parquet")
    gold = table[table.target == "gold"]
    assert set(gold.ensemble) == {"single", "finetune", "pretrain", "multihead", "lora", "warm", "warm-members",
                                  "grid-soup", "mcdropout", "top"}
    assert gold.set_index("ensemble").loc["warm", "aggregator"] == "none"  # one model: ranks by itself
    assert gold.train_s.notna().sum() >= 9
    table1 = pd.read_parquet(run / "analysis/table1.parquet")
    assert {"lora", "multihead", "top"} <= set(table1.ensemble)
    assert "Cheaper ensembles" in (run / "report/index.html").read_text()


def test_a_member_setting_reruns_only_its_kind(run):
    before = json.loads((run / "manifest.json").read_text())["stages"]
    after = _run(run, "ensembles.lora_rank=2")
    changed = {n for n in after if after[n].get("finished") != before.get(n, {}).get("finished")}
    assert {"members/lora-0", "members/lora-1", "score/lora-0", "score/lora-1", "score"} <= changed
    assert not {n for n in changed if n.startswith(("rm/", "members/warm", "members/multihead", "pretrain"))}


def test_named_ensembles_must_name_scored_models(tmp_path):
    with pytest.raises(ConfigError, match="ensembles.named"):
        load_config(configs_dir() / "quick.yaml", ["ensembles.named=[finetune=seed0-ft0+seed0-ft1]"])
    with pytest.raises(ConfigError, match="ensembles.kinds"):
        load_config(configs_dir() / "quick.yaml", ["ensembles.kinds=[bagging]"])


def test_member_keys_are_the_ones_made_before_the_config_sections():
    """The members' keys (every kind, fixed upstream hashes) equal those the code made before `reward` became
    a typed section and the policy pairs' fields moved to `policy_pairs` (recorded at 8676fcf): a finished
    members stage is not retrained by the move."""
    import collections

    from perm.config import config_from_overrides
    from perm.stages import train_members

    class Up(collections.UserDict):
        def __getitem__(self, k):
            return "h-" + k

    cfg = config_from_overrides(["precision=bf16", "ensembles.kinds=[multihead, lora, warm, mcdropout]"])
    keys = {k: v[:8] for k, v in train_members.keys(cfg, Up()).items()}
    assert keys == {
        "members/grid-soup": "338744c0", "members/lora-0": "50fa7686", "members/lora-1": "a7c236c9",
        "members/lora-2": "d428e1c6", "members/lora-3": "d047599d", "members/lora-4": "ba891ef7",
        "members/mcdropout": "26716b5c", "members/multihead": "c2101880", "members/warm": "974799f3",
        "members/warm-0": "650964e5", "members/warm-1": "94740c68", "members/warm-2": "ee5aa6a7",
        "members/warm-3": "8ecd53ab", "members/warm-4": "10cca574", "members/warm-probe": "296ad235"}
