"""perm convert: pytorch_model.bin checkpoints (PolyPythias' step branches) into safetensors folders.

Stand-ins look like the hub's: a tiny GPT-NeoX whose state dict is written with torch.save in fp16 (as
Pythia's step branches store it) beside its config.json and tokenizer, in a folder laid out like a hub
snapshot of a branch (models--org--name/snapshots/<commit>/). The hub is reached only through
huggingface_hub.snapshot_download and list_repo_files, replaced here by a stand-in that serves local folders.
"""

from __future__ import annotations

import json
import shutil
from fnmatch import fnmatch

import huggingface_hub
import pytest
import torch
from safetensors import safe_open
from transformers import GPTNeoXForCausalLM
from typer.testing import CliRunner

from perm.cli import app
from perm.convert import conversion_dir, convert_checkpoint, ensure_safetensors, read_state_dict
from perm.models import (
    ModelLoadError,
    gpt_neox_config,
    load_causal_lm,
    load_reward_backbone,
    load_tokenizer,
    new_causal_lm,
)

COMMIT = "9a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
REPO = "EleutherAI/pythia-160m-seed3"
BRANCH = "step143000"


def _model(tokenizer, *, tie=False):
    cfg = gpt_neox_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    cfg.tie_word_embeddings = tie
    return new_causal_lm(cfg, init_seed=3)


def bin_checkpoint(folder, tokenizer, *, shards=1, tie=False, dtype=torch.float16):
    """A .bin-only checkpoint as on a Pythia step branch: config.json (torch_dtype float16), tokenizer files
    and the state dict pickled by torch.save (one file, or `shards` files with pytorch_model.bin.index.json)."""
    model = _model(tokenizer, tie=tie).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = model.state_dict()
    if tie:  # as older transformers pickled a tied model: both names, one storage
        state["embed_out.weight"] = state["gpt_neox.embed_in.weight"]
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        names = list(state)
        weight_map = {}
        for i in range(shards):
            shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            part = {k: state[k] for k in names[i::shards]}
            torch.save(part, folder / shard)
            weight_map.update(dict.fromkeys(part, shard))
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert not list(folder.glob("*.safetensors"))
    return folder, state


def reference_logits(config_dir, state, ids):
    """Logits of the original weights: the pickled state dict loaded into an fp32 model by hand."""
    from transformers import AutoConfig

    model = GPTNeoXForCausalLM(AutoConfig.from_pretrained(config_dir)).float().eval()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.tie_weights()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _dtypes(folder):
    out = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            out |= {st.get_slice(k).get_dtype() for k in st.keys()}
    return out


def test_bin_only_checkpoint_converts_and_loads_identically(tmp_path, tokenizer):
    src, state = bin_checkpoint(tmp_path / "models--EleutherAI--pythia-160m-seed3" / "snapshots" / COMMIT, tokenizer)
    with pytest.raises(ModelLoadError, match="pickled weights are refused"):
        load_causal_lm(src)
    out = convert_checkpoint(src, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "convert.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert _dtypes(out) == {"F16"}  # the stored dtype is kept on disk
    record = json.loads((out / "convert.json").read_text())
    assert record["source"] == str(src.resolve()) and record["revision"] is None and record["dtype"] == "float16"
    assert record["tokenizer"] is True
    import hashlib

    assert record["inputs"] == {"pytorch_model.bin": hashlib.sha256((src / "pytorch_model.bin").read_bytes()).hexdigest()}
    lm = load_causal_lm(out).eval()
    assert {p.dtype for p in lm.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(lm(input_ids=IDS).logits, reference_logits(src, state, IDS))
    rm = load_reward_backbone(out, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    assert torch.equal(rm.gpt_neox.embed_in.weight, state["gpt_neox.embed_in.weight"].float())
    assert load_tokenizer(out).get_vocab() == tokenizer.get_vocab()


def test_sharded_bin_checkpoint(tmp_path, tokenizer):
    src, state = bin_checkpoint(tmp_path / "sharded", tokenizer, shards=2)
    out = convert_checkpoint(src, tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert sorted(json.loads((out / "convert.json").read_text())["inputs"]) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    with torch.no_grad():
        assert torch.equal(load_causal_lm(out).eval()(input_ids=IDS).logits, reference_logits(src, state, IDS))


def test_tied_tensors_are_written_as_copies(tmp_path, tokenizer):
    """A tied checkpoint pickles one storage under two names; safetensors refuses shared storage."""
    src, state = bin_checkpoint(tmp_path / "tied", tokenizer, tie=True, dtype=torch.bfloat16)
    loaded = torch.load(src / "pytorch_model.bin", weights_only=True)
    assert loaded["embed_out.weight"].untyped_storage().data_ptr() == loaded["gpt_neox.embed_in.weight"].untyped_storage().data_ptr()
    out = convert_checkpoint(src, tmp_path / "out")
    assert _dtypes(out) == {"BF16"} and json.loads((out / "convert.json").read_text())["dtype"] == "bfloat16"
    with torch.no_grad():
        assert torch.equal(load_causal_lm(out).eval()(input_ids=IDS).logits, reference_logits(src, state, IDS))


@pytest.mark.parametrize("payload, pattern", [
    ({"gpt_neox.embed_in.weight": torch.zeros(2), "note": "trained by me"},
     r"refused: entry 'note' is a str, not a tensor"),
    ({"state_dict": {"w": torch.zeros(2)}}, r"refused: entry 'state_dict' is a dict, not a tensor"),
    (torch.nn.Linear(2, 2), r"refused: not a plain tensor state dict .*Unsupported global: GLOBAL "
                            r"torch\.nn\.modules\.linear\.Linear"),
    ([torch.zeros(2)], r"refused: expected a dict of tensor name -> tensor, got list"),
    ({1: torch.zeros(2)}, r"refused: key 1 is a int"),
], ids=["a string", "nested", "a pickled module", "a list", "int key"])
def test_anything_but_a_flat_tensor_dict_is_refused(tmp_path, tokenizer, payload, pattern):
    src, _ = bin_checkpoint(tmp_path / "src", tokenizer)
    torch.save(payload, src / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=str(src / "pytorch_model.bin").replace(".", r"\.") + ": " + pattern):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_damaged_or_missing_weights(tmp_path, tokenizer):
    src, _ = bin_checkpoint(tmp_path / "src", tokenizer)
    (src / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin: refused: not a plain tensor state dict"):
        read_state_dict(src / "pytorch_model.bin")
    (src / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"src: no pytorch_model\.bin or pytorch_model\.bin\.index\.json to convert"):
        convert_checkpoint(src, tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    src, _ = bin_checkpoint(tmp_path / "src2", tokenizer)
    with pytest.raises(ModelLoadError, match=r"mine: exists and is not an earlier conversion"):
        convert_checkpoint(src, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------
# Hub checkpoints: huggingface_hub's client calls are served from local folders


class LocalHub:
    """Model repositories at revisions, served from local folders through the two calls perm makes."""

    def __init__(self, monkeypatch, cache):
        self.cache, self.repos, self.calls = cache, {}, []
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", self.list_repo_files)

    def add(self, repo_id, revision, folder, commit=COMMIT):
        self.repos[repo_id, revision] = (commit, folder)

    def _repo(self, repo_id, revision):
        if (repo_id, revision or "main") not in self.repos:
            raise FileNotFoundError(f"404 Client Error: Revision Not Found for {repo_id}@{revision}")
        return self.repos[repo_id, revision or "main"]

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **kwargs):
        self.calls.append(("list_repo_files", repo_id, revision))
        return sorted(p.name for p in self._repo(repo_id, revision)[1].iterdir())

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, **kwargs):
        self.calls.append(("snapshot_download", repo_id, revision))
        commit, folder = self._repo(repo_id, revision)
        snapshot = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if allow_patterns is None or any(fnmatch(f.name, p) for p in allow_patterns):
                shutil.copyfile(f, snapshot / f.name)
        return str(snapshot)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    return LocalHub(monkeypatch, tmp_path / "hf-cache")


def test_hub_branch_is_downloaded_at_its_revision_and_converted(tmp_path, tokenizer, hub):
    src, state = bin_checkpoint(tmp_path / "branch", tokenizer)
    (src / "README.md").write_text("a model card")
    (src / "modeling_evil.py").write_text("raise SystemExit")  # remote code: never fetched without the flag
    hub.add(REPO, BRANCH, src)
    out = convert_checkpoint(f"{REPO}@{BRANCH}", tmp_path / "out")
    assert hub.calls == [("snapshot_download", REPO, BRANCH)]
    snapshot = tmp_path / "hf-cache" / "models--EleutherAI--pythia-160m-seed3" / "snapshots" / COMMIT
    assert not (snapshot / "README.md").exists() and not (snapshot / "modeling_evil.py").exists()
    record = json.loads((out / "convert.json").read_text())
    assert (record["source"], record["revision"], record["commit"]) == (REPO, BRANCH, COMMIT)
    with torch.no_grad():
        assert torch.equal(load_causal_lm(out).eval()(input_ids=IDS).logits, reference_logits(src, state, IDS))
    # the revision as an argument; an unknown one names the repo and revision
    convert_checkpoint(REPO, tmp_path / "out2", revision=BRANCH)
    assert hub.calls[-1] == ("snapshot_download", REPO, BRANCH)
    with pytest.raises(ModelLoadError, match=rf"{REPO}@step1: cannot download from the Hugging Face Hub .*Revision Not Found"):
        convert_checkpoint(REPO, tmp_path / "out3", revision="step1")
    with pytest.raises(ModelLoadError, match="revision 'step143000' in the id but 'main' passed"):
        convert_checkpoint(f"{REPO}@{BRANCH}", tmp_path / "out3", revision="main")


def test_ensure_safetensors_is_a_no_op_where_there_are_safetensors(tmp_path, tokenizer, hub, tiny_backbone_dir):
    assert ensure_safetensors(str(tiny_backbone_dir), tmp_path / "converted", None) == str(tiny_backbone_dir)
    hub.add("EleutherAI/pythia-1b-deduped", "main", tiny_backbone_dir)
    assert ensure_safetensors("EleutherAI/pythia-1b-deduped", tmp_path / "converted", None) == "EleutherAI/pythia-1b-deduped"
    assert hub.calls == [("list_repo_files", "EleutherAI/pythia-1b-deduped", None)]  # listed, not downloaded
    assert not (tmp_path / "converted").exists()


def test_ensure_safetensors_converts_bin_only_checkpoints_once(tmp_path, tokenizer, hub, monkeypatch):
    src, state = bin_checkpoint(tmp_path / "branch", tokenizer)
    hub.add(REPO, BRANCH, src)
    dest = tmp_path / "run" / "converted"
    path = ensure_safetensors(f"{REPO}@{BRANCH}", dest, None)
    assert path == str(dest / "EleutherAI--pythia-160m-seed3--step143000") == str(conversion_dir(REPO, dest, BRANCH))
    assert hub.calls == [("list_repo_files", REPO, BRANCH), ("snapshot_download", REPO, BRANCH)]
    with torch.no_grad():
        assert torch.equal(load_causal_lm(path).eval()(input_ids=IDS).logits, reference_logits(src, state, IDS))
    local = ensure_safetensors(str(src), dest, None)  # a local .bin-only folder, likewise
    assert local.startswith(str(dest / "local--branch--")) and (dest / local / "model.safetensors").is_file()
    import perm.convert

    monkeypatch.setattr(perm.convert, "convert_checkpoint", lambda *a, **k: pytest.fail("converted twice"))
    assert ensure_safetensors(REPO, dest, BRANCH) == path  # the earlier conversions are reused
    assert ensure_safetensors(str(src), dest, None) == local
    hub.add("org/empty", "main", tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing")
    with pytest.raises(ModelLoadError, match=r"org/empty: no safetensors and no pytorch_model\.bin weights"):
        ensure_safetensors("org/empty", dest, None)


def test_ensure_safetensors_local_bin(tmp_path, tokenizer):
    src, state = bin_checkpoint(tmp_path / "ckpt", tokenizer)
    path = ensure_safetensors(str(src), tmp_path / "converted", None)
    assert path != str(src) and (tmp_path / "converted").is_dir()
    with torch.no_grad():
        assert torch.equal(load_causal_lm(path).eval()(input_ids=IDS).logits, reference_logits(src, state, IDS))


# ----------------------------------------------------------------------------------------------------
# The command line

runner = CliRunner()


def test_cli_convert(tmp_path, tokenizer, hub):
    src, _ = bin_checkpoint(tmp_path / "branch", tokenizer)
    hub.add(REPO, BRANCH, src)
    r = runner.invoke(app, ["convert", REPO, str(tmp_path / "out"), "--revision", BRANCH])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(tmp_path / "out") and (tmp_path / "out" / "model.safetensors").is_file()
    torch.save({"w": torch.zeros(2), "optimizer": {"lr": 1e-3}}, src / "pytorch_model.bin")
    r = runner.invoke(app, ["convert", str(src), str(tmp_path / "bad")])
    assert r.exit_code == 2
    assert r.output.startswith(f"error: {src / 'pytorch_model.bin'}: refused: entry 'optimizer' is a dict")
    assert not (tmp_path / "bad").exists()
    r = runner.invoke(app, ["convert", str(src), str(tmp_path / "bad"), "--revision", "main"])
    assert r.exit_code == 2 and "a local folder has no revisions" in r.output
    # a branch without tokenizer files converts, and says so
    bare, _ = bin_checkpoint(tmp_path / "bare", tokenizer)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    r = runner.invoke(app, ["convert", str(bare), str(tmp_path / "bare-st"), "--quiet"])
    assert r.exit_code == 0 and "has no tokenizer files" in r.output
    assert json.loads((tmp_path / "bare-st" / "convert.json").read_text())["tokenizer"] is False
