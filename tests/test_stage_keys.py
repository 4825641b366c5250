"""Stage keys without running anything: every stage's `keys(cfg, upstream)` reproduces the keys that runs
of the code before the move to perm/stages recorded (tests/fixtures/stage_keys, written by record.py there),
and the invalidation table says which config field reruns which stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import added_fields
from perm.config import RunConfig, _from_dict, config_from_overrides, to_dict
from perm.stages import MODULES, STAGES
from perm.stages._context import checkpoint_name
from perm.store import hash_obj

FIXTURES = Path(__file__).parent / "fixtures" / "stage_keys"
VARIANTS = sorted(p.stem for p in FIXTURES.glob("*.json"))


def _keys(cfg: RunConfig, upstream: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in MODULES:
        out |= m.keys(cfg, upstream)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_keys_reproduce_the_recorded_manifest(variant):
    fixture = json.loads((FIXTURES / f"{variant}.json").read_text())
    cfg = _from_dict(RunConfig, _before_the_kit(fixture["config"]))
    stages = fixture["stages"]
    upstream = {name: hash_obj(rec["outputs"]) for name, rec in stages.items()}
    upstream |= {checkpoint_name(p): k for p, k in fixture["checkpoint_keys"].items()}
    upstream |= {name: f"not-recorded-{name}" for name in ADDED_SINCE_RECORDING}  # outputs the recording lacks
    keys = _keys(cfg, upstream)
    expected = {name: rec["key"] for name, rec in stages.items()}
    added = added_fields(to_dict(cfg), fixture["config"])
    if added:  # the report keys on the whole config: a field added since the recording changes it (only it)
        assert keys.pop("report") != expected.pop("report")
    for name in CHANGED_SINCE_RECORDING:  # outputs that must not be reused from a run of the older code
        if name in expected:
            assert keys.pop(name) != expected.pop(name), name
    for name in CHANGED_IN_BF16 if cfg.precision == "bf16" else ():
        if name in expected:
            assert keys.pop(name) != expected.pop(name), name
    for name in ADDED_SINCE_RECORDING:  # stages the recorded code did not have
        keys.pop(name, None)
    assert keys == expected


# Stages whose key changed on purpose after the recording, and why (an old run reruns exactly these).
CHANGED_SINCE_RECORDING = {
    "evaluator/rm": "the evaluator draws its finetuning randomness from its own seed, not finetune seed 0 of the "
                    "grid (issue 12)",
    "analyze": "analysis v3-4: intervals over the crossed seed design, scale-free Figures 1 and 3, Table 1 over "
               "every ensemble (issue 27)",
    "policy-prefs": "policy pairs drawn in chunks as large as the sample stage's decode batches, keyed on the "
                    "label temperature and the K-wise option (issue 13)",
}


# ... and in bf16 runs only (fp32 keys unchanged)
CHANGED_IN_BF16 = {
    "sample": "the sampling key/value cache holds keys in the compute dtype (bf16), as it holds values (issue 30)",
}


# Manifest names added after the recording (a recorded run gains them, and reruns what reads them).
ADDED_SINCE_RECORDING = {
    "evaluator-prefs": "the evaluator's own policy pairs on further posts (evaluator.extra_posts; issue 13)",
}


def _before_the_kit(config: dict) -> dict:
    """A recorded config trained its world in the run: the kit fields added since keep that behaviour (null),
    whatever the embedded default loads (perm.config.DEFAULT_KIT)."""
    out = dict(config)
    for section, name in (("policy", "checkpoint"), ("reward", "pairs_from"), ("evaluator", "rm_checkpoint")):
        out[section] = {name: None} | dict(out.get(section, {}))
    return out


def test_the_four_recorded_variants_are_there():
    assert VARIANTS == ["bf16", "checkpoints", "default", "mix"]


def test_every_stage_names_its_needs():
    assert list(STAGES) == ["testbed", "pretrain", "sft", "policy-prefs", "train-rm", "train-members", "sample",
                            "score", "analyze", "report"]
    for m in MODULES:
        assert set(m.NEEDS) <= set(STAGES) - {m.NAME}, m.NAME


# --------------------------------------------------------------------------------------- invalidation

BASE = ["reward.pairs=policy", "pretrain.seeds=[0, 1]", "reward.finetune_seeds=[0, 1]", "pretrain.checkpoints=[]",
        "evaluator.checkpoint=null", "sft.init_from=pretrain", "sft.checkpoint=null", "reward.pairs_from=null",
        "evaluator.rm_checkpoint=null"]  # the pretrain-in-the-run path, the world trained in the run


def _fake_upstream(cfg: RunConfig) -> dict:
    """Fixed output hashes for every stage a config has, so that only direct key dependence shows."""
    names = ["testbed", "policy", "policy-prefs", "evaluator-prefs", "sample", "score", "analyze", "evaluator/pretrain",
             "evaluator/rm"]
    names += [f"pretrain/{p}" for p in cfg.pretrain.pretrain_ids()]
    from perm.stages.train_rm import grid_names

    names += grid_names(cfg) + [f"score/{n.split('/', 1)[1]}" for n in grid_names(cfg)] + ["score/evaluator"]
    return {n: f"hash-of-{n}" for n in names}


def _changed(*override: str) -> set[str]:
    a = config_from_overrides([*BASE, "precision=fp32"])
    b = config_from_overrides([*BASE, "precision=fp32", *override])
    ka, kb = _keys(a, _fake_upstream(a)), _keys(b, _fake_upstream(b))
    assert ka.keys() == kb.keys()
    return {_family(n) for n in ka if ka[n] != kb[n]}


def _family(name: str) -> str:
    if name.startswith("score/"):
        return "score/*"
    if name.startswith("rm/"):
        return "rm/*"
    if name.startswith("pretrain/"):
        return "pretrain/*"
    return name


@pytest.mark.parametrize(("override", "reruns"), [
    ("reward.lr=3e-4", {"rm/*", "report"}),
    ("evaluator.lr=3e-4", {"evaluator/rm", "report"}),
    ("reward.max_length=128", {"rm/*", "evaluator/rm", "policy", "score/*", "report"}),
    ("sample.pool_size=32", {"sample", "report"}),
    ("policy.seed=3", {"sample", "policy-prefs", "evaluator-prefs", "report"}),  # the old key: both seeds
    ("sample.seed=3", {"sample", "report"}),
    ("policy_pairs.seed=3", {"policy-prefs", "evaluator-prefs", "report"}),
    ("policy_pairs.max_new_tokens=16", {"policy-prefs", "evaluator-prefs", "report"}),
    ("sample.max_new_tokens=16", {"sample", "report"}),
    ("sample.memory_gb=0.5", {"report"}),
    ("score.memory_gb=0.5", {"report"}),
    ("pretrain.lr=1e-3", {"pretrain/*", "evaluator/pretrain", "report"}),
    ("evaluator.pretrain_steps=50", {"evaluator/pretrain", "report"}),
    ("testbed.seed=5", {"testbed", "report"}),
    ("analysis.anova_draws=5", {"analyze", "report"}),
    ("sft.lr=3e-4", {"policy", "report"}),
    ("policy_pairs.per_post=2", {"policy-prefs", "evaluator-prefs", "report"}),
    ("policy_pairs.kwise=4", {"policy-prefs", "evaluator-prefs", "report"}),
    ("sample.batch_prompts=4", {"sample", "report"}),
    ("reward.center_coef=0.1", {"rm/*", "evaluator/rm", "report"}),
    ("reward.readout=sum", {"rm/*", "evaluator/rm", "report"}),
    ("workers=1", {"report"}),
    ("workers=auto", {"report"}),
    ("reward.micro_batch_size=8", {"rm/*", "evaluator/rm", "report"}),
    ("reward.finetune_seed_scope=per_rm", {"rm/*", "analyze", "report"}),
    ("evaluator.finetune_seed=7", {"evaluator/rm", "report"}),
    ("analysis.bootstrap=100", {"analyze", "report"}),
])
def test_invalidation_table(override, reruns):
    assert _changed(override) == reruns


def test_evaluator_extra_posts_reruns_only_the_evaluator_and_adds_its_pairs_stage():
    """evaluator.extra_posts > 0 adds the `evaluator-prefs` stage (keyed like policy-prefs plus its posts and
    stream) and reruns the evaluator RM and what reads it; the grid keeps its keys. 0 adds nothing."""
    a = config_from_overrides([*BASE, "precision=fp32", "evaluator.extra_posts=0"])
    b = config_from_overrides([*BASE, "precision=fp32", "evaluator.extra_posts=50"])
    c = config_from_overrides([*BASE, "precision=fp32", "evaluator.extra_posts=60"])
    up = _fake_upstream(a)
    ka, kb, kc = _keys(a, up), _keys(b, up), _keys(c, up)
    assert "evaluator-prefs" not in ka and set(kb) == set(ka) | {"evaluator-prefs"}
    assert {n for n in ka if ka[n] != kb[n]} == {"evaluator/rm", "report"}
    assert kb["evaluator-prefs"] != kc["evaluator-prefs"] and kb["evaluator-prefs"] != kb["policy-prefs"]
    kb2 = _keys(b, {**up, "evaluator-prefs": "other-pairs"})  # new pairs retrain the evaluator
    assert {n for n in kb if kb[n] != kb2[n]} == {"evaluator/rm"}
    # null (the default): as many posts as the grid's pairs come from (n_sft less the SFT's held-out twentieth)
    d = config_from_overrides([*BASE, "precision=fp32", "evaluator.extra_posts=3800"])
    kd, knull = _keys(d, up), _keys(config_from_overrides([*BASE, "precision=fp32"]), up)
    assert {n for n in kd if kd[n] != knull[n]} == {"report"}  # the report keys on the config as written
    small = config_from_overrides([*BASE, "precision=fp32", "testbed.n_sft=300", "testbed.n_prefs_train=100"])
    assert _keys(small, up)["evaluator-prefs"] == _keys(config_from_overrides(
        [*BASE, "precision=fp32", "testbed.n_sft=300", "testbed.n_prefs_train=100", "evaluator.extra_posts=100"]),
        up)["evaluator-prefs"]  # capped at prefs_train's posts
    for off in (["reward.pairs=testbed"], ["evaluator.enabled=false"]):  # no policy pairs, or no evaluator
        cfg = config_from_overrides([*BASE, "precision=fp32", "evaluator.extra_posts=50", *off])
        assert "evaluator-prefs" not in _keys(cfg, up)


def test_every_field_enters_the_report_key():
    assert _changed("out=elsewhere") == {"report"}


def test_resolved_precision_salts_training_keys_not_analysis():
    """bf16 gets its own training, sampling and scoring keys; analysis and report key on what they read."""
    a = config_from_overrides([*BASE, "precision=fp32"])
    b = config_from_overrides([*BASE, "precision=bf16"])
    ka, kb = _keys(a, _fake_upstream(a)), _keys(b, _fake_upstream(b))
    changed = {_family(n) for n in ka if ka[n] != kb[n]}
    assert changed == {"testbed", "pretrain/*", "evaluator/pretrain", "policy", "policy-prefs", "evaluator-prefs", "rm/*",
                       "evaluator/rm", "sample", "score/*", "score", "report"} - {"testbed"}


def test_keys_refuse_an_unresolved_precision():
    cfg = config_from_overrides(BASE)  # precision: auto
    with pytest.raises(ValueError, match="resolved precision"):
        _keys(cfg, _fake_upstream(cfg))
