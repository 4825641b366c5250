"""Each stage module declares what it is (NAME, NEEDS, WRITES, SUMMARY, TAKES_TENSOR), and the stage table,
the CLI's stage commands and the README's CLI rows derive from those declarations; Context keeps a stage to
them."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perm import run_layout as layout
from perm.cli import app
from perm.stages import MODULES, STAGES, _check, cli_table, describe, stage_of

LAYOUT_PATHS = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}


@pytest.mark.parametrize("m", MODULES, ids=lambda m: m.NAME)
def test_every_stage_declares_what_it_is(m):
    assert isinstance(m.NAME, str) and m.__name__ == f"perm.stages.{m.NAME.replace('-', '_')}"
    assert isinstance(m.NEEDS, tuple) and set(m.NEEDS) <= set(STAGES) - {m.NAME}
    assert m.WRITES and all(isinstance(outs, tuple) and outs for outs in m.WRITES.values())
    for outs in m.WRITES.values():
        assert set(outs) <= LAYOUT_PATHS, f"{m.NAME}: outputs not named in perm.run_layout: {outs}"
    assert m.SUMMARY.strip() == m.SUMMARY and "\n" not in m.SUMMARY and m.SUMMARY.endswith(".")
    assert isinstance(m.TAKES_TENSOR, bool)
    assert callable(m.keys) and callable(m.run)


def test_manifest_names_belong_to_their_stage():
    assert stage_of("rm/seed0-ft1").NAME == "train-rm" and stage_of("evaluator/rm").NAME == "train-rm"
    assert stage_of("score/evaluator").NAME == "score" and stage_of("score").NAME == "score"
    assert stage_of("data").NAME == "testbed" and stage_of("policy").NAME == "sft"
    assert stage_of("evaluator-prefs").NAME == "policy-prefs"
    assert stage_of("pretrain/seed3").NAME == "pretrain"
    assert stage_of("nothing/here") is None


def test_the_declarations_are_checked():
    def stage(name, needs=(), writes=None):
        return types.SimpleNamespace(NAME=name, NEEDS=needs, WRITES=writes or {name: (name,)})

    _check([stage("a"), stage("b", ("a",))])
    with pytest.raises(ValueError, match=r"stage 'b' needs \['c'\], which do not come before it"):
        _check([stage("a"), stage("b", ("c",)), stage("c")])
    with pytest.raises(ValueError, match="manifest name 'a' declared by stages 'a' and 'b'"):
        _check([stage("a"), stage("b", writes={"a": ("x",)})])


def test_every_stage_has_its_command_with_its_summary():
    runner = CliRunner()
    for m in MODULES:
        r = runner.invoke(app, [m.NAME, "--help"])
        assert r.exit_code == 0, (m.NAME, r.output)
        assert " ".join(m.SUMMARY.split()[:4]) in " ".join(r.output.split()), m.NAME
        assert ("--rewards" in r.output) == m.TAKES_TENSOR and "--progress-every" in r.output
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert commands[: len(MODULES) + 1] == ["run", *STAGES]


def test_the_readme_rows_and_the_graph_list_every_stage():
    rows = cli_table()
    assert [r.split("`")[1].split()[1] for r in rows] == list(STAGES)
    assert all(r.count(" | ") == 1 for r in rows)  # a | in a summary is escaped
    analyze = rows[list(STAGES).index("analyze")]
    assert analyze.startswith("| `perm analyze [--rewards R.parquet --models M.parquet]` |")
    text = describe()
    for m in MODULES:
        assert f"\n{m.NAME} " in text
    assert "score/<model_id> -> scores/<model_id>.parquet" in text


# ------------------------------------------------------------------------------- Context keeps to them


def _context(tmp_path, *stages):
    from perm.config import config_from_overrides
    from perm.executors import LocalExecutor
    from perm.progress import Progress
    from perm.stages._context import Context
    from perm.store import RunStore

    cfg = config_from_overrides([f"out={tmp_path}", "precision=fp32"])
    ctx = Context(cfg, Progress("quiet"), RunStore(tmp_path), LocalExecutor(), {s.NAME: s for s in stages})
    ctx._upstream = lambda: {"a": "hash-a", "b": "hash-b", "checkpoint:x": "key-x", "old-name": "hash-old"}
    return ctx


def _stage(name, needs=(), run=None, writes=None):
    return types.SimpleNamespace(NAME=name, NEEDS=needs, WRITES=writes or {name: (name,)},
                                 __name__=f"fake.{name}", run=run or (lambda ctx: name))


def test_context_hands_a_stage_only_what_it_needs(tmp_path):
    from perm.stages._context import UndeclaredNeedError

    a = _stage("a")
    b = _stage("b", ("a",), run=lambda ctx: (ctx.need("a"), ctx.upstream()))
    c = _stage("c", run=lambda ctx: ctx.need("a"))
    d = _stage("d", run=lambda ctx: ctx.upstream()["a"])
    ctx = _context(tmp_path, a, b, c, d)
    result, upstream = ctx.need("b")
    assert result == "a" and upstream == {"a": "hash-a", "b": "hash-b", "checkpoint:x": "key-x"}
    with pytest.raises(UndeclaredNeedError, match=r"stage 'c' asked for stage 'a', which it does not "
                                                  r"declare in NEEDS \(none; fake\.c\.NEEDS\)"):
        ctx.need("c")
    with pytest.raises(UndeclaredNeedError, match="stage 'd' reads 'a', an output of stage 'a', which it "
                                                  "does not declare in NEEDS"):
        ctx.need("d")
    assert ctx.need("a") == "a" and "old-name" in ctx.upstream()  # outside a stage: everything
    with ctx.as_stage("b"), pytest.raises(KeyError):  # an output not there (yet): a KeyError, as a dict's
        ctx.upstream()["not-there"]


def test_context_records_only_what_a_stage_writes(tmp_path):
    from perm.stages._context import UndeclaredOutputError

    ran = []
    g = _stage("g", run=lambda ctx: ctx.run_one("g/x", "key", lambda: ran.append(1), ["g/x"]),
               writes={"g/{part}": ("g/{part}",)})
    h = _stage("h", run=lambda ctx: ctx.run_one("h", "key", lambda: ran.append(2), ["elsewhere"]))
    i = _stage("i", run=lambda ctx: ctx.run_one("other", "key", lambda: ran.append(3), ["other"]))
    ctx = _context(tmp_path, g, h, i)
    assert ctx.need("g") is True and ran == [1]
    with pytest.raises(UndeclaredOutputError, match=r"stage 'h' records outputs \['elsewhere'\] for 'h', but "
                                                    r"declares \['h'\] \(fake\.h\.WRITES\)"):
        ctx.need("h")
    with pytest.raises(UndeclaredOutputError,
                       match="stage 'i' records 'other', which its WRITES does not declare"):
        ctx.need("i")
    assert ran == [1]  # refused before anything ran


def test_the_real_stages_are_held_to_their_needs(tmp_path):
    from perm.stages._context import UndeclaredNeedError

    ctx = _context(tmp_path, *MODULES)
    with ctx.as_stage("sample"), pytest.raises(UndeclaredNeedError,
                                               match="stage 'sample' asked for stage 'train-rm'"):
        ctx.need("train-rm")


def test_no_stage_turns_its_config_into_a_dict():
    """Jobs take the typed config sections (frozen dataclasses) and keys hash them as they are: no stage module
    calls perm.config.to_dict (a field read by name from a dict can silently never reach its loop)."""
    import perm.stages

    for path in Path(perm.stages.__file__).parent.glob("*.py"):
        assert "to_dict" not in path.read_text(encoding="utf-8"), path.name
