"""The run lock: one writer per run directory; a second one exits 2 naming the directory and the holder's pid;
a killed holder leaves no stale lock; interrupted writes' temp paths are swept while the lock is held."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from perm.config import configs_dir
from perm.store import RunLock, RunLockedError, RunStore, atomic_path, remove_temp_paths

QUICK = str(configs_dir() / "quick.yaml")
HOLD = ("import sys, time; from perm.store import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(120)")


def _perm(*args: str) -> list[str]:
    return [sys.executable, "-m", "perm.cli", *args]


def _holder(run) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_lock_names_the_directory_and_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunStore(run).lock() as lock:
        assert lock.held and (run / ".lock").exists()
        with pytest.raises(RunLockedError) as err:
            RunLock(run).acquire()  # not re-entrant: another descriptor, even in this process
        msg = str(err.value)
        assert msg.startswith(f"{run}: the run directory is locked by another perm process (pid {os.getpid()} on host ")
        assert isinstance(err.value, ValueError)
    with RunLock(run):  # released on exit
        pass


def test_a_locked_run_makes_perm_exit_2_at_once_naming_dir_and_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        t0 = time.monotonic()
        r = subprocess.run(_perm("testbed", QUICK, f"out={run}"), capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert r.returncode == 2, r.stderr
    assert f"error: {run}: the run directory is locked by another perm process (pid {holder.pid} on host" in r.stderr
    assert "Traceback" not in r.stderr
    # it does not wait for the holder (asleep for 120 s); the time is the interpreter's start-up, no torch
    assert elapsed < 15, elapsed
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the run was written
    t0 = time.monotonic()
    with RunLock(run):  # the SIGKILLed holder's lock went with its process
        assert time.monotonic() - t0 < 1


def test_two_testbeds_on_one_directory_one_wins_the_other_exits_2(tmp_path):
    run = tmp_path / "run"
    args = _perm("testbed", QUICK, f"out={run}")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1]
    assert f"the run directory is locked by another perm process (pid {procs[winner].pid} on host" in err
    assert "Traceback" not in err and "Traceback" not in outs[winner][1]
    assert RunStore(run).stage("testbed")["status"] == "done"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_remove_temp_paths_sweeps_what_interrupted_atomic_writes_leave(tmp_path):
    run = tmp_path / "run"
    (run / "rm").mkdir(parents=True)
    (run / "rm" / "seed0-ft0").mkdir()
    (run / "manifest.json").write_text("{}")
    try:
        with atomic_path(run / "rm" / "seed0-ft1") as tmp:
            tmp.mkdir()
            left = tmp.parent  # .seed0-ft1.<random>.tmp, removed by atomic_path unless the process dies
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not left.exists()
    # what a SIGKILLed writer leaves: atomic_path's temp folder, an .old-<pid> folder, the testbed scratch
    stale = [run / "rm" / ".seed0-ft1.ab12cd.tmp", run / ".manifest.json.x9.tmp", run / "rm" / ".seed0-ft0.old-4242",
             run / ".testbed.tmp"]
    for p in stale:
        (p / "inner").mkdir(parents=True)
    assert sorted(remove_temp_paths(run)) == sorted(stale)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["manifest.json", "rm", "rm/seed0-ft0"]
