"""The run directory: atomic writes, the manifest, and stage skip-and-resume.

A stage is identified by a name (``pretrain/seed0``, ``rm/seed0-ft1``, ``score``...). It is complete when
the manifest records it as ``done`` with the same *input key* (a hash of its config slice and its input
files' hashes) and every output it recorded still exists with the recorded hash. Anything else reruns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------- atomic I/O


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` (file or directory) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_parquet(path: str | Path, table: Any) -> None:
    """Write a pyarrow Table or pandas DataFrame (index dropped) atomically, deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_column(path: str | Path, *cols: str) -> list[list]:
    """Columns of a Parquet file as Python lists, in the order asked."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=list(cols))
    return [t.column(c).to_pylist() for c in cols]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------------------------------------------ hashing


def hash_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's relative file names and contents (sorted)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(hash_file(p).encode())
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable hash of a JSON-able object (config slices, seeds)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global generators (call once, before anything is built)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - libraries still draw from the legacy global
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from named parts, e.g. derive_seed('rm', 'head', pretrain_id, ft_seed)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


# --------------------------------------------------------------------------------------------- run store


class RunStore:
    """A run directory and its manifest.json.

    Manifest layout: ``{"stages": {name: {"status": "done"|"running", "key": str, "outputs": {relpath:
    sha256}, "seeds": {...}, "wall_s": float, "finished": iso time, "info": {...}}}, "hardware": {device, cpu,
    precision, ...}}`` (:meth:`record_run`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # paths
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, m: dict) -> None:
        atomic_write_json(self.manifest_path, m)

    def stage(self, name: str) -> dict | None:
        return self.manifest()["stages"].get(name)

    def is_complete(self, name: str, key: str) -> bool:
        """True when `name` finished with input key `key` and its outputs are intact."""
        rec = self.stage(name)
        if not rec or rec.get("status") != "done" or rec.get("key") != key:
            return False
        for rel, digest in rec.get("outputs", {}).items():
            p = self.root / rel
            if not p.exists() or hash_path(p) != digest:
                return False
        return True

    def output_hash(self, name: str) -> str:
        """One hash over a finished stage's outputs: what downstream stages put in their input key."""
        rec = self.stage(name)
        if not rec or rec.get("status") != "done":
            raise KeyError(f"stage {name} is not complete")
        return hash_obj(rec["outputs"])

    def record_run(self, hardware: dict) -> None:
        """Record where this invocation runs (``hardware``: device, CPU, resolved precision) in the
        manifest; earlier invocations' entries are kept under ``hardware_history`` when it changes."""
        m = self.manifest()
        prev = m.get("hardware")
        if prev is not None and prev != hardware:
            m.setdefault("hardware_history", []).append(prev)
        m["hardware"] = hardware
        self._write_manifest(m)

    def mark_running(self, name: str, key: str) -> None:
        m = self.manifest()
        m["stages"][name] = {"status": "running", "key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write_manifest(m)

    def mark_done(
        self,
        name: str,
        key: str,
        outputs: list[str | Path],
        *,
        seeds: dict | None = None,
        wall_s: float | None = None,
        info: dict | None = None,
    ) -> None:
        outs = {}
        for o in outputs:
            p = Path(o)
            rel = str(p.relative_to(self.root)) if p.is_absolute() else str(p)
            outs[rel] = hash_path(self.root / rel)
        m = self.manifest()
        m["stages"][name] = {
            "status": "done",
            "key": key,
            "outputs": outs,
            "seeds": seeds or {},
            "wall_s": None if wall_s is None else round(wall_s, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "info": info or {},
        }
        self._write_manifest(m)

    @contextlib.contextmanager
    def run_stage(self, name: str, key: str, *, seeds: dict | None = None) -> Iterator[dict]:
        """Record a stage around a block: the block fills ``ctx['outputs']`` (and optionally ``info``)."""
        self.mark_running(name, key)
        ctx: dict = {"outputs": [], "info": {}}
        t0 = time.perf_counter()
        yield ctx
        self.mark_done(name, key, ctx["outputs"], seeds=seeds, wall_s=time.perf_counter() - t0, info=ctx["info"])
