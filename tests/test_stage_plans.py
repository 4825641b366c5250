"""Each stage's pure ``plan(cfg, upstream) -> [Job]``: its jobs carry their key, arguments and outputs; the
keys, and what Context.run_planned runs, derive from it."""

from __future__ import annotations

import importlib
import json
import pickle
import types
from pathlib import Path

import pytest

from perm import run_layout as layout
from perm.config import _from_dict, config_from_overrides
from perm.stages import MODULES, STAGES
from perm.stages._context import checkpoint_name
from perm.stages._plan import Checkpoint, Job, RunPath, resolve
from perm.store import hash_obj

FIXTURES = Path(__file__).parent / "fixtures" / "stage_keys"


def _recorded(variant: str):
    """A recorded run's config and upstream identities (tests/fixtures/stage_keys)."""
    from test_stage_keys import ADDED_SINCE_RECORDING, _before_the_kit

    fixture = json.loads((FIXTURES / f"{variant}.json").read_text())
    cfg = _from_dict(type(config_from_overrides([])), _before_the_kit(fixture["config"]))
    upstream = {name: hash_obj(rec["outputs"]) for name, rec in fixture["stages"].items()}
    upstream |= {checkpoint_name(p): k for p, k in fixture["checkpoint_keys"].items()}
    upstream |= {name: f"not-recorded-{name}" for name in ADDED_SINCE_RECORDING}
    return cfg, upstream


def _strings(value) -> list[str]:
    """The strings of a job's arguments, at any depth of dicts, lists and tuples."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _strings(v)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in _strings(v)]
    return []


@pytest.mark.parametrize("variant", ["default", "bf16", "checkpoints", "mix"])
def test_every_job_is_what_its_stage_declares(variant, tmp_path):
    cfg, upstream = _recorded(variant)
    cfg = cfg.__class__(**{**cfg.__dict__, "out": str(tmp_path / "never-made")})
    seen = set()
    for m in MODULES:
        jobs = m.plan(cfg, upstream)
        assert jobs == m.plan(cfg, upstream), m.NAME  # pure: the same plan twice
        assert m.keys(cfg, upstream) == {j.name: j.key for j in jobs}
        for job in jobs:
            assert isinstance(job, Job) and job.name not in seen
            seen.add(job.name)
            # its outputs are those its stage declares for that manifest name
            match = [(p, outs) for p, outs in m.WRITES.items() if layout.match(p, job.name) is not None]
            assert len(match) == 1, job.name
            fields = layout.match(match[0][0], job.name)
            assert sorted(job.outputs) == sorted(o.format(**fields) for o in match[0][1]), job.name
            # a worker can run it: a module-level function, picklable arguments, no run directory spelt out
            assert getattr(importlib.import_module(job.fn.__module__), job.fn.__name__) is job.fn
            pickle.dumps(dict(job.args))
            assert not any(str(tmp_path) in v for v in _strings(job.args)), job.name
            if job.how != "one":
                assert job.args["out_rel"] in job.outputs
            assert job.how in ("pool", "here", "one")
    assert not (tmp_path / "never-made").exists()  # planning touches no file
    assert {"sample", "score", "analyze", "report"} <= seen and ("policy" in seen) != bool(cfg.sft.checkpoint)


def test_the_default_plan_resolves_to_the_run_and_its_checkpoints(tmp_path):
    cfg, upstream = _recorded("checkpoints")
    jobs = {j.name: j for j in STAGES["train-rm"].plan(cfg, upstream)}
    rm = jobs["rm/" + cfg.pretrain.pretrain_ids()[0] + "-ft0"]
    assert rm.how == "pool" and rm.fn.__name__ == "job_reward_model" and rm.seeds
    assert rm.args["backbone"] == Checkpoint(cfg.pretrain.checkpoints[0])
    kw = resolve(dict(rm.args), tmp_path, lambda spec: f"resolved:{spec}")
    assert kw["backbone"] == f"resolved:{cfg.pretrain.checkpoints[0]}"
    cfg, upstream = _recorded("default")
    sample = STAGES["sample"].plan(cfg, upstream)[0]
    assert sample.args["policy"] == RunPath(layout.POLICY)
    assert resolve(dict(sample.args), tmp_path, str)["policy"] == str(tmp_path / layout.POLICY)
    assert resolve({"a": [RunPath("x"), (Checkpoint("c"), 1)]}, tmp_path, lambda s: s * 2) == {
        "a": [str(tmp_path / "x"), ("cc", 1)]}


@pytest.mark.parametrize("trust", [False, True])
def test_the_evaluator_job_gets_trust_remote_code_as_the_grid_jobs_do(trust):
    cfg = config_from_overrides(["precision=fp32", f"pretrain.trust_remote_code={str(trust).lower()}",
                                 "evaluator.rm_checkpoint=null",
                                 "reward.rm_checkpoints=[]"])
    upstream = _upstream_of_everything(cfg)
    jobs = {j.name: j for j in STAGES["train-rm"].plan(cfg, upstream)}
    ev = jobs[layout.EVALUATOR_RM]
    assert ev.args["trust_remote_code"] is trust and ev.args["role"] == "evaluator"
    assert ev.args["backbone"] == Checkpoint(cfg.evaluator.checkpoint)
    assert all(j.args["trust_remote_code"] is trust for j in jobs.values())
    assert list(jobs)[0] == layout.EVALUATOR_RM  # the longest job first


def _upstream_of_everything(cfg) -> dict:
    class Everything(dict):
        def __missing__(self, name):
            return f"hash-of-{name}"

    return Everything()


def _fake_module(name: str, plan, writes) -> types.ModuleType:
    m = types.ModuleType(f"fake.{name}")
    m.NAME, m.NEEDS, m.WRITES, m.plan = name, (), writes, plan
    m.run = lambda ctx: ctx.run_planned(plan)
    return m


def write_text(run_dir: str, *, out_rel: str, text: str) -> dict:
    """A job of the tests below: writes `text` to run_dir/out_rel, and its name to run_dir/log."""
    Path(run_dir, out_rel).write_text(text)
    with open(Path(run_dir, "log"), "a") as f:
        f.write(out_rel)
    return {"wrote": out_rel}


def test_run_planned_runs_in_phases_and_skips_what_is_complete(tmp_path):
    from perm.executors import LocalExecutor
    from perm.progress import Progress
    from perm.stages._context import Context
    from perm.store import RunStore

    def log() -> str:
        return (tmp_path / "log").read_text()

    texts = {"a": "A"}  # what job a writes (its key says which)

    def plan(cfg, upstream):
        jobs = [Job("p/a", f"key-{texts['a']}", write_text, {"out_rel": "a", "text": texts["a"]}, ("a",),
                    seeds={"s": 1})]
        if "p/a" in upstream:  # keyed on a's output: planned once a exists (and listed first)
            jobs.insert(0, Job("p/b", hash_obj({"a": upstream["p/a"]}), write_text,
                            {"out_rel": "b", "text": "B"}, ("b",), announce=False, after=("p/a",)))
        return jobs

    m = _fake_module("p", plan, {"p/{part}": ("{part}",)})
    cfg = config_from_overrides([f"out={tmp_path}", "precision=fp32"])
    store = RunStore(tmp_path)

    def context():
        ctx = Context(cfg, Progress("quiet"), store, LocalExecutor(), {"p": m})
        ctx._upstream = lambda: {n: store.output_hash(n) for n, rec in store.manifest()["stages"].items()
                                 if rec.get("status") == "done"}
        return ctx

    jobs = context().need("p")
    assert [j.name for j in jobs] == ["p/b", "p/a"] and log() == "ab"
    assert store.stage("p/a")["seeds"] == {"s": 1} and store.stage("p/b")["info"] == {"wrote": "b"}
    assert context().need("p") and log() == "ab"  # complete for their keys: nothing runs again
    (tmp_path / "a").write_text("changed")  # an output changed: a reruns
    context().need("p")
    assert log() == "aba"  # a wrote the same: b, keyed on its output, stands
    texts["a"] = "A2"  # a's key changes, and b's output is gone: b waits for a, then runs once on its output
    (tmp_path / "b").unlink()
    jobs = context().need("p")
    assert log() == "abaab" and (tmp_path / "a").read_text() == "A2"
    assert store.stage("p/b")["key"] == hash_obj({"a": store.output_hash("p/a")}) == jobs[0].key
