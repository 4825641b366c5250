"""The stage graph: grid layouts, seeds, external data import."""

import json

import pyarrow.parquet as pq
import pytest

from perm.config import config_from_overrides
from perm.pipeline import Pipeline, grid, rm_seeds


def test_paper_layout_is_one_rm_per_pretrain_plus_seeds_of_the_first():
    g = grid(["seed0", "seed1", "seed2"], (0, 1, 2), "paper")
    assert g == [("seed0", 0), ("seed0", 1), ("seed0", 2), ("seed1", 0), ("seed2", 0)]


def test_full_layout_is_the_product():
    assert grid(["a", "b"], (3, 4), "full") == [("a", 3), ("a", 4), ("b", 3), ("b", 4)]


def test_finetune_seeds_are_separate_streams():
    s = rm_seeds(1)
    assert len(set(s.values())) == 3
    assert rm_seeds(1) == s and rm_seeds(2) != s


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_import_external_pairs(tmp_path, tiny_backbone_dir):
    rows = [{"prompt": f"w{i} TL;DR:", "chosen": " good", "rejected": " bad"} for i in range(30)]
    _write_jsonl(tmp_path / "train.jsonl", rows[:20])
    _write_jsonl(tmp_path / "eval.jsonl", rows[20:] + rows[20:22])  # repeated prompts: eval prompts dedupe
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", f"data.prefs={tmp_path / 'train.jsonl'}",
                                 f"data.prefs_eval={tmp_path / 'eval.jsonl'}", "data.train_split=null",
                                 f"pretrain.checkpoints=[{tiny_backbone_dir}]",
                                 f"policy.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false"])
    pipe = Pipeline(cfg)
    pipe.testbed()
    run = tmp_path / "run"
    assert pq.read_table(run / "data" / "prefs_train.parquet").num_rows == 20
    prompts = pq.read_table(run / "data" / "eval_prompts.parquet").to_pandas()
    assert list(prompts.prompt) == [f"w{i} TL;DR:" for i in range(20, 30)]
    assert (run / "tokenizer" / "tokenizer.json").exists()
    assert pipe.store.is_complete("data", pipe.store.stage("data")["key"])


def test_import_bad_pairs_writes_nothing(tmp_path, tiny_backbone_dir):
    from perm.data import DataError

    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": 3}\n')
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", f"data.prefs={tmp_path / 'train.jsonl'}",
                                 "data.train_split=null", f"pretrain.checkpoints=[{tiny_backbone_dir}]",
                                 f"policy.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false"])
    with pytest.raises(DataError, match=r"train\.jsonl: line 2"):
        Pipeline(cfg).testbed()
    assert not (tmp_path / "run" / "data").exists()


def test_external_data_needs_checkpoints():
    from perm.config import ConfigError

    with pytest.raises(ConfigError, match="policy.checkpoint: required with data.prefs"):
        config_from_overrides(["data.prefs=x.jsonl", "pretrain.checkpoints=[a]"])


def test_evaluator_seed_must_not_be_a_grid_seed():
    from perm.config import ConfigError

    with pytest.raises(ConfigError, match="evaluator.pretrain_seed: must differ"):
        config_from_overrides(["pretrain.seeds=[0, 1]", "pretrain.data_seeds=[5, 1000]"])
