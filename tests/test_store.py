"""Atomic writes, manifest skip/resume."""

import os

import pytest

from perm.store import RunStore, atomic_path, atomic_write_json, atomic_write_text, derive_seed, hash_path


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]  # no temp debris


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_stage_skip_and_resume(tmp_path):
    store = RunStore(tmp_path)
    assert not store.is_complete("train", "k1")
    with store.run_stage("train", "k1", seeds={"init": 1}) as ctx:
        atomic_write_json(store.path("train", "out.json"), {"x": 1})
        ctx["outputs"].append("train/out.json")
    assert store.is_complete("train", "k1")
    assert store.stage("train")["seeds"] == {"init": 1}
    assert store.stage("train")["wall_s"] >= 0
    # different inputs -> not complete
    assert not store.is_complete("train", "k2")
    # output changed behind our back -> not complete
    store.path("train", "out.json").write_text("tampered")
    assert not store.is_complete("train", "k1")


def test_killed_stage_is_not_complete(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.run_stage("score", "k") as ctx:
            ctx["outputs"].append("x")
            raise KeyboardInterrupt
    assert store.stage("score")["status"] == "running"
    assert not store.is_complete("score", "k")


def test_hash_path_directory_sensitive_to_names_and_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    h1 = hash_path(tmp_path / "d")
    (tmp_path / "d" / "a").write_text("2")
    assert hash_path(tmp_path / "d") != h1


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed("rm", "head", "seed0", 1) == derive_seed("rm", "head", "seed0", 1)
    assert derive_seed("rm", "head", "seed0", 1) != derive_seed("rm", "data", "seed0", 1)
    assert 0 <= derive_seed("x") < 2**63


def test_trim_heap_returns_freed_pages_where_there_is_glibc():
    """perm.store.trim_heap: after many differently sized buffers are freed, the resident memory falls (or,
    without glibc, it says it did nothing)."""
    import platform

    from perm.store import trim_heap

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert trim_heap() in (True, False)
        return
    big, pins = [], []
    for _ in range(3000):  # 180 MB of heap chunks, each pinned in place by a small one after it
        big.append(bytearray(60_000))
        pins.append(bytearray(1000))  # > 512 bytes: from malloc, not Python's small-object arenas
    del big  # freed, but not at the heap's top: resident until trimmed
    before = rss_kb()
    assert trim_heap() is True
    assert rss_kb() < before - 100_000, (before, rss_kb())
    assert len(pins) == 3000
