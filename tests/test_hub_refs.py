"""The stages meet real-scale artefacts (issue 17): hub references pinned to commits (a stand-in for
huggingface_hub at the client boundary: HfApi().model_info / dataset_info, snapshot_download,
list_repo_files), `pretrain.convert_bin` for .bin-only checkpoints, bad rows skipped and counted by the data
stage, and one tokenizer for the grid, the evaluator and the policy."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub.hf_api import DatasetInfo, ModelInfo
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from perm.config import config_from_overrides, to_dict
from perm.models import ModelLoadError, gpt_neox_config, load_tokenizer, new_causal_lm, tokenizer_fingerprint
from perm.pipeline import Pipeline
from perm.progress import Progress
from perm.stages import MODULES
from perm.stages._context import checkpoint_key, checkpoint_name
from perm.stages._grid import grid_names
from perm.store import hash_obj, hash_path

SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40
SEED2 = "EleutherAI/pythia-160m-seed2"
BRANCH = "step143000"
TLDR = "openai/summarize_from_feedback"


# ------------------------------------------------------------------------------------------ stand-ins

class FakeHub:
    """huggingface_hub at the client boundary. `refs[(repo, revision)]` is the commit a branch points at
    (revision None = main); `folders[(repo, sha)]` the files of a model repo at a commit, served by
    snapshot_download (into a hub-cache layout, snapshots/<sha>/) and list_repo_files."""

    def __init__(self, monkeypatch, cache: Path):
        self.refs: dict[tuple[str, str | None], str] = {}
        self.folders: dict[tuple[str, str], Path] = {}
        self.calls: list[tuple] = []
        self.cache, self.fail = cache, None
        hub = self

        class HfApi:
            def model_info(self, repo_id, *, revision=None, **kw):
                sha = hub._sha("model_info", repo_id, revision)
                folder = hub.folders.get((repo_id, sha))  # the hub lists a repo's files with its info
                siblings = None if folder is None else [{"rfilename": f.name} for f in sorted(folder.iterdir())]
                return ModelInfo(id=repo_id, sha=sha, siblings=siblings)

            def dataset_info(self, repo_id, *, revision=None, **kw):
                return DatasetInfo(id=repo_id, sha=hub._sha("dataset_info", repo_id, revision))

        monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", self.list_repo_files)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def _sha(self, call, repo_id, revision):
        self.calls.append((call, repo_id, revision))
        if self.fail is not None:
            raise self.fail
        return self.refs[repo_id, revision]

    def _folder(self, repo_id, revision):
        sha = revision if (repo_id, revision) in self.folders else self.refs[repo_id, revision]
        return sha, self.folders[repo_id, sha]

    def list_repo_files(self, repo_id, *, revision=None, **kw):
        self.calls.append(("list_repo_files", repo_id, revision))
        return sorted(p.name for p in self._folder(repo_id, revision)[1].iterdir())

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, **kw):
        self.calls.append(("snapshot_download", repo_id, revision))
        sha, folder = self._folder(repo_id, revision)
        snapshot = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha
        shutil.copytree(folder, snapshot, dirs_exist_ok=True)
        return str(snapshot)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    return FakeHub(monkeypatch, tmp_path / "hf-cache")


def word_tokenizer(words=(), *, pad: bool = True) -> PreTrainedTokenizerFast:
    vocab = {"<|endoftext|>": 0, "<|unk|>": 1}
    if pad:
        vocab["<|pad|>"] = len(vocab)
    for w in ["my", "cat", "dog", "ate", "lunch", "TL;DR:", "SUBREDDIT:", "TITLE:", "POST:", *words]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|unk|>",
                                   **({"pad_token": "<|pad|>"} if pad else {}))


def bin_only(folder: Path, tokenizer, seed: int) -> Path:
    """A checkpoint as on a PolyPythias step branch: config.json, tokenizer files and only pytorch_model.bin
    (torch.save of an fp16 state dict)."""
    cfg = gpt_neox_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    model = new_causal_lm(cfg, seed).half()
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def comparison(i: int, *, post: str | None = None, chosen: str | None = None) -> dict:
    """A summarize_from_feedback comparison (choice 0: summaries[0] is chosen)."""
    text = " ".join(["my", "cat", "dog", "ate", "lunch"][: 1 + i % 5])
    return {"info": {"id": f"t3_{i}", "post": text if post is None else post, "title": "cat", "subreddit": "pets"},
            "summaries": [{"text": f" cat {i}" if chosen is None else chosen}, {"text": f" dog {i}"}],
            "choice": 0, "worker": "w0", "batch": "b1", "split": "train"}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def all_keys(cfg, upstream):
    out = {}
    for m in MODULES:
        out |= m.keys(cfg, upstream)
    return out


def fake_upstream(cfg) -> dict[str, str]:
    """Fixed output hashes for every stage, so that only what a key reads directly shows."""
    names = ["testbed", "data", "policy", "policy-prefs", "sample", "score", "analyze", "evaluator/pretrain",
             "evaluator/rm", *grid_names(cfg), "score/evaluator"]
    names += [f"score/{n.split('/', 1)[1]}" for n in grid_names(cfg)]
    return {n: f"hash-of-{n}" for n in names}


def old_keys(cfg) -> dict[str, str]:
    """The keys before pinning existed: checkpoints keyed by checkpoint_key of the spec as written (a hub id
    by its branch name), the data stage without any dataset identity."""
    specs = [*cfg.pretrain.checkpoints, cfg.evaluator.checkpoint if cfg.evaluator.enabled else None,
             cfg.sft.checkpoint]
    return all_keys(cfg, fake_upstream(cfg) | {checkpoint_name(s): checkpoint_key(s) for s in specs if s})


def pipeline(overrides: list[str], tmp_path: Path) -> tuple[Pipeline, io.StringIO]:
    log = io.StringIO()
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", "precision=fp32", "device=cpu", "workers=1", "threads=1",
                                 *overrides])
    return Pipeline(cfg, Progress("quiet", stream=log)), log


def keys_of(pipe: Pipeline) -> dict[str, str]:
    """Every key of the run, with fixed stage outputs and the run's own checkpoint and dataset identities."""
    return all_keys(pipe.cfg, pipe.ctx.upstream() | fake_upstream(pipe.cfg))


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "manifest.json").read_text())


@pytest.fixture
def prefs(tmp_path):
    return write_parquet(tmp_path / "prefs.parquet", [comparison(i) for i in range(12)])


def external(prefs: Path, ckpts: list, *, policy, evaluator=None) -> list[str]:
    return [f"data.prefs={prefs}", "data.train_split=null", "data.eval_split=null", "data.schema=tldr",
            f"pretrain.checkpoints=[{', '.join(str(c) for c in ckpts)}]", f"sft.checkpoint={policy}",
            *([f"evaluator.checkpoint={evaluator}"] if evaluator else ["evaluator.enabled=false"]),
            "reward.finetune_seeds=[0, 1]"]


# ---------------------------------------------------------------------------------------------- bad rows

def test_the_data_stage_skips_and_counts_bad_rows(tmp_path, tiny_backbone_dir):
    """data.bad_rows=skip reaches every load_preferences call (the separate prefs_eval too), with
    max_bad_fraction; the counts land in the data stage's manifest info."""
    train = [comparison(i) for i in range(20)]
    train.insert(5, comparison(99, post=""))  # one empty row among good ones
    held = [comparison(i) for i in range(30, 38)] + [comparison(98, chosen="  ")]
    write_parquet(tmp_path / "train.parquet", train)
    write_parquet(tmp_path / "eval.parquet", held)
    base = [f"data.prefs={tmp_path / 'train.parquet'}", f"data.prefs_eval={tmp_path / 'eval.parquet'}",
            "data.train_split=null", "data.schema=tldr", f"pretrain.checkpoints=[{tiny_backbone_dir}]",
            f"sft.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false"]
    from perm.data import DataError

    with pytest.raises(DataError, match=r"train\.parquet: row 5: field 'info\.post'"):  # default: error
        pipeline(base, tmp_path)[0].run("testbed")
    with pytest.raises(DataError, match="max_bad_fraction"):  # 1 of 21 rows is more than the 0.1 % default
        pipeline([*base, "data.bad_rows=skip"], tmp_path)[0].run("testbed")
    pipeline([*base, "data.bad_rows=skip", "data.max_bad_fraction=0.2"], tmp_path)[0].run("testbed")
    info = manifest(tmp_path)["stages"]["data"]["info"]
    assert (info["train_pairs"], info["eval_pairs"]) == (20, 8)
    assert (info["train_skipped_empty_prompt"], info["eval_skipped_empty_chosen"]) == (1, 1)


# ------------------------------------------------------------------------------------ pinned references

def test_a_hub_branch_is_pinned_to_its_commit(tmp_path, hub, prefs, tiny_backbone_dir):
    spec = f"{SEED2}@{BRANCH}"
    over = external(prefs, [tiny_backbone_dir, spec], policy=tiny_backbone_dir, evaluator=tiny_backbone_dir)
    hub.refs[SEED2, BRANCH] = SHA_A
    pipe, log = pipeline(over, tmp_path)
    keys_a = keys_of(pipe)
    assert pipe.ctx.upstream()[checkpoint_name(spec)] == f"hub:{SEED2}@{SHA_A}"
    assert pipe.ctx.need("pretrain") == {"ckpt0": str(tiny_backbone_dir), "ckpt1": f"{SEED2}@{SHA_A}"}  # loaded at A
    assert hub.calls == [("model_info", SEED2, BRANCH)]  # once per run
    assert manifest(tmp_path)["hub_refs"] == {spec: SHA_A}
    assert log.getvalue() == ""
    old = old_keys(pipe.cfg)
    assert {n for n in old if old[n] != keys_a[n]} == {"rm/ckpt1-ft0"}  # keyed on the sha, not the branch

    hub.refs[SEED2, BRANCH] = SHA_B  # the branch is re-uploaded
    pipe, _ = pipeline(over, tmp_path)
    keys_b = keys_of(pipe)
    assert {n for n in keys_a if keys_a[n] != keys_b[n]} == {"rm/ckpt1-ft0"}  # only what reads that backbone
    assert pipe.ctx.resolve_checkpoint(spec) == f"{SEED2}@{SHA_B}"
    m = manifest(tmp_path)
    assert m["hub_refs"] == {spec: SHA_B} and m["hub_refs_history"] == [{"reference": spec, "sha": SHA_A}]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no connection"])
def test_offline_keeps_the_branch_key_with_one_warning(tmp_path, hub, prefs, tiny_backbone_dir, monkeypatch, how):
    specs = [f"{SEED2}@{BRANCH}", "EleutherAI/pythia-1b-deduped"]
    over = external(prefs, [tiny_backbone_dir, specs[0]], policy=tiny_backbone_dir, evaluator=specs[1])
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        hub.fail = ConnectionError("[Errno -3] Temporary failure in name resolution")
    pipe, log = pipeline(over, tmp_path)
    assert keys_of(pipe) == old_keys(pipe.cfg)
    assert pipe.ctx.upstream()[checkpoint_name(specs[0])] == f"hub:{specs[0]}"
    assert pipe.ctx.resolve_checkpoint(specs[0]) == specs[0]  # loaded by its branch name
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[perm] warning: hub: could not pin {specs[0]}, {specs[1]} "
                                                   "to a commit")
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "ConnectionError") in lines[0]
    assert hub.calls == ([] if how == "HF_HUB_OFFLINE" else [("model_info", SEED2, BRANCH)])  # asked once at most
    assert "hub_refs" not in manifest(tmp_path)


def test_a_commit_sha_needs_no_hub_and_local_paths_are_not_references(tmp_path, hub, prefs, tiny_backbone_dir):
    spec = f"{SEED2}@{SHA_C}"
    pipe, log = pipeline(external(prefs, [tiny_backbone_dir, spec], policy=tiny_backbone_dir), tmp_path)
    assert keys_of(pipe) == old_keys(pipe.cfg) and hub.calls == [] and log.getvalue() == ""
    assert manifest(tmp_path)["hub_refs"] == {spec: SHA_C}
    pipe, _ = pipeline(external(prefs, [tiny_backbone_dir], policy=tiny_backbone_dir), tmp_path / "local")
    assert keys_of(pipe) == old_keys(pipe.cfg) and hub.calls == []


def test_a_hub_dataset_is_pinned_keyed_and_loaded_at_its_commit(tmp_path, hub, tiny_backbone_dir, monkeypatch):
    """openai/summarize_from_feedback's Parquet conversion (refs/convert/parquet) resolves to a commit; the
    data stage is keyed on it and loads at it; a rewritten conversion reruns the import alone."""
    import perm.data

    local = tmp_path / "conversion"  # the conversion's layout: <config>/<split>/0000.parquet
    write_parquet(local / "comparisons" / "train" / "0000.parquet", [comparison(i) for i in range(12)])
    write_parquet(local / "comparisons" / "validation" / "0000.parquet", [comparison(i) for i in range(20, 26)])
    real, loads = perm.data.load_preferences, []

    def from_the_hub(source, *, revision=None, **kw):  # the hub id served from the local folder
        loads.append((source, revision))
        return real(local if source == TLDR else source, **kw)

    monkeypatch.setattr(perm.data, "load_preferences", from_the_hub)
    over = [f"data.prefs={TLDR}", "data.name=comparisons", "data.schema=tldr",
            f"pretrain.checkpoints=[{tiny_backbone_dir}]", f"sft.checkpoint={tiny_backbone_dir}",
            "evaluator.enabled=false", "reward.finetune_seeds=[0]"]
    hub.refs[TLDR, "refs/convert/parquet"] = SHA_A
    pipe, _ = pipeline(over, tmp_path)
    keys_a = keys_of(pipe)
    assert pipe.ctx.upstream()["dataset:prefs"] == f"hub:{TLDR}@{SHA_A}"
    assert hub.calls == [("dataset_info", TLDR, "refs/convert/parquet")]
    old = old_keys(pipe.cfg)
    assert {n for n in old if old[n] != keys_a[n]} == {"data"}
    pipe.run("testbed")
    assert loads == [(TLDR, SHA_A), (TLDR, SHA_A)]  # train and validation, at the commit
    m = manifest(tmp_path)
    assert m["hub_refs"] == {f"{TLDR}@refs/convert/parquet": SHA_A}
    assert m["stages"]["data"]["key"] == keys_a["data"] and m["stages"]["data"]["info"]["train_pairs"] == 12

    hub.refs[TLDR, "refs/convert/parquet"] = SHA_B
    pipe, _ = pipeline(over, tmp_path)
    keys_b = keys_of(pipe)
    assert {n for n in keys_a if keys_a[n] != keys_b[n]} == {"data"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, log = pipeline(over, tmp_path)
    cfg = pipe.cfg
    expected = hash_obj({"data": to_dict(cfg.data), "tokenizer": hash_path(tiny_backbone_dir)})  # today's key
    assert keys_of(pipe)["data"] == expected and "could not pin" in log.getvalue()


# ------------------------------------------------------------------------------------------- convert_bin

def test_convert_bin_converts_a_local_bin_only_checkpoint_once(tmp_path, tokenizer, prefs, tiny_backbone_dir,
                                                               monkeypatch):
    import perm.convert

    conversions = []
    real = perm.convert.convert_checkpoint
    monkeypatch.setattr(perm.convert, "convert_checkpoint", lambda *a, **k: conversions.append(a) or real(*a, **k))
    ckpt = bin_only(tmp_path / "seed3", tokenizer, seed=3)
    over = [*external(prefs, [tiny_backbone_dir, ckpt], policy=tiny_backbone_dir), "reward.finetune_seeds=[0]",
            "reward.batch_size=4", "reward.max_length=32", "data.n_eval_prompts=2"]
    pipe, _ = pipeline([*over, "pretrain.convert_bin=false"], tmp_path)
    assert pipe.ctx.resolve_checkpoint(str(ckpt)) == str(ckpt)  # convert_bin false: as it was (refused on load)
    assert keys_of(pipe) == old_keys(pipe.cfg)
    with pytest.raises(ModelLoadError, match="pretrain.convert_bin: true"):
        pipe.run("train-rm")

    pipe, _ = pipeline(over, tmp_path)  # convert_bin: on by default
    path = pipe.ctx.resolve_checkpoint(str(ckpt))
    assert Path(path).parent == tmp_path / "run" / "converted" and (Path(path) / "model.safetensors").is_file()
    assert pipe.ctx.upstream()[checkpoint_name(str(ckpt))] == hash_path(path)  # keyed by the conversion
    pipe.run("train-rm")  # the grid trains on the converted fp16 weights
    assert json.loads((tmp_path / "run" / "rm" / "ckpt1-ft0" / "rm.json").read_text())["backbone"] == path
    assert len(conversions) == 1
    key = manifest(tmp_path)["stages"]["rm/ckpt1-ft0"]["key"]

    pipe, _ = pipeline([*over, "pretrain.convert_bin=true"], tmp_path)
    assert pipe.ctx.resolve_checkpoint(str(ckpt)) == path and len(conversions) == 1  # reused
    assert pipe.store.is_complete("rm/ckpt1-ft0", key)
    bin_only(ckpt, tokenizer, seed=4)  # new weights in the same folder: converted again, its RMs rerun
    pipe, _ = pipeline([*over, "pretrain.convert_bin=true"], tmp_path)
    assert pipe.ctx.resolve_checkpoint(str(ckpt)) == path and len(conversions) == 2
    assert all_keys(pipe.cfg, pipe.ctx.upstream() | fake_upstream(pipe.cfg))["rm/ckpt1-ft0"] != key


def test_convert_bin_converts_a_hub_branch_at_its_pinned_commit(tmp_path, tokenizer, hub, prefs,
                                                                tiny_backbone_dir):
    repo = "EleutherAI/pythia-160m-seed3"
    spec = f"{repo}@{BRANCH}"
    hub.folders[repo, SHA_A] = bin_only(tmp_path / "at-a", tokenizer, seed=3)
    hub.folders[repo, SHA_B] = bin_only(tmp_path / "at-b", tokenizer, seed=4)
    hub.refs[repo, BRANCH] = SHA_A
    over = [*external(prefs, [tiny_backbone_dir, spec], policy=tiny_backbone_dir), "pretrain.convert_bin=true"]
    pipe, _ = pipeline(over, tmp_path)
    keys_a = keys_of(pipe)
    path_a = pipe.ctx.resolve_checkpoint(spec)
    assert path_a == str(tmp_path / "run" / "converted" / f"EleutherAI--pythia-160m-seed3--{SHA_A}")
    assert hub.calls == [("model_info", repo, BRANCH), ("list_repo_files", repo, SHA_A),
                         ("snapshot_download", repo, SHA_A)]  # downloaded at the commit, not the branch
    assert json.loads((Path(path_a) / "convert.json").read_text())["commit"] == SHA_A
    assert pipe.ctx.upstream()[checkpoint_name(spec)] == hash_path(path_a)

    hub.calls.clear()
    pipe, _ = pipeline(over, tmp_path)  # same commit: the conversion is reused without asking for files
    assert pipe.ctx.resolve_checkpoint(spec) == path_a and hub.calls == [("model_info", repo, BRANCH)]
    hub.refs[repo, BRANCH] = SHA_B
    pipe, _ = pipeline(over, tmp_path)
    keys_b = keys_of(pipe)
    assert pipe.ctx.resolve_checkpoint(spec).endswith(SHA_B)
    assert {n for n in keys_a if keys_a[n] != keys_b[n]} == {"rm/ckpt1-ft0"}


@pytest.mark.parametrize("weights", ["bin", "none"])
def test_a_pinned_branch_the_run_cannot_load_fails_at_pinning_before_any_training(tmp_path, tokenizer, hub, prefs,
                                                                                   tiny_backbone_dir, weights):
    repo = "EleutherAI/pythia-160m-seed3"
    folder = bin_only(tmp_path / "at-a", tokenizer, seed=3)
    if weights == "none":
        (folder / "pytorch_model.bin").unlink()
    hub.folders[repo, SHA_A] = folder
    hub.refs[repo, BRANCH] = SHA_A
    over = external(prefs, [tiny_backbone_dir, f"{repo}@{BRANCH}"], policy=tiny_backbone_dir)
    pipe, _ = pipeline([*over, "pretrain.convert_bin=false"], tmp_path)
    with pytest.raises(ModelLoadError) as err:
        pipe.run("train-rm")
    msg = str(err.value)
    assert f"pretrain.checkpoints[1]: {repo}@{BRANCH}" in msg
    if weights == "bin":
        assert "holds only pytorch_model.bin weights" in msg and "pretrain.convert_bin: true" in msg
    else:
        assert "no safetensors or pytorch_model.bin weights" in msg
    assert hub.calls == [("model_info", repo, BRANCH)]  # nothing downloaded
    stages = manifest(tmp_path).get("stages", {})
    assert not any(s.startswith(("rm/", "pretrain", "evaluator", "policy")) for s in stages), stages
    if weights == "bin":  # with the conversion on (the default), the same branch is fine
        pipe, _ = pipeline(over, tmp_path)
        assert pipe.ctx.checkpoints.pins()[f"{repo}@{BRANCH}"] == SHA_A


# --------------------------------------------------------------------------------------------- tokenizers

def test_tokenizers_that_differ_stop_the_run_naming_both(tmp_path, tokenizer, prefs, tiny_backbone_dir):
    other = tmp_path / "policy"
    word_tokenizer(["extra"]).save_pretrained(other)  # the data stage reads only the tokenizers
    pipe, _ = pipeline(external(prefs, [tiny_backbone_dir], policy=other), tmp_path)
    with pytest.raises(ModelLoadError, match=rf"tokenizers differ: pretrain\.checkpoints\[0\] \({tiny_backbone_dir}\) "
                                             rf"and sft\.checkpoint \({other}\) \(vocabulary"):
        pipe.run("testbed")
    assert not (tmp_path / "run" / "data").exists() and "data" not in manifest(tmp_path)["stages"]


def test_a_pad_token_of_its_own_is_not_a_different_tokenizer(tmp_path, prefs):
    """Pythia has no pad token (perm adds <|pad|>); a policy that adds its own ([PAD]) or pads with EOS reads
    every text with the same ids: accepted, and recorded."""
    base, grid, evaluator, policy = word_tokenizer(pad=False), tmp_path / "grid", tmp_path / "ev", tmp_path / "pol"
    base.save_pretrained(grid)
    own = word_tokenizer(pad=False)
    own.add_special_tokens({"pad_token": "[PAD]"})
    own.save_pretrained(policy)
    eos = word_tokenizer(pad=False)
    eos.pad_token = eos.eos_token
    eos.save_pretrained(evaluator)
    pipe, _ = pipeline(external(prefs, [grid], policy=policy, evaluator=evaluator), tmp_path)
    pipe.run("testbed")
    info = manifest(tmp_path)["stages"]["data"]["info"]
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(grid))
    assert info["tokenizer_pad_ignored"] == {f"evaluator.checkpoint ({evaluator})": "<|endoftext|>",
                                             f"sft.checkpoint ({policy})": "[PAD]"}
    word_tokenizer(["extra"], pad=False).save_pretrained(policy)  # a real difference still stops it
    with pytest.raises(ModelLoadError, match="tokenizers differ"):
        pipeline(external(prefs, [grid], policy=policy, evaluator=evaluator), tmp_path)[0].run("testbed")


def test_a_hub_tokenizer_offline_is_recorded_as_unchecked(tmp_path, prefs, tiny_backbone_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = "org/evaluator-not-in-any-cache"
    pipe, log = pipeline(external(prefs, [tiny_backbone_dir], policy=tiny_backbone_dir, evaluator=spec), tmp_path)
    pipe.run("testbed")
    info = manifest(tmp_path)["stages"]["data"]["info"]
    assert info["tokenizer_unchecked"] == [f"evaluator.checkpoint ({spec})"]
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(tiny_backbone_dir))
    assert f"tokenizer: not checked for evaluator.checkpoint ({spec})" in log.getvalue()


def test_trained_rms_as_the_grid_are_evaluated_and_scored_not_finetuned(tmp_path, tokenizer, prefs,
                                                                         tiny_backbone_dir):
    """`reward.rm_checkpoints`: a finetune-level grid of trained RMs (one pretrain, its finetune seeds) is
    evaluated on the held-out pairs and scored with the recorded pretrain_id / finetune_seed, nothing finetuned;
    the RMs are pinned, tokenizer-checked and keyed by their checkpoints' identity."""
    import pandas as pd

    from perm.models import load_reward_backbone, save_model

    rms = []
    for seed in (44413, 55513):
        rm = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=seed)
        save_model(rm, tokenizer, tmp_path / f"rm-{seed}", None, "")
        rms.append(f"pythia-1b:{seed}={tmp_path / f'rm-{seed}'}")
    over = [*external(prefs, [tiny_backbone_dir], policy=tiny_backbone_dir), f"reward.rm_checkpoints=[{', '.join(rms)}]",
            "reward.max_length=32", "data.n_eval_prompts=2", "sample.pool_size=3", "sample.n_reference=1",
            "sample.max_new_tokens=4", "analysis.coverage_sims=0"]
    pipe, _ = pipeline(over, tmp_path)
    assert [w for w in pipe.plan("train-rm") if w.stage == "train-rm"][0].note == (
        "loads 2 trained grid RMs (reward.rm_checkpoints)")
    pipe.run("score")
    stages = manifest(tmp_path)["stages"]
    assert {"rm/pythia-1b-ft44413", "rm/pythia-1b-ft55513"} <= set(stages)
    rec = json.loads((tmp_path / "run" / "rm" / "pythia-1b-ft44413" / "rm.json").read_text())
    assert (rec["role"], rec["pretrain_id"], rec["finetune_seed"]) == ("rm", "pythia-1b", 44413)
    assert not (tmp_path / "run" / "rm" / "pythia-1b-ft44413" / "model.safetensors").exists()  # loaded, not saved
    models = pd.read_parquet(tmp_path / "run" / "models.parquet").set_index("model_id")
    assert models.loc["pythia-1b-ft55513", ["role", "pretrain_id", "finetune_seed"]].tolist() == ["rm", "pythia-1b",
                                                                                                 55513]
    before = keys_of(pipeline(over, tmp_path)[0])
    save_model(load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=7), tokenizer,
               tmp_path / "rm-44413", None, "")  # other weights in the same folder: evaluated again
    after = keys_of(pipeline(over, tmp_path)[0])
    assert {n for n in before if before[n] != after[n]} >= {"rm/pythia-1b-ft44413"}
    assert after["rm/pythia-1b-ft55513"] == before["rm/pythia-1b-ft55513"]
