"""How a run reads its checkpoints: every hub reference of the config pinned to a commit (perm.hub) and
recorded in the manifest, and with ``pretrain.convert_bin`` a checkpoint whose weights are only
``pytorch_model.bin`` converted into ``<run>/converted/`` (perm.convert). The stages ask through
:class:`perm.stages._context.Context`, which holds one :class:`Checkpoints` per run."""

from __future__ import annotations

from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig
from perm.progress import Progress
from perm.shipped import is_shipped, verify_for
from perm.store import RunStore


class Checkpoints:
    """The config's checkpoints as this run loads them, each resolved once."""

    def __init__(self, cfg: RunConfig, store: RunStore, log: Progress):
        self.cfg, self.store, self.log = cfg, store, log
        self._pins: dict[str, str | None] | None = None
        self._files: dict[str, list[str]] = {}  # a pinned model reference's files, where the hub listed them
        self._resolved: dict[str, str] = {}

    def pins(self) -> dict[str, str | None]:
        """Commit sha of every hub reference of the config (perm.hub.pin; None: not pinned, e.g. offline,
        with one warning line), asked once per run before the first stage that reads a checkpoint or the
        data; the pinned ones are recorded in the manifest's ``hub_refs`` (reference -> sha; a reference
        whose sha changed keeps its earlier one in ``hub_refs_history``)."""
        if self._pins is None:
            from perm.hub import config_refs, pin

            refs, self._files = config_refs(self.cfg), {}
            self._pins, warning = pin(refs, files=self._files) if refs else ({}, None)
            if warning:
                self.log.warn(warning)
            self._record_pins({r: s for r, s in self._pins.items() if s})
            self._check_weights(self._files)
        return self._pins

    def _check_weights(self, files: dict[str, list[str]]) -> None:
        """Refuse, before any training, a pinned checkpoint the run could not load (perm.hub.weights_problem:
        no weights, or .bin-only weights without `pretrain.convert_bin`); every such checkpoint is named."""
        from perm.hub import weights_problem
        from perm.models import ModelLoadError

        problems = [p for ref, names in files.items()
                    if (p := weights_problem(ref, self.fields().get(ref, "checkpoint"), names,
                                             self.cfg.pretrain.convert_bin))]
        if problems:
            raise ModelLoadError("; ".join(problems))

    def _bin_only(self, reference: str) -> bool:
        """Whether a hub reference has only .bin weights at its pinned commit (False where the hub did not
        list its files: offline, it loads as it is and the loader names what is missing)."""
        from perm.hub import bin_only

        files = self._files.get(reference)
        return files is not None and bin_only(files)

    def fields(self) -> dict[str, str]:
        """Checkpoint spec -> the config field that names it (the first, where several do)."""
        c = self.cfg
        named = [(f"pretrain.checkpoints[{i}]", s) for i, s in enumerate(c.pretrain.checkpoints)]
        named += [(f"reward.rm_checkpoints[{i}]", s.split("=", 1)[1])
                  for i, s in enumerate(c.reward.rm_checkpoints)]
        named += [("evaluator.rm_checkpoint", c.evaluator.rm_checkpoint), ("evaluator.checkpoint",
                  c.evaluator.checkpoint), ("sft.checkpoint", c.sft.checkpoint),
                  ("sft.init_from", c.sft.init_checkpoint())]
        out: dict[str, str] = {}
        for field, spec in named:
            if spec:
                out.setdefault(str(spec), field)
        return out

    def _record_pins(self, pinned: dict[str, str]) -> None:
        if not pinned:
            return
        from perm.store import atomic_write_json

        m = self.store.manifest()
        old = m.get("hub_refs", {})
        moved = [{"reference": r, "sha": old[r]} for r, sha in pinned.items() if old.get(r, sha) != sha]
        if moved:
            m.setdefault("hub_refs_history", []).extend(moved)
        if moved or old != old | pinned:
            m["hub_refs"] = old | pinned
            atomic_write_json(self.store.manifest_path, m)

    def resolve(self, spec: str) -> str:
        """What to load for the checkpoint `spec` of the config (``pretrain.checkpoints[i]``,
        ``evaluator.checkpoint``, ``sft.checkpoint``), once per run; every stage reads checkpoints
        through it. A shipped testbed backbone (``testbed:<name>``, perm.shipped) becomes its folder in the
        package once its weights match their recorded hash and it was pretrained on this run's testbed. A hub
        id pinned to a commit becomes ``org/name@<sha>``; with ``pretrain.convert_bin`` a checkpoint whose
        weights are only ``pytorch_model.bin`` becomes its safetensors conversion in ``<run>/converted/`` (a
        local path, keyed by its content). Otherwise `spec` itself."""
        if spec not in self._resolved and is_shipped(spec):  # a testbed backbone shipped in the package
            self._resolved[spec] = str(verify_for(spec, self.cfg))
        if spec not in self._resolved:
            from perm.hub import model_ref

            ref = model_ref(spec)
            path = ref.at(self.pins().get(ref.reference)) if ref else spec
            if self.cfg.pretrain.convert_bin and not ref:
                path = self._local_conversion(path)
            elif self.cfg.pretrain.convert_bin and self._bin_only(ref.reference):
                path = self._hub_conversion(path)
            self._resolved[spec] = path
        return self._resolved[spec]

    def _hub_conversion(self, spec: str) -> str:
        """ensure_safetensors for a hub id (``org/name@rev``); a conversion of the same repo and revision
        already in the run is reused without asking the hub (a pinned sha does not move; offline resumes)."""
        from perm.convert import RECORD, conversion_dir, ensure_safetensors
        from perm.models import split_revision

        repo, revision = split_revision(spec)
        out = conversion_dir(repo, self.store.root / layout.CONVERTED, revision)
        if _record_matches(out / RECORD, repo, revision):
            return str(out)
        return ensure_safetensors(repo, self.store.root / layout.CONVERTED, revision,
                                  trust_remote_code=self.cfg.pretrain.trust_remote_code)

    def _local_conversion(self, src: str) -> str:
        """ensure_safetensors for a local folder; an earlier conversion whose input .bin files have changed
        since (convert.json's sha256s) is made again, as a changed local checkpoint reruns what it feeds."""
        from perm.convert import RECORD, conversion_dir, convert_checkpoint, ensure_safetensors
        from perm.hub import bin_only

        p, trust = Path(src).expanduser(), self.cfg.pretrain.trust_remote_code
        if not p.is_dir() or not bin_only([f.name for f in p.iterdir()]):
            return src  # nothing to convert: loaded as it is (the loader names what is missing)
        out = conversion_dir(src, self.store.root / layout.CONVERTED)
        if (out / RECORD).is_file() and not _inputs_unchanged(p, out / RECORD):
            return str(convert_checkpoint(src, out, trust_remote_code=trust))
        return ensure_safetensors(src, self.store.root / layout.CONVERTED, None, trust_remote_code=trust)


def _record_matches(record: Path, source: str, revision: str | None) -> bool:
    """True when `record` (a conversion's convert.json) is of `source` at `revision`."""
    import json

    try:
        done = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return done.get("source") == source and done.get("revision") == revision


def _inputs_unchanged(src: Path, record: Path) -> bool:
    """True when every input file that `record` lists still has the sha256 recorded there."""
    import json

    from perm.store import hash_file

    try:
        inputs = json.loads(record.read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        return False
    return all((src / name).is_file() and hash_file(src / name) == digest for name, digest in inputs.items())
