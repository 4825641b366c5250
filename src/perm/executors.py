"""Executors of a stage's independent jobs: in this process, in a pool of local worker processes, or as
Ray tasks. Jobs are module-level functions with flat, picklable keyword arguments that write their outputs
atomically and return a small info dict; an executor only runs them and yields results as they finish.

A job that fails (raises, or its worker process dies: a signal, the kernel's OOM killer, a Ray worker
crash) ends the stage with one :class:`JobFailedError` naming the job (its ``out_rel`` argument, e.g.
``pretrain/seed1``) and how it ended, after the jobs that completed have been yielded (the caller records
them, so a rerun of the same command resumes with only the unfinished jobs)."""

from __future__ import annotations

import signal
import time
import weakref

from perm.progress import DEFAULT_EVERY, Forward, reporting

RESUME = "completed jobs are kept; rerun the same perm command to resume"


class JobFailedError(RuntimeError):
    """A job of a stage failed. ``job``: its name (the job's ``out_rel``, else ``#<index>``; None when a
    worker died running no job); ``how``: how it ended (``raised ValueError: ...``, ``its worker process was
    killed by signal 9 (SIGKILL) ...``)."""

    def __init__(self, job: str | None, how: str):
        self.job, self.how = job, how
        what = f"job {job} failed" if job is not None else "a worker process failed while it ran no job"
        super().__init__(f"{what}: {how}; {RESUME}")

    def __reduce__(self):
        return type(self), (self.job, self.how)


def job_name(kwargs: dict, index: int) -> str:
    """A job's name in messages: its ``out_rel`` (``pretrain/seed1``), else ``#<index>``."""
    return str(kwargs.get("out_rel") or f"#{index}")


def describe_exit(exitcode: int | None) -> str:
    """How a worker process ended, from its exit status (``multiprocessing.Process.exitcode``: -N for a
    signal N, 128 + N when perm's worker handler stopped it on signal N, else the exit code)."""
    if exitcode is None:
        return "its worker process died (exit status unknown)"
    if exitcode < 0 or 128 < exitcode < 128 + 65:
        sig = -exitcode if exitcode < 0 else exitcode - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown signal"
        how = "killed" if exitcode < 0 else "stopped"
        text = f"its worker process was {how} by signal {sig} ({name})"
        if sig == signal.SIGKILL:
            text += (", likely out of memory (the kernel's OOM killer sends SIGKILL: see `dmesg`; fewer "
                     "`workers` or a smaller batch need less)")
        return text
    return f"its worker process exited with code {exitcode}"


class LocalExecutor:
    """Runs jobs one after another in this process (the pipeline records each as it finishes)."""


# process pools running jobs now (stop_workers) -> their pid -> Process dict (ProcessPoolExecutor._processes,
# kept here because shutdown() drops the executor's reference to it)
_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PoolExecutor:
    """Runs jobs in `workers` spawned local processes at once; workers die with the driver.

    A worker runs several jobs of a stage one after another (a fresh process per job cost ~5 s of imports
    each). A job's result does not depend on what ran before it in its process: every job sets its own
    threads, seeds and accelerate state, as the sequential executor (all jobs in one process) relies on too,
    and the pool's results equal the sequential run's byte for byte (tests/test_e2e.py).

    Workers report each job's start, progress and end on an event queue (a ``multiprocessing.SimpleQueue``: a
    put is written to its pipe before the job goes on, so it reaches the driver before the job's result),
    which is how the driver knows when a job really starts (``on_start``), how far it is (``on_progress``),
    and which job each worker process was running when one dies. A dead worker's exit status is read from the
    pool's process objects after the pool shut down (``ProcessPoolExecutor._processes``, pid ->
    ``multiprocessing.Process``; the pool reaps them), so SIGKILL reads as -9. In a worker, SIGINT (Ctrl-C
    reaches the whole process group) or SIGTERM (the pool's terminate, :func:`stop_workers`) interrupts a
    running job, whose ``finally`` blocks run (atomic writes remove their temp files), and the worker exits
    with 128 + the signal number without taking another job; an idle worker exits at once.

    devices: the device of each worker (:func:`perm.hardware.worker_devices`: worker i on
    ``cuda:{i % GPUs}``), or None. Each worker process takes one slot as it starts and runs every job whose
    ``device`` keyword is ``auto`` or ``cuda`` on its slot's device instead (the job's ``device`` keyword is
    rewritten), so the workers spread over the GPUs and a worker's jobs stay on one."""

    def __init__(self, workers: int, devices: tuple[str, ...] | None = None):
        if devices is not None and len(devices) < workers:
            raise ValueError(f"PoolExecutor: {workers} workers but devices for {len(devices)}")
        self.workers = workers
        self.devices = devices

    def map_as_completed(self, fn, kwargs_list: list[dict], on_start=None, on_progress=None,
                         progress_every: float = DEFAULT_EVERY, more=None, names: list[str] | None = None):
        """Yield (index, (info, wall_s)) as jobs finish.

        more: optional ``more() -> (fn, kwargs, name) | None``, called in this process whenever fewer jobs
        are queued or running than the pool has workers (and nothing has failed): a further job to run, which
        gets the next index (``len(kwargs_list)``, then one more each), or None for none now. It is asked
        again after each result is yielded, so what the consumer recorded can make a job ready. With
        `more`, the pool has all its workers however few jobs `kwargs_list` holds.

        names: each job's name in errors (default :func:`job_name`: its ``out_rel``).

        on_start: optional ``on_start(index)``, called in this process when job `index` starts in a worker
        (not when it is queued), always before that job's result is yielded, in the order the workers
        reported starts and ends (a job that starts after another ended is announced after that one's result
        is yielded).

        on_progress: optional ``on_progress(index, tick)``, called in this process with each
        :class:`perm.progress.Tick` job `index` reports (its bars from :func:`perm.progress.job_bar` send
        one every `progress_every` seconds over the event queue), before that job's result is yielded.

        When a job raises, pending jobs are cancelled, running ones still finish and are yielded, then a
        :class:`JobFailedError` naming the job and its exception is raised (the exception is its cause).
        When a worker dies (``BrokenProcessPool``: the pool then stops every worker), the jobs finished before
        are yielded and a JobFailedError names the job that worker ran and its signal. When this generator
        is interrupted (KeyboardInterrupt) or closed early, the workers are stopped within a few seconds."""
        import multiprocessing
        import os
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if not kwargs_list:
            return
        ctx = multiprocessing.get_context("spawn")
        events = ctx.SimpleQueue()
        n = self.workers if more is not None else min(self.workers, len(kwargs_list))
        slots = None
        if self.devices is not None:  # one slot per worker process, taken as it starts
            slots = ctx.SimpleQueue()
            for i in range(n):
                slots.put(self.devices[i])
        ex = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                                 initargs=(os.getpid(), events, slots))
        procs = getattr(ex, "_processes", None)
        procs = _POOLS[ex] = {} if procs is None else procs  # the same dict the pool fills as it spawns
        names = list(names) if names is not None else [job_name(kw, i) for i, kw in enumerate(kwargs_list)]
        started: dict[int, int] = {}  # job index -> pid of the worker that runs it
        ended: set[int] = set()
        announced: set[int] = set()
        error: JobFailedError | None = None
        broken = False
        try:
            every = progress_every if on_progress is not None else None
            futures = [ex.submit(_pool_call, fn, kw, i, every) for i, kw in enumerate(kwargs_list)]
            pending = set(range(len(futures)))

            asked = -1  # jobs settled when `more` last answered None: not asked again before one more is

            def fill() -> None:
                """Submit `more`'s jobs while a worker would otherwise be idle."""
                nonlocal asked, broken
                while (more is not None and error is None and not broken and len(pending) < n
                       and asked != len(futures) - len(pending)):
                    extra = more()
                    if extra is None:
                        asked = len(futures) - len(pending)
                        return
                    extra_fn, extra_kw, extra_name = extra
                    try:
                        future = ex.submit(_pool_call, extra_fn, extra_kw, len(futures), every)
                    except BrokenProcessPool:  # a worker died since the last result: reported below
                        broken = True
                        return
                    names.append(extra_name)
                    futures.append(future)
                    pending.add(len(futures) - 1)

            def announce(i: int) -> None:
                if on_start is not None and i not in announced:
                    announced.add(i)
                    on_start(i)

            def settle(i: int):
                """Job i's future is done: its result to yield, or None (error/cancelled/broken recorded)."""
                nonlocal error, broken
                pending.discard(i)
                f = futures[i]
                if f.cancelled():
                    return None
                exc = f.exception()
                if exc is None:
                    ended.add(i)
                    announce(i)  # it ran, even if its start event was not read yet
                    return f.result()
                if isinstance(exc, BrokenProcessPool):
                    broken = True
                    return None
                ended.add(i)  # its worker is free again: not the job of a worker that dies later
                if error is None:
                    error = JobFailedError(names[i], f"raised {type(exc).__name__}: {exc}")
                    error.__cause__ = exc
                    for other in futures:
                        other.cancel()
                return None

            fill()
            while pending and not broken:
                wait([futures[i] for i in pending], timeout=0.2, return_when=FIRST_COMPLETED)
                while not events.empty():
                    kind, i, pid, *tick = events.get()
                    if kind == "progress":
                        if i in pending:
                            announce(i)
                            on_progress(i, tick[0])
                    elif kind == "start":
                        started[i] = pid
                        announce(i)
                    elif i in pending:  # "end": its result follows at once (or the pool broke)
                        futures[i].exception()  # wait for it
                        result = settle(i)
                        if result is not None:
                            yield i, result
                for i in sorted(i for i in pending if futures[i].done()):
                    result = settle(i)
                    if result is not None:
                        yield i, result
                fill()
        except BaseException:  # KeyboardInterrupt, or the consumer closed us (GeneratorExit)
            _stop_pool(ex)
            raise
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
            _POOLS.pop(ex, None)
        if broken:
            raise _broken_pool_error(procs, names, started, ended)
        if error is not None:
            raise error


def _broken_pool_error(procs: dict, names: list[str], started: dict[int, int],
                       ended: set[int]) -> BaseException:
    """The JobFailedError for a pool a worker died in (call after ``ex.shutdown(wait=True)``, which reaps
    the workers; `procs`: the pool's pid -> Process dict): the job that worker was running and how it ended.
    The pool terminates (SIGTERM) the other workers when one dies, so the dying one is the worker whose
    status is not SIGTERM's; if every such status is SIGINT's, the run was interrupted (KeyboardInterrupt)."""
    codes = {pid: p.exitcode for pid, p in procs.items()}
    running = {i: pid for i, pid in started.items() if i not in ended}
    sigterm, sigint = (-signal.SIGTERM, 128 + signal.SIGTERM), (-signal.SIGINT, 128 + signal.SIGINT)
    abnormal = {pid: c for pid, c in codes.items() if c not in (0, None, *sigterm)}
    if abnormal and all(c in sigint for c in abnormal.values()):
        return KeyboardInterrupt()
    culprits = {i: codes[pid] for i, pid in sorted(running.items()) if pid in abnormal}
    if culprits:
        jobs = list(culprits)
        how = describe_exit(culprits[jobs[0]])
        if len(jobs) > 1:
            how += f" (the workers of {', '.join(names[j] for j in jobs)} all died)"
        return JobFailedError(" and ".join(names[j] for j in jobs), how)
    if abnormal:  # at its start-up or between two jobs
        return JobFailedError(None, describe_exit(next(iter(abnormal.values()))))
    jobs = sorted(running)
    if not jobs:
        return JobFailedError(None, describe_exit(None))
    how = (describe_exit(-signal.SIGTERM) + ", sent from outside perm (the pool stopped the other workers)"
           if codes else describe_exit(None))
    return JobFailedError(" or ".join(names[j] for j in jobs), how)


def _stop_pool(ex, grace_s: float = 3.0) -> None:
    """Stop a pool's workers now: SIGTERM each (a running job unwinds, removing its temp files, and the
    worker exits), SIGKILL those still alive after `grace_s`, and drop the queued jobs."""
    procs = [p for p in list(_POOLS.get(ex, {}).values()) if p.is_alive()]
    for p in procs:
        try:
            p.terminate()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)
    ex.shutdown(wait=False, cancel_futures=True)


def stop_workers(grace_s: float = 3.0) -> None:
    """Stop the workers of every process pool of this process that is running jobs (the CLI calls this on
    Ctrl-C: the interrupt may land outside the executor's generator, which then stays suspended)."""
    for ex in list(_POOLS):
        _stop_pool(ex, grace_s)


class _Stopped(BaseException):
    """Raised in a worker's job by SIGINT / SIGTERM (a BaseException: no `except Exception` swallows it)."""


_EVENTS = None  # the worker's event queue (set by _worker_init)
_DEVICE: str | None = None  # the worker's device slot (set by _worker_init; None: jobs keep their device)
_RUNNING = False  # a job is running in this worker
_STOPPING = False
SLOTTED = ("auto", "cuda")
"""Job ``device`` keywords a worker with a device slot replaces by its slot's device."""


def _worker_init(driver: int, events=None, slots=None) -> None:
    """Linux: a worker gets SIGKILL when the driver dies (a killed `perm run` leaves no job running); a
    worker whose driver died before this ran exits at once. SIGINT / SIGTERM stop the worker (see
    :class:`PoolExecutor`). ``slots``: a queue of device slots, one per worker; this worker takes one."""
    global _EVENTS, _DEVICE
    _die_with_parent(driver)
    _EVENTS = events
    _DEVICE = slots.get() if slots is not None else None
    _stop_on_signals()


def _stop_on_signals() -> None:
    """SIGINT / SIGTERM stop this worker (:func:`_on_stop_signal`), also when one lands in a finalizer
    (:func:`_unraisable`)."""
    import sys

    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    """A stop that landed in a finalizer (an object's ``__del__``, run by the garbage collector in the job)
    is swallowed there, and Python would print its traceback and let the job go on: deliver it again 10 ms
    later (SIGALRM, once the finalizer has returned), so that it stops the job, and print nothing. Anything
    else: Python's hook."""
    import sys

    global _STOPPING, _PENDING
    if isinstance(unraisable.exc_value, _Stopped):
        _STOPPING, _PENDING = False, unraisable.exc_value.args[0]
        signal.signal(signal.SIGALRM, _deliver_pending)
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        return
    sys.__unraisablehook__(unraisable)


def _deliver_pending(signum, frame) -> None:
    _on_stop_signal(_PENDING, frame)


_PENDING = signal.SIGTERM  # the stop signal a finalizer swallowed (:func:`_unraisable`)


def _on_stop_signal(signum, frame) -> None:
    import os

    global _STOPPING
    if _STOPPING:
        return  # already unwinding: let the job's cleanup finish
    _STOPPING = True
    if not _RUNNING:
        os._exit(128 + signum)
    raise _Stopped(signum)


def _pool_call(fn, kw, index: int, progress_every: float | None = None):
    """A job in a pool worker: report its start and end on the event queue, and, given `progress_every`, its
    progress (``("progress", index, pid, tick)``); a stop signal ends the worker after the job's cleanup ran
    (it does not take another job)."""
    import os

    global _RUNNING
    kw = on_worker_device(kw, _DEVICE)
    if _EVENTS is not None:
        _EVENTS.put(("start", index, os.getpid()))
    _RUNNING = True
    try:
        if _EVENTS is None or progress_every is None:
            return _timed_call(fn, kw)
        events, pid = _EVENTS, os.getpid()
        with reporting(Forward(lambda tick: events.put(("progress", index, pid, tick)), progress_every)):
            return _timed_call(fn, kw)
    except _Stopped as e:
        os._exit(128 + e.args[0])
    finally:
        _RUNNING = False
        from perm.store import release_memory

        release_memory()  # what the job held, before the worker takes the next one
        if _EVENTS is not None and not _STOPPING:
            _EVENTS.put(("end", index, os.getpid()))


def on_worker_device(kw: dict, device: str | None) -> dict:
    """A job's keyword arguments in a worker whose device slot is `device`: its ``device`` (auto or cuda)
    replaced by the slot's; unchanged without a slot, or for a job on cpu or an explicit ``cuda:N``."""
    if device is None or kw.get("device") not in SLOTTED:
        return kw
    return kw | {"device": device}


def _die_with_parent(driver: int) -> None:
    """Linux: a worker gets SIGKILL when the driver dies (a killed `perm run` leaves no job running); a
    worker whose driver died before this ran exits at once."""
    import ctypes
    import os
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != driver:
        os._exit(1)


def _usable_cpus() -> int:
    """CPUs this process may run on (affinity and cpusets), not all the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DeviceMismatchError(RuntimeError):
    """A job would run on another kind of device than the one its stage keys (and precision) were made for."""


def task_device_kind(device: str) -> str:
    """The kind of device (cuda | cpu | ...) a job with keyword ``device`` runs on in this process: its
    resolved device (perm.hardware.resolve_device), cpu for a cuda where no CUDA device is visible."""
    import torch

    from perm.hardware import resolve_device

    kind = resolve_device(device).type
    return "cpu" if kind == "cuda" and not torch.cuda.is_available() else kind


def check_task_device(kw: dict, expected: str) -> None:
    """Refuse (:class:`DeviceMismatchError`, one line naming both) a job whose ``device`` resolves here to
    another kind than `expected`, the kind the driver resolved it to when it made the stage keys and chose the
    precision (a task without a GPU would otherwise run a bf16/cuda-keyed job on the CPU, and its outputs
    would be recorded under those keys). A job without a ``device`` keyword is not checked."""
    if "device" not in kw:
        return
    here = task_device_kind(kw["device"])
    if here != expected:
        hint = (" (no CUDA device visible to the task: give tasks GPUs, ray.num_gpus_per_task)"
                if expected == "cuda" else "")
        raise DeviceMismatchError(f"job {job_name(kw, 0)}: device {kw['device']} resolved to {expected} "
                                  f"in the driver (its keys and precision are {expected}'s) but to {here} in "
                                  f"this Ray task{hint}")


class DeviceChecked:
    """A job function that first checks, where it runs, that its device is of the kind the driver keyed it for
    (:func:`check_task_device`), then runs it: what a Ray task calls."""

    def __init__(self, fn, device_kind: str):
        self.fn, self.device_kind = fn, device_kind

    def __call__(self, **kw):
        check_task_device(kw, self.device_kind)
        return self.fn(**kw)


class RayExecutor:
    """Runs jobs as Ray tasks with declared CPU/GPU needs, on an existing cluster or a local instance.

    device_kind: the kind of device (cuda | cpu) the driver resolved the run's `device` to; each task checks
    that its own resolution agrees before it runs its job (:class:`DeviceChecked`). None: no check."""

    device_kind: str | None = None

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float,
                 local_num_cpus: int | None = None, device_kind: str | None = None):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("executor: ray needs the optional extra: pip install 'perm-rm[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=local_num_cpus, ignore_reinit_error=True, log_to_driver=False,
                         include_dashboard=False)
            else:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self.opts = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.device_kind = device_kind

    def map_as_completed(self, fn, kwargs_list: list[dict], on_start=None, on_progress=None,
                         progress_every: float = DEFAULT_EVERY, names: list[str] | None = None):
        """Yield (index, result) as tasks finish, so each finished job is recorded before a failure elsewhere.
        names: each job's name in errors (default :func:`job_name`: its ``out_rel``).

        on_start(index) is called when a task is submitted: Ray's scheduler, not perm, decides when it runs
        (on a cluster with room, all run at once). on_progress(index, tick): each
        :class:`perm.progress.Tick` task `index` reports (one every `progress_every` seconds), sent over a
        ``ray.util.queue.Queue`` (the driver keeps ``log_to_driver`` off) and read here between waits. A task
        that raises (``RayTaskError``) or whose worker dies (``WorkerCrashedError``, Ray's
        ``OutOfMemoryError``, a lost node) becomes a :class:`JobFailedError` once the other tasks, already
        submitted, have finished and been yielded. On KeyboardInterrupt the tasks are cancelled (interrupted,
        so their temp files are removed)."""
        queue = empty = None
        if on_progress is not None:
            queue, empty = self._progress_queue()
            remote = self.ray.remote(**self.opts)(_ray_call)
        else:
            remote = self.ray.remote(**self.opts)(_timed_call)
        job = fn if self.device_kind is None else DeviceChecked(fn, self.device_kind)
        refs = {}
        for i, kw in enumerate(kwargs_list):
            refs[remote.remote(job, kw) if queue is None
                 else remote.remote(job, kw, i, queue, progress_every)] = i
            if on_start is not None:
                on_start(i)
        pending = list(refs)
        error: JobFailedError | None = None

        def drain() -> None:
            while True:
                try:
                    i, tick = queue.get_nowait()
                except empty:
                    return
                on_progress(i, tick)

        try:
            while pending:
                if queue is None:
                    done, pending = self.ray.wait(pending, num_returns=1)
                else:
                    done, pending = self.ray.wait(pending, num_returns=1, timeout=1.0)
                    drain()
                    if not done:
                        continue
                i = refs[done[0]]
                try:
                    result = self.ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - every task failure becomes one JobFailedError
                    if error is None:
                        name = names[i] if names is not None else job_name(kwargs_list[i], i)
                        error = JobFailedError(name, _ray_failure(self.ray, e))
                        error.__cause__ = e
                    continue
                yield i, result
        except BaseException:  # KeyboardInterrupt, or the consumer closed us
            for ref in pending:
                try:
                    self.ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort: the driver is stopping
                    pass
            raise
        finally:
            if queue is not None:
                try:
                    queue.shutdown()
                except Exception:  # noqa: BLE001 - best effort: the queue's actor is only ours
                    pass
        if error is not None:
            raise error

    def _progress_queue(self):
        """A Ray queue for the tasks' progress, and the exception its ``get_nowait`` raises when empty."""
        from ray.util.queue import Empty, Queue

        return Queue(), Empty


def _ray_call(fn, kw, index: int, queue, progress_every: float):
    """A job as a Ray task whose progress goes to the driver over `queue` as ``(index, tick)``."""
    with reporting(Forward(lambda tick: queue.put_nowait((index, tick)), progress_every)):
        return _timed_call(fn, kw)


def _ray_failure(ray, e: Exception) -> str:
    """How a Ray task ended, from the exception ``ray.get`` raised."""
    exc = getattr(ray, "exceptions", None)

    def isa(name: str) -> bool:
        cls = getattr(exc, name, None)
        return isinstance(cls, type) and isinstance(e, cls)

    if isa("OutOfMemoryError"):
        return "Ray's memory monitor killed its worker: out of memory"
    if isa("WorkerCrashedError"):
        return "its Ray worker process died (killed by a signal, likely out of memory, or crashed)"
    if isa("NodeDiedError") or isa("ObjectLostError"):
        return f"the Ray node running it was lost ({type(e).__name__})"
    if isa("TaskCancelledError"):
        return "its Ray task was cancelled"
    if isa("RayTaskError"):
        cause = getattr(e, "cause", None)
        if cause is not None:
            return f"raised {type(cause).__name__}: {cause}"
    return f"raised {type(e).__name__}: {e}"


def _timed_call(fn, kw):
    t0 = time.perf_counter()
    info = fn(**kw)
    return info, time.perf_counter() - t0
