"""A pretrain killed mid-training (SIGKILL, as the OOM killer would) resumes from its last checkpoint to the
weights of an uninterrupted run, and the checkpoint is gone once the backbone is saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from perm.config import configs_dir
from perm.store import hash_path

pytestmark = pytest.mark.slow


def _cmd(out, *extra):
    return [sys.executable, "-m", "perm.cli", "pretrain", str(configs_dir() / "quick.yaml"), f"out={out}",
            "threads=1", "pretrain.seeds=[0]", "evaluator.enabled=false", "pretrain.steps=60",
            "pretrain.checkpoint_every=10", "--quiet", *extra]


def test_killed_pretrain_resumes_to_identical_weights(tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_cmd(whole), check=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(run), start_new_session=True)
    state = run / ".checkpoints" / "pretrain" / "seed0" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(state.read_text())["step"]
    assert 10 <= step < 60
    subprocess.run(_cmd(run), check=True)
    info = json.loads((run / "pretrain" / "seed0" / "pretrain.json").read_text())
    assert info["resumed_at_step"] >= step
    assert hash_path(run / "pretrain" / "seed0" / "model.safetensors") == hash_path(
        whole / "pretrain" / "seed0" / "model.safetensors")
    assert not (run / ".checkpoints" / "pretrain" / "seed0").exists()
