"""What `train-rm` hands its jobs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from perm.config import config_from_overrides
from perm.stages import train_rm


@pytest.mark.parametrize("trust", [False, True])
def test_the_evaluator_job_gets_trust_remote_code_as_the_grid_jobs_do(tmp_path, trust):
    cfg = config_from_overrides([f"out={tmp_path}", f"pretrain.trust_remote_code={str(trust).lower()}",
                                 "evaluator.rm_checkpoint=null"])
    ctx = SimpleNamespace(cfg=cfg, root=tmp_path, resolve_checkpoint=lambda spec: f"resolved:{spec}")
    kw = train_rm._evaluator_job(ctx, {"run_dir": str(tmp_path)})
    assert kw["trust_remote_code"] is trust and kw["role"] == "evaluator"
    assert kw["backbone"] == f"resolved:{cfg.evaluator.checkpoint}"
