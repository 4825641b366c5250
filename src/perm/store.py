"""The run directory: atomic writes, the manifest, and stage skip-and-resume.

A stage is identified by a name (``pretrain/seed0``, ``rm/seed0-ft1``, ``score``...). It is complete when
the manifest records it as ``done`` with the same *input key* (a hash of its config slice and its input
files' hashes) and every output it recorded still exists with the recorded hash. Anything else reruns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from perm.run_layout import MANIFEST

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
    if dataclasses.is_dataclass(o) and not isinstance(o, type):  # a config section: its fields, as to_dict
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
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


def trim_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's malloc_trim; False where there is no glibc).
    Tensors of many sizes freed one after another (decode batches of varying lengths) leave the heap
    fragmented, and a long-lived process's resident memory then grows with each batch although it holds no
    more: measured on the default's sample stage, 1.6 GB resident after its 25 decode batches, 1.1 GB with a
    trim after each (docs/results.md)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_memory() -> None:
    """After a job: collect its garbage (models and optimizers in reference cycles), return the CUDA caching
    allocator's free blocks to the device where torch is loaded and CUDA is in use, and the C heap's free
    pages to the system (:func:`trim_heap`), so that the next job in this process starts with the memory
    the last one used."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim_heap()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim from the symbols this process has loaded, or None (musl, macOS, Windows)."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


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
        self.mark_done(name, key, ctx["outputs"], seeds=seeds, wall_s=time.perf_counter() - t0,
                       info=ctx["info"])

    def lock(self) -> RunLock:
        """The run directory's writer lock (:class:`RunLock`), not yet taken: ``with store.lock(): ...``."""
        return RunLock(self.root)


# ---------------------------------------------------------------------------------------------- run lock

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another process holds the run directory's lock; the message names the directory and its pid."""


class RunLock:
    """An exclusive lock on a run directory for the process that writes it (``with RunLock(root): ...``).

    It is an OS lock, ``flock(LOCK_EX | LOCK_NB)`` on ``<root>/.lock``: the kernel releases it when the
    holder's last descriptor of the file closes, so a run killed in any way (SIGKILL, OOM) leaves no stale
    lock and the next writer takes it at once. The file itself stays (removing a lock file while another
    process opens it races); it holds the holder's pid, host and command line, which a second writer reads
    for its :class:`RunLockedError`. The descriptor is not inherited across exec (spawned workers and
    subprocesses do not hold the lock); a forked child that outlives the holder would keep it, which
    perm's workers cannot (they are spawned and die with the driver). Not re-entrant: a second RunLock on
    the same directory fails even in the same process.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        import fcntl
        import socket

        if self._fd is not None:
            raise RuntimeError(f"{self.root}: this RunLock is already held")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.root}: the run directory is locked by another perm process ({holder}); wait for it "
                "to finish or stop it, then rerun (two writers of one run would corrupt it)") from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (info + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale holder info for a reader between our unlock and the next holder
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _command_line() -> str:
    """This process's command line as typed: ``perm testbed out=runs/x``, ``python -c ...``."""
    import shlex
    import sys

    if sys.argv and Path(sys.argv[0]).name == "perm":
        return shlex.join(["perm", *sys.argv[1:]])
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    return shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else "?"


def _lock_holder(fd: int, wait_s: float = 1.0) -> str:
    """'pid N on host H: command' from a held lock file; the holder writes it just after locking, so an
    empty file is read again for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if raw or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown: the holder has not written it yet"


def remove_temp_paths(root: str | Path) -> list[Path]:
    """Remove what interrupted atomic writes leave under `root`: :func:`atomic_path`'s temp folders
    (``.<name>.<random>.tmp``), its ``.<name>.old-<pid>`` folders (a replaced output killed between its two
    renames: the output is then missing and its stage reruns) and stage scratch folders named ``.<name>.tmp``
    (the testbed's ``.testbed.tmp``). Only safe while holding the run's :class:`RunLock` (no other writer
    can be mid-write). Returns the paths removed."""
    import re

    pattern = re.compile(r"^\..+(\.tmp|\.old-\d+)$")
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if pattern.match(e.name):
                p = Path(e.path)
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return removed
