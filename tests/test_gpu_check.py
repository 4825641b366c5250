"""benchmarks/gpu_check.py, the GPU check of the real-scale preset, runs its every part at toy shapes on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_at_toy_shapes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    res = gpu_check.main(["--device", "cpu", "--small", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["small"] is True
    assert res["exactness"]["cache_vs_full"] < 1e-5 and res["exactness"]["packed_grad_max_diff"] < 1e-5
    assert res["sampling"] == {"same_across_batch_sizes": True, "same_under_a_memory_budget": True}
    assert [r["micro_batch_size"] for r in res["rm_step_grid"]] == [None, 2]
    assert all(r["steps"] == 3 and r["s_per_step"] > 0 for r in res["rm_step_grid"] + res["rm_step_evaluator"])
