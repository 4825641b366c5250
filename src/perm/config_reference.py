"""The config reference (``docs/config.md``) generated from the field docstrings of :mod:`perm.config`.

Each field of :class:`perm.config.RunConfig` and of its sections is listed with its default and the first
sentence-or-so of its docstring (the string literal after the field, as the config module writes them), so
the reference cannot drift from the code: ``python -m perm.config_reference > docs/config.md`` regenerates it
and ``tests/test_docs.py`` checks that the committed file is what it prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re

from perm import config as config_module
from perm.config import RunConfig

MAX_DOC = 400  # characters of a field's docstring kept in the table (cut at a sentence end when possible)


def field_docs(cls) -> dict[str, str]:
    """``{field name: docstring}`` of a dataclass, from the string literal after each annotated field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                out[node.target.id] = " ".join(nxt.value.value.split())
    return out


def _short(doc: str) -> str:
    if len(doc) <= MAX_DOC:
        return doc
    cut = doc[:MAX_DOC]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return (cut[: end + 1] if end > MAX_DOC // 2 else cut.rstrip()) + " …"


def _default(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return re.sub(r"\|", r"\\|", text)


def rows() -> list[tuple[str, str, str]]:
    """``(dotted key, default, doc)`` of every config field, top-level fields first, then each section."""
    defaults = RunConfig()
    top_docs = field_docs(RunConfig)
    out, sections = [], []
    for f in dataclasses.fields(RunConfig):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            out.append((f.name, _default(value), top_docs.get(f.name, "")))
    for name, section in sections:
        docs = field_docs(type(section))
        for g in dataclasses.fields(section):
            out.append((f"{name}.{g.name}", _default(getattr(section, g.name)), docs.get(g.name, "")))
    return out


def markdown() -> str:
    """``docs/config.md``: one table of every field (key, default, meaning)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the field docstrings of `src/perm/config.py` by `python -m perm.config_reference`",
        ("(`tests/test_docs.py` checks it is current). "
         "A run's config is `configs/tiny.yaml` (= these defaults) or"),
        "your YAML, then `key=value` overrides on the command line, e.g. `perm run reward.layout=full`. Each",
        "field's docstring says which stages it reruns.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{key}` | {_cell(default)} | {_cell(_short(doc))} |" for key, default, doc in rows()]
    return "\n".join(lines) + "\n"


def missing_docs() -> list[str]:
    """Config fields without a docstring."""
    return [key for key, _, doc in rows() if not doc]


if __name__ == "__main__":
    assert config_module  # the module whose source is read
    print(markdown(), end="")
