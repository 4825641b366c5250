"""Honest progress: bars (with an ETA) only on a terminal, job start lines when a worker really starts."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from perm.config import configs_dir
from perm.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal():
    plain = io.StringIO()
    bar = Progress("normal", plain).bar("pretrain/seed0", 10)
    bar(5, 10)
    bar.close()
    assert plain.getvalue() == ""  # a log file gets the start / done lines only
    tty = _Terminal()
    bar = Progress("normal", tty).bar("pretrain/seed0", 10)
    bar(5, 10, loss=1.25)
    bar.close()
    assert "pretrain/seed0" in tty.getvalue() and "5/10" in tty.getvalue() and "<" in tty.getvalue()  # ETA
    quiet = _Terminal()
    Progress("quiet", quiet).bar("x", 3)(1, 3)
    assert quiet.getvalue() == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pseudo-terminal) is missing")
def test_pool_run_under_a_pseudo_terminal(tmp_path):
    """`perm pretrain` with 2 workers and 3 jobs (2 pretrains + the evaluator's) under a real pseudo-terminal:
    a bar with an ETA is drawn, and the third job's start line comes after a job finished."""
    out = tmp_path / "run"
    cmd = (f"{sys.executable} -m perm.cli pretrain {configs_dir() / 'quick.yaml'} out={out} workers=2 "
           "pretrain.steps=20 evaluator.pretrain_steps=20")
    env = dict(os.environ, COLUMNS="120")
    res = subprocess.run(["script", "-qefc", cmd, "/dev/null"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]
    text = res.stdout.replace("\r", "\n")
    assert re.search(r"3 jobs.*\d/3 \[.*<", text), text[-2000:]  # tqdm: done/total [elapsed<remaining
    events = [(m.group(1), m.group(2)) for m in re.finditer(r"\[perm\] (\S+)\s+(start|done)\b", text)]
    starts = [i for i, (_, what) in enumerate(events) if what == "start"]
    first_done = next(i for i, (_, what) in enumerate(events) if what == "done" and events[i][0] != "testbed")
    job_starts = [i for i in starts if events[i][0] != "testbed"]
    assert len(job_starts) == 3 and job_starts[2] > first_done, events
