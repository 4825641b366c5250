"""`precision: auto`: resolved from what the hardware reports (capability patched), never from a timing."""

import io
import json

import pytest
import torch

from perm import hardware
from perm.config import config_from_overrides
from perm.progress import Progress


def _cpu(monkeypatch, capability: str, avx512_bf16: bool = False, amx: bool = False) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(hardware, "_arm_bf16", lambda: False)


def _cuda(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Stand-in GPU")


def test_auto_is_fp32_on_an_avx2_cpu(monkeypatch):
    _cpu(monkeypatch, "AVX2")
    p = hardware.resolve_precision("auto", "cpu")
    assert (p.value, p.native_bf16, p.warning, p.device_label) == ("fp32", False, None, "cpu (AVX2)")


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx"])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, feature):
    _cpu(monkeypatch, "AVX512", **{feature: True})
    p = hardware.resolve_precision("auto", "cpu")
    assert p.value == "bf16" and p.native_bf16 and p.warning is None
    assert p.device_label.startswith("cpu (AVX512, ")


def test_avx512_without_bf16_is_fp32(monkeypatch):
    """AVX512 alone (Skylake-X) has no bf16 dot products: the capability string is not enough."""
    _cpu(monkeypatch, "AVX512")
    assert hardware.resolve_precision("auto", "cpu").value == "fp32"


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported, expected):
    _cuda(monkeypatch, supported)
    p = hardware.resolve_precision("auto", "cuda")
    assert p.value == expected and p.device_label == "cuda (Stand-in GPU)"


def test_explicit_bf16_without_native_support_runs_with_a_warning(monkeypatch):
    _cpu(monkeypatch, "AVX2")
    p = hardware.resolve_precision("bf16", "cpu")
    assert p.value == "bf16" and "emulates" in p.warning and "cpu (AVX2)" in p.warning
    assert hardware.resolve_precision("fp32", "cpu").warning is None
    with pytest.raises(ValueError, match="precision"):
        hardware.resolve_precision("fp16", "cpu")


def test_cpu_info_names_the_cpu_and_its_features():
    info = hardware.cpu_info()
    assert info["model"] and info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["native_bf16"] == (info["avx512_bf16"] or info["amx"] or info["arm_bf16"])


def test_default_config_asks_for_auto():
    from perm.config import load_config

    assert config_from_overrides([]).precision == "auto"
    for name in ("tiny.yaml", "quick.yaml", "tldr-pythia.yaml"):
        from perm.config import configs_dir

        assert load_config(configs_dir() / name).precision == "auto", name


def _pipeline(tmp_path, monkeypatch, *overrides, **cpu):
    from perm.pipeline import Pipeline

    _cpu(monkeypatch, **cpu)
    stream = io.StringIO()
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", "device=cpu", *overrides])
    return Pipeline(cfg, Progress("normal", stream)), stream.getvalue()


def test_pipeline_resolves_auto_and_says_so(tmp_path, monkeypatch):
    pipe, log = _pipeline(tmp_path, monkeypatch, capability="AVX2")
    assert pipe.cfg.precision == "fp32"
    assert log.splitlines()[0] == "[perm] device cpu (AVX2): precision fp32 (auto)"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["hardware"]["precision"] == "fp32" and manifest["hardware"]["precision_requested"] == "auto"
    assert manifest["hardware"]["cpu"]["capability"] == "AVX2"
    assert "precision: fp32" in (tmp_path / "run" / "config.yaml").read_text()


def test_explicit_bf16_on_avx2_prints_one_warning(tmp_path, monkeypatch):
    pipe, log = _pipeline(tmp_path, monkeypatch, "precision=bf16", capability="AVX2")
    assert pipe.cfg.precision == "bf16"
    assert sum("warning" in line for line in log.splitlines()) == 1


def test_stage_keys_follow_the_resolved_precision(tmp_path, monkeypatch):
    """The same config resumed on a CPU that resolves `auto` differently gets other keys (its stages rerun);
    fp32 keys equal those of an explicit `precision: fp32` run."""
    obj = {"stage": "pretrain/seed0"}
    avx2, _ = _pipeline(tmp_path, monkeypatch, capability="AVX2")
    bf16, _ = _pipeline(tmp_path, monkeypatch, capability="AVX512", avx512_bf16=True)
    fp32, _ = _pipeline(tmp_path, monkeypatch, "precision=fp32", capability="AVX512", avx512_bf16=True)
    assert bf16.cfg.precision == "bf16"
    assert avx2.key(obj) != bf16.key(obj)
    assert avx2.key(obj) == fp32.key(obj)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [h["precision"] for h in manifest["hardware_history"]] == ["fp32", "bf16"]


def test_jobs_bound_onednns_primitive_cache_unless_the_environment_sets_it(monkeypatch):
    import os

    from perm.hardware import ONEDNN_CACHE
    from perm.stages._context import torch_setup

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    torch_setup("cpu", None)  # a job's first step
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    torch_setup("cpu", None)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
