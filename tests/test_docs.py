"""The docs stay true to the code: the generated config reference is current, every image and relative link
in the README and docs/ resolves, and the README carries no dates (measurements with dates live in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perm import config_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]


def test_config_reference_is_current():
    """docs/config.md is what `python -m perm.config_reference` prints (regenerate it after changing a field)."""
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == config_reference.markdown()


def test_every_config_field_has_a_docstring():
    assert config_reference.missing_docs() == []


def _targets(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    links = re.findall(r'<img[^>]*\ssrc="([^"]+)"', text) + re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in links if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_and_relative_links_resolve(path):
    missing = [t for t in _targets(path) if not (path.parent / t.split("#")[0]).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: {missing}"


def test_readme_has_no_dates():
    dated = [f"{i}: {line}" for i, line in enumerate((ROOT / "README.md").read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\b20\d\d-\d\d(-\d\d)?\b", line)]
    assert not dated, dated


def test_every_image_under_docs_is_referenced():
    """A figure no page shows is left over from a run that moved on: it goes."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS)
    images = [p for p in (ROOT / "docs").rglob("*") if p.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg")]
    unreferenced = [str(p.relative_to(ROOT)) for p in images if p.name not in text]
    assert images and not unreferenced, unreferenced
