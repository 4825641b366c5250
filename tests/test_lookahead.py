"""Lookahead (perm.stages._context.Context.ahead): while a stage's pool leaves a worker idle, a later stage's
pool job whose inputs are final runs there, is recorded as its own stage records it, and that stage then
finds it complete; a job whose input a running stage may still rewrite never runs early."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from perm.config import load_config
from perm.executors import PoolExecutor
from perm.progress import Progress
from perm.stages._context import Context
from perm.stages._plan import Job, Work
from perm.store import RunStore, hash_obj

ROOT = Path(__file__).resolve().parents[1]


def _write(run_dir: str, out_rel: str, sleep: float = 0.0, read: str | None = None) -> dict:
    """A job: waits `sleep` s, then writes its pid, start and end times (and the file `read`'s text)."""
    t0 = time.time()
    time.sleep(sleep)
    seen = (Path(run_dir) / read).read_text() if read else None
    (Path(run_dir) / out_rel).write_text(json.dumps({"pid": os.getpid(), "t0": t0, "t1": time.time(),
                                                    "read": seen}))
    return {}


def _stages():
    def plan_train(cfg, upstream):
        # one long and one short job: the short one's worker is then idle for most of the long one
        return [Job(f"train/{m}", hash_obj({"m": m}), _write, {"out_rel": f"train-{m}.json", "sleep": s},
                    (f"train-{m}.json",), how="pool") for m, s in (("a", 0.1), ("b", 2.5))]

    def plan_use(cfg, upstream):
        jobs = []
        for m in ("a", "b"):
            try:
                key = hash_obj({"input": upstream[f"train/{m}"]})
            except KeyError:  # not trained (final) yet
                continue
            jobs.append(Job(f"use/{m}", key, _write, {"out_rel": f"use-{m}.json", "read": f"train-{m}.json"},
                            (f"use-{m}.json",), how="pool"))
        return jobs

    def run_of(name, plan, needs):
        def run(ctx):
            for n in needs:
                ctx.need(n)
            ctx.run_planned(plan, lambda: Work(name, ()))
            return name
        return run

    train = SimpleNamespace(NAME="train", NEEDS=(), WRITES={"train/{m}": ("train-{m}.json",)}, plan=plan_train)
    train.run = run_of("train", plan_train, ())
    use = SimpleNamespace(NAME="use", NEEDS=("train",), WRITES={"use/{m}": ("use-{m}.json",)}, plan=plan_use)
    use.run = run_of("use", plan_use, ("train",))
    return {"train": train, "use": use}


def _context(tmp_path, ahead: bool, log=None, stages=None) -> Context:
    cfg = dataclasses.replace(load_config(ROOT / "configs" / "quick.yaml"), out=str(tmp_path / "run"),
                              precision="fp32", workers=2)
    progress = Progress(mode="json", stream=log) if log is not None else Progress(mode="quiet")
    ctx = Context(cfg, progress, RunStore(cfg.out), PoolExecutor(2), stages or _stages())
    if ahead:
        ctx.ahead = ("train", "use")
    return ctx


def _read(ctx, rel):
    return json.loads((ctx.root / rel).read_text())


def test_a_later_stage_job_runs_in_the_idle_worker_once_its_input_is_final(tmp_path):
    import io

    log = io.StringIO()
    ctx = _context(tmp_path, ahead=True, log=log)
    assert ctx.need("use") == "use"
    skips = {e["stage"]: e["reason"] for e in map(json.loads, log.getvalue().splitlines())
             if e.get("status") == "skip"}
    assert skips.get("use/a") == "ran earlier in this run, in an idle worker"
    a, b = _read(ctx, "train-a.json"), _read(ctx, "train-b.json")
    use_a, use_b = _read(ctx, "use-a.json"), _read(ctx, "use-b.json")
    # use/a ran while train/b still trained (in the worker train/a left), after train/a was recorded done
    assert use_a["t0"] >= a["t1"] and use_a["t1"] < b["t1"]
    # use/b waited for train/b: never from a train-b.json that was still to be written
    assert use_b["t0"] >= b["t1"] and use_b["read"] == (ctx.root / "train-b.json").read_text()
    m = ctx.store.manifest()["stages"]
    assert all(m[n]["status"] == "done" for n in ("train/a", "train/b", "use/a", "use/b"))
    # the later stage planned the same key for the job run early, so it found it complete
    assert ctx.store.is_complete("use/a", _stages()["use"].plan(None, ctx.upstream())[0].key)


def test_without_lookahead_the_later_stage_starts_after_the_earlier_one(tmp_path):
    ctx = _context(tmp_path, ahead=False)
    ctx.need("use")
    assert _read(ctx, "use-a.json")["t0"] >= _read(ctx, "train-b.json")["t1"]


def test_a_stale_entry_of_a_stage_still_to_run_is_not_final(tmp_path):
    # an earlier run left train/b done; this run's train stage has not run it again yet (another key), so
    # use/b must not be planned from the old entry
    ctx = _context(tmp_path, ahead=True)
    ctx.ahead = ("use",)
    ctx.root.mkdir(parents=True, exist_ok=True)
    (ctx.root / "train-b.json").write_text("old")
    ctx.store.mark_done("train/b", "an older key", ["train-b.json"], wall_s=0.0)
    assert not ctx._final("train/b")
    assert ctx._ready_ahead() is None  # use/b is not offered from the old entry (nor use/a: not trained)
    ctx.need("use")
    assert _read(ctx, "use-b.json")["read"] != "old"


def _chain_stage():
    """A stage of three jobs, each keyed on the one before (`after`): x, then y reads x, then z reads y."""
    def plan(cfg, upstream):
        jobs = [Job("chain/x", hash_obj({"x": 2}), _write, {"out_rel": "x.json"}, ("x.json",), how="pool")]
        for name, prev in (("y", "x"), ("z", "y")):
            key = hash_obj({"in": upstream.get(f"chain/{prev}")})
            jobs.append(Job(f"chain/{name}", key, _write, {"out_rel": f"{name}.json", "read": f"{prev}.json"},
                            (f"{name}.json",), how="pool", after=(f"chain/{prev}",)))
        return jobs

    def run(ctx):
        ctx.run_planned(plan, lambda: Work("chain", ()))
        return "chain"

    return SimpleNamespace(NAME="chain", NEEDS=(), WRITES={"chain/{j}": ("{j}.json",)}, plan=plan, run=run)


def test_a_job_down_a_chain_of_after_from_one_to_run_is_neither_run_nor_found_complete(tmp_path):
    # a finished run whose first job's recipe changed: y and z are complete for the old x, but will change
    import io

    cfg = dataclasses.replace(load_config(ROOT / "configs" / "quick.yaml"), out=str(tmp_path / "run"),
                              precision="fp32", workers=2)
    store = RunStore(cfg.out)
    stage = _chain_stage()
    for name in ("x", "y", "z"):  # the old run, its keys as its plan made them
        (store.root / f"{name}.json").write_text(f"old {name}")
    store.mark_done("chain/x", "the old recipe", ["x.json"], wall_s=0.0)
    up = {"chain/x": store.output_hash("chain/x")}
    store.mark_done("chain/y", stage.plan(None, up)[1].key, ["y.json"], wall_s=0.0)
    up["chain/y"] = store.output_hash("chain/y")
    store.mark_done("chain/z", stage.plan(None, up)[2].key, ["z.json"], wall_s=0.0)
    log = io.StringIO()
    ctx = Context(cfg, Progress(mode="json", stream=log), store, PoolExecutor(2), {"chain": stage})
    ctx.need("chain")
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert not [e for e in events if e.get("status") == "skip"]  # nothing was taken as complete
    assert json.loads((store.root / "z.json").read_text())["read"] == (store.root / "y.json").read_text()
    assert json.loads((store.root / "y.json").read_text())["read"] == (store.root / "x.json").read_text()


def test_a_run_looks_ahead_to_the_stages_it_needs_that_have_work(tmp_path):
    from perm.pipeline import Pipeline
    from perm.stages import MODULES

    cfg = load_config(ROOT / "configs" / "quick.yaml", [f"out={tmp_path / 'run'}"])
    p = Pipeline(cfg)
    p.ctx.need = lambda *a, **k: tmp_path  # the plan and the lookahead list only
    p.run("run")
    order = [m.NAME for m in MODULES]
    assert {"pretrain", "train-rm", "sample", "score"} <= set(p.ctx.ahead)
    assert "train-members" not in p.ctx.ahead  # no ensembles: no work, nothing to take
    assert list(p.ctx.ahead) == sorted(p.ctx.ahead, key=order.index)
    p.run("sample")
    assert "sample" in p.ctx.ahead and not {"train-rm", "score"} & set(p.ctx.ahead)  # not needed by sample


def test_a_later_stage_that_cannot_be_planned_yet_is_left_to_raise_when_it_runs(tmp_path):
    import pytest

    stages = _stages()
    calls = []

    def bad_plan(cfg, upstream):
        calls.append(1)
        if "train/a" in upstream:
            raise ValueError("use: a bad config field")
        return []

    stages["use"].plan = bad_plan
    stages["use"].run = lambda ctx: (ctx.need("train"), ctx.run_planned(bad_plan, lambda: Work("use", ())))
    ctx = _context(tmp_path, ahead=True, stages=stages)
    with pytest.raises(ValueError, match="a bad config field"):
        ctx.need("use")
    assert ctx.store.is_complete("train/b", stages["train"].plan(None, {})[1].key)  # the running stage finished
    assert ctx._ahead_off


def test_only_pool_jobs_waiting_on_nothing_of_their_stage_are_offered(tmp_path):
    stages = _stages()
    plan_use = stages["use"].plan

    def plan(cfg, upstream):
        jobs = plan_use(cfg, upstream)
        return [dataclasses.replace(j, how="one") if j.name == "use/a" else
                dataclasses.replace(j, after=("use/a",)) for j in jobs]

    stages["use"].plan = plan
    ctx = _context(tmp_path, ahead=True, stages=stages)
    ctx.need("train")
    assert ctx._ready_ahead() is None  # use/a runs in its stage's process, use/b after it
