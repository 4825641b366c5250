"""Turn a checkpoint whose weights exist only as pickled ``pytorch_model.bin`` into a safetensors folder.

PolyPythias keep their checkpoints on git branches (``step143000``) that hold only ``pytorch_model.bin`` (the
hub's conversion bot converts ``main`` alone), and perm loads weights from safetensors only. ``perm convert
CHECKPOINT OUT`` (:func:`convert_checkpoint`) reads such a checkpoint -- a local folder, or a hub id at a
revision, downloaded with ``huggingface_hub.snapshot_download`` -- and writes OUT with:

- the weights as ``model.safetensors`` (or one ``model-0000k-of-0000n.safetensors`` per input shard and
  ``model.safetensors.index.json`` for a sharded ``pytorch_model-0000k-of-0000n.bin`` checkpoint), every
  tensor in the dtype it is stored in (fp16 stays fp16 on disk; perm's loaders bring it up in fp32);
- ``config.json``, ``generation_config.json`` and the tokenizer files, copied unchanged (and the model's
  ``*.py`` files, only with ``trust_remote_code``);
- ``convert.json``: the source, the revision asked for, the commit it resolved to (hub snapshots), the
  sha256 of every input ``.bin``, the dtype(s) of the tensors, the files written and whether tokenizer
  files were among them (a branch without them needs its tokenizer from elsewhere, e.g. ``main``).

Safety: a pickle is read only through ``torch.load(path, map_location="cpu", weights_only=True)``, which
unpickles tensors and plain containers and refuses any other object (no code runs); the result must then be
a flat dict of ``str -> torch.Tensor``, or the file is refused (:class:`perm.models.ModelLoadError` naming
it). Tensors that share storage (tied embeddings, views of one buffer), which safetensors refuses, are
written as separate copies. OUT appears whole or not at all (:func:`perm.store.atomic_path`).

:func:`ensure_safetensors` is the same step for a run (``pretrain.convert_bin: true``): a no-op for a
checkpoint that has safetensors weights, otherwise a conversion into a folder of the run.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

import torch

from perm.models import ModelLoadError, split_revision
from perm.store import atomic_path, hash_file

BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
RECORD = "convert.json"
COPIED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "*.model",
    "chat_template.json",
    "chat_template.jinja",
)
"""Files copied unchanged from the source (glob patterns, top level only)."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _is_local(checkpoint: str | Path) -> bool:
    return isinstance(checkpoint, Path) or Path(str(checkpoint)).expanduser().exists()


def _has_safetensors(files: list[str]) -> bool:
    return any(f.endswith(".safetensors") and "/" not in f for f in files)


def _bin_files(folder: Path) -> list[str]:
    """The input .bin files of `folder` in load order: the shards of its index, or the single file."""
    index = folder / BIN_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map is not an object of tensor name -> file name")
        except (ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{index}: not a checkpoint index ({type(e).__name__}: {e})") from None
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if "/" in shard or "\\" in shard or not shard.endswith(".bin"):
                raise ModelLoadError(f"{index}: field 'weight_map': shard {shard!r} "
                                     "is not a .bin file in the folder")
            if not (folder / shard).is_file():
                raise ModelLoadError(f"{index}: shard {shard} is missing from {folder}")
        return shards
    if (folder / BIN).is_file():
        return [BIN]
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise ModelLoadError(
        f"{folder}: no {BIN} or {BIN_INDEX} to convert"
        + (f" (found {', '.join(found)})" if found else " (empty or missing folder)")
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, unpickled only with ``weights_only=True`` and checked to be a flat dict of
    ``str -> torch.Tensor`` (dense, on the CPU); anything else is a ModelLoadError naming `path`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a refused global, RuntimeError/EOFError for a damaged file
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's message starts with advice to load the file unsafely; keep the line that names the problem
        reason = next((line for line in lines
                       if "Unsupported global" in line or "Unsupported operand" in line),
                      lines[0] if lines else "").split(" Please use")[0]
        raise ModelLoadError(
            f"{path}: refused: not a plain tensor state dict that torch.load(weights_only=True) can read "
            f"({type(e).__name__}: {reason})"
        ) from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: refused: expected a dict of tensor name -> tensor, got "
                             f"{type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelLoadError(f"{path}: refused: key {key!r} is a {type(key).__name__}, "
                                 "expected a tensor name")
        if not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise ModelLoadError(
                f"{path}: refused: entry '{key}' is a {kind}, not a tensor (expected a flat state dict of "
                "tensors; nested or extra objects are not converted)"
            )
        if value.layout != torch.strided:
            raise ModelLoadError(f"{path}: refused: entry '{key}' is a {value.layout} tensor, "
                                 "expected a dense one")
    if not obj:
        raise ModelLoadError(f"{path}: refused: an empty state dict")
    return obj


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr()) if storage.nbytes() else None


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors, each with storage of its own and contiguous (what safetensors accepts): tensors
    that share a storage (tied weights, views) are copied; values and dtypes are unchanged."""
    owners: dict[tuple[str, int], int] = {}
    for t in tensors.values():
        key = _storage_key(t)
        if key is not None:
            owners[key] = owners.get(key, 0) + 1
    out = {}
    for name, t in tensors.items():
        key = _storage_key(t)
        shared = key is not None and owners[key] > 1
        out[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _convert_folder(src: Path, out: Path, *, trust_remote_code: bool) -> dict:
    """Write `src`'s .bin weights as safetensors into `out` (an existing empty folder) and copy its config
    and tokenizer files; returns the parts of convert.json that describe the files."""
    from safetensors.torch import save_file

    if not (src / "config.json").is_file():
        raise ModelLoadError(f"{src}: no config.json (a checkpoint folder needs one beside its weights)")
    shards = _bin_files(src)
    inputs, dtypes, weight_map, total = {}, {}, {}, 0
    names = [SAFETENSORS] if len(shards) == 1 else [
        f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)
    ]
    expected = None
    if (src / BIN_INDEX).is_file():
        expected = json.loads((src / BIN_INDEX).read_text())["weight_map"]
    seen: set[str] = set()
    for shard, name in zip(shards, names, strict=True):
        path = src / shard
        inputs[shard] = hash_file(path)
        tensors = read_state_dict(path)
        for key in tensors:
            if expected is not None and expected.get(key) != shard:
                raise ModelLoadError(
                    f"{src / BIN_INDEX}: field 'weight_map': tensor '{key}' is in {shard}, but the index "
                    f"says {expected.get(key)}"
                )
            if key in seen:
                raise ModelLoadError(f"{path}: tensor '{key}' is also in an earlier shard")
            seen.add(key)
            weight_map[key] = name
        for t in tensors.values():
            dtypes[_dtype_name(t.dtype)] = dtypes.get(_dtype_name(t.dtype), 0) + t.numel()
            total += t.numel() * t.element_size()
        save_file(_unshared(tensors), str(out / name), metadata={"format": "pt"})
        del tensors
    if expected is not None and set(expected) != seen:
        missing = sorted(set(expected) - seen)[:5]
        raise ModelLoadError(f"{src / BIN_INDEX}: tensors {missing} are listed but in no shard")
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    patterns = COPIED + (("*.py",) if trust_remote_code else ())
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and any(fnmatch(f.name, p) for p in patterns):
            shutil.copyfile(f, out / f.name)
            copied.append(f.name)
    return {
        "tokenizer": any(name.startswith("tokenizer") or name in ("vocab.json", "vocab.txt")
                         for name in copied),
        "inputs": inputs,
        "dtype": next(iter(dtypes)) if len(dtypes) == 1 else sorted(dtypes),
        "outputs": names + ([SAFETENSORS_INDEX] if len(names) > 1 else []) + copied,
    }


def _snapshot(repo_id: str, revision: str | None, *, trust_remote_code: bool) -> Path:
    """Download the .bin weights, config and tokenizer files of `repo_id` at `revision` (the hub cache)."""
    import huggingface_hub

    patterns = [BIN, BIN_INDEX, "pytorch_model-*.bin", *COPIED] + (["*.py"] if trust_remote_code else [])
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo or revision, gated: all about this checkpoint
        at = f"@{revision}" if revision else ""
        raise ModelLoadError(f"{repo_id}{at}: cannot download from the Hugging Face Hub "
                             f"({type(e).__name__}: {e})") from None


def convert_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Convert `checkpoint` (a local folder, or a hub id, ``id@revision`` or `revision`) with only
    ``pytorch_model.bin`` weights into a safetensors folder `out` (see the module docstring); returns `out`.

    `out` is replaced whole if it holds an earlier conversion (a ``convert.json``); any other existing
    `out` is refused. `trust_remote_code` copies the model's ``*.py`` files too and checks that the config
    loads with them; no code is ever run without it."""
    out = Path(out)
    if out.exists() and not (out / RECORD).is_file():
        raise ModelLoadError(f"{out}: exists and is not an earlier conversion; "
                             "remove it or choose another OUT")
    local = _is_local(checkpoint)
    if local:
        if revision is not None:
            raise ModelLoadError(f"{checkpoint}: a local folder has no revisions (got --revision {revision})")
        src, source, commit = (Path(checkpoint).expanduser(), str(Path(checkpoint).expanduser().resolve()),
                               None)
        if not src.is_dir():
            raise ModelLoadError(f"{src}: not a checkpoint folder")
    else:
        source, revision = split_revision(str(checkpoint), revision)
        src = _snapshot(source, revision, trust_remote_code=trust_remote_code)
        commit = src.name if _COMMIT.match(src.name) else None  # the cache's snapshots/<commit> folder
    if out.resolve() == src.resolve():
        raise ModelLoadError(f"{out}: is the checkpoint itself; choose another OUT")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        files = _convert_folder(src, tmp, trust_remote_code=trust_remote_code)
        if trust_remote_code:
            from transformers import AutoConfig

            try:
                AutoConfig.from_pretrained(str(tmp), trust_remote_code=trust_remote_code)
            except Exception as e:
                raise ModelLoadError(f"{src}: the converted config does not load "
                                     f"({type(e).__name__}: {e})") from None
        record = {"source": source, "revision": revision, "commit": commit, "format": "safetensors", **files}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def conversion_dir(checkpoint: str, dest_dir: Path, revision: str | None = None) -> Path:
    """Where :func:`ensure_safetensors` converts `checkpoint` under `dest_dir`: ``<org>--<name>--<revision>``
    for a hub id (``main`` when none is given), ``local--<name>--<hash of its absolute path>``
    for a folder."""
    if _is_local(checkpoint):
        path = Path(checkpoint).expanduser().resolve()
        return Path(dest_dir) / f"local--{path.name}--{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    repo_id, revision = split_revision(checkpoint, revision)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{repo_id.replace('/', '--')}--{revision or 'main'}")
    return Path(dest_dir) / safe


def ensure_safetensors(
    checkpoint: str, dest_dir: Path, revision: str | None = None, *, trust_remote_code: bool = False
) -> str:
    """The checkpoint to load: `checkpoint` itself when it has safetensors weights (a local folder with
    ``*.safetensors``, or a hub id whose file list at `revision` has them: no download), otherwise a
    conversion of its ``pytorch_model.bin`` into :func:`conversion_dir` under `dest_dir` (reused when that
    folder already holds a conversion of the same source and revision). A hub checkpoint with neither is a
    ModelLoadError listing what it has.

    Returns a local path as a string, or `checkpoint` unchanged (a hub id keeps its ``@revision``). With a
    branch name as `revision`, a moved branch is not noticed here: pass the resolved commit sha to convert
    it again."""
    if _is_local(checkpoint):
        src = Path(checkpoint).expanduser()
        if revision is not None:
            raise ModelLoadError(f"{checkpoint}: a local folder has no revisions (got revision {revision!r})")
        if src.is_dir() and any(src.glob("*.safetensors")):
            return str(checkpoint)
        source, wanted = str(src.resolve()), None
    else:
        import huggingface_hub

        source, wanted = split_revision(checkpoint, revision)
        try:
            files = huggingface_hub.list_repo_files(source, revision=wanted)
        except Exception as e:
            at = f"@{wanted}" if wanted else ""
            raise ModelLoadError(f"{source}{at}: cannot list its files on the Hugging Face Hub "
                                 f"({type(e).__name__}: {e})") from None
        if _has_safetensors(files):
            return checkpoint
        if BIN not in files and BIN_INDEX not in files:
            at = f"@{wanted}" if wanted else ""
            raise ModelLoadError(f"{source}{at}: no safetensors and no {BIN} weights "
                                 f"(has {sorted(files)[:20]})")
    out = conversion_dir(checkpoint, dest_dir, revision)
    record = out / RECORD
    if record.is_file():
        try:
            done = json.loads(record.read_text())
        except ValueError:
            done = {}
        if done.get("source") == source and done.get("revision") == wanted:
            return str(out)
    return str(convert_checkpoint(checkpoint, out, revision=revision, trust_remote_code=trust_remote_code))


__all__ = ["conversion_dir", "convert_checkpoint", "ensure_safetensors", "read_state_dict"]
