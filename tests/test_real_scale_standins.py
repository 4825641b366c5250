"""configs/tldr-pythia.yaml's loading paths, on local stand-ins: tiny GPT-NeoX checkpoints saved with
save_pretrained in place of the PolyPythias seeds, the evaluator and the hub SFT policy, and a small
dataset in summarize_from_feedback's comparisons schema in place of the hub dataset."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from perm.config import configs_dir, load_config
from perm.models import gpt_neox_config, new_causal_lm
from perm.pipeline import Pipeline
from perm.progress import Progress

pytestmark = pytest.mark.slow

WORDS = "my cat dog ate lunch boss landlord rent late car broke should I quit move out tell her him".split()


def _comparison(i: int, split: str) -> dict:
    w = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)]
    return {
        "info": {"id": f"t3_{split}{i // 2}", "post": " ".join(w), "title": " ".join(w[:4]), "subreddit": "advice",
                 "site": None, "article": None},
        "summaries": [{"text": " " + " ".join(w[:5]), "policy": "ref", "note": None},
                      {"text": " " + " ".join(w[3:6]), "policy": "sup", "note": None}],
        "choice": i % 2, "worker": f"w{i % 3}", "batch": "b1", "split": split, "extra": {"confidence": 5},
    }


def _cnndm(i: int) -> dict:
    return {
        "info": {"id": f"cnn{i}", "post": None, "title": None, "subreddit": None, "site": "cnn",
                 "article": "The council met on Tuesday."},
        "summaries": [{"text": " Council met.", "policy": "ref", "note": None},
                      {"text": " A meeting.", "policy": "sup", "note": None}],
        "choice": 0, "worker": "w0", "batch": "cnndm0", "split": "valid1", "extra": {"confidence": 5},
    }


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    data = root / "summarize_from_feedback"
    data.mkdir()
    for split, n in (("train", 48), ("validation", 16)):
        rows = [_comparison(i, split) for i in range(n)]
        if split == "validation":  # OpenAI's validation split ends with CNN/DM comparisons: skipped, counted
            rows += [_cnndm(i) for i in range(3)]
        pq.write_table(pa.Table.from_pylist(rows), data / f"{split}.parquet")
    # a byte-level BPE like Pythia's (no pad token: perm must add one)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [" ".join(WORDS)] * 20 + ["SUBREDDIT: r/advice\n\nTITLE: x\n\nPOST: y\n\nTL;DR:"] * 5
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    dirs = {}
    for name, seed in (("pythia-seed1", 1), ("pythia-seed2", 2), ("evaluator", 7), ("sft-policy", 9)):
        cfg = gpt_neox_config(vocab_size=len(hf_tok), hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, max_position_embeddings=256, pad_token_id=None,
                              eos_token_id=hf_tok.eos_token_id)
        new_causal_lm(cfg, seed).save_pretrained(root / name)
        hf_tok.save_pretrained(root / name)
        dirs[name] = root / name
    return data, dirs


def test_tldr_preset_runs_end_to_end_on_standins(tmp_path, standins):
    data, d = standins
    cfg = load_config(configs_dir() / "tldr-pythia.yaml", [
        f"out={tmp_path / 'run'}", "device=cpu", "precision=fp32", "threads=1",
        f"data.prefs={data}", "data.name=null", "data.n_eval_prompts=3", "data.max_eval_pairs=null",
        f"pretrain.checkpoints=[{d['pythia-seed1']}, {d['pythia-seed2']}]",
        f"evaluator.checkpoint={d['evaluator']}", f"policy.checkpoint={d['sft-policy']}",
        "reward.finetune_seeds=[0, 1]", "reward.batch_size=8", "reward.max_length=96", "reward.lr=1e-3",
        "policy.pool_size=4", "policy.n_reference=2", "policy.max_new_tokens=6", "analysis.anova_draws=2",
    ])
    out = Pipeline(cfg, Progress("quiet")).run("run")
    run = tmp_path / "run"
    assert (run / "report" / "index.html").exists(), out
    prompts = pq.read_table(run / "data" / "eval_prompts.parquet").to_pandas()
    assert len(prompts) == 3 and prompts.prompt[0].startswith("SUBREDDIT: r/advice\n\nTITLE: ")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["data"]["info"] == {"train_pairs": 48, "eval_pairs": 16, "eval_skipped_cnndm": 3}
    models_df = pq.read_table(run / "models.parquet").to_pandas()
    assert sorted(models_df.role.unique()) == ["evaluator", "rm"]  # no gold reward outside the testbed
    assert set(models_df[models_df.role == "rm"].pretrain_id) == {"ckpt0", "ckpt1"}
    rm = json.loads((run / "rm" / "ckpt0-ft1" / "rm.json").read_text())
    assert rm["backbone"] == str(d["pythia-seed1"]) and rm["n_train_pairs"] == 48
    # pad token was added (Pythia has none) and the embeddings grew to match
    assert json.loads((run / "rm" / "ckpt0-ft0" / "config.json").read_text())["vocab_size"] >= 321
