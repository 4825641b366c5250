"""The stage graph. Each stage is a module named after its CLI command that declares what it is:

    NAME          its name: `perm <NAME>` runs it (and what it needs), a `Context.need` argument
    NEEDS         the stages it reads, as results (`ctx.need`) or output hashes (`ctx.upstream()`): Context
                  hands it no other (perm.stages._context.UndeclaredNeedError); `perm <NAME>` plans and runs
                  these first
    WRITES        {manifest name: outputs} (perm.run_layout paths; ``{field}`` patterns for one job per grid
                  member): Context records no other for it (UndeclaredOutputError)
    SUMMARY       one line: the help of `perm <NAME>`, its row of the README's CLI table (:func:`cli_table`)
    TAKES_TENSOR  whether `perm <NAME>` takes `--rewards R --models M`: a user's reward tensor, run(ctx, R, M)

and what it does: ``plan(cfg, upstream) -> [Job, ...]`` (pure: the config and upstream identities only), each
job (perm.stages._plan.Job) carrying its manifest name, key, job function (`job_*`, beside it) with its
arguments, outputs and seeds; ``keys`` (the plan's keys), ``run(ctx)`` (asks for what it needs, then
Context.run_planned runs the plan's jobs not complete for their keys, and returns the stage's result) and,
for stages with long jobs, ``work(cfg, root)`` (their planned totals). Stages meet through Context and the
shared helpers (_context, _grid, _plan, _checkpoints), never by importing each other. The stage table below
(:data:`STAGES`), the CLI's stage commands (perm.cli) and the README's CLI table derive from the
declarations; :func:`describe` prints the graph (``python -m perm.stages``).
"""

from __future__ import annotations

from perm import run_layout as layout
from perm.stages import (
    analyze,
    policy_prefs,
    pretrain,
    report,
    sample,
    score,
    sft,
    testbed,
    train_members,
    train_rm,
)
from perm.stages._plan import stage_writing

MODULES = (testbed, pretrain, sft, policy_prefs, train_rm, train_members, sample, score, analyze, report)
"""Every stage, each after the stages it needs (the order `perm run` and the plan list them in)."""
STAGES = {m.NAME: m for m in MODULES}


def _check(modules) -> None:
    """The declarations are consistent: names unique, each stage after what it needs, no manifest name
    declared by two stages."""
    seen: set[str] = set()
    owner: dict[str, str] = {}
    for m in modules:
        if m.NAME in seen:
            raise ValueError(f"stage {m.NAME!r} declared twice")
        late = [n for n in m.NEEDS if n not in seen]
        if late:
            raise ValueError(f"stage {m.NAME!r} needs {late}, which do not come before it in "
                             "perm.stages.MODULES")
        for name in m.WRITES:
            if name in owner:
                raise ValueError(f"manifest name {name!r} declared by stages {owner[name]!r} and {m.NAME!r}")
            owner[name] = m.NAME
        seen.add(m.NAME)


_check(MODULES)


def stage_of(manifest_name: str):
    """The stage module that writes `manifest_name` (a name or a grid member's, e.g. ``rm/seed0-ft1``), or
    None where no stage declares it."""
    return stage_writing(MODULES, manifest_name)


def describe() -> str:
    """The stage graph as a table: each stage, what it needs, and its manifest names -> outputs."""
    rows = [("stage", "needs", "manifest names -> outputs")]
    for m in MODULES:
        writes = [f"{layout.shown(n)} -> {', '.join(map(layout.shown, outs))}"
                  for n, outs in m.WRITES.items()]
        rows.append((m.NAME, ", ".join(m.NEEDS) or "-", writes[0]))
        rows += [("", "", w) for w in writes[1:]]
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def cli_command(m) -> str:
    """How the README writes stage `m`'s command."""
    return f"`perm {m.NAME}" + (" [--rewards R.parquet --models M.parquet]" if m.TAKES_TENSOR else "") + "`"


def cli_table() -> list[str]:
    """The README's CLI table rows of the stage commands (``| `perm sft` | summary |``), in stage order."""
    return [f"| {cli_command(m)} | {m.SUMMARY.replace('|', chr(92) + '|')} |" for m in MODULES]
