"""`perm check`: the hub side against a stand-in for huggingface_hub.HfApi (the client boundary), the local
side on real checkpoints saved with save_pretrained."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import DatasetInfo, ModelInfo, RepoSibling
from typer.testing import CliRunner

from conftest import make_tokenizer
from perm.check import FP32_BYTES, check_config, gpt_neox_params, n_reward_models, safetensors_params
from perm.cli import app
from perm.config import config_from_overrides, configs_dir

runner = CliRunner()
TOK_A, TOK_B = "a" * 64, "b" * 64  # tokenizer.json sha256 of two tokenizers on the stand-in hub


def _response(status: int, url: str):
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx
    return httpx.Response(status, request=httpx.Request("GET", url))


def _model(repo: str, *, weights=("model.safetensors",), tokenizer_sha: str = TOK_A, params: int = 1000) -> ModelInfo:
    siblings = [{"rfilename": "config.json", "size": 600, "blobId": "c" * 40}]
    for w in weights:
        siblings.append({"rfilename": w, "size": 2 * params, "blobId": "d" * 40,
                         "lfs": {"size": 2 * params, "sha256": "e" * 64, "pointerSize": 135}})
    siblings.append({"rfilename": "tokenizer.json", "size": 2_100_000, "blobId": "f" * 40,
                     "lfs": {"size": 2_100_000, "sha256": tokenizer_sha, "pointerSize": 134}})
    siblings.append({"rfilename": "special_tokens_map.json", "size": 99, "blobId": "1" * 40})
    st = {"parameters": {"F16": params}, "total": params} if any(w.endswith(".safetensors") for w in weights) else None
    return ModelInfo(id=repo, sha="0123456789abcdef", siblings=siblings, safetensors=st)


class FakeHfApi:
    """HfApi's model_info / dataset_info over a dict of (repo, revision) -> info; records its calls."""

    repos: dict = {}
    datasets: dict = {}
    calls: list = []
    down: bool = False  # the network is down: every call fails to connect

    def model_info(self, repo_id, *, revision=None, files_metadata=False, **kw):
        return self._get(self.repos, "models", repo_id, revision)

    def dataset_info(self, repo_id, *, revision=None, **kw):
        return self._get(self.datasets, "datasets", repo_id, revision)

    def _get(self, table, kind, repo_id, revision):
        type(self).calls.append((kind, repo_id, revision))
        url = f"https://huggingface.co/api/{kind}/{repo_id}/revision/{revision or 'main'}"
        if self.down:
            try:
                import httpx2 as httpx
            except ImportError:  # pragma: no cover
                import httpx
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
        if not any(r == repo_id for r, _ in table):
            raise hf_errors.RepositoryNotFoundError(f"404 {url}", response=_response(404, url))
        if (repo_id, revision) not in table:
            raise hf_errors.RevisionNotFoundError(f"404 {url}", response=_response(404, url))
        return table[(repo_id, revision)]


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls, FakeHfApi.down = [], False
    FakeHfApi.repos = {
        **{(f"EleutherAI/pythia-160m-seed{i}", "step143000"): _model(f"EleutherAI/pythia-160m-seed{i}") for i in (1, 2)},
        ("EleutherAI/pythia-1b-deduped", None): _model("EleutherAI/pythia-1b-deduped", params=5000),
        ("EleutherAI/pythia-160m-seed1", None): _model("EleutherAI/pythia-160m-seed1"),
        ("trl-lib/pythia-1b-deduped-tldr-sft", None): _model("trl-lib/pythia-1b-deduped-tldr-sft", params=5000),
        # the original cleanrl policy: pickled weights only, on a branch
        ("cleanrl/pythia-1b-sft", "sft__55513__1706646024"): _model("cleanrl/pythia-1b-sft", weights=("pytorch_model.bin",)),
        ("other/policy", None): _model("other/policy", tokenizer_sha=TOK_B),
    }
    FakeHfApi.datasets = {("openai/summarize_from_feedback", "refs/convert/parquet"): DatasetInfo(id="openai/summarize_from_feedback", sha="9" * 40)}
    FakeHfApi.files = {}  # (repo, file name) -> a local file hf_hub_download serves; others are not found

    def download(repo_id, filename, *, revision=None, local_dir=None, **kw):
        FakeHfApi.calls.append(("download", repo_id, filename))
        if (repo_id, filename) not in FakeHfApi.files:
            raise hf_errors.EntryNotFoundError(f"404 {repo_id}/{filename}")
        target = Path(local_dir) / filename
        target.write_bytes(FakeHfApi.files[repo_id, filename].read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return FakeHfApi


def _hub_cfg(**over):
    o = {"pretrain.checkpoints": "[EleutherAI/pythia-160m-seed1@step143000,EleutherAI/pythia-160m-seed2@step143000]",
         "evaluator.checkpoint": "EleutherAI/pythia-1b-deduped", "sft.checkpoint": "trl-lib/pythia-1b-deduped-tldr-sft",
         "data.prefs": "openai/summarize_from_feedback", "reward.pairs": "testbed", "reward.finetune_seeds": "[0,1,2]",
         "out": "runs/check-test"}
    o.update(over)
    return config_from_overrides([f"{k}={v}" for k, v in o.items()])


def test_a_good_hub_config_passes_and_lists_every_id_and_revision(hub):
    res = check_config(_hub_cfg())
    assert res.problems == [] and res.hub_checked
    text = res.text()
    for key, spec in [("pretrain.checkpoints[0]", "EleutherAI/pythia-160m-seed1@step143000"),
                      ("pretrain.checkpoints[1]", "EleutherAI/pythia-160m-seed2@step143000"),
                      ("evaluator.checkpoint", "EleutherAI/pythia-1b-deduped"),
                      ("sft.checkpoint", "trl-lib/pythia-1b-deduped-tldr-sft"),
                      ("data.prefs", "openai/summarize_from_feedback")]:
        assert any(line.strip().startswith(key) and spec in line for line in res.lines), text
    assert "tokenizer: the 4 checkpoints share one (tokenizer.json aaaaaaaaaaaa)" in text
    assert text.endswith("ok: no problems found\n")
    # the revisions asked for; the TL;DR comparisons are read from their Parquet conversion
    assert ("models", "EleutherAI/pythia-160m-seed2", "step143000") in hub.calls
    assert ("datasets", "openai/summarize_from_feedback", "refs/convert/parquet") in hub.calls
    # disk: 4 RMs (3 finetune seeds of the first pretrain + 1) x 1000 fp32 parameters, the evaluator's 5000
    assert n_reward_models(_hub_cfg()) == 4
    assert "4 RMs × 4.0 KB" in text and "the evaluator RM 20.0 KB" in text
    r = runner.invoke(app, ["check", *[f"{k}={v}" for k, v in {
        "pretrain.checkpoints": "[EleutherAI/pythia-160m-seed1@step143000]", "sft.checkpoint": "trl-lib/pythia-1b-deduped-tldr-sft",
        "evaluator.enabled": "false", "data.prefs": "openai/summarize_from_feedback", "reward.pairs": "testbed"}.items()]])
    assert r.exit_code == 0, r.output
    assert "ok: no problems found" in r.output


def test_bin_only_weights_a_missing_revision_and_another_tokenizer_are_each_named(hub):
    cfg = _hub_cfg(**{"pretrain.checkpoints": "[EleutherAI/pythia-160m-seed1@step143000,EleutherAI/pythia-160m-seed2@step1430]",
                      "evaluator.checkpoint": "cleanrl/pythia-1b-sft@sft__55513__1706646024",
                      "sft.checkpoint": "other/policy", "data.prefs": "nobody/nothing",
                      "pretrain.convert_bin": "false"})
    res = check_config(cfg)
    p = "\n".join(res.problems)
    assert len(res.problems) == 4, p
    assert ("pretrain.checkpoints[1]: EleutherAI/pythia-160m-seed2@step1430: revision 'step1430' not found on the hub") in p
    assert ("evaluator.checkpoint: cleanrl/pythia-1b-sft@sft__55513__1706646024: no *.safetensors weights at revision "
            "'sft__55513__1706646024', only pytorch_model.bin (pickled weights perm refuses to load): convert them with "
            "`perm convert cleanrl/pythia-1b-sft@sft__55513__1706646024 OUT` and set evaluator.checkpoint to OUT, or "
            "set `pretrain.convert_bin: true`") in p
    assert ("tokenizer: sft.checkpoint (other/policy) has another tokenizer than pretrain.checkpoints[0] "
            "(EleutherAI/pythia-160m-seed1@step143000): tokenizer.json differs") in p
    assert "data.prefs: nobody/nothing: no such repository on the hub" in p
    converted = check_config(dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, convert_bin=True)))
    assert len(converted.problems) == 3 and not any("cleanrl" in q for q in converted.problems)  # as the run does
    assert "pytorch_model.bin file(s), converted into the run (pretrain.convert_bin)" in converted.text()
    r = runner.invoke(app, ["check", *[f"{k}={v}" for k, v in {
        "pretrain.checkpoints": "[EleutherAI/pythia-160m-seed1@step143000]", "sft.checkpoint": "other/policy",
        "evaluator.enabled": "false", "data.prefs": "openai/summarize_from_feedback", "reward.pairs": "testbed"}.items()]])
    assert r.exit_code == 2
    assert "problems (1):" in r.output and "has another tokenizer" in r.output


# ------------------------------------------------------------------------------------------ local side


def _save(tmp_path, name, *, extra_token: str | None = None, safetensors: bool = True):
    from perm.models import gpt_neox_config, new_causal_lm

    tok = make_tokenizer()
    if extra_token:
        tok.add_tokens([extra_token])
    cfg = gpt_neox_config(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                          max_position_embeddings=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = new_causal_lm(cfg, init_seed=0)
    out = tmp_path / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not safetensors:  # as an old checkpoint: pickled weights only
        for p in out.glob("*.safetensors"):
            p.unlink()
        (out / "pytorch_model.bin").write_bytes(b"not unpickled")
    return out, model


def _local_cfg(tmp_path, ckpts, policy, evaluator=None):
    prefs = tmp_path / "pairs.jsonl"
    prefs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    over = [f"pretrain.checkpoints=[{','.join(str(c) for c in ckpts)}]", f"sft.checkpoint={policy}",
            f"data.prefs={prefs}", "reward.pairs=testbed", "reward.finetune_seeds=[0,1]", f"out={tmp_path / 'run'}"]
    over += [f"evaluator.checkpoint={evaluator}"] if evaluator else ["evaluator.enabled=false"]
    return config_from_overrides(over)


def test_local_checkpoints_on_real_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
    a, model = _save(tmp_path, "seed0")
    b, _ = _save(tmp_path, "seed1")
    ev, _ = _save(tmp_path, "evaluator")
    res = check_config(_local_cfg(tmp_path, [a, b], b, evaluator=ev))
    assert res.problems == [], res.text()
    assert "tokenizer: the 4 checkpoints share one (tokenizer.json" in res.text()
    params = model.num_parameters()
    assert safetensors_params(a / "model.safetensors") == params
    assert gpt_neox_params(len(make_tokenizer()), 32, 2, 64) == params  # the formula for in-run backbones
    # 3 RMs (2 seeds of the first pretrain + 1) and the evaluator RM, all fp32
    assert f"3 RMs × {params * FP32_BYTES / 1000:.1f} KB" in res.text()

    other, _ = _save(tmp_path, "other-tok", extra_token="extra")
    old, _ = _save(tmp_path, "old", safetensors=False)
    cfg = _local_cfg(tmp_path, [a, old, tmp_path / "missing" / "dir"], other)
    assert "converted into the run (pretrain.convert_bin)" in check_config(cfg).text()  # the default: as the run
    res = check_config(dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, convert_bin=False)))
    p = "\n".join(res.problems)
    assert len(res.problems) == 3, p
    assert (f"pretrain.checkpoints[1]: {old}: no *.safetensors weights, only pytorch_model.bin (pickled weights perm "
            f"refuses to load): convert them with `perm convert {old} OUT` and set pretrain.checkpoints[1] to OUT") in p
    assert f"pretrain.checkpoints[2]: {tmp_path / 'missing' / 'dir'}: no such local directory (and not a hub id)" in p
    assert f"tokenizer: sft.checkpoint ({other}) has another tokenizer than pretrain.checkpoints[0] ({a})" in p


def test_local_and_hub_tokenizers_compare_by_content_hash(tmp_path, hub):
    a, _ = _save(tmp_path, "seed0")
    sha = hashlib.sha256((a / "tokenizer.json").read_bytes()).hexdigest()
    hub.repos[("org/policy", None)] = _model("org/policy", tokenizer_sha=sha)
    res = check_config(_local_cfg(tmp_path, [a], "org/policy"))
    assert res.problems == [], res.text()
    hub.repos[("org/policy", None)] = _model("org/policy", tokenizer_sha=TOK_B)
    res = check_config(_local_cfg(tmp_path, [a], "org/policy"))
    assert [p for p in res.problems if p.startswith("tokenizer: sft.checkpoint (org/policy)")]


def test_a_policy_tokenizer_that_only_adds_a_pad_token_passes_as_the_run_passes_it(tmp_path, hub):
    """TRL's TL;DR SFT policy adds [PAD] to Pythia's tokenizer: its tokenizer.json differs by hash, the run
    accepts it (perm.tokenizer_rule), and so does the check, fetching only the tokenizer files to compare."""
    a, _ = _save(tmp_path, "seed0")
    padded = tmp_path / "padded"
    tok = make_tokenizer()
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.save_pretrained(padded)
    sha = hashlib.sha256((padded / "tokenizer.json").read_bytes()).hexdigest()
    info = _model("org/policy", tokenizer_sha=sha)
    info.siblings.append(RepoSibling(rfilename="tokenizer_config.json"))  # listed as the hub lists it
    hub.repos[("org/policy", None)] = info
    hub.files = {("org/policy", f.name): f for f in padded.iterdir()}
    res = check_config(_local_cfg(tmp_path, [a], "org/policy"))
    assert res.problems == [], res.text()
    assert "sft.checkpoint by the run's rule" in res.text()
    assert ("download", "org/policy", "tokenizer.json") in hub.calls
    other = tmp_path / "other"
    tok = make_tokenizer()
    tok.add_tokens(["extra"])
    tok.save_pretrained(other)
    hub.files = {("org/policy", f.name): f for f in other.iterdir()}
    res = check_config(_local_cfg(tmp_path, [a], "org/policy"))
    assert any("by the run's rule too" in p for p in res.problems), res.text()


def test_without_network_only_local_parts_are_checked_and_it_says_so(tmp_path, hub, monkeypatch):
    a, _ = _save(tmp_path, "seed0")
    hub.down = True
    cfg = _local_cfg(tmp_path, [a], "trl-lib/pythia-1b-deduped-tldr-sft")
    res = check_config(cfg)
    assert res.problems == [] and not res.hub_checked and res.unchecked == ["trl-lib/pythia-1b-deduped-tldr-sft"]
    text = res.text()
    assert "hub: not reachable (ConnectError: [Errno -3] Temporary failure in name resolution); only local paths were checked" in text
    assert text.endswith("ok: no problems found in the local parts (hub ids not checked: no network)\n")
    assert len(hub.calls) == 1  # the hub is given up after the first connection failure
    # HF_HUB_OFFLINE: not even tried; a local problem still fails the check
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.calls.clear()
    old, _ = _save(tmp_path, "old", safetensors=False)
    cfg = _local_cfg(tmp_path, [a, old], "trl-lib/pythia-1b-deduped-tldr-sft")
    res = check_config(dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, convert_bin=False)))
    assert hub.calls == [] and "hub: not reachable (HF_HUB_OFFLINE is set)" in res.text()
    assert len(res.problems) == 1 and "only pytorch_model.bin" in res.problems[0]


def test_a_testbed_config_needs_no_hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # never constructed
    r = runner.invoke(app, ["check", str(configs_dir() / "quick.yaml")])
    assert r.exit_code == 0, r.output
    assert "models and data: none named" in r.output and "disk: ≈" in r.output



def test_disk_estimate_counts_trained_rms_as_records_and_the_grid_by_its_rule():
    from perm.check import disk_estimate
    from perm.config import config_from_overrides

    full = config_from_overrides(["reward.layout=full", "pretrain.checkpoints=[]", "pretrain.seeds=[0, 1, 2]",
                                  "reward.finetune_seeds=[0, 1]"])
    assert n_reward_models(full) == 6
    loaded = config_from_overrides(["reward.rm_checkpoints=[seed0:0=/tmp/a, seed1:0=/tmp/b, seed0:1=/tmp/c]"])
    assert n_reward_models(loaded) == 3
    _, how, _ = disk_estimate(loaded, {})
    assert "3 trained RMs' records" in how and "RMs ×" not in how
