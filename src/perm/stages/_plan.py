"""A stage's jobs before they run.

:class:`Job`: what one manifest entry of a stage is — its name, its input key, the job function with its
arguments, the outputs it records, the seeds it draws and how it runs. Each stage module's pure
``plan(cfg, upstream) -> [Job, ...]`` lists them from the config and the upstream identities alone (arguments
that name something only the run can resolve are :class:`RunPath` and :class:`Checkpoint` references);
``keys`` (:func:`planned_keys`) and the run loop (perm.stages._context.Context.run_planned) derive from it.

:class:`Work`: each job's planned total in the unit its progress bar counts (pretraining or RM optimizer
steps, posts, prompts, samples), from the config and, where they exist already, the run directory's data
files. Each stage module with long jobs has ``work(cfg, root) -> Work | None`` (None: the stage runs nothing
for this config); `perm run` prints every stage's work before it starts (:func:`format_plan`), and a stage's
bar of its jobs together (perm.progress.StageProgress) starts from the planned totals."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class RunPath:
    """A job argument naming a path of the run directory (perm.run_layout), passed to the job as
    ``str(<run>/<rel>)``."""

    rel: str


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A job argument naming a checkpoint of the config (a folder, a hub id, a shipped ``testbed:`` name),
    passed to the job as what the run loads for it (Context.resolve_checkpoint: verified, pinned to its
    commit, converted)."""

    spec: str


POOLED_ENV = ("device", "threads", "precision", "attention", "show_progress")
"""The job environment a training / sampling job takes (Context.job_env)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One manifest entry of a stage: `name` (its manifest name), `key` (its input key), `outputs` (the run
    paths it records), and what runs it: ``fn(run_dir, **args, **env)`` — `fn` a module-level function, so
    that a worker process can run it; `args` its arguments (references resolved when it runs), `env` the
    fields of the job environment it takes (:data:`POOLED_ENV`, or fewer; none for bookkeeping), `seeds` the
    seeds it draws (recorded in the manifest).

    how: ``pool`` (a long job: in the executor's workers where it has them, with their share of the cores),
    ``here`` (a long job run in this process, one after another, with the stage's progress bar: an RM job that
    launches processes of its own), ``one`` (a job of its own in this process: `start` the fields of its start
    line unless `announce` is off; `mark` off where the job is marked running later or not at all: the data
    import once its input is valid, the assembled tensor). pooled_env: the job takes the threads of a pool
    worker (its share of the cores) even where it runs here (an RM job on several processes). after: the
    manifest names of jobs of its own stage whose outputs it reads (its key hashes them): it runs once none of
    them is left to run."""

    name: str
    key: str
    fn: Callable[..., Any]
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    seeds: Mapping[str, int] | None = None
    how: Literal["pool", "here", "one"] = "one"
    announce: bool = True
    mark: bool = True
    start: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pooled_env: bool = False
    after: tuple[str, ...] = ()

    def with_args(self, **more) -> Job:
        """This job with arguments added or replaced (what only the run knows, e.g. a check's findings)."""
        return dataclasses.replace(self, args={**self.args, **more})


def resolve(value, run_dir: Path, checkpoint: Callable[[str], str]):
    """`value` with every :class:`RunPath` and :class:`Checkpoint` in it (at any depth of dicts, lists and
    tuples) replaced by what the job receives."""
    if isinstance(value, RunPath):
        return str(run_dir / value.rel)
    if isinstance(value, Checkpoint):
        return checkpoint(value.spec)
    if isinstance(value, dict):
        return {k: resolve(v, run_dir, checkpoint) for k, v in value.items()}
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(resolve(v, run_dir, checkpoint) for v in value)
    return value


def planned_keys(plan: Callable[..., list[Job]]) -> Callable[..., dict[str, str]]:
    """A stage's ``keys(cfg, upstream) -> {manifest name: key}``: its plan's jobs' keys."""

    def keys(cfg, upstream: Mapping[str, str]) -> dict[str, str]:
        return {job.name: job.key for job in plan(cfg, upstream)}

    keys.__doc__ = f"The input key of every job of {plan.__module__}.plan, by manifest name."
    return keys


@dataclasses.dataclass(frozen=True)
class Work:
    """The jobs of one stage: ``(manifest name, planned total)`` each (None where it is not known yet, see
    `unknown`), in `unit`, each unit holding `scale` = (count, name) items of a second kind (64 pairs a
    step). bound: why the totals are upper bounds ("" where they are exact), e.g. policy pairs not drawn yet,
    of which ties are dropped. note: what the stage does without jobs (loads checkpoints)."""

    stage: str
    jobs: tuple[tuple[str, int | None], ...] = ()
    unit: str = "steps"
    scale: tuple[int, str] | None = None
    bound: str = ""
    unknown: str = ""
    note: str = ""

    def planned(self, names: Iterable[str]) -> list[int | None]:
        """The planned totals of the jobs `names` (None for a job this work does not list)."""
        by_name = dict(self.jobs)
        return [by_name.get(n) for n in names]

    def only(self, names: Iterable[str]) -> Work:
        """This work restricted to the jobs `names` (those left to run), in their order."""
        by_name = dict(self.jobs)
        return dataclasses.replace(self, jobs=tuple((n, by_name.get(n)) for n in names))

    def fields(self) -> dict:
        """The work as JSON fields (`perm run --json-log`): ``jobs`` {name: planned total}, ``unit``,
        ``total`` (None while a job's is unknown), and where they apply ``scale`` [count, name] per unit,
        ``at_most`` (why the totals are upper bounds), ``note``."""
        totals = [t for _, t in self.jobs]
        out: dict = {"jobs": dict(self.jobs), "unit": self.unit,
                     "total": None if None in totals else sum(totals)}
        if self.scale is not None:
            out["scale"] = list(self.scale)
        if self.bound:
            out["at_most"] = self.bound
        if self.note:
            out["note"] = self.note
        return out


def parquet_rows(path: Path) -> int | None:
    """Rows of a Parquet file from its footer, or None where the file does not exist yet."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows if path.exists() else None


def optimizer_steps(n: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over `n` examples in batches of `batch_size`, as the training loops
    count them (perm.reward.train_reward_model, perm.policy.train_sft): round(epochs * ceil(n / batch)),
    >= 1."""
    return max(1, int(round(epochs * math.ceil(n / batch_size))))


def format_work(work: Work) -> str:
    """One line of a stage's work: its jobs, their totals (equal ones grouped, ``9 x 1,782``), the sum and the
    second unit, e.g. ``10 jobs: evaluator/rm 2,673 + 9 x 1,782 = 18,711 steps x 64 pairs (1,197,504 pairs)``,
    then ``at most (why)`` where the totals are upper bounds."""
    n = len(work.jobs)
    if not n:
        return work.note or "no jobs"
    head = f"{n} job{'s' if n != 1 else ''}"
    totals = [t for _, t in work.jobs]
    if any(t is None for t in totals):
        return f"{head} ({work.unit} known {work.unknown or 'once their inputs exist'})"
    groups: dict[int, list[str]] = {}
    for name, t in work.jobs:
        groups.setdefault(t, []).append(name)
    parts = [f"{names[0]} {t:,}" if len(names) == 1 else f"{len(names)} x {t:,}"
             for t, names in groups.items()]
    total = sum(totals)
    text = f"{head}: {' + '.join(parts)}"
    if len(work.jobs) > 1:
        text += f" = {total:,}"
    text += f" {work.unit}"
    if work.scale is not None:
        per, what = work.scale
        text += f" x {per:,} {what} ({total * per:,} {what})"
    if work.bound:
        text += f", at most ({work.bound})"
    return text


def format_plan(works: Iterable[Work], every: float) -> list[str]:
    """The lines `perm run` prints before its first stage: each stage's work, then how progress is reported
    (the wall time is not guessed before any step is timed)."""
    works = list(works)
    if not works:
        return []
    width = max(len(w.stage) for w in works)
    lines = ["plan (jobs already complete for their inputs are skipped):"]
    lines += [f"  {w.stage:<{width}}  {format_work(w)}" for w in works]
    lines.append("progress: each job, and a stage's jobs together, report their rate and ETA every "
                 f"{every:g} s (bars on a terminal), once their first steps are timed")
    return lines


def stage_writing(modules: Iterable, manifest_name: str):
    """The stage module of `modules` whose WRITES declare `manifest_name` (a name or a grid member's, e.g.
    ``rm/seed0-ft1``), or None where none does."""
    from perm import run_layout as layout

    for m in modules:
        if any(layout.match(pattern, manifest_name) is not None for pattern in m.WRITES):
            return m
    return None
