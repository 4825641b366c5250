"""`perm report`: report/index.html, the figures and the Markdown tables (perm.report.write_report) from
analysis/, with the RMs' records, example picks and the learnability checks of perm.report_inputs — or, for a
user's tensor, its own models table only. Manifest name `report`. Returns the path of index.html."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig, dump_config
from perm.stages._context import Context
from perm.stages._plan import Job, planned_keys
from perm.store import atomic_path, hash_obj

NAME = "report"
NEEDS = ("analyze",)
WRITES = {"report": (layout.REPORT,)}
SUMMARY = f"Write {layout.REPORT}/{layout.REPORT_INDEX}, the figures and table1.md."
TAKES_TENSOR = True  # --rewards/--models: a user's reward tensor instead of this run's (run(ctx, R, M))


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """One job. Every config field enters the report's key: the page prints the resolved config."""
    key = hash_obj({"analysis": upstream["analyze"], "config": cfg})
    return [Job("report", key, job_report, {"config": cfg, "models": None}, (layout.REPORT,), announce=False)]


keys = planned_keys(plan)


def run(ctx: Context, rewards: Path | None = None, models: Path | None = None) -> Path:
    ctx.need("analyze", rewards, models)
    external = {} if rewards is None else {"models": str(models)}
    ctx.run_planned(lambda cfg, up: [job.with_args(**external) for job in plan(cfg, up)])
    return ctx.root / layout.REPORT / layout.REPORT_INDEX


def job_report(run_dir: str, *, config: RunConfig, models: str | None) -> None:
    """The report of run_dir's analysis/ into report/: with the RMs' records, example picks, the learnability
    checks and the config (`config`) of this run, or for a user's tensor (`models`, its models table) that
    table alone."""
    from perm.report import load_analysis, write_report
    from perm.report_inputs import examples, learnability, records_from_models_table, rm_records

    root = Path(run_dir)
    results = load_analysis(root / layout.ANALYSIS)
    if models is None:
        records = rm_records(root)
        extras = {"examples": examples(root), "learnability": learnability(root, records),
                  "config_yaml": dump_config(config)}
    else:  # a user's tensor: its own models table, no examples or checks from this run's files
        records, extras = records_from_models_table(models), {}
    with atomic_path(root / layout.REPORT) as tmp:
        write_report(results, tmp, rm_records=records, **extras)
