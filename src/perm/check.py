"""`perm check`: a preflight of a config before a long (real-scale) run, without downloading or loading
any model's weights.

It lists every model and dataset the config names (``pretrain.checkpoints``, ``evaluator.checkpoint``,
``sft.checkpoint``, ``data.prefs``, ``data.prefs_eval``; a hub id may pin a revision after ``@``) and
checks, for each:

- a **hub model** (``huggingface_hub.HfApi.model_info(id, revision=..., files_metadata=True)``): the
  revision exists, the repo has ``*.safetensors`` weights and a ``config.json`` there (a repo with only
  ``pytorch_model.bin`` is named with its fix: ``perm convert ID OUT`` or ``pretrain.convert_bin: true``);
- a **local checkpoint**: the directory exists with ``*.safetensors`` and ``config.json``;
- a **dataset**: a local file or folder exists; a hub id resolves (``HfApi.dataset_info`` at the revision
  perm will load: ``data.revision``, for openai/summarize_from_feedback its Parquet conversion);
- **one tokenizer**, by the rule the run applies (perm.tokenizer_rule): the checkpoints of the grid, the
  evaluator and the policy have the same tokenizer files (``tokenizer.json`` when there is one, else
  vocab/merges/sentencepiece files), compared by content hash (sha256 for local files and the hub's LFS
  files, the git blob id for the hub's other files; a local file's git blob id is computed too); where the
  hashes differ, both tokenizers are loaded (a hub model's tokenizer files alone fetched) and compared with
  the pad token left out, as the run compares them;
- the **disk** the run will write (see :func:`disk_estimate`) against the free space where ``out`` lives.

Without network (``HF_HUB_OFFLINE=1``, or the first hub call fails to connect) it says so, checks the
local parts only and says which hub ids were not checked. :func:`check_config` returns a
:class:`CheckResult`; the CLI prints it and exits 2 when it lists problems.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perm.config import RunConfig
from perm.estimate import Shape, estimate, n_reward_models, table
from perm.shipped import ShippedPretrainError, is_shipped, pairs_folder, verify_for

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # as perm.data decides a hub id
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "vocab.txt")
PICKLED = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
FP32_BYTES = 4  # every model comes up in fp32 master weights (perm.models.MASTER_DTYPE) and is saved so
OPENAI_TLDR_ID, PARQUET_CONVERSION = "openai/summarize_from_feedback", "refs/convert/parquet"  # as perm.data


@dataclass
class Ref:
    """One model or dataset the config names."""

    key: str  # the config key: pretrain.checkpoints[0], evaluator.checkpoint, data.prefs
    spec: str  # as written: a local path, a hub id or id@revision
    kind: str  # "model" | "dataset"


@dataclass
class Facts:
    """What the check learnt of a model: where, its weights' bytes and parameter count, its tokenizer
    files' hashes (file name -> {"sha256": ..., "git": ...}, either or both)."""

    where: str  # "local" | "hub"
    weights_bytes: int = 0
    n_params: int | None = None
    tokenizer: dict[str, dict[str, str]] = field(default_factory=dict)
    layers: int | None = None  # from a local config.json (hub models: estimated from n_params)
    hidden: int | None = None
    load_tokenizer: Callable[[], object] | None = field(default=None, repr=False, compare=False)
    """Loads its tokenizer (a hub model's tokenizer files fetched, small), for the run's rule where the files'
    hashes differ (perm.tokenizer_rule)."""


@dataclass
class CheckResult:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hub_checked: bool = True
    unchecked: list[str] = field(default_factory=list)  # hub ids not checked (no network)
    disk_bytes: int = 0

    def text(self) -> str:
        out = list(self.lines)
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("ok: no problems found" + ("" if self.hub_checked or not self.unchecked else
                                                  " in the local parts (hub ids not checked: no network)"))
        return "\n".join(out) + "\n"


def collect_refs(cfg: RunConfig) -> list[Ref]:
    """Every model and dataset the config names, in config order."""
    refs = [Ref(f"pretrain.checkpoints[{i}]", c, "model") for i, c in enumerate(cfg.pretrain.checkpoints)]
    refs += [Ref(f"reward.rm_checkpoints[{i}]", s.split("=", 1)[1], "model")
             for i, s in enumerate(cfg.reward.rm_checkpoints)]
    if cfg.evaluator.enabled and cfg.evaluator.rm_checkpoint:
        refs.append(Ref("evaluator.rm_checkpoint", cfg.evaluator.rm_checkpoint, "model"))
    elif cfg.evaluator.enabled and cfg.evaluator.checkpoint:
        refs.append(Ref("evaluator.checkpoint", cfg.evaluator.checkpoint, "model"))
    if cfg.sft.checkpoint:
        refs.append(Ref("sft.checkpoint", cfg.sft.checkpoint, "model"))
    elif cfg.sft.init_checkpoint():
        refs.append(Ref("sft.init_from", cfg.sft.init_checkpoint(), "model"))
    if cfg.data.prefs:
        refs.append(Ref("data.prefs", cfg.data.prefs, "dataset"))
    if cfg.data.prefs_eval:
        refs.append(Ref("data.prefs_eval", cfg.data.prefs_eval, "dataset"))
    return refs


def split_spec(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (org/name, rev); an existing local path whole (perm.models.split_revision's rule,
    here without importing torch)."""
    if Path(spec).expanduser().exists() or "@" not in spec:
        return spec, None
    name, rev = spec.rsplit("@", 1)
    return name, rev or None


class _Offline(Exception):
    """The hub cannot be reached."""


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                       ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod, fromlist=list(names))
        except ImportError:
            continue
        errors += [getattr(m, n) for n in names if isinstance(getattr(m, n, None), type)]
    return tuple(errors)


def _hub_offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_call(fn, *args, **kw):
    """Call the hub client; a connection failure becomes _Offline, hub errors pass through."""
    from huggingface_hub import errors as hf_errors

    try:
        return fn(*args, **kw)
    except hf_errors.HfHubHTTPError:
        raise
    except _network_errors() as e:
        raise _Offline(f"{type(e).__name__}: {e}") from None


def _hub_error(e: Exception, spec: str, rev: str | None) -> str | None:
    """A hub error as the problem to report (None: not a hub error)."""
    from huggingface_hub import errors as hf_errors

    at = rev or "main"
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return f"{spec}: revision {at!r} not found on the hub (a branch, tag or commit of the repo)"
    if isinstance(e, hf_errors.GatedRepoError):
        return f"{spec}: gated on the hub: accept its terms on its page and log in (`hf auth login`)"
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return f"{spec}: no such repository on the hub (or private: log in), and no local path of that name"
    if isinstance(e, hf_errors.HfHubHTTPError):
        return f"{spec}: the hub answered {type(e).__name__}: {e}"
    return None


# ------------------------------------------------------------------------------------------------ local


def _file_hashes(path: Path) -> dict[str, str]:
    """sha256 of the content (= a hub LFS file's sha256) and the git blob id (= a hub non-LFS blob id)."""
    data = path.read_bytes()
    git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id, not security
    return {"sha256": hashlib.sha256(data).hexdigest(), "git": git}


def safetensors_params(path: Path) -> int:
    """Parameters in a .safetensors file, from its header (8-byte length + JSON of dtypes and shapes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name != "__metadata__":
            count = 1
            for d in t["shape"]:
                count *= d
            total += count
    return total


def _converted_in_run(files: list[str], convert_bin: bool) -> bool:
    """The run converts these weights (pytorch_model*.bin only, `pretrain.convert_bin` on): perm.hub.bin_only,
    the rule the run applies at pinning."""
    from perm.hub import bin_only

    return convert_bin and bin_only(files)


def check_local_model(ref: Ref, path: Path, problems: list[str],
                      convert_bin: bool = False) -> tuple[Facts | None, str]:
    if not path.is_dir():
        problems.append(f"{ref.key}: {ref.spec}: not a directory (a checkpoint is a save_pretrained folder)")
        return None, "local: not a directory"
    weights = sorted(path.glob("*.safetensors"))
    ok = True
    if _converted_in_run([p.name for p in path.iterdir()], convert_bin):
        bins = sorted(path.glob("pytorch_model*.bin"))
        facts = Facts("local", weights_bytes=2 * sum(p.stat().st_size for p in bins),
                      tokenizer={n: _file_hashes(path / n) for n in TOKENIZER_FILES if (path / n).is_file()},
                      load_tokenizer=lambda: _load_tokenizer(path))
        return facts, (f"local: only {', '.join(p.name for p in bins)}: converted into the run "
                       "(pretrain.convert_bin)")
    if not weights:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLED)
        problems.append(f"{ref.key}: {ref.spec}: no *.safetensors weights" + (
            f", only {', '.join(pickled)} (pickled weights perm refuses to load): {_convert_fix(ref)}"
            if pickled else ""))
        ok = False
    if not (path / "config.json").is_file():
        problems.append(f"{ref.key}: {ref.spec}: no config.json")
        ok = False
    shape = {}
    if ok:
        try:
            shape = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{ref.key}: {ref.spec}: config.json unreadable: {e}")
            ok = False
        shape = shape if isinstance(shape, dict) else {}
    facts = Facts("local", weights_bytes=sum(p.stat().st_size for p in weights),
                  n_params=sum(safetensors_params(p) for p in weights) if weights else None,
                  tokenizer={n: _file_hashes(path / n) for n in TOKENIZER_FILES if (path / n).is_file()},
                  load_tokenizer=lambda: _load_tokenizer(path),
                  layers=shape.get("num_hidden_layers") or shape.get("n_layer"),
                  hidden=shape.get("hidden_size") or shape.get("n_embd"))
    line = ((f"local: {len(weights)} safetensors file(s), {_fmt_bytes(facts.weights_bytes)}"
             + (f", {_fmt_params(facts.n_params)} parameters" if facts.n_params else ""))
            if ok else "local: unusable")
    return (facts if ok else None), line


def _convert_fix(ref: Ref) -> str:
    return (f"convert them with `perm convert {ref.spec} OUT` and set {ref.key} to OUT, or set "
            "`pretrain.convert_bin: true`")  # (a .bin other than pytorch_model*.bin, or convert_bin off)


# -------------------------------------------------------------------------------------------------- hub


def check_hub_model(api, ref: Ref, name: str, rev: str | None,
                    problems: list[str], convert_bin: bool = False) -> tuple[Facts | None, str]:
    from huggingface_hub import errors as hf_errors

    try:
        info = _hub_call(api.model_info, name, revision=rev, files_metadata=True)
    except hf_errors.HfHubHTTPError as e:
        problems.append(f"{ref.key}: {_hub_error(e, ref.spec, rev)}")
        return None, "hub: not found"
    siblings = list(info.siblings or [])
    files = {s.rfilename: s for s in siblings}
    weights = [s for s in siblings if s.rfilename.endswith(".safetensors")]
    at = rev or "main"
    ok = True
    converted = _converted_in_run(list(files), convert_bin)
    if converted:
        weights = [s for n, s in files.items() if n.startswith("pytorch_model") and n.endswith(".bin")]
    elif not weights:
        pickled = sorted(n for n in files if n.endswith(PICKLED))
        if pickled:
            problems.append(f"{ref.key}: {ref.spec}: no *.safetensors weights at revision {at!r}, only "
                            f"{', '.join(pickled)} (pickled weights perm refuses to load): "
                            f"{_convert_fix(ref)}")
        else:
            problems.append(f"{ref.key}: {ref.spec}: no model weights at revision {at!r}")
        ok = False
    if "config.json" not in files:
        problems.append(f"{ref.key}: {ref.spec}: no config.json at revision {at!r}")
        ok = False
    st = getattr(info, "safetensors", None)
    facts = Facts("hub", weights_bytes=sum(s.size or 0 for s in weights),
                  n_params=getattr(st, "total", None) if st is not None else None)
    for n in TOKENIZER_FILES:
        s = files.get(n)
        if s is not None:
            lfs = getattr(s, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            facts.tokenizer[n] = {"sha256": sha} if sha else ({"git": s.blob_id} if s.blob_id else {})
    sha = getattr(info, "sha", None)
    wanted = [n for n in (*TOKENIZER_FILES, *TOKENIZER_CONFIGS) if n in files]
    facts.load_tokenizer = lambda: _hub_tokenizer(name, sha or rev, wanted)
    commit = f", commit {info.sha[:10]}" if getattr(info, "sha", None) else ""
    kind = "pytorch_model.bin file(s), converted into the run (pretrain.convert_bin)" if converted else (
        "safetensors file(s)")
    line = ((f"hub: {len(weights)} {kind}, {_fmt_bytes(facts.weights_bytes)}"
             + (f", {_fmt_params(facts.n_params)} parameters" if facts.n_params else "") + commit)
            if ok else "hub: unusable")
    return (facts if ok else None), line


def check_dataset(api, ref: Ref, cfg: RunConfig, problems: list[str], offline: list) -> str:
    """A dataset: a local file/folder exists, or a hub id resolves at the revision perm loads."""
    from huggingface_hub import errors as hf_errors

    path = Path(ref.spec).expanduser()
    if path.exists():
        return "local: " + ("file" if path.is_file() else "folder")
    if not HUB_ID.match(ref.spec) or path.suffix.lower() in (".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        problems.append(f"{ref.key}: {ref.spec}: no such file or folder")
        return "local: not found"
    rev = cfg.data.revision if ref.key == "data.prefs" else None
    if ref.spec == OPENAI_TLDR_ID and rev is None:
        rev = PARQUET_CONVERSION
    if offline:
        return "hub: not checked (no network)"
    try:
        info = _hub_call(api.dataset_info, ref.spec, revision=rev)
    except hf_errors.HfHubHTTPError as e:
        problems.append(f"{ref.key}: {_hub_error(e, ref.spec, rev)}")
        return "hub dataset: not found"
    except _Offline as e:
        offline.append(str(e))
        return "hub: not checked (no network)"
    commit = f", commit {info.sha[:10]}" if getattr(info, "sha", None) else ""
    return f"hub dataset at {rev or 'main'}: found{commit}"


# ------------------------------------------------------------------------------------------- tokenizer


def _same(a: dict[str, str], b: dict[str, str]) -> bool | None:
    """Equal by a hash both have; None when they share no kind of hash."""
    common = [k for k in ("sha256", "git") if a.get(k) and b.get(k)]
    if not common:
        return None
    return a[common[0]] == b[common[0]]


def _load_tokenizer(path: Path):
    from perm.models import load_tokenizer

    return load_tokenizer(path)


def _hub_tokenizer(repo: str, revision: str | None, names: list[str]):
    """A hub model's tokenizer from its tokenizer files alone (fetched into a temporary folder)."""
    import tempfile

    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            try:
                huggingface_hub.hf_hub_download(repo, n, revision=revision, local_dir=tmp)
            except hf_errors.EntryNotFoundError:
                if n not in TOKENIZER_CONFIGS:  # an optional config file listed but not served: left out
                    raise
        return _load_tokenizer(Path(tmp))


def _same_by_rule(f0: Facts, f: Facts) -> tuple[bool | None, str]:
    """Whether two checkpoints' tokenizers give every text the same ids by the run's rule
    (perm.tokenizer_rule: the pad token left out), loading both; None with the reason where one cannot be
    loaded."""
    from perm.models import ModelLoadError
    from perm.tokenizer_rule import check_run_tokenizers

    if f0.load_tokenizer is None or f.load_tokenizer is None:
        return None, "no tokenizer to load"
    try:
        a, b = f0.load_tokenizer(), f.load_tokenizer()
    except Exception as e:  # noqa: BLE001 - offline, a gated repo, unreadable files: said, not raised
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        check_run_tokenizers({"a": a, "b": b})
    except ModelLoadError:
        return False, ""
    return True, ""


def compare_tokenizers(models: list[tuple[Ref, Facts]], problems: list[str]) -> str:
    """One tokenizer for all `models`, by the rule the run applies (perm.tokenizer_rule): each compared with
    the first (the run's tokenizer comes from the first pretrain checkpoint), on tokenizer.json when both have
    it, else on the vocabulary files both have, by content hash; where the hashes differ or cannot be
    compared, both tokenizers are loaded (a hub model's tokenizer files fetched) and compared with the pad
    token left out, as the run does."""
    models = [(r, f) for r, f in models if f is not None]
    if len(models) < 2:
        return "tokenizer: fewer than two checkpoints to compare"
    (ref0, f0), unknown, differ, by_rule = models[0], [], [], []
    for ref, f in models[1:]:
        names = (["tokenizer.json"] if "tokenizer.json" in f0.tokenizer and "tokenizer.json" in f.tokenizer
                 else [n for n in TOKENIZER_FILES if n in f0.tokenizer and n in f.tokenizer])
        verdicts = [_same(f0.tokenizer[n], f.tokenizer[n]) for n in names]
        if names and all(v is True for v in verdicts):
            continue
        same, why = _same_by_rule(f0, f)
        if same:
            by_rule.append(ref)
        elif same is None and (not names or any(v is None for v in verdicts)):
            unknown.append((ref, why))
        else:
            bad = [n for n, v in zip(names, verdicts, strict=True) if not v]
            differ.append(ref)
            problems.append(f"tokenizer: {ref.key} ({ref.spec}) has another tokenizer than {ref0.key} "
                            f"({ref0.spec}): {', '.join(bad) or 'its tokenizer'} "
                            f"differ{'s' if len(bad) <= 1 else ''}"
                            + (f" (not loaded to compare by the run's rule: {why})" if same is None else
                               " by the run's rule too (pad token left out)")
                            + "; the grid, the evaluator and the policy must share one tokenizer")
    for ref, why in unknown:
        problems.append(f"tokenizer: cannot compare {ref.key} ({ref.spec}) with {ref0.key}: no tokenizer "
                        f"file both have with a comparable hash ({why})")
    if differ or unknown:
        return (f"tokenizer: {len(models) - len(differ) - len(unknown)} of {len(models)} checkpoints "
                f"share {ref0.key}'s")
    first = "tokenizer.json" if "tokenizer.json" in f0.tokenizer else next(iter(f0.tokenizer), "?")
    digest = next((v for v in f0.tokenizer.get(first, {}).values() if v), "")
    extra = (f"; {', '.join(r.key for r in by_rule)} by the run's rule (files differ, the same ids with the "
             "pad token left out)" if by_rule else "")
    return f"tokenizer: the {len(models)} checkpoints share one ({first} {digest[:12]}){extra}"


# ------------------------------------------------------------------------------------------------ disk


def gpt_neox_params(vocab: int, hidden: int, layers: int, intermediate: int) -> int:
    """Parameters of perm's GPT-NeoX backbone (untied input and output embeddings, biases, two layer norms
    per layer and a final one), as `perm.models.gpt_neox_config` builds it."""
    per_layer = 4 * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden) \
        + (hidden * intermediate + intermediate) + (intermediate * hidden + hidden)
    return 2 * vocab * hidden + layers * per_layer + 2 * hidden


def disk_estimate(cfg: RunConfig, facts: dict[str, Facts | None]) -> tuple[int, str, bool]:
    """Bytes the run writes into `out`, how they add up, and whether a model's size was unknown (not
    checked: the total is then a lower bound). Every saved model is fp32 (4 bytes per
    parameter, whatever dtype the hub stores): each grid RM has its backbone's parameters (hub: the repo's
    safetensors parameter count; local: counted from the safetensors headers; unknown: its weights' bytes),
    the evaluator RM its backbone's, and models trained in the run (pretrains, the evaluator's backbone,
    the SFT policy) their GPT-NeoX parameter count. Pools: samples.parquet at ~4 bytes of text per token
    plus ~48 bytes of columns a row, scores/*.parquet and rewards.parquet ~32 bytes a row per model. The
    data folder and hub downloads (the Hugging Face cache, elsewhere) are not counted."""
    def size(key: str) -> int | None:
        f = facts.get(key)
        if f is None:
            return None
        return f.n_params * FP32_BYTES if f.n_params else f.weights_bytes

    parts: list[tuple[str, int]] = []
    c = cfg.pretrain
    vocab = cfg.testbed.vocab_size + 1  # + the pad token perm adds
    own = gpt_neox_params(vocab, c.backbone.hidden_size, c.backbone.num_layers,
                          c.backbone.intermediate_size) * FP32_BYTES
    n_rm = n_reward_models(cfg)
    if cfg.reward.rm_checkpoints:
        parts.append((f"{n_rm} trained RMs' records (their weights are loaded where they are)", 0))
    elif c.checkpoints:
        per = [size(f"pretrain.checkpoints[{i}]") for i in range(len(c.checkpoints))]
        known = [s for s in per if s is not None]
        rm_each = max(known) if known else 0
        parts.append((f"{n_rm} RMs × {_fmt_bytes(rm_each)}" if known else f"{n_rm} RMs (size unknown)",
                      n_rm * rm_each))
    else:
        parts.append((f"{len(c.seeds)} pretrains × {_fmt_bytes(own)}", len(c.seeds) * own))
        parts.append((f"{n_rm} RMs × {_fmt_bytes(own)}", n_rm * own))
    e = cfg.evaluator
    if e.enabled and e.rm_checkpoint:
        parts.append(("the evaluator RM's record (its weights are loaded where they are)", 0))
    elif e.enabled:
        if e.checkpoint:
            ev = size("evaluator.checkpoint") or 0
            parts.append((f"the evaluator RM {_fmt_bytes(ev)}" if ev else "the evaluator RM (size unknown)",
                          ev))
        else:
            b = e.backbone
            ev = gpt_neox_params(vocab, b.hidden_size, b.num_layers, b.intermediate_size) * FP32_BYTES
            parts.append((f"the evaluator's backbone and RM 2 × {_fmt_bytes(ev)}", 2 * ev))
    if not cfg.sft.checkpoint:
        init = size("pretrain.checkpoints[0]") if c.checkpoints else own
        parts.append((f"the SFT policy {_fmt_bytes(init or 0)}", init or 0))
    p = cfg.sample
    prompts = cfg.data.n_eval_prompts if cfg.data.prefs else cfg.testbed.n_eval_prompts
    rows = prompts * (p.pool_size + p.n_reference)
    n_models = n_rm + int(e.enabled) + 1
    pools = rows * (4 * p.max_new_tokens + 48) + 2 * rows * n_models * 32
    parts.append((f"pools and scores {_fmt_bytes(pools)}", pools))
    total = sum(b for _, b in parts)
    return total, ", ".join(label for label, _ in parts), any("unknown" in label for label, _ in parts)


def _free_bytes(out: Path) -> tuple[int, Path] | None:
    p = out.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free, p
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------- check


def check_config(cfg: RunConfig, api=None, gpu: str | None = None) -> CheckResult:
    """Check every model and dataset of `cfg` (see the module docstring). `api`: a hub client with
    HfApi's model_info / dataset_info (default: ``huggingface_hub.HfApi()``). `gpu`: a card of
    perm.estimate.GPUS: add each stage's estimated GPU-hours and peak memory on it."""
    res = CheckResult()
    res.lines.append(f"perm check: run directory {cfg.out}")
    refs = collect_refs(cfg)
    offline: list[str] = []
    if _hub_offline_env():
        offline.append("HF_HUB_OFFLINE is set")
    if api is None and any(not Path(r.spec).expanduser().exists() and not is_shipped(r.spec) for r in refs):
        import huggingface_hub

        api = huggingface_hub.HfApi()
    facts: dict[str, Facts | None] = {}
    models: list[tuple[Ref, Facts | None]] = []
    if not refs:
        res.lines.append("models and data: none named (the testbed run trains its own)")
    else:
        res.lines.append("models and data:")
    width = max((len(r.key) for r in refs), default=0)
    for ref in refs:
        if ref.kind == "dataset":
            line = check_dataset(api, ref, cfg, res.problems, offline)
            res.lines.append(f"  {ref.key:<{width}}  {ref.spec}  {line}")
            if line.startswith("hub: not checked"):
                res.unchecked.append(ref.spec)
            continue
        path = Path(ref.spec).expanduser()
        name, rev = split_spec(ref.spec)
        f: Facts | None = None
        if is_shipped(ref.spec):
            try:
                path = verify_for(ref.spec, cfg)
                f, line = check_local_model(ref, path, res.problems, cfg.pretrain.convert_bin)
                line = "shipped (sha256 and testbed match), " + line
            except ShippedPretrainError as e:
                res.problems.append(f"{ref.key}: {e}")
                line = "shipped: unusable"
            rev = None
        elif path.exists():
            f, line = check_local_model(ref, path, res.problems, cfg.pretrain.convert_bin)
        elif not HUB_ID.match(name):
            res.problems.append(f"{ref.key}: {ref.spec}: no such local directory (and not a hub id)")
            line = "local: not found"
        elif offline:
            line = "hub: not checked (no network)"
            res.unchecked.append(ref.spec)
        else:
            try:
                f, line = check_hub_model(api, ref, name, rev, res.problems, cfg.pretrain.convert_bin)
            except _Offline as e:
                offline.append(str(e))
                line = "hub: not checked (no network)"
                res.unchecked.append(ref.spec)
        facts[ref.key] = f
        models.append((ref, f))
        shown = ref.spec if rev is None or path.exists() else f"{name}@{rev}"
        res.lines.append(f"  {ref.key:<{width}}  {shown}  {line}")
    if cfg.reward.pairs_from and cfg.reward.pairs != "testbed":
        res.lines.append(f"  reward.pairs_from  {cfg.reward.pairs_from}  "
                         f"{check_pairs_from(cfg, res.problems)}")
    if offline:
        res.hub_checked = False
        res.lines.append(f"hub: not reachable ({offline[0]}); only local paths were checked; not checked: "
                         + (", ".join(res.unchecked) or "none"))
    if len([m for m in models if m[1] is not None]) >= 2:
        res.lines.append(compare_tokenizers(models, res.problems))
    elif len(models) >= 2 and offline:
        res.lines.append("tokenizer: not compared (hub ids not checked)")
    elif not cfg.pretrain.checkpoints:
        res.lines.append("tokenizer: the run's own (the testbed's, shared by every model it trains)")
    total, how, partial = disk_estimate(cfg, facts)
    res.disk_bytes = total
    free = _free_bytes(Path(cfg.out))
    line = f"disk: {'at least' if partial else '≈'} {_fmt_bytes(total)} in {cfg.out} ({how})"
    if free is not None:
        line += f"; {_fmt_bytes(free[0])} free on {free[1]}"
        if free[0] < total:
            res.problems.append(f"disk: the run needs ≈ {_fmt_bytes(total)} in {cfg.out} but {free[1]} has "
                                f"{_fmt_bytes(free[0])} free")
    res.lines.append(line)
    if gpu is not None:
        res.lines += gpu_estimate(cfg, facts, gpu)
    return res


def model_shapes(cfg: RunConfig, facts: dict[str, Facts | None]) -> dict[str, Shape]:
    """The grid's, the evaluator's and the policy's :class:`perm.estimate.Shape` where the run trains or runs
    them: a checkpoint's parameter count (and its config's layers and width, where read), or the testbed
    architecture of what the run pretrains."""
    vocab = cfg.testbed.vocab_size + 1

    def of(key: str, backbone=None) -> Shape | None:
        f = facts.get(key)
        if f is not None and f.n_params:
            return Shape.of(f.n_params, f.layers, f.hidden)
        if backbone is not None:
            b = backbone
            return Shape.of(gpt_neox_params(vocab, b.hidden_size, b.num_layers, b.intermediate_size),
                            b.num_layers, b.hidden_size)
        return None

    c, e = cfg.pretrain, cfg.evaluator
    shapes = {"grid": of("pretrain.checkpoints[0]", None if c.checkpoints else c.backbone)}
    if e.enabled:
        shapes["evaluator"] = of("evaluator.rm_checkpoint" if e.rm_checkpoint else "evaluator.checkpoint",
                                 None if e.checkpoint or e.rm_checkpoint else e.backbone)
    shapes["policy"] = (of("sft.checkpoint") if cfg.sft.checkpoint else
                        of("sft.init_from") or shapes["grid"])
    return {k: v for k, v in shapes.items() if v is not None}


def gpu_estimate(cfg: RunConfig, facts: dict[str, Facts | None], gpu: str) -> list[str]:
    """`perm check --gpu`: perm.estimate's table for this config. The training pairs of the grid and of the
    evaluator: their pair files' rows where the run has them, else what the config draws
    (perm.stages._grid.pair_count: the policy pairs of the SFT posts, the evaluator's extra posts, the
    testbed's pairs for `testbed` and `mix`); a user's pairs not imported yet: `reward.max_train_pairs` or
    `data.max_train_pairs` where set, else unknown."""
    from perm.stages._grid import evaluator_pair_files, pair_count, pair_files

    shapes = model_shapes(cfg, facts)
    root = Path(cfg.out)
    n_pairs, _ = pair_count(cfg, root, pair_files(cfg))
    ev_pairs, _ = pair_count(cfg, root, evaluator_pair_files(cfg))
    if n_pairs is None:  # a user's pairs, not imported yet
        n_pairs = cfg.reward.max_train_pairs or cfg.data.max_train_pairs
    prompts = cfg.testbed.n_eval_prompts if cfg.data.prefs is None else cfg.data.n_eval_prompts
    workers = cfg.workers if isinstance(cfg.workers, int) else 1
    lines = table(estimate(cfg, shapes, n_pairs, prompts, gpu, evaluator_pairs=ev_pairs), gpu, workers)
    missing = [k for k in ("grid", "evaluator", "policy") if k not in shapes]
    if n_pairs is None:
        lines.append("  train-rm: not estimated (the number of training pairs is known once the data loads; "
                     "set reward.max_train_pairs for an estimate)")
    if missing:
        lines.append(f"  not estimated: {', '.join(missing)} (parameter count unknown: hub not checked)")
    return lines


def check_pairs_from(cfg: RunConfig, problems: list[str]) -> str:
    """`reward.pairs_from`: the pair files the run copies are there (the testbed kit's: with their recorded
    sha256 and the run's testbed); a problem names the file otherwise."""
    from perm.config import to_dict
    from perm.stages._grid import EVALUATOR_PAIRS, POLICY_PAIRS, extra_posts

    files = POLICY_PAIRS + ((EVALUATOR_PAIRS,) if extra_posts(cfg) else ())
    try:
        pairs_folder(cfg.reward.pairs_from, files, to_dict(cfg.testbed) if cfg.data.prefs is None else None)
    except ShippedPretrainError as e:
        problems.append(f"reward.pairs_from: {e}")
        return "unusable"
    return (("the kit's pairs (sha256 and testbed match): " if is_shipped(cfg.reward.pairs_from)
             else "local: ") + ", ".join(files))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
