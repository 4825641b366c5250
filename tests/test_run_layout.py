"""Every path of a run directory is named once, in perm.run_layout: no other module of src/perm spells one in
a string literal (docstrings and comments may), read from the source with ``ast``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from perm import run_layout as layout

SRC = Path(__file__).resolve().parents[1] / "src" / "perm"


def _names() -> tuple[set[str], set[str], set[str]]:
    """From the layout's own values: file names and hidden folders (flagged in any literal), the first
    segment of nested paths with its slash (``rm/``, ``data/``: flagged in any literal), and bare folder names
    (flagged as a path component: the right operand of ``/``)."""
    values = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)]
    values += list(layout.DATA_FILES.values())
    files = {Path(v).name for v in values if "{" not in Path(v).name and "." in Path(v).name}
    prefixes = {v.split("/")[0] + "/" for v in values if "/" in v}
    bare = {v for v in values if "/" not in v and "." not in v}
    return files, prefixes, bare


def _pattern() -> re.Pattern:
    files, prefixes, _ = _names()
    alt = "|".join(map(re.escape, sorted(files, key=len, reverse=True)))
    pre = "|".join(map(re.escape, sorted(prefixes, key=len, reverse=True)))
    return re.compile(rf"(?<![\w.])({alt})(?!\w)|(?<![\w/.-])({pre})")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string statements: module, class and function docstrings, attribute docstrings."""
    return {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}


def stray_literals(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, literal) of every run-directory path spelled in `source` outside docstrings and comments."""
    tree = ast.parse(source, filename=filename)
    docs, pattern = _docstrings(tree), _pattern()
    bare = _names()[2]
    components = {id(n.right) for n in ast.walk(tree)
                  if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            if pattern.search(n.value) or (id(n) in components and n.value in bare):
                out.append((n.lineno, n.value))
    return sorted(out)


def test_the_scan_finds_what_it_should():
    src = '''
"""A docstring may name samples.parquet and rm/<id>/."""
def f(root, mid):
    """So may this one: data/eval_prompts.parquet."""
    a = root / "samples.parquet"  # a comment may name rewards.parquet
    b = f"rm/{mid}"
    c = root / "analysis"
    d = root / "figures"
    e = "role: evaluator"
    g = root / "data" / "corpus.parquet"
    return a, b, c, d, e, g
'''
    assert stray_literals(src) == [(5, "samples.parquet"), (6, "rm/"), (7, "analysis"),
                                   (10, "corpus.parquet"), (10, "data")]


def test_no_run_directory_path_is_spelled_outside_the_layout():
    strays = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "run_layout.py":
            continue
        strays += [f"{path.relative_to(SRC.parent)}:{line}: {text!r}"
                   for line, text in stray_literals(path.read_text(), str(path))]
    assert not strays, "name these in perm.run_layout:\n" + "\n".join(strays)


def test_patterns_fill_in_and_match():
    assert layout.rm_dir("seed0-ft1") == "rm/seed0-ft1"
    assert layout.match(layout.RM, "rm/seed0-ft1") == {"rm_id": "seed0-ft1"}
    assert layout.match(layout.RM, "rm/a/b") is None and layout.match(layout.RM, "evaluator/rm") is None
    assert layout.match(layout.SCORES, layout.scores_file("evaluator")) == {"model_id": "evaluator"}
    assert layout.match(layout.SAMPLES, "samples.parquet") == {}
    assert layout.shown(layout.PRETRAIN) == "pretrain/<pretrain_id>"
    assert layout.rm_record(layout.EVALUATOR_RM) == "evaluator/rm/rm.json"
    assert layout.checkpoint_state(layout.pretrain_dir("seed0")) == ".checkpoints/pretrain/seed0"
