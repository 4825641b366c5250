"""Wall time and peak memory of `perm run` on a config (default: the embedded tiny.yaml), per stage.

    python benchmarks/pipeline.py [CONFIG] [key=value ...]

Runs the pipeline in a child process (so its peak RSS is measured alone), then prints the per-stage wall
times recorded in the run's manifest. Run by hand; numbers go into the README.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    args = argv or []
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
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus")
    print(f"{'stage':<28}{'wall s':>10}")
    for name, rec in stages.items():
        print(f"{name:<28}{rec.get('wall_s') or 0:>10.1f}")
    print(f"{'total (this invocation)':<28}{wall:>10.1f}")
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
