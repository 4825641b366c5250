"""The testbed kit (perm.kit, perm.shipped): a tiny kit built from a tiny recipe run records its files' hashes
and its recipe and verifies; a corrupt, extra, missing or other-testbed file fails naming it; a run of another
recipe is refused naming the field; a run that loads the kit trains only the grid, on the kit's pairs, and its
evaluator loaded from a folder scores as the trained one; stage keys key on the kit's recorded hashes; the
shipped recipe is the embedded default's world; configs that train their world pin the kit fields to null."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from perm import kit, shipped
from perm.config import (
    KIT,
    KIT_EVALUATOR,
    KIT_POLICY,
    ConfigError,
    RunConfig,
    config_from_overrides,
    configs_dir,
    is_kit,
    kit_part,
    load_config,
    to_dict,
)
from perm.progress import Progress
from perm.shipped import KitError
from perm.store import hash_file, hash_obj

TESTBED = {"n_corpus_docs": 200, "n_sft": 200, "n_prefs_train": 40, "n_prefs_eval": 20, "n_eval_prompts": 4,
           "vocab_size": 512}
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128}
PRETRAIN = {"checkpoints": [], "seeds": [0], "steps": 2, "batch_size": 4, "seq_len": 32, "warmup_steps": 1,
            "backbone": TINY}


def _recipe(out: Path, **evaluator) -> dict:
    """A tiny kit recipe: the world of a tiny testbed (SFT from scratch, K-wise pairs of 4, a tiny evaluator with
    its own extra posts), trained in `out`."""
    return {"out": str(out), "threads": 1, "workers": 1, "precision": "fp32", "testbed": TESTBED,
            "pretrain": PRETRAIN,
            "policy_pairs": {"kwise": 4, "max_new_tokens": 10},
            "reward": {"batch_size": 8, "max_length": 96, "eval_every": 1000, "pairs_from": None},
            "evaluator": {"checkpoint": None, "rm_checkpoint": None, "pretrain_seed": 7, "pretrain_steps": 2,
                          "epochs": 0.5, "extra_posts": 30,
                          "backbone": TINY | {"hidden_size": 24, "intermediate_size": 48}} | evaluator,
            "sft": {"checkpoint": None, "init_from": "scratch", "epochs": 3.0},
            "sample": {"max_new_tokens": 10}}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny kit built by `perm kit build` logic from a tiny recipe run: (recipe file, run dir, kit dir)."""
    tmp = tmp_path_factory.mktemp("kit")
    recipe = _write(tmp / "recipe.yaml", _recipe(tmp / "recipe-run"))
    kit.build(recipe, out=tmp / "kit", progress=Progress("quiet"))
    return recipe, tmp / "recipe-run", tmp / "kit"


def test_build_records_every_files_hash_and_the_recipe(built):
    recipe, run, root = built
    rec = kit.verify(root)
    cfg = load_config(recipe)
    assert rec["recipe"] == kit.world(cfg) and rec["recipe_hash"] == hash_obj(rec["recipe"])
    assert rec["recipe_file"] == "recipe.yaml" and rec["testbed"] == shipped.kit_testbed_identity(to_dict(cfg.testbed))
    for part in ("policy", "pairs", "evaluator"):
        files = rec["artefacts"][part]["files"]
        assert files == shipped.kit_files(root, part) and rec["artefacts"][part]["sha256"] == hash_obj(files)
    assert set(rec["artefacts"]["pairs"]["files"]) == set(shipped.PAIR_FILES)
    # what the run made, byte for byte (weights, pairs), and the stage keys it made them under
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert rec["stage_keys"] == {n: stages[n]["key"] for n in kit.WORLD_STAGES}
    for rel in shipped.PAIR_FILES:
        assert hash_file(root / rel) == hash_file(run / rel)
    assert hash_file(root / "policy" / "model.safetensors") == hash_file(run / "policy" / "model.safetensors")
    assert hash_file(root / "evaluator" / "model.safetensors") == hash_file(run / "evaluator/rm/model.safetensors")
    assert rec["summary"]["pairs"]["train_pairs"] == pq.read_metadata(root / "policy_prefs.parquet").num_rows
    # provenance names what the parts started from by spec: no path of the machine that built the kit
    assert json.loads((root / "policy" / "policy.json").read_text())["init"] == "scratch"
    assert json.loads((root / "evaluator" / "rm.json").read_text())["backbone"] == "evaluator/pretrain"
    assert str(run.parent) not in (root / kit.KIT_RECORD).read_text()


def test_build_from_a_finished_run_of_the_recipe_reuses_it(built, tmp_path):
    recipe, run, root = built
    before = (run / "manifest.json").read_text()
    rec = kit.build(recipe, from_run=run, out=tmp_path / "again")
    assert (run / "manifest.json").read_text() == before  # nothing retrained
    assert rec["artefacts"] == kit.kit_record(root)["artefacts"]


def test_a_run_of_another_recipe_is_refused_naming_what_differs(built, tmp_path):
    recipe, run, _ = built
    other = _write(tmp_path / "other.yaml", _recipe(run, lr=1e-3))
    with pytest.raises(KitError, match=r"not run with the recipe .*evaluator\.lr: 0\.0005 -> 0\.001"):
        kit.build(other, from_run=run, out=tmp_path / "kit")
    with pytest.raises(KitError, match="not a run directory"):
        kit.build(recipe, from_run=tmp_path, out=tmp_path / "kit")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "policy_prefs.parquet").write_bytes(b"other pairs")
    with pytest.raises(KitError, match=r"outputs of policy-prefs .*changed"):
        kit.build(recipe, from_run=copy, out=tmp_path / "kit")
    shutil.copyfile(run / "policy_prefs.parquet", copy / "policy_prefs.parquet")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"]["evaluator/rm"]["key"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KitError, match=r"evaluator/rm was made from other inputs"):
        kit.check_run(copy, load_config(recipe), recipe)
    del manifest["stages"]["policy"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KitError, match=r"policy has not finished"):
        kit.check_run(copy, load_config(recipe), recipe)
    assert not (tmp_path / "kit").exists()  # nothing shipped from a refused run


def test_a_recipe_must_train_the_world_in_a_pinned_precision(tmp_path):
    bad = _recipe(tmp_path / "run") | {"precision": "auto"}
    bad["sft"] = bad["sft"] | {"checkpoint": str(tmp_path)}
    with pytest.raises(KitError, match=r"sft\.checkpoint must be null.*precision must be fp32 or bf16"):
        kit.build(_write(tmp_path / "bad.yaml", bad), out=tmp_path / "kit")


@pytest.fixture
def a_copy(built, tmp_path):
    shutil.copytree(built[2], tmp_path / "kit")
    return tmp_path / "kit"


def test_a_corrupt_file_fails_naming_it(a_copy):
    w = a_copy / "evaluator" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    assert issubclass(KitError, ValueError)
    with pytest.raises(KitError, match=r"evaluator/model\.safetensors: sha256 [0-9a-f]{16}\.\.\. differs from .* "
                                       r"recorded in .*kit\.json"):
        kit.verify(a_copy)
    shipped.verify_kit(a_copy, ["policy", "pairs"])  # the other parts still verify


def test_a_missing_an_extra_or_an_edited_entry_fails_naming_it(a_copy):
    (a_copy / "policy" / "extra.bin").write_bytes(b"x")
    with pytest.raises(KitError, match=r"policy/extra\.bin: not in the record"):
        kit.verify(a_copy)
    (a_copy / "policy" / "extra.bin").unlink()
    rec = json.loads((a_copy / "kit.json").read_text())
    rec["artefacts"]["pairs"]["sha256"] = "0" * 64
    (a_copy / "kit.json").write_text(json.dumps(rec))
    with pytest.raises(KitError, match="the pairs files' combined sha256 differs"):
        kit.verify(a_copy)
    (a_copy / "policy_prefs_eval.parquet").unlink()
    with pytest.raises(KitError, match=r"policy_prefs_eval\.parquet: missing \(the record .* lists it"):
        kit.verify(a_copy)
    with pytest.raises(KitError, match="no testbed kit there"):
        kit.verify(a_copy / "policy")


def test_a_kit_of_another_testbed_fails_naming_what_differs(built):
    _, _, root = built
    other = to_dict(RunConfig().testbed)
    with pytest.raises(KitError, match=r"another testbed than this run's \(.*vocab_size 512 -> 2048.*tiny-scratch"):
        shipped.verify_kit(root, ["policy"], other)


def test_perm_kit_verify_names_a_corrupt_file(a_copy):
    from perm.cli import app

    r = CliRunner().invoke(app, ["kit", "verify", str(a_copy)])
    assert r.exit_code == 0, r.output
    assert "verified" in r.output and "testbed:kit/evaluator" in r.output
    (a_copy / "policy_prefs.parquet").write_bytes(b"not the pairs")
    r = CliRunner().invoke(app, ["kit", "verify", str(a_copy)])
    assert r.exit_code == 2 and "policy_prefs.parquet: sha256" in r.output


def _grid(out: Path, *extra: str) -> RunConfig:
    """A tiny grid (one backbone pretrained here, one RM) that loads the world from the kit."""
    return load_config(None, [f"out={out}", "threads=1", "workers=1", "precision=fp32",
                              f"testbed={json.dumps(TESTBED)}", f"pretrain={json.dumps(PRETRAIN)}",
                              "reward.finetune_seeds=[0]", "reward.batch_size=8", "reward.max_length=96",
                              "reward.eval_every=1000", "reward.epochs=0.5", f"reward.pairs_from={KIT}",
                              f"sft.checkpoint={KIT_POLICY}", f"evaluator.rm_checkpoint={KIT_EVALUATOR}",
                              "sample.pool_size=4", "sample.n_reference=1", "sample.max_new_tokens=10", *extra])


def test_a_grid_trains_from_the_kit_end_to_end(built, tmp_path, monkeypatch):
    """The run loads the policy, copies the pairs and evaluates the evaluator: it trains only the grid (and its
    backbone here), keyed on the kit's recorded hashes; an evaluator loaded from a folder scores as the
    trained one did."""
    from perm.pipeline import Pipeline
    from perm.stages.score import job_score

    _, recipe_run, root = built
    monkeypatch.setattr(shipped, "KIT_ROOT", root)
    out = tmp_path / "run"
    pipe = Pipeline(_grid(out), Progress("quiet"))
    plan = {w.stage: w for w in pipe.plan()}
    assert plan["sft"].jobs == () and plan["policy-prefs"].jobs == ()
    assert [n for n, _ in plan["train-rm"].jobs] == ["rm/seed0-ft0"]
    assert [n for n, _ in plan["pretrain"].jobs] == ["pretrain/seed0"]
    pipe.run("score")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert not {"policy", "evaluator-prefs", "evaluator/pretrain"} & set(stages)  # nothing of the world trained
    rec = kit.kit_record(root)
    pairs_key = f"kit:pairs@{rec['artefacts']['pairs']['sha256']}"
    assert stages["policy-prefs"]["key"] == hash_obj({"pairs_from": pairs_key, "files": ["policy_prefs.parquet",
                                                                                          "policy_prefs_eval.parquet"]})
    for rel in ("policy_prefs.parquet", "policy_prefs_eval.parquet"):
        assert hash_file(out / rel) == hash_file(root / rel)
    rm = json.loads((out / "rm" / "seed0-ft0" / "rm.json").read_text())
    assert rm["n_train_pairs"] == pq.read_metadata(root / "policy_prefs.parquet").num_rows
    assert rm["eval_pairs"] == "policy_prefs_eval.parquet"
    ev = json.loads((out / "evaluator" / "rm" / "rm.json").read_text())
    trained = json.loads((root / "evaluator" / "rm.json").read_text())
    assert sorted(p.name for p in (out / "evaluator" / "rm").iterdir()) == ["rm.json"]  # no weights copied
    assert ev["loaded_from"] == KIT_EVALUATOR and ev["role"] == "evaluator"
    assert ev["accuracy"] == pytest.approx(trained["accuracy"]) and ev["n_train_pairs"] == trained["n_train_pairs"]
    models = pq.read_table(out / "models.parquet").to_pandas()
    assert set(models.role) == {"rm", "evaluator", "gold"}
    scored = pq.read_table(out / "scores" / "evaluator.parquet").to_pandas()

    # the trained evaluator of the recipe's run scores these samples as the kit's did
    job_score(str(out), "trained.parquet", model_dir=str(recipe_run / "evaluator" / "rm"), model_id="trained",
              max_length=96, batch_size=64, device="cpu", threads=1, show_progress=False)
    assert (pq.read_table(out / "trained.parquet").to_pandas().reward == scored.reward).all()
    # a trained evaluator loaded from a folder (keyed by its content): re-evaluated and rescored, same rewards
    pipe = Pipeline(_grid(out, f"evaluator.rm_checkpoint={root / 'evaluator'}"), Progress("quiet"))
    pipe.run("score")
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert {n for n in after if after[n]["key"] != stages[n]["key"]} == {"evaluator/rm", "score/evaluator"}
    assert (pq.read_table(out / "scores" / "evaluator.parquet").to_pandas().reward == scored.reward).all()
    again = json.loads((out / "evaluator" / "rm" / "rm.json").read_text())
    assert again["loaded_from"] == str(root / "evaluator") and again["accuracy"] == ev["accuracy"]


def test_perm_check_verifies_the_kit_parts_a_config_loads(built, monkeypatch):
    from perm.check import check_config

    monkeypatch.setattr(shipped, "KIT_ROOT", built[2])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = check_config(_grid("unused"))
    assert res.problems == [], res.text()
    text = res.text()
    assert "evaluator.rm_checkpoint  testbed:kit/evaluator  shipped (sha256 and testbed match)" in text
    assert re.search(r"sft\.checkpoint +testbed:kit/policy +shipped \(sha256 and testbed match\)", text), text
    assert "reward.pairs_from  testbed:kit  the kit's pairs (sha256 and testbed match)" in text
    (built[2] / "policy_prefs.parquet").rename(built[2] / "moved.parquet")
    try:
        res = check_config(_grid("unused"))
    finally:
        (built[2] / "moved.parquet").rename(built[2] / "policy_prefs.parquet")
    assert len(res.problems) == 1 and res.problems[0].startswith("reward.pairs_from: ")
    assert "policy_prefs.parquet: missing" in res.problems[0]


def test_pairs_from_a_folder_name_a_missing_file(built, tmp_path):
    from perm.pipeline import Pipeline

    root = built[2]
    folder = tmp_path / "pairs"
    folder.mkdir()
    shutil.copyfile(root / "policy_prefs.parquet", folder / "policy_prefs.parquet")
    cfg = _grid(tmp_path / "run", f"reward.pairs_from={folder}", "sft.checkpoint=null", "sft.init_from=scratch",
                "evaluator.rm_checkpoint=null", "evaluator.enabled=false")
    with pytest.raises(KitError, match=r"pairs/policy_prefs_eval\.parquet: missing, and reward\.pairs_from"):
        Pipeline(cfg, Progress("quiet")).run("policy-prefs")


# ----------------------------------------------------------------------------------------- stage keys


def _keys(cfg: RunConfig, upstream: dict) -> dict[str, str]:
    """The keys of the stages up to sampling (what the world feeds)."""
    from perm.stages import policy_prefs, pretrain, sample, sft, testbed, train_rm

    out: dict[str, str] = {}
    for m in (testbed, pretrain, sft, policy_prefs, train_rm, sample):
        out |= m.keys(cfg, upstream)
    return out


def test_kit_parts_are_keyed_on_their_identity():
    """policy-prefs keys on the pairs' identity alone (the grid on the copied files' hashes, as on pairs drawn in
    the run), the evaluator on its checkpoint's, sampling on the policy's; nothing else of the world is keyed."""
    from perm.stages import policy_prefs
    from perm.stages._context import checkpoint_name, pairs_name
    from perm.stages._grid import grid_names

    cfg = config_from_overrides(["precision=fp32", f"reward.pairs_from={KIT}", f"sft.checkpoint={KIT_POLICY}",
                                 f"evaluator.rm_checkpoint={KIT_EVALUATOR}"])
    rms = grid_names(cfg)
    up = {n: f"hash-of-{n}" for n in ["testbed", "policy-prefs", "sample", "evaluator/rm", *rms]} | {
        checkpoint_name(f"testbed:seed{i}"): f"shipped-{i}" for i in range(5)} | {
        checkpoint_name(KIT_POLICY): "kit:policy@a", checkpoint_name(KIT_EVALUATOR): "kit:evaluator@a",
        pairs_name(KIT): "kit:pairs@a"}
    world = {"testbed", "policy", "policy-prefs", "evaluator-prefs", "evaluator/rm", "sample", *rms}
    a = {n: k for n, k in _keys(cfg, up).items() if n in world}
    assert set(a) == world - {"policy", "evaluator-prefs"}  # the policy and the evaluator's pairs: not made here
    for changed, reruns in [(pairs_name(KIT), {"policy-prefs"}), (checkpoint_name(KIT_POLICY), {"sample"}),
                            (checkpoint_name(KIT_EVALUATOR), {"evaluator/rm"}),
                            ("policy-prefs", {*rms, "evaluator/rm"})]:
        b = _keys(cfg, up | {changed: "other"})
        assert {n for n in a if a[n] != b[n]} == reruns, changed
    bf16 = config_from_overrides(["precision=bf16", f"reward.pairs_from={KIT}", f"evaluator.rm_checkpoint={KIT_EVALUATOR}"])
    assert policy_prefs.keys(bf16, up) == policy_prefs.keys(cfg, up)  # a copy: no precision in its key


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(("overrides", "match"), [
    ([f"sft.checkpoint={KIT_POLICY}", "sft.lr=3e-4"], r"sft\.lr: has no effect while sft\."),
    ([f"reward.pairs_from={KIT}", "policy_pairs.kwise=4"], r"policy_pairs\.kwise: has no effect"),
    ([f"evaluator.rm_checkpoint={KIT_EVALUATOR}", "evaluator.epochs=3"], r"evaluator\.epochs: has no effect"),
    (["evaluator.rm_checkpoint=some/rm", "evaluator.extra_posts=50"], r"evaluator\.extra_posts: has no effect"),
    (["evaluator.rm_checkpoint=testbed:seed0"], r"evaluator\.rm_checkpoint: testbed:seed0 is not a trained"),
    ([f"evaluator.checkpoint={KIT_EVALUATOR}"], r"evaluator\.checkpoint: .* not a backbone"),
    ([f"pretrain.checkpoints=[{KIT_POLICY}]"], r"pretrain\.checkpoints: .* not a pretrained backbone"),
    ([f"sft.checkpoint={KIT_EVALUATOR}"], r"sft\.checkpoint: .* is not a policy"),
    (["reward.pairs_from=testbed:kit/policy"], r"reward\.pairs_from: .* is not the kit's pairs"),
    (["reward.pairs_from=some/folder", "evaluator.extra_posts=50"], r"evaluator\.extra_posts: must be null"),
    (["data.prefs=p.jsonl", "pretrain.checkpoints=[a]", "sft.checkpoint=b", "reward.pairs=testbed",
      f"evaluator.rm_checkpoint={KIT_EVALUATOR}"], r"evaluator\.rm_checkpoint: testbed:kit/evaluator is the testbed's"),
])
def test_kit_fields_refuse_what_has_no_effect(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config_from_overrides(overrides)


def test_a_trained_evaluator_is_the_only_evaluator_model_the_run_loads():
    from perm.hub import model_specs

    cfg = config_from_overrides(["evaluator.rm_checkpoint=org/judge@abc", "evaluator.checkpoint=null"])
    assert cfg.evaluator.trains() is False and cfg.evaluator.pretrains() is False
    assert "org/judge@abc" in model_specs(cfg) and "testbed:evaluator-seed1000" not in model_specs(cfg)
    with_data = ["data.prefs=p.jsonl", "pretrain.checkpoints=[a]", "sft.checkpoint=b", "evaluator.checkpoint=null"]
    assert config_from_overrides([*with_data, "evaluator.rm_checkpoint=org/judge"]).evaluator.rm_checkpoint
    with pytest.raises(ConfigError, match=r"evaluator\.checkpoint: required with data\.prefs"):
        config_from_overrides(with_data)


def test_the_kit_recipe_is_the_default_world():
    """configs/testbed-kit.yaml trains the embedded default's world (the kit fields null, precision pinned), so
    the defaults that the kit fields check against are the kit's recipe."""
    cfg = load_config(kit.RECIPE)
    kit.check_recipe(cfg, kit.RECIPE)
    default = RunConfig()
    assert kit.world(cfg) == kit.world(dataclasses.replace(default, precision="fp32"))
    assert cfg.workers == default.workers and cfg.precision == "fp32"
    assert kit_part(KIT, "policy") == KIT_POLICY and kit_part(KIT, "evaluator") == KIT_EVALUATOR
    assert kit_part(KIT) == KIT and kit_part(None, "policy") is None


@pytest.mark.parametrize(("overrides", "policy", "pairs", "evaluator"), [
    ([], KIT_POLICY, KIT, KIT_EVALUATOR),  # the embedded default, once it loads the kit
    (["sft.lr=1e-4"], None, None, KIT_EVALUATOR),  # another policy: its own pairs, the kit's judge
    (["policy_pairs.kwise=4"], KIT_POLICY, None, KIT_EVALUATOR),
    (["policy_pairs.seed=3"], KIT_POLICY, None, KIT_EVALUATOR),  # other pairs: drawn in the run
    (["evaluator.lr=1e-4"], KIT_POLICY, KIT, None),  # finetuned here, on the kit's pairs and extra posts
    (["evaluator.extra_posts=10"], KIT_POLICY, None, None),
    (["evaluator.checkpoint=null"], KIT_POLICY, KIT, None),
    (["testbed.n_sft=100"], None, None, None),  # another testbed: its world is trained in the run
    (["data.prefs=p.jsonl", "pretrain.checkpoints=[a]", "sft.checkpoint=b", "evaluator.checkpoint=c"],
     "b", None, None),
    ([f"evaluator.rm_checkpoint={KIT_EVALUATOR}", "sft.checkpoint=null"], None, None, KIT_EVALUATOR),
])
def test_auto_loads_the_kit_where_it_is_the_configs_world(monkeypatch, tmp_path, overrides, policy, pairs, evaluator):
    """auto (the kit fields' default) resolves to the part of perm.config.DEFAULT_KIT that this config would
    train, else null; explicit values stay; the resolved config is what is saved. Nothing while DEFAULT_KIT is
    None (until the kit ships)."""
    import perm.config

    monkeypatch.setattr(perm.config, "DEFAULT_KIT", None)
    before = config_from_overrides(overrides)
    assert before.sft.checkpoint == (policy if policy and not is_kit(policy) else None)
    assert before.reward.pairs_from is None and before.evaluator.rm_checkpoint in (None, KIT_EVALUATOR)
    monkeypatch.setattr(perm.config, "DEFAULT_KIT", KIT)
    cfg = config_from_overrides(overrides)
    assert (cfg.sft.checkpoint, cfg.reward.pairs_from, cfg.evaluator.rm_checkpoint) == (policy, pairs, evaluator)
    (tmp_path / "c.yaml").write_text(perm.config.dump_config(cfg))
    assert "auto" not in yaml.safe_load((tmp_path / "c.yaml").read_text())["sft"].values()
    monkeypatch.setattr(perm.config, "DEFAULT_KIT", None)
    assert load_config(tmp_path / "c.yaml") == cfg  # a saved run keeps its world whatever the default says


@pytest.mark.parametrize("name", ["tiny-scratch.yaml", "quick.yaml", "testbed-kit.yaml"])
def test_configs_that_train_their_world_pin_the_kit_fields_to_null(name):
    """So that the embedded default can switch to the kit (perm.config.DEFAULT_KIT) without changing them."""
    data = yaml.safe_load((configs_dir() / name).read_text())
    for section, field in kit.KIT_FIELDS:
        assert field in data[section] and data[section][field] is None, (name, section, field)


def test_the_shipped_kit_verifies_against_its_recipe_and_the_default_testbed():
    if not shipped.kit_exists():
        pytest.skip("no kit shipped yet (perm kit build)")
    rec = kit.verify(None, kit.RECIPE)
    for spec in (KIT_POLICY, KIT_EVALUATOR, KIT):
        assert shipped.verify(spec, to_dict(RunConfig().testbed)).is_dir()
    assert rec["specs"] == {"policy": KIT_POLICY, "pairs": KIT, "evaluator": KIT_EVALUATOR}
