"""What the hardware multiplies natively, and `precision: auto`.

On a CPU without native bf16 (AVX2 only: most laptops and many cloud VMs) PyTorch emulates bf16 matmuls,
far slower than fp32; with AVX512-BF16 or AMX they run faster than fp32 (the measurements are in
benchmarks/README.md). So the default precision is decided from the features the hardware *reports*, never
from a timing probe (a probe would make a run's results depend on how busy the machine was when it started).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA if available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _arm_bf16() -> bool:
    """aarch64 CPUs with the ARMv8.6 BF16 extension list `bf16` among their features."""
    if platform.machine().lower() not in ("aarch64", "arm64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.lower().startswith("features") and "bf16" in line.split(":", 1)[1].split()
               for line in text.splitlines())


def cpu_info() -> dict:
    """The CPU as perm records it beside every measured figure: model name, PyTorch's vector capability
    (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512, ...), and which native bf16
    matmul features it has."""
    info = {
        "model": _cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "arm_bf16": _arm_bf16(),
    }
    info["native_bf16"] = info["avx512_bf16"] or info["amx"] or info["arm_bf16"]
    return info


def cpu_label(info: dict | None = None) -> str:
    """``AVX2`` or ``AVX512, AVX512-BF16, AMX``: the capability and the bf16 features, for log lines."""
    info = info or cpu_info()
    extra = [name for key, name in (("avx512_bf16", "AVX512-BF16"), ("amx", "AMX"), ("arm_bf16", "BF16"))
             if info[key]]
    return ", ".join([info["capability"], *extra])


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``value`` (fp32 | bf16), what was asked, whether the device multiplies bf16
    natively, and a warning when bf16 was asked for where it is emulated (None otherwise)."""

    value: str
    requested: str
    native_bf16: bool
    device: str
    device_label: str
    warning: str | None = None


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(does `device` multiply bf16 natively, a label naming it: ``cpu (AVX2)``, ``cuda (NVIDIA H200)``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported()), f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        info = cpu_info()
        return info["native_bf16"], f"cpu ({cpu_label(info)})"
    return False, dev.type


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """``auto``: bf16 where the device multiplies it natively (CUDA with bf16 support; a CPU with
    AVX512-BF16, AMX or ARM BF16), fp32 elsewhere. An explicit choice is kept; bf16 where it is emulated
    gets a warning saying it will be slow."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    native, label = native_bf16(device)
    if requested == "auto":
        return Precision("bf16" if native else "fp32", requested, native, str(torch.device(device)), label)
    warning = None
    if requested == "bf16" and not native:
        warning = (f"precision bf16 on {label}: this device has no native bf16 matmuls, so PyTorch emulates "
                   "them (on an AVX2 CPU ~30x slower than fp32); precision: auto or fp32 runs far faster")
    return Precision(requested, requested, native, str(torch.device(device)), label, warning)
