"""The pool and Ray executors: a dying worker or a raising job ends the stage with one JobFailedError naming
the job, after the finished jobs were yielded; on_start reports a job's real start; an interrupt stops the
workers within seconds, their jobs' cleanup included."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from perm.executors import JobFailedError, PoolExecutor, RayExecutor, describe_exit, stop_workers


def _job(out_rel: str, sleep: float = 0.0, die_after: str | None = None, raise_: str | None = None,
         marker: str | None = None, cleaned: str | None = None, running: str | None = None) -> dict:
    """A test job: touches `running`; sleeps; SIGKILLs its own process once `die_after` exists (as the OOM killer would);
    raises ValueError(raise_); touches `marker` when done; touches `cleaned` in its finally block."""
    try:  # `running` is touched inside the try, so a stop signal that arrives right after it still cleans up
        if running is not None:
            Path(running).touch()
        if die_after is not None:
            deadline = time.monotonic() + 60
            while not Path(die_after).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the other job's result reaches the driver first
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(sleep)
        if raise_ is not None:
            raise ValueError(raise_)
        if marker is not None:
            Path(marker).touch()
        return {"job": out_rel, "pid": os.getpid()}
    finally:
        if cleaned is not None:
            Path(cleaned).touch()


def test_a_worker_killed_by_sigkill_names_its_job_after_the_finished_ones_are_yielded(tmp_path):
    marker = str(tmp_path / "seed3-done")
    jobs = [{"out_rel": "pretrain/seed0", "sleep": 0.1}, {"out_rel": "pretrain/seed1", "sleep": 0.1},
            {"out_rel": "pretrain/seed2", "die_after": marker}, {"out_rel": "pretrain/seed3", "marker": marker}]
    done = []
    with pytest.raises(JobFailedError) as err:
        for i, (info, wall) in PoolExecutor(2).map_as_completed(_job, jobs):
            assert info["job"] == jobs[i]["out_rel"] and wall >= 0
            done.append(i)
    assert sorted(done) == [0, 1, 3]  # all the finished jobs came out before the error
    e = err.value
    assert e.job == "pretrain/seed2"
    msg = str(e)
    assert "job pretrain/seed2 failed" in msg and "signal 9 (SIGKILL)" in msg and "likely out of memory" in msg
    assert "completed jobs are kept; rerun the same perm command to resume" in msg


def test_a_raising_job_names_the_job_and_the_exception():
    jobs = [{"out_rel": "rm/seed0-ft0", "sleep": 0.2}, {"out_rel": "rm/seed0-ft1", "raise_": "bad pairs"},
            {"out_rel": "rm/seed1-ft0", "sleep": 0.2}]
    done = []
    with pytest.raises(JobFailedError) as err:
        for i, _ in PoolExecutor(2).map_as_completed(_job, jobs):
            done.append(i)
    assert err.value.job == "rm/seed0-ft1"
    assert "job rm/seed0-ft1 failed: raised ValueError: bad pairs" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    assert 0 in done and 1 not in done


def test_on_start_reports_a_job_when_it_starts_in_a_worker_not_when_it_is_queued():
    timeline = []
    jobs = [{"out_rel": f"pretrain/seed{i}", "sleep": 1.0} for i in range(4)]
    for i, _ in PoolExecutor(2).map_as_completed(_job, jobs, on_start=lambda i: timeline.append(("start", i))):
        timeline.append(("done", i))
    assert sorted(timeline) == [("done", i) for i in range(4)] + [("start", i) for i in range(4)]
    first_done = next(k for k, (kind, _) in enumerate(timeline) if kind == "done")
    # two workers: jobs 2 and 3 can only start once a worker is free, i.e. after some job finished
    assert timeline.index(("start", 3)) > first_done and timeline.index(("start", 2)) > first_done
    for i in range(4):  # every start is announced before its job's result
        assert timeline.index(("start", i)) < timeline.index(("done", i))


def test_an_interrupt_stops_the_workers_within_seconds_and_their_jobs_clean_up(tmp_path):
    jobs = [{"out_rel": f"pretrain/seed{i}", "sleep": 120, "cleaned": str(tmp_path / f"cleaned{i}")}
            for i in range(3)]
    started = []

    def on_start(i):
        started.append(i)
        if len(started) == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, inside the executor's loop

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(PoolExecutor(2).map_as_completed(_job, jobs, on_start=on_start))
    assert time.monotonic() - t0 < 60  # not the jobs' 120 s
    assert {p.name for p in tmp_path.iterdir()} == {"cleaned0", "cleaned1"}  # their finally blocks ran


def test_stop_workers_ends_a_pool_whose_consumer_was_interrupted(tmp_path):
    """Ctrl-C in the caller's loop body leaves the generator suspended: stop_workers (the CLI calls it)."""
    running = tmp_path / "running-b"
    jobs = [{"out_rel": "pretrain/a", "sleep": 0.0},
            {"out_rel": "pretrain/b", "sleep": 120, "cleaned": str(tmp_path / "cleaned-b"), "running": str(running)}]
    gen = PoolExecutor(2).map_as_completed(_job, jobs)
    started = threading.Event()
    try:
        for _ in gen:
            started.set()
            deadline = time.monotonic() + 60
            while not running.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        t0 = time.monotonic()
        stop_workers()
        gen.close()
        assert time.monotonic() - t0 < 30
    assert started.is_set() and (tmp_path / "cleaned-b").exists()


def _other(out_rel: str, sleep: float = 0.0) -> dict:
    """A job of another function than the pool's own (a later stage's job run in an idle worker)."""
    time.sleep(sleep)
    return {"job": out_rel, "other": True, "pid": os.getpid()}


def test_more_fills_idle_workers_with_further_jobs_asked_again_after_each_result():
    # one long job and two workers: `more` is asked at once (a worker is idle), then after each result
    queue = [(_other, {"out_rel": "sample", "sleep": 0.1}, "sample"), (_other, {"out_rel": "score/a"}, "score/a")]
    asked, yielded = [], []

    def more():
        asked.append(len(yielded))
        if not queue:
            return None
        if queue[0][1]["out_rel"] == "score/a" and 1 not in yielded:
            return None  # not ready until `sample` (index 1) was yielded: the consumer recorded it
        return queue.pop(0)

    pids = {}
    for i, (info, _) in PoolExecutor(2).map_as_completed(_job, [{"out_rel": "rm/a", "sleep": 1.5}], more=more):
        yielded.append(i)
        pids[i] = info["pid"]
        assert info["job"] == ["rm/a", "sample", "score/a"][i] and info.get("other", False) == (i > 0)
    assert sorted(yielded) == [0, 1, 2] and yielded[-1] == 0  # the extras ran beside the long job
    assert pids[1] != pids[0]  # in the worker the long job left idle
    assert asked[0] == 0 and not queue
    assert len(asked) <= 4  # asked at the start and after each result, not every time the pool is polled


def test_a_failing_further_job_is_named_as_given_after_the_running_jobs_finish():
    more_jobs = [(_job, {"out_rel": "scores/evaluator.parquet", "raise_": "nan rewards"}, "score/evaluator")]
    done = []
    with pytest.raises(JobFailedError) as err:
        for i, _ in PoolExecutor(2).map_as_completed(_job, [{"out_rel": "rm/a", "sleep": 1.0}],
                                                     more=lambda: more_jobs.pop() if more_jobs else None,
                                                     names=["rm/a"]):
            done.append(i)
    assert done == [0]  # the stage's own running job finished and was yielded first
    assert err.value.job == "score/evaluator" and "nan rewards" in str(err.value)


def test_more_is_not_asked_once_a_job_failed():
    asked = []

    def more():
        asked.append(1)
        return (_other, {"out_rel": "score/late"}, "score/late") if len(asked) > 1 else None

    with pytest.raises(JobFailedError) as err:
        list(PoolExecutor(2).map_as_completed(_job, [{"out_rel": "rm/a", "raise_": "bad"}], more=more))
    assert err.value.job == "rm/a" and len(asked) == 1


def test_describe_exit():
    assert describe_exit(-9) .startswith("its worker process was killed by signal 9 (SIGKILL), likely out of memory")
    assert describe_exit(-11) == "its worker process was killed by signal 11 (SIGSEGV)"
    assert describe_exit(143) == "its worker process was stopped by signal 15 (SIGTERM)"
    assert describe_exit(1) == "its worker process exited with code 1"
    assert "unknown" in describe_exit(None)


class _FakeRay:
    """The driver side of Ray (remote/wait/get/cancel) running tasks in this process; `fail` maps a job
    index to the exception `ray.get` raises for it."""

    def __init__(self, fail: dict):
        import ray.exceptions

        self.exceptions = ray.exceptions
        self.fail = fail
        self.cancelled = []

    def remote(self, **opts):
        ray = self

        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(f, kw):
                    i = len(ray.calls)
                    ray.calls.append((f, kw))
                    return i

            return Remote

        self.calls = []
        return wrap

    def wait(self, pending, num_returns=1):
        return pending[:1], pending[1:]

    def get(self, ref):
        if ref in self.fail:
            raise self.fail[ref]
        f, kw = self.calls[ref]
        return f(**kw), 0.0

    def cancel(self, ref):
        self.cancelled.append(ref)


@pytest.mark.parametrize("failure, how", [
    ("crash", "its Ray worker process died (killed by a signal, likely out of memory, or crashed)"),
    ("oom", "Ray's memory monitor killed its worker: out of memory"),
    ("raise", "raised ValueError: bad pairs"),
])
def test_ray_task_failures_become_one_job_failed_error_after_the_others(failure, how):
    import ray.exceptions as rex

    exc = {"crash": rex.WorkerCrashedError(), "oom": rex.OutOfMemoryError("task killed"),
           "raise": rex.RayTaskError("job", "Traceback ...", ValueError("bad pairs")).as_instanceof_cause()}[failure]
    ex = RayExecutor.__new__(RayExecutor)
    ex.ray, ex.opts = _FakeRay({1: exc}), {}
    jobs = [{"out_rel": f"rm/seed{i}-ft0"} for i in range(3)]
    starts, done = [], []
    with pytest.raises(JobFailedError) as err:
        for i, _ in ex.map_as_completed(_job, jobs, on_start=starts.append):
            done.append(i)
    assert done == [0, 2] and starts == [0, 1, 2]
    assert err.value.job == "rm/seed1-ft0" and str(err.value) == (
        f"job rm/seed1-ft0 failed: {how}; completed jobs are kept; rerun the same perm command to resume")


def test_a_stop_signal_landing_in_a_finalizer_still_stops_the_job_quietly(tmp_path):
    """A pool worker's SIGTERM that arrives while the garbage collector runs an object's __del__ inside the
    job was swallowed there: Python printed "Exception ignored ... Traceback" and the job went on. It is
    delivered again once the finalizer returns."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, time\n"
        "from perm import executors as ex\n"
        "ex._stop_on_signals()\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)  # the stop lands inside the finalizer\n"
        "        time.sleep(0.2)\n"
        "ex._RUNNING = True\n"
        "try:\n"
        "    Finalised()\n"
        "    time.sleep(5)\n"
        "    print('not stopped')\n"
        "except ex._Stopped as e:\n"
        "    print('stopped', e.args[0])\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "stopped 15" and "Traceback" not in r.stderr, (r.stdout, r.stderr)
