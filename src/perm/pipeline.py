"""The pipeline: one run directory driven by one resolved config, its stages (perm.stages) run in order.

Each stage's *input key* hashes its config slice and its upstream stages' output hashes; a stage whose key
and outputs match the manifest is skipped, so a killed run resumes where it stopped and changing one RM
hyperparameter reruns only what depends on it. Independent jobs (pretrains, RMs, scoring per model) run on
the executor the config picks (perm.executors): in this process, in local worker processes, or on Ray.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from perm import run_layout as layout
from perm.config import ConfigError, RunConfig, dump_config
from perm.executors import LocalExecutor, PoolExecutor, RayExecutor
from perm.progress import Progress
from perm.stages import MODULES, STAGES
from perm.stages._context import Context
from perm.stages._plan import Work, format_plan
from perm.stages.policy_prefs import job_policy_prefs
from perm.stages.pretrain import job_pretrain
from perm.stages.sample import job_sample
from perm.stages.score import job_score
from perm.stages.sft import job_sft
from perm.stages.train_rm import job_reward_model
from perm.store import RunStore, atomic_write_text

# the jobs under their old names: scripts, Ray tasks and worker pools that name perm.pipeline.job_*
# keep working
__all__ = ["Pipeline", "hardware_record", "job_policy_prefs", "job_pretrain", "job_reward_model",
           "job_sample", "job_score", "job_sft", "make_executor"]


def make_executor(cfg: RunConfig):
    """The executor of `cfg`'s jobs: Ray tasks, a pool of `workers` local processes (worker i on GPU
    i % GPUs where `device` is auto or cuda on a machine with GPUs: perm.hardware.worker_devices), or this
    process alone (one worker)."""
    from perm.hardware import resolve_device, resolve_workers, worker_devices

    if cfg.executor == "ray":
        r = cfg.ray
        return RayExecutor(r.address, r.num_cpus_per_task, ray_task_gpus(cfg), r.local_num_cpus,
                           device_kind=resolve_device(cfg.device).type)
    workers = resolve_workers(cfg.workers, cfg.device)
    return PoolExecutor(workers, worker_devices(cfg.device, workers)) if workers > 1 else LocalExecutor()


def ray_task_gpus(cfg: RunConfig) -> float:
    """GPUs Ray reserves for each task: `ray.num_gpus_per_task`, or 1 where it is 0 and `device` resolves to
    cuda in the driver (the run's keys and precision are then a GPU's: its tasks must get one)."""
    from perm.hardware import resolve_device

    if cfg.ray.num_gpus_per_task == 0 and resolve_device(cfg.device).type == "cuda":
        return 1.0
    return cfg.ray.num_gpus_per_task


def hardware_record(precision, attention: str) -> dict:
    """The manifest's `hardware` entry: the device, the CPU, and the precision and attention jobs use."""
    from perm.hardware import cpu_info
    from perm.models import attention_for

    return {"device": precision.device_label, "cpu": cpu_info(), "precision": precision.value,
            "precision_requested": precision.requested, "native_bf16": precision.native_bf16,
            "attention": attention_for(precision.device, precision.value, attention) or "model default"}


def _shown(works: dict[str, Work | None]) -> list[Work]:
    """The planned work `perm run` prints, in stage order: the stages with jobs or a note."""
    return [w for m in MODULES if (w := works.get(m.NAME)) is not None and (w.jobs or w.note)]


class Pipeline:
    """One run directory driven by one resolved config."""

    def __init__(self, cfg: RunConfig, progress: Progress | None = None, rerun: tuple[str, ...] = ()):
        from perm.hardware import resolve_device, resolve_precision, resolve_workers

        unknown = sorted(set(rerun) - set(STAGES))
        if unknown:
            raise ConfigError(f"--rerun: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
        self.log = progress or Progress()
        # `precision: auto` is resolved once, here: every key, job and record below sees fp32 or bf16;
        # `workers: auto` too (one per GPU, else 2), recorded in the run's config.yaml as the number it became
        self.precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
        self.cfg = cfg = dataclasses.replace(cfg, precision=self.precision.value,
                                             workers=resolve_workers(cfg.workers, cfg.device))
        self.store = RunStore(cfg.out)
        self.root = self.store.root
        self.ctx = Context(cfg, self.log, self.store, make_executor(cfg), STAGES, rerun=frozenset(rerun))
        atomic_write_text(self.root / layout.CONFIG, dump_config(cfg))
        self.store.record_run(hardware_record(self.precision, cfg.attention))
        self.log.note(f"device {self.precision.device_label}: precision {self.precision.value}"
                      + (" (auto)" if self.precision.requested == "auto" else ""))
        if self.precision.warning:
            self.log.warn(self.precision.warning)

    def key(self, obj: dict) -> str:
        """A stage key under this run's resolved precision (perm.stages._context.stage_key)."""
        return self.ctx.key(obj)

    def analyze(self, rewards: Path | None = None, models: Path | None = None) -> Path:
        """Figures' and table's numbers into analysis/ (from this run's tensor, or a user's)."""
        return self.ctx.need("analyze", rewards, models)

    def report(self, rewards: Path | None = None, models: Path | None = None) -> Path:
        """report/index.html, figures and table1.md (from this run's tensor, or a user's)."""
        return self.ctx.need("report", rewards, models)

    def plan(self, stage: str = "run") -> list[Work]:
        """The planned work of `stage` and every stage it needs (``run``: all), in the stage graph's order:
        the jobs of each stage with long jobs (perm.stages._plan), whether or not they are complete already,
        and what a stage without jobs loads instead. A stage whose ``work`` is None runs nothing for this
        config, and needs nothing through it (policy-prefs with the testbed's pairs)."""
        return _shown(self._works(stage))

    def _works(self, stage: str) -> dict[str, Work | None]:
        """Every stage `stage` needs (itself included), each with its planned work (None: it has none)."""
        works: dict[str, Work | None] = {}
        todo = ["report" if stage == "run" else stage]
        while todo:
            name = todo.pop()
            if name in works:
                continue
            module = STAGES[name]
            works[name] = module.work(self.cfg, self.root) if hasattr(module, "work") else None
            if works[name] is not None or not hasattr(module, "work"):
                todo += module.NEEDS
        return works

    def run(self, stage: str = "run"):
        """Run `stage` and everything it needs, after printing the work planned (:meth:`plan`); returns a
        short human-readable result."""
        if stage != "run" and stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: run, {', '.join(STAGES)}")
        needed = self._works(stage)
        works = _shown(needed)
        # a stage's pool jobs whose inputs are final run in the workers an earlier stage leaves idle
        self.ctx.ahead = tuple(m.NAME for m in MODULES if (w := needed.get(m.NAME)) is not None and w.jobs)
        if self.log.mode == "json":
            for w in works:
                self.log.event(w.stage, "plan", **w.fields())
        else:
            for line in format_plan(works, self.log.every):
                self.log.note(line)
        if stage == "run":
            out = self.report()
            self.log.event("run", "done", report=str(out))
            return f"report: {out}"
        result = self.ctx.need(stage)
        if stage == "testbed":
            return self.root / layout.DATA
        if stage == "policy-prefs":
            return "\n".join(result)  # the grid RMs' training pair files
        if stage == "pretrain":
            return "\n".join(f"{k}: {v}" for k, v in result.items())
        if stage == "train-rm":
            lines = [f"{r['model_id']}: accuracy {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}"
                     for r in result["rms"]]
            if ev := result["evaluator"]:
                lines.append(f"evaluator: accuracy {ev['accuracy']:.3f} ± {ev['accuracy_se']:.3f}")
            return "\n".join(lines)
        return result
