"""One perm job on several processes or GPUs: ``python -m perm.launch JOB KWARGS.json`` under a launcher.

The pipeline's executors (local, pool, Ray) run one process per job; this is the path for one job too big
for one device, e.g. an RM finetune of a large backbone on a node's GPUs. Every rank runs the same job
function with the same keyword arguments (a JSON object: the job's arguments as the pipeline passes them,
e.g. ``run_dir``, ``out_rel``, ``backbone``, ``reward``, ``device``, ``threads``); the job splits the work::

    accelerate launch --num_processes N -m perm.launch job_reward_model kw.json   # N GPUs of one node
    torchrun --nproc_per_node N -m perm.launch job_score kw.json
    accelerate launch --multi_gpu --num_processes 2 -m perm.launch job_reward_model kw.json  # CPU: gloo

- ``job_reward_model`` (perm.rm_jobs): DDP. Each rank takes a contiguous slice of every global
  batch of ``reward.batch_size`` pairs and the gradients are averaged (allreduce), so the data order, the
  number of steps and the LR schedule are those of the single-process job; the main process writes the RM.
- ``job_score`` (perm.stages.score): the ranks split the prompt batches of the single-process plan, score
  them with the single-process code and gather the rewards to the main process, which writes the parquet.

On a CPU-only machine, ``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate's CPU
launcher leaves several processes to ``mpirun``); use ``--multi_gpu`` (torchrun underneath; the gloo backend
on CPU) or ``torchrun``. This module refuses to run under that one-process launch rather than silently
training alone. Tested on CPU with 2 processes and gloo (``tests/test_ddp.py``): scores equal the
single-process job's exactly, a trained RM's weights and rewards within 1e-4. The main process prints the
job's info as one JSON line. Exit codes: 0 done, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

JOBS = {"job_reward_model": "perm.rm_jobs", "job_score": "perm.stages.score"}


def _one_process_cpu_launch() -> bool:
    """True under ``accelerate launch --cpu --num_processes N>1`` without mpirun: accelerate's simple launcher
    sets MASTER_ADDR for several processes but starts only one (no WORLD_SIZE or MPI world size)."""
    sizes = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1")
            and "MASTER_ADDR" in os.environ and not any(k in os.environ for k in sizes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perm.launch", description=__doc__.split("\n", 1)[0])
    ap.add_argument("job", help=" or ".join(JOBS))
    ap.add_argument("kwargs", type=Path, help="a JSON object: the job's keyword arguments")
    args = ap.parse_args(argv)
    if args.job not in JOBS:
        print(f"perm.launch: unknown job {args.job!r}; one of: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(args.kwargs.read_text())
    except (OSError, ValueError) as e:
        print(f"perm.launch: {args.kwargs}: cannot read a JSON object: {e}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print(f"perm.launch: {args.kwargs}: expected a JSON object of keyword arguments", file=sys.stderr)
        return 2
    if _one_process_cpu_launch():
        print("perm.launch: `accelerate launch --cpu --num_processes N` starts one process on CPU (several "
              "need mpirun); use `accelerate launch --multi_gpu --num_processes N` (gloo on CPU) or torchrun",
              file=sys.stderr)
        return 2

    from accelerate import PartialState

    from perm.hardware import resolve_device

    # the process group, before the job: gloo on CPU, NCCL on GPUs (one per rank, by LOCAL_RANK)
    state = PartialState(cpu=resolve_device(kwargs.get("device", "auto")).type == "cpu")
    job = getattr(importlib.import_module(JOBS[args.job]), args.job)
    info = job(**kwargs)
    state.wait_for_everyone()
    if state.is_main_process:
        print(json.dumps(info, default=str), flush=True)
    if state.num_processes > 1:
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
