"""configs/tldr-pythia.yaml's loading paths, on local stand-ins that look like the real artefacts: tiny
GPT-NeoX checkpoints saved in fp16 (as Pythia's) in place of the PolyPythias seeds and the evaluator, one
seed available only as a pickled fp16 ``pytorch_model.bin`` on a step branch of a hub repository (a
hub-cache snapshot served by a stand-in for huggingface_hub at the client boundary, converted with
``pretrain.convert_bin``), the SFT policy in bf16 with a pad token of its own, and a small dataset in
summarize_from_feedback's comparisons schema, laid out as the hub's Parquet conversion
(``comparisons/<split>/0000.parquet``) with one empty row among good ones."""

from __future__ import annotations

import json

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub.hf_api import ModelInfo
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from perm.config import configs_dir, load_config
from perm.models import gpt_neox_config, load_tokenizer, new_causal_lm, tokenizer_fingerprint
from perm.pipeline import Pipeline
from perm.progress import Progress

pytestmark = pytest.mark.slow

SEED3, BRANCH, SHA = "EleutherAI/pythia-160m-seed3", "step143000", "3e1f" * 10

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
    data = root / "summarize_from_feedback"  # the Parquet conversion's layout: <config>/<split>/0000.parquet
    for split, n in (("train", 48), ("validation", 16)):
        rows = [_comparison(i, split) for i in range(n)]
        if split == "train":  # one empty row among good ones: skipped (data.bad_rows: skip), counted
            rows.insert(17, dict(_comparison(99, split), info=dict(_comparison(99, split)["info"], post="")))
        if split == "validation":  # OpenAI's validation split ends with CNN/DM comparisons: skipped, counted
            rows += [_cnndm(i) for i in range(3)]
        (data / "comparisons" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), data / "comparisons" / split / "0000.parquet")
    # a byte-level BPE like Pythia's (no pad token: perm must add one)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [" ".join(WORDS)] * 20 + ["SUBREDDIT: r/advice\n\nTITLE: x\n\nPOST: y\n\nTL;DR:"] * 5
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    dirs = {}
    for name, seed in (("pythia-seed1", 1), ("pythia-seed2", 2), ("pythia-seed3", 3), ("evaluator", 7),
                       ("sft-policy", 9)):
        cfg = gpt_neox_config(vocab_size=len(hf_tok), hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, max_position_embeddings=256, pad_token_id=None,
                              eos_token_id=hf_tok.eos_token_id)
        model = new_causal_lm(cfg, seed)
        if name == "sft-policy":  # the TL;DR SFT policy is stored in bf16, its tokenizer pads with its own token
            model.to(torch.bfloat16).save_pretrained(root / name)
            policy_tok = AutoTokenizer.from_pretrained(root / "pythia-seed1")
            policy_tok.add_special_tokens({"pad_token": "[PAD]"})
            policy_tok.save_pretrained(root / name)
        elif name == "pythia-seed3":  # a step branch: config, tokenizer and only pytorch_model.bin (fp16)
            snapshot = root / "hf-cache" / f"models--{SEED3.replace('/', '--')}" / "snapshots" / SHA
            snapshot.mkdir(parents=True)
            model = model.half()
            model.config.save_pretrained(snapshot)
            hf_tok.save_pretrained(snapshot)
            torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
            (snapshot.parents[1] / "refs").mkdir()
            (snapshot.parents[1] / "refs" / BRANCH).write_text(SHA)
            name = "hf-cache"
        else:  # Pythia's weights are fp16
            model.half().save_pretrained(root / name)
            hf_tok.save_pretrained(root / name)
        dirs[name] = root / name
    assert not list((dirs["hf-cache"]).rglob("*.safetensors"))
    return data, dirs


class SnapshotHub:
    """huggingface_hub at the client boundary, answering from a hub-cache folder
    (models--org--name/refs/<branch> holding the commit, snapshots/<commit>/ the files)."""

    def __init__(self, monkeypatch, cache):
        self.cache, self.calls = cache, []
        hub = self

        class HfApi:
            def model_info(self, repo_id, *, revision=None, **kw):
                hub.calls.append(("model_info", repo_id, revision))
                sha = hub.commit(repo_id, revision)  # the hub lists a repo's files (siblings) with its info
                files = sorted(p.name for p in (hub.repo(repo_id) / "snapshots" / sha).iterdir())
                return ModelInfo(id=repo_id, sha=sha, siblings=[{"rfilename": f} for f in files])

        monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", self.list_repo_files)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def repo(self, repo_id):
        return self.cache / f"models--{repo_id.replace('/', '--')}"

    def commit(self, repo_id, revision):
        refs = self.repo(repo_id) / "refs" / (revision or "main")
        return revision if (self.repo(repo_id) / "snapshots" / str(revision)).is_dir() else refs.read_text()

    def list_repo_files(self, repo_id, *, revision=None, **kw):
        self.calls.append(("list_repo_files", repo_id, revision))
        return sorted(p.name for p in (self.repo(repo_id) / "snapshots" / self.commit(repo_id, revision)).iterdir())

    def snapshot_download(self, repo_id, *, revision=None, **kw):
        self.calls.append(("snapshot_download", repo_id, revision))
        return str(self.repo(repo_id) / "snapshots" / self.commit(repo_id, revision))


def test_tldr_preset_runs_end_to_end_on_standins(tmp_path, standins, monkeypatch):
    data, d = standins
    hub = SnapshotHub(monkeypatch, d["hf-cache"])
    policy = d["sft-policy"]
    cfg = load_config(configs_dir() / "tldr-pythia.yaml", [
        f"out={tmp_path / 'run'}", "device=cpu", "precision=fp32", "threads=1",
        f"data.prefs={data}", "data.n_eval_prompts=3", "data.max_eval_pairs=null",
        "data.max_bad_fraction=0.05",  # 1 bad row of 49 (the preset's 0.1 % is for 179 k rows)
        f"pretrain.checkpoints=[{d['pythia-seed1']}, {d['pythia-seed2']}, {SEED3}@{BRANCH}]",
        f"evaluator.checkpoint={d['evaluator']}", f"sft.checkpoint={policy}",
        "reward.finetune_seeds=[0, 1]", "reward.batch_size=8", "reward.max_length=96", "reward.lr=1e-3",
        "sample.pool_size=4", "sample.n_reference=2", "sample.max_new_tokens=6", "analysis.anova_draws=2",
    ])
    out = Pipeline(cfg, Progress("quiet")).run("run")
    run = tmp_path / "run"
    assert (run / "report" / "index.html").exists(), out
    prompts = pq.read_table(run / "data" / "eval_prompts.parquet").to_pandas()
    assert len(prompts) == 3 and prompts.prompt[0].startswith("SUBREDDIT: r/advice\n\nTITLE: ")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["data"]["info"] == {
        "train_pairs": 48, "eval_pairs": 16, "eval_skipped_cnndm": 3, "train_skipped_empty_prompt": 1,
        "tokenizer_fingerprint": tokenizer_fingerprint(load_tokenizer(d["pythia-seed1"])),
        "tokenizer_pad_ignored": {f"sft.checkpoint ({policy})": "[PAD]"},  # the policy's own pad token
    }
    # the branch was pinned to its commit, downloaded there and converted into the run once
    assert manifest["hub_refs"] == {f"{SEED3}@{BRANCH}": SHA}
    assert [c for c in hub.calls if c[0] != "model_info"] == [("list_repo_files", SEED3, SHA),
                                                              ("snapshot_download", SEED3, SHA)]
    converted = run / "converted" / f"EleutherAI--pythia-160m-seed3--{SHA}"
    assert json.loads((converted / "convert.json").read_text())["dtype"] == "float16"
    assert json.loads((run / "rm" / "ckpt2-ft0" / "rm.json").read_text())["backbone"] == str(converted)
    models_df = pq.read_table(run / "models.parquet").to_pandas()
    assert sorted(models_df.role.unique()) == ["evaluator", "rm"]  # no gold reward outside the testbed
    assert set(models_df[models_df.role == "rm"].pretrain_id) == {"ckpt0", "ckpt1", "ckpt2"}
    rm = json.loads((run / "rm" / "ckpt0-ft1" / "rm.json").read_text())
    assert rm["backbone"] == str(d["pythia-seed1"]) and rm["n_train_pairs"] == 48
    # pad token was added (Pythia has none) and the embeddings grew to match
    assert json.loads((run / "rm" / "ckpt0-ft0" / "config.json").read_text())["vocab_size"] >= 321
    # fp16 backbones (and the fp16 conversion) were trained in fp32 master weights
    for rm_dir in ("rm/ckpt0-ft0", "rm/ckpt2-ft0", "evaluator/rm"):
        with safe_open(str(run / rm_dir / "model.safetensors"), "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F32"}, rm_dir
