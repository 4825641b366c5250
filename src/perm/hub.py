"""Hub references pinned to commits: every hub id a run uses (a checkpoint of ``pretrain.checkpoints``,
``evaluator.checkpoint`` or ``sft.checkpoint``, the dataset of ``data.prefs`` / ``data.prefs_eval``) names
a branch, a tag or nothing (``main``), and branches move (Pythia's step branches have been re-uploaded).
Before a run uses one, :func:`pin` resolves its revision to the commit it points at now
(``huggingface_hub.HfApi().model_info(repo_id, revision=...).sha``, ``dataset_info`` for datasets); the stages
are then keyed on ``hub:<id>@<sha>`` and load at that sha, so a moved branch reruns what depends on it, and
the manifest records which commit was used (``hub_refs``).

Without network (``HF_HUB_OFFLINE`` set, or the hub client raising) a reference stays unpinned: it is keyed
``hub:<id>@<branch>`` as before pinning existed and loaded by its branch name (from the local cache, when
offline), and one warning line says so. A revision that already is a commit sha is pinned as it is, without
asking the hub. Local paths are not hub references: they are keyed by their content.

This module decides what is a hub id exactly as the loaders do (:mod:`perm.data` for datasets: a missing
path with a file suffix is a mistyped file, not a hub id) and never imports torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perm.config import RunConfig, loaded_grid

COMMIT = re.compile(r"^[0-9a-f]{40}$")
"""A full git commit sha (what the hub's ``.sha`` is, and what a revision must be to count as pinned)."""


@dataclass(frozen=True)
class HubRef:
    """One hub reference of a config."""

    reference: str
    """How the manifest names it: the config's spec (``org/name@step143000``, or ``org/name`` for main); for a
    dataset the id and the revision its loader uses."""
    repo_id: str
    revision: str | None
    """Branch, tag or commit as configured; None: the repository's default branch."""
    kind: str
    """``model`` or ``dataset``."""
    field: str = ""
    """The config field a dataset reference comes from (``prefs`` or ``prefs_eval``)."""

    def key(self, sha: str | None) -> str:
        """Its identity in a stage key: ``hub:<id>@<sha>`` once pinned, else ``hub:<reference>`` (the key of
        a hub checkpoint before pinning existed)."""
        return f"hub:{self.repo_id}@{sha}" if sha else f"hub:{self.reference}"

    def at(self, sha: str | None) -> str:
        """What to load: ``<id>@<sha>`` once pinned, else the reference as configured."""
        return f"{self.repo_id}@{sha}" if sha else self.reference


def _hub_id(name: str) -> bool:
    from perm.data import _HUB_ID

    return bool(_HUB_ID.match(name))


def model_ref(spec: str | None) -> HubRef | None:
    """The hub reference of a checkpoint spec (``org/name`` or ``org/name@revision``); None for a local path
    (an existing one, or anything that is not a hub id: the loader names it)."""
    if not spec or Path(str(spec)).expanduser().exists():
        return None
    s = str(spec)
    name, revision = s.rsplit("@", 1) if "@" in s else (s, None)
    if not _hub_id(name) or revision == "":
        return None
    return HubRef(s, name, revision, "model")


def dataset_ref(spec: str | None, revision: str | None, field: str) -> HubRef | None:
    """The hub reference of a dataset source (``data.prefs`` with ``data.revision``), as perm.data decides a
    hub id; openai/summarize_from_feedback without a revision is its Parquet conversion."""
    from perm.data import _FILE_SUFFIXES, OPENAI_TLDR_ID, PARQUET_CONVERSION

    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.exists() or path.suffix.lower() in _FILE_SUFFIXES or not _hub_id(spec):
        return None
    if revision is None and spec == OPENAI_TLDR_ID:
        revision = PARQUET_CONVERSION
    return HubRef(f"{spec}@{revision}" if revision else spec, spec, revision, "dataset", field)


def model_specs(cfg: RunConfig) -> list[str]:
    """Every checkpoint spec the run loads, each once: the grid's, the evaluator's (when enabled: the trained
    RM of `evaluator.rm_checkpoint`, else the backbone it finetunes), the policy's and the backbone its SFT
    starts from (`sft.init_from` naming a checkpoint)."""
    c = cfg
    e = c.evaluator
    specs = [*c.pretrain.checkpoints, *(ckpt for _, _, ckpt in loaded_grid(c.reward)),
             (e.rm_checkpoint or e.checkpoint) if e.enabled else None,
             c.sft.checkpoint, c.sft.init_checkpoint() if not c.sft.checkpoint else None]
    return list(dict.fromkeys(s for s in specs if s))


def config_refs(cfg: RunConfig) -> list[HubRef]:
    """The hub references of `cfg` (models first, then datasets), each once."""
    refs = [model_ref(s) for s in model_specs(cfg)]
    d = cfg.data
    if d.prefs is not None:
        refs += [dataset_ref(d.prefs, d.revision, "prefs"), dataset_ref(d.prefs_eval, None, "prefs_eval")]
    out: dict[tuple[str, str], HubRef] = {}
    for r in refs:
        if r is not None:
            out.setdefault((r.kind, r.reference), r)
    return list(out.values())


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def bin_only(files: list[str]) -> bool:
    """Whether a checkpoint holding `files` has ``pytorch_model*.bin`` weights and no safetensors: what
    `pretrain.convert_bin` converts."""
    names = [f.rsplit("/", 1)[-1] for f in files]
    return (not any(n.endswith(".safetensors") for n in names)
            and any(n.endswith(".bin") and n.startswith("pytorch_model") for n in names))


def weights_problem(reference: str, field: str, files: list[str], convert_bin: bool) -> str | None:
    """What stops a run loading the checkpoint `reference` (config field `field`) whose repository holds
    `files` at its pinned commit, or None: no weight file at all, or only ``pytorch_model.bin``-style weights
    while `pretrain.convert_bin` is off (perm loads safetensors only)."""
    names = [f.rsplit("/", 1)[-1] for f in files]
    if any(n.endswith(".safetensors") for n in names):
        return None
    if bin_only(files):
        if convert_bin:
            return None
        return (f"{field}: {reference} holds only pytorch_model.bin weights at its pinned commit and perm "
                "loads safetensors only: set pretrain.convert_bin: true (a weights-only conversion into "
                f"<run>/converted/), or convert it first with `perm convert {reference} OUT`")
    found = sorted(n for n in names if n.endswith(WEIGHT_SUFFIXES))
    return (f"{field}: {reference} has no safetensors or pytorch_model.bin weights at its pinned commit"
            + (f" (found {', '.join(found)})" if found else ""))


def offline() -> bool:
    """HF_HUB_OFFLINE set (as huggingface_hub reads it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return True
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def pin(refs: list[HubRef], api_factory: Callable[[], object] | None = None,
        files: dict[str, list[str]] | None = None) -> tuple[dict[str, str | None], str | None]:
    """The commit sha of every reference (None where it cannot be pinned) and the warning line to print when
    any could not be (None when all were). ``files``: filled with each model reference's files at that commit
    where the hub's answer lists them (its ``siblings``), so the weights can be checked before any training.

    A revision that is a commit sha already is kept without a call. Otherwise ``model_info`` /
    ``dataset_info`` at the revision: an answer from the hub that refuses one reference (unknown repo or
    revision, gated) leaves that one unpinned and the loader will say what is wrong; any other failure (no
    connection) stops asking, so an offline machine does not wait once per reference."""
    shas: dict[str, str | None] = {}
    todo = []
    for r in refs:
        if r.revision and COMMIT.match(r.revision):
            shas[r.reference] = r.revision
        else:
            todo.append(r)
    if not todo:
        return shas, None
    failed: list[HubRef] = []
    reason = "HF_HUB_OFFLINE is set" if offline() else None
    if reason:
        failed = todo
    else:
        try:
            from huggingface_hub.errors import HfHubHTTPError
        except ImportError:  # pragma: no cover
            HfHubHTTPError = OSError  # noqa: N806
        api = None
        for i, r in enumerate(todo):
            try:
                if api is None:
                    import huggingface_hub

                    api = api_factory() if api_factory else huggingface_hub.HfApi()
                info = (api.model_info if r.kind == "model" else api.dataset_info)(
                    r.repo_id, revision=r.revision)
                sha = getattr(info, "sha", None)
                if not isinstance(sha, str) or not COMMIT.match(sha):
                    raise ValueError(f"the hub gave no commit sha for {r.reference} (got {sha!r})")
                shas[r.reference] = sha
                siblings = getattr(info, "siblings", None)
                if files is not None and r.kind == "model" and siblings is not None:
                    files[r.reference] = [f.rfilename for f in siblings]
            except Exception as e:
                reason = reason or _reason(e)
                if isinstance(e, HfHubHTTPError | ValueError):
                    failed.append(r)
                    continue
                failed += todo[i:]  # no connection: do not ask again for each of the others
                break
    for r in failed:
        shas[r.reference] = None
    if not failed:
        return shas, None
    names = ", ".join(r.reference for r in failed)
    one = len(failed) == 1
    warning = (f"hub: could not pin {names} to a commit ({reason}); {'it is' if one else 'they are'} keyed "
               f"and loaded by {'its' if one else 'their'} branch name, so a moved branch is not noticed")
    return shas, warning


__all__ = ["COMMIT", "HubRef", "config_refs", "dataset_ref", "model_ref", "model_specs", "offline", "pin"]
