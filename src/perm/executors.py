"""Executors of a stage's independent jobs: in this process, in a pool of local worker processes, or as
Ray tasks. Jobs are module-level functions with flat, picklable keyword arguments that write their outputs
atomically and return a small info dict; an executor only runs them and yields results as they finish."""

from __future__ import annotations

import time


class LocalExecutor:
    """Runs jobs one after another in this process (the pipeline records each as it finishes)."""


class PoolExecutor:
    """Runs jobs in `workers` spawned local processes at once; workers die with the driver.

    A worker runs several jobs of a stage one after another (a fresh process per job cost ~5 s of imports
    each). A job's result does not depend on what ran before it in its process: every job sets its own
    threads, seeds and accelerate state, as the sequential executor (all jobs in one process) relies on too,
    and the pool's results equal the sequential run's byte for byte (tests/test_e2e.py)."""

    def __init__(self, workers: int):
        self.workers = workers

    def map_as_completed(self, fn, kwargs_list: list[dict]):
        """Yield (index, (info, wall_s)) as jobs finish; on a failure, pending jobs are cancelled, running ones
        still finish and are yielded, then the first error is raised."""
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ex = ProcessPoolExecutor(max_workers=min(self.workers, len(kwargs_list)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),))
        error = None
        try:
            futures = {ex.submit(_timed_call, fn, kw): i for i, kw in enumerate(kwargs_list)}
            for f in as_completed(futures):
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    if error is None:
                        error = f.exception()
                        for other in futures:
                            other.cancel()
                    continue
                yield futures[f], f.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error


def _die_with_parent(driver: int) -> None:
    """Linux: a worker gets SIGKILL when the driver dies (a killed `perm run` leaves no job running); a
    worker whose driver died before this ran exits at once."""
    import ctypes
    import os
    import signal
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


class RayExecutor:
    """Runs jobs as Ray tasks with declared CPU/GPU needs, on an existing cluster or a local instance."""

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float, local_num_cpus: int | None = None):
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

    def map_as_completed(self, fn, kwargs_list: list[dict]):
        """Yield (index, result) as tasks finish, so each finished job is recorded before a failure elsewhere."""
        remote = self.ray.remote(**self.opts)(_timed_call)
        refs = {remote.remote(fn, kw): i for i, kw in enumerate(kwargs_list)}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield refs[done[0]], self.ray.get(done[0])


def _timed_call(fn, kw):
    t0 = time.perf_counter()
    info = fn(**kw)
    return info, time.perf_counter() - t0
