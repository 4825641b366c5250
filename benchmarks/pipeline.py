"""Wall time and peak memory of `perm run` on a config (default: the embedded tiny.yaml), per stage.

    python benchmarks/pipeline.py [CONFIG] [key=value ...]

Runs the pipeline in a child process (so its peak RSS is measured alone), then prints the per-stage wall
times recorded in the run's manifest, with the CPU model and capability (AVX2, AVX512-BF16, ...) and the
precision the run resolved to: every figure names the CPU it was measured on. The machine's fp32 matmul peak on all cores is measured before and
after, so that runs on a shared VM whose speed drifts can be compared. Run by hand; numbers go into the
README.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak() -> float:
    import os

    import _bench as B

    return B.isolated(B.matmul_peak, os.cpu_count() or 1)["flops_per_s"] / 1e9


def main(argv: list[str]) -> None:
    args = argv or []
    peak_start = _peak()
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), None)
    if out is None:
        out = "runs/bench-tiny"
        args = [*args, f"out={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "perm.cli", "run", *args, "--quiet"], check=False)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    stages = json.loads((Path(out) / "manifest.json").read_text())["stages"]
    from perm.hardware import cpu_info, cpu_label

    cpu = cpu_info()
    hw = json.loads((Path(out) / "manifest.json").read_text()).get("hardware", {})
    print(f"cpu: {cpu['model']} ({cpu_label(cpu)}), {__import__('os').cpu_count()} cpus; "
          f"precision {hw.get('precision')} (asked: {hw.get('precision_requested')}), attention {hw.get('attention')}")
    print(f"{'stage':<28}{'wall s':>10}")
    for name, rec in stages.items():
        print(f"{name:<28}{rec.get('wall_s') or 0:>10.1f}")
    print(f"{'total (this invocation)':<28}{wall:>10.1f}")
    print(f"peak RSS: {peak_mb:.0f} MB")
    print(f"fp32 matmul peak, all cores: {peak_start:.0f} GFLOP/s before, {_peak():.0f} GFLOP/s after")


if __name__ == "__main__":
    main(sys.argv[1:])
