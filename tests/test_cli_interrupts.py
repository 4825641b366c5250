"""Ctrl-C and dead workers through the command line: exit 130 with how to resume, or exit 1 naming the job
that died; no temp files left in the run directory, no worker left running; the rerun resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perm.cli import INTERRUPTED
from perm.config import configs_dir
from perm.store import RunStore

QUICK = str(configs_dir() / "quick.yaml")
TEMP = re.compile(r"^\..+(\.tmp|\.old-\d+)$")  # perm.store.atomic_path's and the stages' temp names


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python installs its KeyboardInterrupt handler
    even when the test run itself ignores SIGINT (a shell starts background jobs that way: `.ci/run &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _perm(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "perm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def _wait_for_line(stream, pattern: str, seen: list[str]) -> None:
    for line in stream:
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(seen)}")


def _leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if TEMP.match(p.name) or ".tmp" in p.name]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _workers(pid: int) -> list[int]:
    """The driver's pool workers (spawned `spawn_main` processes, not multiprocessing's resource tracker)."""
    out = []
    for k in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(k)
        except FileNotFoundError:
            pass
    return out


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stop_during_the_testbed_exits_130_says_how_to_resume_and_leaves_no_temp_files(tmp_path, stop):
    """Ctrl-C (the terminal signals the whole process group) and SIGTERM to the driver (what a cluster scheduler
    or `kill` sends) end the same way."""
    run = tmp_path / "run"
    # a bigger corpus than quick's, so the build is still running when the stop comes
    p = _perm("testbed", QUICK, f"out={run}", "testbed.n_corpus_docs=40000", start_new_session=True)
    seen: list[str] = []
    _wait_for_line(p.stderr, r"testbed\s+start", seen)
    time.sleep(1.0)
    assert (run / ".testbed.tmp").exists()  # mid-build: the stage's scratch folder is there
    t0 = time.monotonic()
    if stop == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 130, "".join(seen) + err
    assert INTERRUPTED in err and "Traceback" not in err
    assert _leftovers(run) == []
    assert RunStore(run).stage("testbed")["status"] == "running"  # not recorded done: a rerun builds it


@pytest.mark.slow
def test_sigint_to_the_driver_stops_pool_workers_mid_job_within_seconds(tmp_path):
    run = tmp_path / "run"
    p = _perm("pretrain", QUICK, f"out={run}", "workers=2", "pretrain.steps=5000", start_new_session=True)
    seen: list[str] = []
    _wait_for_line(p.stderr, r"pretrain/seed0\s+start", seen)
    deadline = time.monotonic() + 120
    while len(_workers(p.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(8)  # the workers import torch and are into their jobs
    assert len(_workers(p.pid)) == 2
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)  # the driver only: it must stop its workers itself
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 130, "".join(seen) + err
    assert INTERRUPTED in err and "Traceback" not in err
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker exits just after the driver
    while _group_alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = {k: Path(f"/proc/{k}/cmdline").read_bytes()[:120] for k in _group_alive(p.pid)}
    assert not [k for k, cmd in alive.items() if b"spawn_main" in cmd], alive  # no worker outlived the driver
    assert alive == {}, alive
    assert _leftovers(run) == []


@pytest.mark.slow
def test_a_killed_worker_exits_1_naming_its_job_and_the_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    args = ("pretrain", QUICK, f"out={run}", "workers=2", "pretrain.steps=150", "evaluator.pretrain_steps=150")
    p = _perm(*args, start_new_session=True)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline:  # a worker with torch loaded is inside its job
        workers = [w for w in _workers(p.pid) if b"libtorch" in Path(f"/proc/{w}/maps").read_bytes()]
        if workers:
            break
        time.sleep(0.2)
    assert workers, "no worker started a job"
    time.sleep(1.0)
    os.kill(workers[0], signal.SIGKILL)  # as the kernel's OOM killer would
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    m = re.search(r"error: job (\S+) failed: its worker process was killed by signal 9 \(SIGKILL\), likely out of "
                  r"memory.*; completed jobs are kept; rerun the same perm command to resume", err)
    assert m, err
    assert m.group(1) in ("evaluator/pretrain", "pretrain/seed0", "pretrain/seed1")
    assert "Traceback" not in err
    assert _leftovers(run) == []
    assert RunStore(run).stage(m.group(1))["status"] == "running"  # the dead job is not recorded done
    r = subprocess.run([sys.executable, "-m", "perm.cli", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    stages = RunStore(run).manifest()["stages"]
    assert all(stages[n]["status"] == "done" for n in ("evaluator/pretrain", "pretrain/seed0", "pretrain/seed1"))
