"""`perm report`: report/index.html, the figures and the Markdown tables (perm.report.write_report) from
analysis/, with the RMs' records, example picks and the learnability checks of perm.report_inputs — or, for a
user's tensor, its own models table only. Manifest name `report`. Returns the path of index.html."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig, dump_config
from perm.stages._context import Context
from perm.store import atomic_path, hash_obj

NAME = "report"
NEEDS = ("analyze",)
WRITES = {"report": (layout.REPORT,)}
SUMMARY = f"Write {layout.REPORT}/{layout.REPORT_INDEX}, the figures and table1.md."
TAKES_TENSOR = True  # --rewards/--models: a user's reward tensor instead of this run's (run(ctx, R, M))


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    """Every config field enters the report's key: the page prints the resolved config."""
    return {"report": hash_obj({"analysis": upstream["analyze"], "config": cfg})}


def run(ctx: Context, rewards: Path | None = None, models: Path | None = None) -> Path:
    from perm.report import load_analysis, write_report
    from perm.report_inputs import examples, learnability, records_from_models_table, rm_records

    analysis_dir = ctx.need("analyze", rewards, models)

    def report() -> None:
        results = load_analysis(analysis_dir)
        if rewards is None:
            records = rm_records(ctx.root)
            extras = {"examples": examples(ctx.root), "learnability": learnability(ctx.root, records),
                      "config_yaml": dump_config(ctx.cfg)}
        else:  # a user's tensor: its own models table, no examples or checks from this run's files
            records, extras = records_from_models_table(models), {}
        with atomic_path(ctx.root / layout.REPORT) as tmp:
            write_report(results, tmp, rm_records=records, **extras)

    ctx.run_one("report", keys(ctx.cfg, ctx.upstream())["report"], report, [layout.REPORT], announce=False)
    return ctx.root / layout.REPORT / layout.REPORT_INDEX
