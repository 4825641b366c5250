"""The testbed's shipped backbones (perm.shipped): the recipe in configs/ still describes them, their weights
match their recorded hashes, they load, their held-out perplexity on the testbed's held-out corpus is the
recorded one, a corrupt file or another testbed fails clearly, and ship() round-trips a finished run."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from perm import shipped
from perm.config import RunConfig, configs_dir, load_config, to_dict
from perm.store import hash_obj

RECIPE = configs_dir() / "testbed-pretrains.yaml"


def _dtypes(weights: Path) -> set[str]:
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {t["dtype"] for k, t in header.items() if k != "__metadata__"}


def test_the_recipe_describes_every_shipped_backbone():
    cfg = load_config(RECIPE)
    names = shipped.recipe_names(cfg)
    assert sorted(names) == shipped.names()
    default = RunConfig()
    assert to_dict(cfg.testbed) == to_dict(default.testbed)  # pretrained on the default's corpus and tokenizer
    for name in names:
        rec = shipped.record(f"testbed:{name}")
        assert rec["recipe"] == shipped.recipe_of(cfg, name), name
        assert rec["recipe_hash"] == hash_obj(rec["recipe"])
        assert rec["testbed"] == shipped.testbed_identity(to_dict(default.testbed))
        assert rec["tokens"] == rec["recipe"]["train"]["steps"] * rec["recipe"]["train"]["batch_size"] * \
            rec["recipe"]["train"]["seq_len"]
        assert _dtypes(shipped.path_of(f"testbed:{name}") / shipped.WEIGHTS) == {"F16"}


def test_the_default_loads_shipped_backbones_that_verify():
    cfg = RunConfig()
    specs = [*cfg.pretrain.checkpoints, cfg.evaluator.checkpoint, cfg.sft.init_from]
    assert all(shipped.is_shipped(s) for s in specs)
    assert len(set(specs)) == len(specs)  # the policy's and the evaluator's backbones are no grid RM's
    for spec in specs:
        assert shipped.verify(spec, to_dict(cfg.testbed)).is_dir()


@pytest.mark.slow
def test_heldout_perplexity_of_the_shipped_weights_is_the_recorded_one(tmp_path):
    from perm.testbed.build import build_testbed

    t = RunConfig().testbed
    build_testbed(tmp_path / "data", seed=t.seed, n_corpus_docs=t.n_corpus_docs, n_sft=t.n_sft,
                  n_prefs_train=t.n_prefs_train, n_prefs_eval=t.n_prefs_eval, n_eval_prompts=t.n_eval_prompts,
                  vocab_size=t.vocab_size)
    shutil.move(tmp_path / "data" / "tokenizer", tmp_path / "tokenizer")
    for name in shipped.names():
        rec = shipped.record(f"testbed:{name}")
        ppl = shipped.heldout_perplexity(shipped.path_of(f"testbed:{name}"), tmp_path, rec["recipe"]["train"]["seq_len"])
        assert ppl == pytest.approx(rec["heldout_perplexity_shipped"], rel=1e-5), name
        assert ppl == pytest.approx(rec["heldout_perplexity"], rel=0.01), name  # fp16 storage costs < 1 %


@pytest.fixture
def a_copy(tmp_path, monkeypatch):
    """The shipped folder copied (one backbone), with perm.shipped pointed at the copy."""
    name = shipped.names()[0]
    shutil.copytree(shipped.ROOT / name, tmp_path / name)
    monkeypatch.setattr(shipped, "ROOT", tmp_path)
    return name, tmp_path / name


def test_a_corrupt_weight_file_fails_naming_it(a_copy):
    name, folder = a_copy
    w = folder / shipped.WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(shipped.ShippedPretrainError, match=r"model\.safetensors: sha256 .* differs"):
        shipped.verify(f"testbed:{name}")


def test_another_testbed_fails_naming_what_differs(a_copy):
    name, _ = a_copy
    other = to_dict(RunConfig().testbed) | {"vocab_size": 512}
    with pytest.raises(shipped.ShippedPretrainError, match="vocab_size 2048 -> 512.*tiny-scratch"):
        shipped.verify(f"testbed:{name}", other)
    with pytest.raises(shipped.ShippedPretrainError, match="no such shipped backbone"):
        shipped.verify("testbed:seed99")


def test_a_run_refuses_shipped_backbones_of_another_testbed(tmp_path):
    from perm.pipeline import Pipeline
    from perm.progress import Progress

    cfg = load_config(None, [f"out={tmp_path / 'run'}", "testbed.vocab_size=512", "testbed.n_corpus_docs=200",
                             "testbed.n_sft=60", "testbed.n_prefs_train=40", "testbed.n_prefs_eval=20",
                             "testbed.n_eval_prompts=4"])
    with pytest.raises(shipped.ShippedPretrainError, match="another testbed"):
        Pipeline(cfg, Progress("quiet")).run("pretrain")


def test_ship_round_trips_a_finished_pretrain_run(tmp_path, monkeypatch):
    """ship() on a small pretrain run: fp16 weights that verify, the record's recipe, a recipe that no
    longer matches the run refused."""
    from perm.pipeline import Pipeline
    from perm.progress import Progress

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "out: {}\nthreads: 1\nprecision: fp32\n"
        "testbed: {{n_corpus_docs: 200, n_sft: 60, n_prefs_train: 40, n_prefs_eval: 20, n_eval_prompts: 4, "
        "vocab_size: 512}}\n"
        "pretrain: {{checkpoints: [], seeds: [0, 3], steps: 4, batch_size: 4, seq_len: 32, warmup_steps: 1, "
        "backbone: {{hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32}}}}\n"
        "evaluator: {{checkpoint: null, pretrain_seed: 7, pretrain_steps: 3, "
        "backbone: {{hidden_size: 24, num_layers: 1, num_heads: 2, intermediate_size: 48}}}}\n"
        "sft: {{init_from: pretrain}}\n".format(tmp_path / "run"))
    Pipeline(load_config(recipe), Progress("quiet")).run("pretrain")
    out = tmp_path / "shipped"
    assert shipped.ship(tmp_path / "run", recipe, out) == ["seed0", "seed3", "evaluator-seed7"]
    monkeypatch.setattr(shipped, "ROOT", out)
    cfg = load_config(recipe)
    for name in shipped.names():
        path = shipped.verify(f"testbed:{name}", to_dict(cfg.testbed))
        rec = shipped.record(f"testbed:{name}")
        assert rec["recipe"] == shipped.recipe_of(cfg, name) and _dtypes(path / shipped.WEIGHTS) == {"F16"}
        assert rec["heldout_perplexity_shipped"] == pytest.approx(rec["heldout_perplexity"], rel=0.01)
    recipe.write_text(recipe.read_text().replace("steps: 4", "steps: 5"))
    with pytest.raises(shipped.ShippedPretrainError, match="now says"):
        shipped.ship(tmp_path / "run", recipe, tmp_path / "again")


def test_perm_check_on_the_default_verifies_the_shipped_backbones(monkeypatch):
    from perm.check import check_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = check_config(RunConfig())
    assert res.problems == [], res.text()
    text = res.text()
    assert text.count("shipped (sha256 and testbed match)") == 7  # 5 grid, the evaluator's, the policy's
    assert "tokenizer: the 7 checkpoints share one" in text


def test_perm_check_names_a_corrupt_shipped_backbone(a_copy, monkeypatch):
    from perm.check import check_config

    name, folder = a_copy
    (folder / shipped.WEIGHTS).write_bytes(b"not the weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = check_config(load_config(None, [f"pretrain.checkpoints=[testbed:{name}]", "evaluator.enabled=false",
                                          "sft.init_from=pretrain"]))
    assert len(res.problems) == 1 and "sha256" in res.problems[0] and "pretrain.checkpoints[0]" in res.problems[0]
