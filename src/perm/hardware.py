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


ONEDNN_CACHE = 32
"""oneDNN primitives a process keeps (ONEDNN_PRIMITIVE_CACHE_CAPACITY; oneDNN's default is 1,024)."""


def bound_kernel_cache() -> None:
    """Keep at most :data:`ONEDNN_CACHE` oneDNN primitives in this process and those it starts, unless the
    environment sets ONEDNN_PRIMITIVE_CACHE_CAPACITY. oneDNN (bf16 matmuls on CPU) keeps a primitive per
    shape, and the variable shapes of packed training batches fill its default 1,024 entries: a grid RM job
    grew to 2.2 GB resident with the default and peaked at 1.5 GB with 32, at the same speed
    (docs/results.md, "Memory of the default's stages"). oneDNN reads the setting when it first builds a
    primitive, so this runs before a job's first matmul (perm.stages._context.torch_setup)."""
    import os

    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA if available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cuda_index(device: torch.device | str | None) -> int | None:
    """The GPU an explicit ``cuda:N`` names (N); None for a device that names none (``cuda``, ``auto``,
    ``cpu``)."""
    if device is None or device == "auto":
        return None
    dev = torch.device(device)
    return dev.index if dev.type == "cuda" else None


def _launched_processes() -> int:
    """Processes of the distributed launch this process is part of (torchrun's WORLD_SIZE; 1 when none)."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def use_device(device: torch.device | str | None) -> int | None:
    """Put this process on the GPU an explicit ``cuda:N`` names: it becomes the current CUDA device, where a
    bare ``cuda`` tensor, CUDA's context and accelerate's one-process device (``cuda``, no index) land.
    Returns N, or None where `device` names no GPU (nothing changes). Refused (ValueError) where N is not a
    GPU of this machine, and under a distributed launch (DDP), where each process takes its own local rank's
    GPU."""
    index = cuda_index(device)
    if index is None:
        return None
    processes = _launched_processes()
    if processes > 1:
        raise ValueError(f"device {device} names one GPU, but this is one of {processes} launched processes, "
                         "each on the GPU of its local rank: pass device cuda (or auto)")
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {device}: this machine has {count} CUDA device{'s' if count != 1 else ''}"
                         + (f" (cuda:0 to cuda:{count - 1})" if count else ""))
    torch.cuda.set_device(index)
    return index


def gpu_count(device: str) -> int:
    """GPUs a run's jobs may spread over: every CUDA device for `device` auto or cuda (0 without CUDA), none
    for cpu or an explicit ``cuda:N`` (its jobs all run there)."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def resolve_workers(workers: int | str, device: str) -> int:
    """`workers`, with ``auto`` resolved: one worker per GPU (:func:`gpu_count`), 1 on the one GPU of an
    explicit ``cuda:N``, else 2 (CPU)."""
    if workers != "auto":
        return int(workers)
    if cuda_index(device) is not None:
        return 1
    return gpu_count(device) or 2


def worker_devices(device: str, workers: int) -> tuple[str, ...] | None:
    """The device each local worker process runs its jobs on: worker i on ``cuda:{i % GPUs}`` where `device`
    is auto or cuda and CUDA devices exist (:func:`gpu_count`), so every GPU is used and a worker keeps its
    GPU for all its jobs; None elsewhere (cpu, an explicit ``cuda:N``, no GPU): jobs keep `device` as
    configured."""
    n = gpu_count(device)
    if n == 0:
        return None
    return tuple(f"cuda:{i % n}" for i in range(workers))


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
