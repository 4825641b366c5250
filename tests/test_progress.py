"""Progress a person can read in a log: a line with rate and ETA at a steady interval off a terminal (a bar
on one), JSON events, a worker's progress printed by the driver, and a plan whose totals are the steps the
trainers take."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perm.config import config_from_overrides, configs_dir, load_config
from perm.executors import LocalExecutor, PoolExecutor
from perm.progress import Progress, StageProgress, Tick, fmt_duration, job_bar, progress_line, reporting
from perm.stages import MODULES
from perm.stages._plan import Work, format_plan, format_work, optimizer_steps


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    """A fake monotonic clock: `now` seconds, moved by the test."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_bar_on_a_terminal_lines_elsewhere_nothing_when_quiet():
    tty = _Terminal()
    bar = Progress("normal", tty).bar("pretrain/seed0", 10)
    bar(5, 10, loss=1.25)
    bar.close()
    assert "pretrain/seed0" in tty.getvalue() and "5/10" in tty.getvalue() and "<" in tty.getvalue()  # ETA
    clock = _Clock()
    plain = io.StringIO()
    bar = Progress("normal", plain, every=30, clock=clock).bar("pretrain/seed0", 10)
    clock.now = 29.0
    bar(5, 10)
    assert plain.getvalue() == ""  # not before the first interval
    clock.now = 30.0
    bar(6, 10)
    assert len(_lines(plain)) == 1 and "6/10 steps" in plain.getvalue()
    quiet = _Terminal()
    bar = Progress("quiet", quiet, every=1, clock=clock).bar("x", 3)
    clock.now += 10
    bar(1, 3)
    assert quiet.getvalue() == ""


def test_off_a_terminal_a_line_every_interval_with_rate_and_eta():
    clock = _Clock(100.0)
    log = io.StringIO()
    bar = Progress("normal", log, every=30, clock=clock).bar("rm/seed0-ft0", 1, scale=(64, "pairs"))
    for t in range(1, 100):  # one step a second, from t = 101
        clock.now = 100.0 + t
        bar(t, 200, loss=0.5 + 1 / t)
    bar.close()
    # a line at the first update 30 s after the bar was made, then every 30 s: t = 30, 60, 90
    assert [re.search(r" (\d+)/200 ", line).group(1) for line in _lines(log)] == ["30", "60", "90"]
    assert _lines(log)[0] == ("[perm] rm/seed0-ft0           progress 30/200 steps (15%)  1.00 steps/s  64.0 pairs/s"
                              "  elapsed 0:30  eta 2:50  loss 0.5333")
    assert "90/200 steps (45%)  1.00 steps/s  64.0 pairs/s  elapsed 1:30  eta 1:50" in _lines(log)[2]


def test_the_rate_is_measured_from_the_first_update_not_from_the_bar():
    """Loading (or a resumed run's earlier steps) before the first update is not progress."""
    clock = _Clock()
    log = io.StringIO()
    bar = Progress("normal", log, every=30, clock=clock).bar("pretrain/seed0", 1000)
    clock.now = 20.0
    bar(500, 1000)  # resumed at step 500, after 20 s of loading
    clock.now = 40.0
    bar(540, 1000)
    assert _lines(log) == ["[perm] pretrain/seed0         progress 540/1,000 steps (54%)  2.00 steps/s  elapsed 0:40"
                           "  eta 3:50"]


def test_progress_line_before_a_rate_and_durations():
    tick = Tick(done=1, total=3, elapsed_s=5.0, rate=None, unit="posts")
    assert progress_line("policy-prefs", tick).endswith("progress 1/3 posts (33%)  elapsed 0:05  eta ?")
    assert tick.eta_s is None and tick.fields()["eta_s"] is None
    assert fmt_duration(59.6) == "1:00" and fmt_duration(3725) == "1:02:05" and fmt_duration(-1) == "0:00"
    with pytest.raises(ValueError, match="interval"):
        Progress("normal", every=0)


def test_json_mode_progress_events():
    clock = _Clock()
    log = io.StringIO()
    bar = Progress("json", log, every=10, clock=clock).bar("sample", 40, unit="prompts", scale=(72, "samples"))
    clock.now = 2.0
    bar(8, 40)
    clock.now = 12.0
    bar(16, 40)
    (event,) = _events(log)
    assert {k: v for k, v in event.items() if k != "time"} == {
        "stage": "sample", "status": "progress", "done": 16, "total": 40, "unit": "prompts", "elapsed_s": 12.0,
        "rate": 0.8, "eta_s": 30.0, "samples_per_s": 57.6}


def test_a_stage_bar_sums_its_jobs_planned_totals():
    clock = _Clock()
    log = io.StringIO()
    stage = StageProgress(Progress("normal", log, every=10, clock=clock), "train-rm", [100, 50], unit="steps",
                          scale=(64, "pairs"))
    clock.now = 1.0
    stage.update(0, 1, 100)
    clock.now = 11.0
    stage.update(0, 21, 100)  # 20 steps in 10 s: 2 steps/s, 129 of 150 left
    stage.job_done(0)  # counted at its total
    clock.now = 21.0
    stage.update(1, 10, 50)
    stage.close()
    assert _lines(log) == [
        "[perm] train-rm (2 jobs)      progress 21/150 steps (14%)  2.00 steps/s  128 pairs/s  elapsed 0:11"
        "  eta 1:04",
        "[perm] train-rm (2 jobs)      progress 110/150 steps (73%)  5.45 steps/s  349 pairs/s  elapsed 0:21"
        "  eta 0:07"]
    one = io.StringIO()
    single = StageProgress(Progress("normal", one, every=1, clock=clock), "sft", [9])
    clock.now += 5
    single.update(0, 5, 9)
    assert one.getvalue() == ""  # one job: its own bar is the stage's
    unknown = io.StringIO()
    by_jobs = StageProgress(Progress("normal", unknown, every=1, clock=clock), "train-rm", [None, None])
    clock.now += 5
    by_jobs.job_done(0)
    clock.now += 5
    by_jobs.job_done(1)
    assert "progress 2/2 jobs (100%)" in unknown.getvalue()


def test_format_work_and_plan():
    grid = tuple((f"rm/seed{i}-ft0", 1782) for i in range(9))
    work = Work("train-rm", (("evaluator/rm", 2673), *grid), "steps", (64, "pairs"))
    assert format_work(work) == ("10 jobs: evaluator/rm 2,673 + 9 x 1,782 = 18,711 steps x 64 pairs "
                                 "(1,197,504 pairs)")
    assert format_work(Work("sample", (("sample", 200),), "prompts", (72, "samples"), bound="why")) == (
        "1 job: sample 200 prompts x 72 samples (14,400 samples), at most (why)")
    assert format_work(Work("train-rm", (("rm/a", None),), unknown="once imported")) == "1 job (steps known once imported)"
    assert format_work(Work("pretrain", note="loads 5 backbone checkpoints")) == "loads 5 backbone checkpoints"
    assert work.only(["rm/seed1-ft0", "evaluator/rm"]).jobs == (("rm/seed1-ft0", 1782), ("evaluator/rm", 2673))
    assert work.planned(["rm/seed1-ft0", "rm/other"]) == [1782, None]
    assert work.fields() == {"jobs": dict(work.jobs), "unit": "steps", "total": 18711, "scale": [64, "pairs"]}
    lines = format_plan([work, Work("pretrain", note="loads 5 backbone checkpoints")], every=30)
    assert lines[1] == "  train-rm  " + format_work(work) and lines[2] == "  pretrain  loads 5 backbone checkpoints"
    assert "every 30 s" in lines[-1] and format_plan([], every=30) == []


class _Upstream(dict):
    """Every upstream output hash a key asks for."""

    def __missing__(self, name: str) -> str:
        return f"hash-of-{name}"


@pytest.mark.parametrize("config, overrides", [
    *((path.name, []) for path in sorted(configs_dir().glob("*.yaml"))),
    ("quick.yaml", ["reward.pairs=mix", "reward.layout=full", "evaluator.extra_posts=50"])])
def test_planned_jobs_are_the_manifest_names(tmp_path, config, overrides):
    """Every shipped config plans its work before its run directory exists, and each job a stage plans is one
    of its manifest entries (the stage bar finds every job's total)."""
    cfg = load_config(configs_dir() / config, [f"out={tmp_path}", "precision=fp32", *overrides])
    for m in MODULES:
        work = m.work(cfg, tmp_path) if hasattr(m, "work") else None
        if work is not None:
            assert work.stage == m.NAME
            assert {name for name, _ in work.jobs} <= set(m.keys(cfg, _Upstream())), m.NAME
            assert format_work(work)


def test_the_plan_lists_what_the_stage_needs_and_prints_before_it_starts(tmp_path, monkeypatch):
    from perm.pipeline import Pipeline

    cfg = load_config(configs_dir() / "quick.yaml", [f"out={tmp_path / 'run'}", "device=cpu", "precision=fp32"])
    pipe = Pipeline(cfg, Progress("quiet"))
    assert [w.stage for w in pipe.plan("train-rm")] == ["pretrain", "train-rm"]  # testbed pairs: no SFT
    assert [w.stage for w in pipe.plan()] == ["pretrain", "sft", "train-rm", "sample", "score"]
    policy = load_config(configs_dir() / "quick.yaml", [f"out={tmp_path / 'run2'}", "device=cpu",
                                                         "precision=fp32", "reward.pairs=policy"])
    assert [w.stage for w in Pipeline(policy, Progress("quiet")).plan("train-rm")] == [
        "pretrain", "sft", "policy-prefs", "train-rm"]
    with pytest.raises(ValueError, match="unknown stage"):
        pipe.run("nope")
    for mode in ("normal", "json"):
        log = io.StringIO()
        pipe = Pipeline(cfg, Progress(mode, log, every=15))
        seen = []
        monkeypatch.setattr(pipe.ctx, "need", lambda name, seen=seen, log=log: seen.append((name, log.getvalue())) or {})
        pipe.run("pretrain")
        ((name, before),) = seen
        assert name == "pretrain"
        if mode == "normal":
            assert ("[perm]   pretrain  3 jobs: 3 x 30 = 90 steps x 8 sequences (720 sequences)"
                    in before.splitlines())
            assert "every 15 s" in before.splitlines()[-1]
        else:
            (plan,) = [e for e in map(json.loads, before.splitlines()) if e.get("status") == "plan"]
            assert plan["stage"] == "pretrain" and plan["total"] == 90 and len(plan["jobs"]) == 3


def _write(path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _pairs(n: int, seed: int) -> dict:
    from conftest import toy_pairs

    prompts, chosen, rejected = toy_pairs(n, seed)
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def test_planned_steps_are_the_steps_the_trainers_take(tmp_path, tokenizer, tiny_backbone_dir, one_thread):
    """The plan (the files' rows, the caps, the epochs) against the RM and SFT jobs run on those files: each
    job's progress ends at its planned total, one report per optimizer step."""
    from perm.stages import sft, train_rm
    from perm.stages._grid import eval_pair_files, evaluator_pair_files, pair_files

    run = tmp_path / "run"
    tokenizer.save_pretrained(run / "tokenizer")
    _write(run / "policy_prefs.parquet", **_pairs(23, 0))
    _write(run / "data" / "prefs_train.parquet", **_pairs(14, 1))
    _write(run / "evaluator_prefs.parquet", **_pairs(9, 2))
    for rel in eval_pair_files(config_from_overrides(["reward.pairs=mix"])):
        _write(run / rel, **_pairs(6, 3))
    prompts, chosen, _ = _pairs(25, 4).values()
    _write(run / "data" / "sft_train.parquet", prompt=prompts, completion=chosen)
    # fractional epochs whose products round half to even (12.5 -> 12, 7.5 -> 8), a cap on the grid's pairs
    cfg = config_from_overrides([f"out={run}", "reward.pairs=mix", "evaluator.extra_posts=9", "reward.batch_size=8",
                                 "reward.epochs=1.5", "reward.max_train_pairs=30", "evaluator.epochs=2.5",
                                 "evaluator.train_pairs=38", "sft.epochs=1.25", "sft.batch_size=4",
                                 "reward.eval_every=1000"])
    rm_work, sft_work = train_rm.work(cfg, run), sft.work(cfg, run)
    planned = dict(rm_work.jobs) | dict(sft_work.jobs)
    assert planned["rm/seed0-ft0"] == optimizer_steps(30, 1.5, 8) == 6 and not rm_work.bound
    assert planned["evaluator/rm"] == optimizer_steps(38, 2.5, 8) == 12
    assert planned["policy"] == optimizer_steps(24, 1.25, 4) == 8  # 25 posts, the first held out

    clock = itertools.count()  # one second a call: every update is reported
    log = io.StringIO()
    env = dict(run_dir=str(run), eval_files=eval_pair_files(cfg), device="cpu", threads=1, precision="fp32")
    with reporting(Progress("json", log, every=0.5, clock=lambda: float(next(clock)))):
        train_rm.job_reward_model(out_rel="rm/seed0-ft0", backbone=str(tiny_backbone_dir), pretrain_id="seed0",
                                  finetune_seed=0, reward=cfg.reward, n_pairs=cfg.reward.max_train_pairs,
                                  pair_files=pair_files(cfg), **env)
        train_rm.job_reward_model(out_rel="evaluator/rm", backbone=str(tiny_backbone_dir), pretrain_id="ev",
                                  finetune_seed=9, reward=train_rm.evaluator_recipe(cfg),
                                  n_pairs=cfg.evaluator.train_pairs, pair_files=evaluator_pair_files(cfg), **env)
        sft.job_sft(str(run), "policy", init=str(tiny_backbone_dir), backbone=cfg.pretrain.backbone, sft=cfg.sft,
                    max_length=cfg.reward.max_length, device="cpu", threads=1)
    events = _events(log)
    for name in ("rm/seed0-ft0", "evaluator/rm", "policy"):
        mine = [(e["done"], e["total"]) for e in events if e["stage"] == name]
        assert mine == [(k, planned[name]) for k in range(1, planned[name] + 1)], name


def _counting_job(run_dir: str, out_rel: str, steps: int) -> dict:
    """A pool job: a bar of `steps` steps, a little wall time between them, its output file."""
    from pathlib import Path

    bar = job_bar(out_rel, steps, unit="steps", scale=(2, "pairs"))
    for k in range(1, steps + 1):
        time.sleep(0.02)
        bar(k, steps)
    (Path(run_dir) / out_rel).write_text("done")
    return {"steps": steps}


@pytest.mark.parametrize("executor", ["local", "pool"])
def test_jobs_progress_reaches_the_run_log_wherever_they_run(tmp_path, executor):
    """Through Context.run_jobs: the plan of the jobs left, each job's progress under its name (from a pool
    worker over the executor's queue), the stage's progress over both jobs, in JSON events."""
    from perm.stages._context import Context
    from perm.store import RunStore

    cfg = config_from_overrides([f"out={tmp_path}", "workers=2", "precision=fp32"])
    log = io.StringIO()
    store = RunStore(tmp_path)
    clock = itertools.count()  # the driver's bars report every update; a worker's, every 1 ms of wall time
    ctx = Context(cfg, Progress("json", log, every=0.001, clock=lambda: float(next(clock))), store,
                  PoolExecutor(2) if executor == "pool" else LocalExecutor(), {})
    todo = [(f"job{i}", {"run_dir": str(tmp_path), "out_rel": f"job{i}", "steps": 5}) for i in range(2)]
    work = Work("demo", (("job0", 5), ("job1", 5), ("job2", 7)), "steps", (2, "pairs"))
    ctx.run_jobs(_counting_job, todo, {"job0": "k0", "job1": "k1"}, {"job0": {}, "job1": {}}, work=work)
    events = _events(log)
    (plan,) = [e for e in events if e["status"] == "jobs"]
    assert plan["stage"] == "demo" and plan["jobs"] == {"job0": 5, "job1": 5} and plan["total"] == 10
    for name in ("job0", "job1"):
        ticks = [e for e in events if e["stage"] == name and e["status"] == "progress"]
        assert ticks and all(e["total"] == 5 and "pairs_per_s" in e for e in ticks[1:]), events
        done = next(i for i, e in enumerate(events) if e["stage"] == name and e["status"] == "done")
        assert events.index(ticks[-1]) < done
    stage = [e for e in events if e["stage"] == "demo (2 jobs)"]
    assert stage and all(e["total"] == 10 for e in stage) and stage[-1]["done"] == 10
    assert store.is_complete("job0", "k0") and store.is_complete("job1", "k1")


class _FakeRay:
    """The driver side of Ray running each task in this process when it is waited for."""

    def __init__(self):
        self.calls, self.results = [], {}

    def remote(self, **opts):
        def wrap(fn):
            ray = self

            class Remote:
                @staticmethod
                def remote(*args):
                    ray.calls.append((fn, args))
                    return len(ray.calls) - 1

            return Remote

        return wrap

    def wait(self, pending, num_returns=1, timeout=None):
        fn, args = self.calls[pending[0]]
        self.results[pending[0]] = fn(*args)
        return pending[:1], pending[1:]

    def get(self, ref):
        return self.results[ref]


def test_a_ray_tasks_progress_reaches_the_driver_before_its_result(monkeypatch):
    import queue

    from perm.executors import RayExecutor

    ex = RayExecutor.__new__(RayExecutor)
    ex.ray, ex.opts = _FakeRay(), {}
    monkeypatch.setattr(ex, "_progress_queue", lambda: (queue.Queue(), queue.Empty))
    seen = []
    jobs = [{"run_dir": "", "out_rel": f"job{i}", "steps": 3} for i in range(2)]
    for i, _ in ex.map_as_completed(_ray_job, jobs, on_progress=lambda i, tick: seen.append((i, tick.done)),
                                    progress_every=0.001):
        seen.append((i, "result"))
    assert seen == [(0, 1), (0, 2), (0, 3), (0, "result"), (1, 1), (1, 2), (1, 3), (1, "result")]


def _ray_job(run_dir: str, out_rel: str, steps: int) -> dict:
    bar = job_bar(out_rel, steps)
    for k in range(1, steps + 1):
        time.sleep(0.002)
        bar(k, steps)
    return {"steps": steps}


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
    # the stage's bar over its 3 jobs' 60 steps, tqdm: done/total [elapsed<remaining
    assert re.search(r"pretrain \(3 jobs\).*\d+/60 \[.*<", text), text[-2000:]
    events = [(m.group(1), m.group(2)) for m in re.finditer(r"\[perm\] (\S+)\s+(start|done)\b", text)]
    starts = [i for i, (_, what) in enumerate(events) if what == "start"]
    first_done = next(i for i, (_, what) in enumerate(events) if what == "done" and events[i][0] != "testbed")
    job_starts = [i for i in starts if events[i][0] != "testbed"]
    assert len(job_starts) == 3 and job_starts[2] > first_done, events
