"""What every stage shares: the run's context, stage keys, upstream identities, the job environment, and the
skip -> mark -> log -> time -> done bookkeeping of one stage or a batch of jobs.

A stage's *input key* hashes its config slice and the identities of what it reads: an upstream stage's
output hash (``RunStore.output_hash``), or a local checkpoint's content hash / a hub id at the commit it is
pinned to. ``keys(cfg, upstream)`` of every stage module is a pure function of the config and a mapping
``upstream`` from manifest names (``testbed``, ``pretrain/seed0``, ``policy``, ...) to output hashes, plus
``checkpoint:<spec>`` entries for checkpoints, ``dataset:<field>`` entries for hub datasets pinned to a
commit and a ``pairs:<spec>`` entry for policy pairs loaded from a kit or folder (`reward.pairs_from`);
:meth:`Context.upstream` builds that mapping from the run's manifest.

Checkpoints are read through :meth:`Context.resolve_checkpoint` alone, once per run: a hub id is pinned to
its commit (perm.hub; ``org/name@<sha>`` is what the stages load), and with ``pretrain.convert_bin`` a
checkpoint with only ``pytorch_model.bin`` weights is converted into ``<run>/converted/`` (perm.convert)
and the conversion is loaded (and keyed by its content) instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig
from perm.executors import JobFailedError, LocalExecutor, PoolExecutor, RayExecutor, _usable_cpus
from perm.progress import Progress, StageProgress, Watched, reporting
from perm.stages._checkpoints import Checkpoints
from perm.stages._grid import backbone_ref, policy_ref
from perm.stages._plan import Checkpoint, Job, RunPath, Work, format_work, resolve, stage_writing
from perm.store import RunStore, hash_obj, read_column, release_memory  # noqa: F401  (read_column: for the stages)


def stage_key(cfg: RunConfig, obj: dict) -> str:
    """Input key of a training, sampling or scoring stage. bf16 runs and a chosen `attention` get their own
    keys (fp32 keys with attention auto stay as they were). `amp: 3`: bf16 outputs made before autocast
    moved inside the pretraining loop (2), or before bf16 on CPU meant eager attention (3), are not reused.
    ``cfg.precision`` is the *resolved* precision (fp32 | bf16), never ``auto``."""
    p, a = cfg.precision, cfg.attention
    if p not in ("fp32", "bf16"):
        raise ValueError(f"stage keys need a resolved precision (fp32|bf16), got {p!r}")
    extra = {"precision": p, "amp": 3} if p != "fp32" else {}
    if a != "auto" or p != "fp32":
        extra["attention"] = a
    return hash_obj(obj | extra)


def checkpoint_key(path: str) -> str:
    """A local checkpoint directory is keyed by its content (changed weights rerun); a hub id by its name,
    ``hub:org/name@<sha>`` once :meth:`Context.resolve_checkpoint` has pinned it to a commit."""
    from perm.store import hash_path

    p = Path(path)
    return hash_path(p) if p.is_dir() else f"hub:{path}"


def checkpoint_name(path: str) -> str:
    """The name of a checkpoint's identity in an ``upstream`` mapping."""
    return f"checkpoint:{path}"


def pairs_name(spec: str) -> str:
    """The name of `reward.pairs_from`'s identity (perm.shipped.pairs_identity) in an ``upstream`` mapping."""
    return f"pairs:{spec}"


def dataset_name(field: str) -> str:
    """The name of a hub dataset's identity (``hub:<id>@<sha>``) in an ``upstream`` mapping: ``dataset:prefs``
    or ``dataset:prefs_eval``; present only when the dataset is a hub id pinned to a commit."""
    return f"dataset:{field}"


def data_identity(cfg: RunConfig, upstream: Mapping[str, str]) -> str:
    """Output hash of the data stage: the testbed's, or the imported data's (``data.prefs``)."""
    return upstream["data" if cfg.data.prefs is not None else "testbed"]


def ref_identity(ref: Checkpoint | RunPath, upstream: Mapping[str, str]) -> str:
    """The identity of what a job loads (perm.stages._plan references): a checkpoint's key, or the output
    hash of the run's entry that wrote the folder (its manifest name is its path)."""
    return upstream[checkpoint_name(ref.spec) if isinstance(ref, Checkpoint) else ref.rel]


def backbone_identity(cfg: RunConfig, upstream: Mapping[str, str], pretrain_id: str) -> str:
    """A grid backbone's identity: its pretrain's output hash, or its checkpoint's key."""
    return ref_identity(backbone_ref(cfg, pretrain_id), upstream)


def policy_identity(cfg: RunConfig, upstream: Mapping[str, str]) -> str:
    """The SFT policy's identity: the `policy` stage's output hash, or its checkpoint's key."""
    return ref_identity(policy_ref(cfg), upstream)


def headline(info: dict) -> dict:
    keys = ("heldout_perplexity", "accuracy", "tokens_per_s", "pairs_per_s", "rows", "mean_gold")
    return {k: round(info[k], 4) if isinstance(info[k], float) else info[k] for k in keys if k in info}


class DeclarationError(RuntimeError):
    """A stage did what its declaration (perm.stages) does not say: a programming error in its module."""


class UndeclaredNeedError(DeclarationError):
    """A stage asked for a stage (its result, or its output hashes) that its NEEDS does not name."""


class UndeclaredOutputError(DeclarationError):
    """A stage recorded a manifest name or outputs that its WRITES does not declare."""


class Upstream(dict):
    """The ``upstream`` mapping handed to a running stage: the output hashes of itself and of the stages it
    NEEDS, and every identity (``checkpoint:``, ``dataset:``, ``pairs:``). Asking it for the output of a
    stage the running stage does not need raises :class:`UndeclaredNeedError`; for one not finished yet,
    KeyError as a dict does."""

    def __init__(self, items: Mapping[str, str], stage: str = "", hidden: Mapping[str, str] | None = None):
        super().__init__(items)
        self.stage = stage
        self.hidden = dict(hidden or {})  # manifest name -> the undeclared stage writing it

    def __missing__(self, name: str):
        if name in self.hidden:
            raise UndeclaredNeedError(f"stage {self.stage!r} reads {name!r}, an output of stage "
                                      f"{self.hidden[name]!r}, which it does not declare in NEEDS")
        raise KeyError(name)


def in_process(name: str, fn, **kw):
    """``fn(**kw)``, a job run in this process, failing as a pool or Ray job fails: an exception other than
    bad input (ValueError and its kind, which the CLI reports as such) becomes a :class:`JobFailedError`
    naming the job, e.g. a CUDA out-of-memory error: one line, exit 1, the job left unfinished so a rerun
    resumes there. What the job held is released after it (:func:`release_memory`), so the next in-process
    job starts with the memory the last one used."""
    try:
        return fn(**kw)
    except ValueError:
        raise
    except Exception as exc:
        import traceback

        traceback.clear_frames(exc.__traceback__)  # the job's locals (its model) are not kept by the error
        raise JobFailedError(name, f"raised {type(exc).__name__}: {exc}") from exc
    finally:
        release_memory()


MAX_PHASES = 50
"""Phases of :meth:`Context.run_planned` at most (a stage's chain of jobs keyed on each other's outputs is
a few long)."""


class Context:
    """One run directory, its resolved config, its executor, and the results of the stages run so far.

    ``need(name)`` runs a stage (and what it needs) once per context and returns its result; stage modules
    reach each other only through it, and only as they declare (perm.stages): a stage is handed the stages
    of its NEEDS and no other (:class:`UndeclaredNeedError` naming both), and records the manifest names and
    outputs of its WRITES and no other (:class:`UndeclaredOutputError`)."""

    def __init__(self, cfg: RunConfig, log: Progress, store: RunStore, executor, stages: Mapping,
                 rerun: frozenset[str] = frozenset()):
        self.cfg, self.log, self.store, self.root = cfg, log, store, store.root
        self.executor = executor
        self.rerun, self._redone = frozenset(rerun), set()  # stages run again whatever the manifest says
        self._stages = stages
        self._memo: dict = {}
        self._running: list[str] = []  # the stages running, innermost last
        self.checkpoint_keys: dict[str, str] = {}
        self.checkpoints = Checkpoints(cfg, store, log)
        self.ahead: tuple[str, ...] = ()  # stages this run needs: their ready jobs fill idle workers
        self._settled: set[str] = set()  # manifest names found complete or recorded done in this context
        self._ahead_seen: dict[str, str] = {}  # manifest name -> key handed out or found complete (lookahead)
        self._ahead_done: set[str] = set()  # manifest names recorded done as another stage's idle-worker job
        self._ahead_off = False  # a later stage could not be planned: it raises that itself when it runs

    def need(self, name: str, *args):
        """Run stage `name` (memoised per context and arguments) and return its result. Inside a stage, only a
        stage its NEEDS names (:class:`UndeclaredNeedError` otherwise)."""
        if self._running:
            caller = self._stages[self._running[-1]]
            if name not in caller.NEEDS:
                raise UndeclaredNeedError(
                    f"stage {caller.NAME!r} asked for stage {name!r}, which it does not declare in NEEDS "
                    f"({', '.join(caller.NEEDS) or 'none'}; {caller.__name__}.NEEDS)")
        memo = (name, args)
        if memo not in self._memo:
            with self.as_stage(name):
                self._memo[memo] = self._stages[name].run(self, *args)
        return self._memo[memo]

    @contextlib.contextmanager
    def as_stage(self, name: str) -> Iterator[None]:
        """Run the block as stage `name`: what it needs and records is checked against `name`'s declaration
        (:meth:`need` does this for a stage's run; a stage's other entry points, such as
        perm.stages.train_rm.run_evaluator, use it directly)."""
        self._running.append(name)
        try:
            yield
        finally:
            self._running.pop()

    def _owner(self, manifest_name: str) -> str | None:
        """The stage whose WRITES declares `manifest_name`, or None."""
        for stage in self._stages.values():
            if any(layout.match(pattern, manifest_name) is not None for pattern in stage.WRITES):
                return stage.NAME
        return None

    def _check_outputs(self, name: str, outputs: list[str]) -> None:
        """Inside a stage: `name` and its `outputs` are what the stage's WRITES declares."""
        if not self._running:
            return
        stage = self._stages[self._running[-1]]
        for pattern, outs in stage.WRITES.items():
            fields = layout.match(pattern, name)
            if fields is None:
                continue
            declared = sorted(o.format(**fields) for o in outs)
            if sorted(outputs) != declared:
                raise UndeclaredOutputError(f"stage {stage.NAME!r} records outputs {sorted(outputs)} for "
                                            f"{name!r}, but declares {declared} ({stage.__name__}.WRITES)")
            return
        declared = ", ".join(map(layout.shown, stage.WRITES))
        raise UndeclaredOutputError(f"stage {stage.NAME!r} records {name!r}, which its WRITES does not "
                                    f"declare ({declared}; {stage.__name__}.WRITES)")

    # --------------------------------------------------------------------------------------- identities

    def key(self, obj: dict) -> str:
        return stage_key(self.cfg, obj)

    def checkpoint_key(self, path: str) -> str:
        """:func:`checkpoint_key` of the checkpoint `path` (a config spec) resolves to, once per checkpoint
        and run: a local checkpoint is hashed by content, and the same one keys several stages (every RM of a
        pretrain, the evaluator's jobs, the policy's); a shipped backbone by its name and recorded weight
        hash, a part of the testbed kit by its recorded hash."""
        if path not in self.checkpoint_keys:
            from perm.shipped import is_shipped, key

            resolved = self.resolve_checkpoint(path)  # a shipped backbone is verified here
            self.checkpoint_keys[path] = key(path) if is_shipped(path) else checkpoint_key(resolved)
        return self.checkpoint_keys[path]

    def hub_pins(self) -> dict[str, str | None]:
        """Commit sha of every hub reference of the config (:meth:`Checkpoints.pins`)."""
        return self.checkpoints.pins()

    def resolve_checkpoint(self, spec: str) -> str:
        """What to load for the checkpoint `spec` of the config (:meth:`Checkpoints.resolve`)."""
        return self.checkpoints.resolve(spec)

    def upstream(self) -> dict[str, str]:
        """Output hashes of every finished stage, the keys of the config's checkpoints and the identities of
        its pinned hub datasets: the ``upstream`` argument of a stage's ``keys``. Inside a stage, only the
        output hashes of itself and of the stages it NEEDS (an :class:`Upstream`)."""
        out = self._upstream()
        if not self._running:
            return out
        stage = self._stages[self._running[-1]]
        mine = {stage.NAME, *stage.NEEDS}
        owners = {name: self._owner(name) for name in out if ":" not in name}
        return Upstream({n: h for n, h in out.items() if ":" in n or owners[n] in mine}, stage.NAME,
                        {n: owner for n, owner in owners.items() if owner is not None and owner not in mine})

    def _upstream(self) -> dict[str, str]:
        from perm.hub import config_refs, model_specs

        # RunStore.output_hash of every finished entry, from one read of the manifest
        out = {name: hash_obj(rec["outputs"]) for name, rec in self.store.manifest()["stages"].items()
               if rec.get("status") == "done"}
        out |= {checkpoint_name(p): self.checkpoint_key(p) for p in model_specs(self.cfg)}
        pins = self.hub_pins()
        out |= {dataset_name(r.field): r.key(pins[r.reference]) for r in config_refs(self.cfg)
                if r.kind == "dataset" and pins.get(r.reference)}
        spec = self.cfg.reward.pairs_from
        if spec and self.cfg.reward.pairs != "testbed":
            if pairs_name(spec) not in self.checkpoint_keys:  # once per run, as a checkpoint's key
                from perm.shipped import pairs_identity

                self.checkpoint_keys[pairs_name(spec)] = pairs_identity(spec)
            out[pairs_name(spec)] = self.checkpoint_keys[pairs_name(spec)]
        return out

    # ------------------------------------------------------------------------------------ job settings

    @property
    def show_progress(self) -> bool:
        """Whether jobs report their progress: in every mode but quiet, wherever they run (a worker's reports
        reach this process, which prints them under the job's name)."""
        return self.log.mode != "quiet"

    @property
    def job_threads(self) -> int | None:
        """torch threads of a training job: `threads`, else the cores shared among the pool's workers."""
        if self.cfg.threads or not isinstance(self.executor, PoolExecutor):
            return self.cfg.threads
        return max(1, _usable_cpus() // self.executor.workers)

    def job_env(self, pooled: bool = True) -> dict:
        """The keyword arguments every training / sampling job takes; `pooled` jobs may run in workers."""
        return {"device": self.cfg.device, "threads": self.job_threads if pooled else self.cfg.threads,
                "precision": self.cfg.precision, "attention": self.cfg.attention,
                "show_progress": self.show_progress}

    # ------------------------------------------------------------------------------------ bookkeeping

    def complete(self, name: str, key: str) -> bool:
        """Whether manifest entry `name` is done for `key` and stands: not of a stage named in ``rerun``
        (`perm run --rerun STAGE`: keys hash the config and inputs, not perm's code) unless redone in this
        run already."""
        if not self.store.is_complete(name, key):
            return False
        if not self.rerun or name in self._redone:
            return True
        owner = stage_writing(self._stages.values(), name)
        return owner is None or owner.NAME not in self.rerun

    def skip(self, name: str, key: str) -> bool:
        if self.complete(name, key):
            self._settled.add(name)
            self.log.event(name, "skip", reason=self._skip_reason(name))
            return True
        return False

    def _skip_reason(self, name: str) -> str:
        return ("ran earlier in this run, in an idle worker" if name in self._ahead_done
                else "complete for these inputs")

    def done(self, name: str, key: str, outputs: list[str], t0: float, seeds=None, info=None) -> None:
        self._check_outputs(name, outputs)
        self._redone.add(name)
        self._settled.add(name)
        wall = time.perf_counter() - t0
        self.store.mark_done(name, key, outputs, seeds=seeds, wall_s=wall, info=info)
        self.log.event(name, "done", wall_s=round(wall, 1), **(headline(info) if info else {}))

    def run_one(self, name: str, key: str, fn: Callable[[], dict | None], outputs: list[str], *,
                seeds: Callable[[dict], dict] | dict | None = None, mark: bool = True, announce: bool = True,
                **start) -> bool:
        """Skip `name` if complete for `key`; else mark it running, log its start (with `start` fields), run
        `fn` (returning the info to record), and record it done with `outputs`. Returns True if it ran.

        mark=False: `fn` marks the stage running itself (after validating its input, so bad input leaves the
        manifest as it was), or the stage is short enough not to be marked. announce=False: no start line
        (short bookkeeping stages print only their done line)."""
        self._check_outputs(name, outputs)
        if self.skip(name, key):
            return False
        if mark:
            self.store.mark_running(name, key)
        if announce:
            self.log.event(name, "start", **start)
        t0 = time.perf_counter()
        with reporting(self.log):  # a job run here draws its bar (or prints its lines) in this run's mode
            info = in_process(name, fn) or None
        self.done(name, key, outputs, t0, seeds=seeds(info or {}) if callable(seeds) else seeds, info=info)
        return True

    def run_planned(self, plan: Callable[[RunConfig, Mapping[str, str]], list[Job]],
                    work: Callable[[], Work] | None = None,
                    upstream: Callable[[], Mapping[str, str]] | None = None) -> list[Job]:
        """Run a stage's planned jobs (its module's ``plan``) that are not complete for their keys, and return
        the last plan. In phases: a job keyed on the outputs of jobs of the same stage (its ``after``: an
        ensemble member trained or averaged from others, the assembled reward tensor) waits while any of them
        is to run, and the plan is made again after each phase (its key then hashes their new outputs), until
        every job planned is complete for its key. In a phase, the ``one`` jobs run first, in plan order,
        then the long jobs (``pool``, ``here``) by :meth:`run_jobs`, `work` (the stage's planned work, made
        only when long jobs run) giving their totals. upstream: what the plan is handed (default
        :meth:`upstream`; the testbed's build, which reads nothing, is handed nothing and so resolves no
        checkpoint)."""
        handled: dict[str, str] = {}  # manifest name -> the key it was run or found complete for
        for _ in range(MAX_PHASES):
            jobs = plan(self.cfg, (upstream or self.upstream)())
            pending = [j for j in jobs if handled.get(j.name) != j.key]
            if not pending:
                return jobs
            waiting = {j.name for j in pending if not self.complete(j.name, j.key)}  # outputs hashed once
            # a job after one that is to run, directly or down a chain of `after`, is keyed on outputs that
            # may still change: it is neither run nor found complete in this phase
            unsettled = set(waiting)
            while grown := {j.name for j in pending if j.name not in unsettled and unsettled & set(j.after)}:
                unsettled |= grown
            ready = [j for j in pending if not unsettled & set(j.after)]
            if not ready:
                raise DeclarationError(f"jobs {sorted(waiting)} wait on each other (their `after`)")
            for job in ready:
                if job.name not in waiting:
                    self._settled.add(job.name)
                    self.log.event(job.name, "skip", reason=self._skip_reason(job.name))
            todo = [j for j in ready if j.name in waiting]
            handled |= {j.name: j.key for j in ready}
            for job in (j for j in todo if j.how == "one"):
                kw = self._job_kwargs(job)
                self.run_one(job.name, job.key, lambda job=job, kw=kw: job.fn(**kw), list(job.outputs),
                             seeds=job.seeds, mark=job.mark, announce=job.announce, **job.start)
            groups: dict[tuple, list[Job]] = {}
            for job in (j for j in todo if j.how != "one"):
                groups.setdefault((job.fn, job.how), []).append(job)
            for (fn, how), group in groups.items():
                if work is None:
                    raise DeclarationError(f"{group[0].name}: long jobs need the stage's work")
                self.run_jobs(fn, [(j.name, self._job_kwargs(j)) for j in group],
                              {j.name: j.key for j in group}, {j.name: dict(j.seeds or {}) for j in group},
                              work=work(), pool=how == "pool",
                              outputs={j.name: list(j.outputs) for j in group})
        raise DeclarationError(f"the plan still changed after {MAX_PHASES} phases: a job's key depends on "
                               "its own outputs, or on something that differs from call to call")

    def _job_kwargs(self, job: Job) -> dict:
        """The keyword arguments `job.fn` is called with: the run directory, its arguments with their
        references resolved, and the fields of the job environment it takes."""
        env = self.job_env(pooled=job.how == "pool" or job.pooled_env)
        return {"run_dir": str(self.root), **self.resolve(dict(job.args)), **{k: env[k] for k in job.env}}

    def resolve(self, value):
        """`value` with its RunPath and Checkpoint references (perm.stages._plan) made what a job receives:
        paths in this run, what the run loads for a checkpoint (:meth:`resolve_checkpoint`)."""
        return resolve(value, self.root, self.resolve_checkpoint)

    def run_jobs(self, fn, todo: list[tuple[str, dict]], keys: Mapping[str, str],
                 seeds: Mapping[str, dict], *, work: Work, pool: bool = True,
                 outputs: Mapping[str, list[str]] | None = None) -> None:
        """Run the jobs of `todo` ((name, kwargs) each) and record each in the manifest as it finishes.

        work: the stage's planned work (its module's ``work``): printed for the jobs left to run before they
        start, and the totals of the stage's bar of all its jobs (perm.progress.StageProgress: its rate and
        ETA are the stage's). Each job reports its own progress under its name: a job run here through this
        run's Progress, a worker's or Ray task's over the executor's queue, printed here.
        pool=False keeps them in this process even with `workers` > 1 (jobs that start processes of their
        own).
        seeds: the seeds each job records, by name. outputs: each job's outputs by name (default: its
        ``out_rel``)."""
        if not todo:
            return
        outs = {name: list((outputs or {}).get(name) or [kw["out_rel"]]) for name, kw in todo}
        for name, _ in todo:
            self._check_outputs(name, outs[name])
        names = [name for name, _ in todo]
        here = (isinstance(self.executor, LocalExecutor)
                or (isinstance(self.executor, PoolExecutor) and not pool))
        ray = isinstance(self.executor, RayExecutor)
        executor = "ray" if ray else f"{getattr(self.executor, 'workers', 1)} workers"
        left = work.only(names)
        where = "in this process" if here else "as Ray tasks" if ray else f"on {executor}"
        self.log.plan(left.stage, f"{left.stage}: {format_work(left)}, {where}", status="jobs",
                      **left.fields(), where=where)
        stage_bar = StageProgress(self.log, left.stage, work.planned(names), unit=work.unit, scale=work.scale)
        try:
            if here:
                # one at a time, so that each finished job is recorded before the next starts (resume
                # granularity)
                for i, (name, kw) in enumerate(todo):
                    self.store.mark_running(name, keys[name])
                    self.log.event(name, "start")
                    t0 = time.perf_counter()
                    with reporting(Watched(self.log,
                                           lambda done, total, i=i: stage_bar.update(i, done, total))):
                        info = in_process(name, fn, **kw)
                    self.done(name, keys[name], outs[name], t0, seeds=seeds[name],
                              info=info | {"threads": kw.get("threads")})
                    stage_bar.job_done(i)
                return
            for name, _ in todo:
                self.store.mark_running(name, keys[name])
            extra: list[tuple[str, Job, dict]] = []  # later stages' jobs in idle workers: (stage, job, kw)

            def name_of(i: int) -> str:
                return todo[i][0] if i < len(todo) else extra[i - len(todo)][1].name

            def started(i: int) -> None:  # when a worker really starts job i (Ray: when it is submitted)
                self.log.event(name_of(i), "queued" if ray else "start", executor=executor)

            def progressed(i: int, tick) -> None:  # a worker's job reports its progress
                self.log.tick(name_of(i), tick)
                if i < len(todo):
                    stage_bar.update(i, tick.done, tick.total)

            def more():
                if self._ahead_off:
                    return None
                try:
                    found = self._ready_ahead()
                except Exception:  # noqa: BLE001 - a later stage's problem is reported when it runs, not here
                    self._ahead_off = True
                    return None
                if found is None:
                    return None
                extra.append(found)
                _, job, kw = found
                self.store.mark_running(job.name, job.key)
                return job.fn, kw, job.name

            ahead = {"more": more} if isinstance(self.executor, PoolExecutor) and self.ahead else {}
            for i, (info, wall) in self.executor.map_as_completed(fn, [kw for _, kw in todo],
                                                                  on_start=started, on_progress=progressed,
                                                                  progress_every=self.log.every, names=names,
                                                                  **ahead):
                t0 = time.perf_counter() - wall
                if i >= len(todo):  # a later stage's job: recorded as that stage records it
                    stage, job, kw = extra[i - len(todo)]
                    with self.as_stage(stage):
                        self.done(job.name, job.key, list(job.outputs), t0, seeds=dict(job.seeds or {}),
                                  info=info | {"threads": kw.get("threads")})
                    self._ahead_done.add(job.name)
                    continue
                name, kw = todo[i]
                self.done(name, keys[name], outs[name], t0, seeds=seeds[name],
                          info=info | {"threads": kw.get("threads")})
                stage_bar.job_done(i)
        finally:
            stage_bar.close()

    def _final(self, name: str) -> bool:
        """Whether manifest entry `name` will not change again in this run: found complete or recorded done
        in this context, or written by a stage that has finished here."""
        return name in self._settled or self._has_run(self._owner(name))

    def _has_run(self, stage: str | None) -> bool:
        """Whether stage `stage` has run (its result memoised) in this context."""
        return any(name == stage for name, _ in self._memo)

    def _ready_ahead(self) -> tuple[str, Job, dict] | None:
        """A pool job of a stage of :attr:`ahead` that can run now, while the running stage leaves a worker
        idle: ``(stage, job, kwargs)``, or None. Its stage has not run yet in this context and is not the
        one running jobs; its plan is made from the upstream entries that are final (:meth:`_final`: never
        one that a running or later stage may still rewrite) and may not need another (a KeyError: not
        ready); the job is not complete for its key, not handed out already, and waits on no job of its own
        stage. (The stages further out in the stack of needs wait on the running one: their jobs may run.)
        Its key is then the key its stage will plan for it, so the stage finds it complete and skips it."""
        running = self._running[-1] if self._running else None
        for name in self.ahead:
            module = self._stages[name]
            if name == running or self._has_run(name) or not hasattr(module, "plan"):
                continue
            with self.as_stage(name):
                up = self.upstream()
            final = {n: h for n, h in up.items() if ":" in n or self._final(n)}
            try:
                jobs = module.plan(self.cfg, final)
            except KeyError:
                continue
            for job in jobs:
                if job.how != "pool" or job.after or self._ahead_seen.get(job.name) == job.key:
                    continue
                self._ahead_seen[job.name] = job.key
                if self.complete(job.name, job.key):
                    self._settled.add(job.name)  # complete for the key its stage will plan: final
                    continue
                return name, job, self._job_kwargs(job)
        return None


def torch_setup(device: str, threads: int | None):
    """A job's first step: quiet transformers, set threads, fix the global seeds, resolve the device (an
    explicit ``cuda:N`` becomes the process's current CUDA device, before anything touches CUDA:
    :func:`perm.hardware.use_device`)."""
    import torch
    from transformers.utils import logging as hf_logging

    from perm.hardware import bound_kernel_cache, resolve_device, use_device
    from perm.store import seed_everything

    bound_kernel_cache()  # before the job's first matmul builds a oneDNN primitive

    hf_logging.disable_progress_bar()  # perm draws its own bars; "Loading weights" x 20 is noise
    hf_logging.set_verbosity_error()  # a fresh reward head is *meant* to be missing from a backbone
    if threads:
        torch.set_num_threads(threads)
    # every draw perm makes uses an explicit, recorded seed; fixing the globals too makes any stray
    # library draw deterministic, independent of what ran before in this process
    seed_everything(0)
    dev = resolve_device(device)
    use_device(dev)
    return dev


def autocast(dev, precision: str):
    """bf16 autocast for inference when asked; a no-op context in fp32."""
    import torch

    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
