"""`perm score`: every pool and reference sample scored by every RM and the evaluator (perm.prefix.
score_prompt_groups: a prompt runs once and its candidates continue its KV cache), then the reward tensor
assembled with the gold reward: rewards.parquet and models.parquet (DESIGN step 5). A trained evaluator loaded
from `evaluator.rm_checkpoint` scores from where it is (the testbed kit's, a folder, a hub id). Also the validation of
samples.parquet, which a user may bring. Manifest names `score/<model_id>` (scores/<model_id>.parquet) and
`score`. Returns the path of rewards.parquet."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq

from perm import run_layout as layout
from perm.config import RunConfig
from perm.progress import job_bar
from perm.stages._context import Context, stage_key, torch_setup
from perm.stages._grid import eval_prompts, grid_names
from perm.stages._plan import Work, parquet_rows

NAME = "score"
NEEDS = ("train-rm", "sample")
JOB = "score/{model_id}"  # the manifest name of one model's scoring job
WRITES = {JOB: (layout.SCORES,), "score": (layout.REWARDS, layout.MODELS)}
SUMMARY = (f"Score every sample with every RM, the evaluator and the gold reward: {layout.REWARDS}, "
           f"{layout.MODELS}.")
TAKES_TENSOR = False
BATCH_SIZE = 64


def model_names(cfg: RunConfig) -> dict[str, str]:
    """model_id -> manifest name of every scoring model: the grid's RMs, then the evaluator."""
    out = {name.split("/", 1)[1]: name for name in grid_names(cfg)}
    return out | ({"evaluator": layout.EVALUATOR_RM} if cfg.evaluator.enabled else {})


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    """`score/<model_id>` per model; `score` (the assembled tensor) once every model's scores exist."""
    samples = upstream["sample"]
    out = {JOB.format(model_id=mid): stage_key(cfg, {"model": upstream[name], "samples": samples,
                                           "max_length": cfg.reward.max_length})
           for mid, name in model_names(cfg).items()}
    if all(name in upstream for name in out):
        out["score"] = stage_key(cfg, {name: upstream[name] for name in sorted(out)} | {"samples": samples})
    return out


def work(cfg: RunConfig, root: Path) -> Work:
    """The scoring jobs, one per model: every sample of samples.parquet (its rows where it exists, else the
    eval prompts x (`pool_size` + `n_reference`))."""
    n = parquet_rows(root / layout.SAMPLES)
    bound = ""
    if n is None:
        prompts, bound = eval_prompts(cfg, root)
        n = prompts * (cfg.policy.pool_size + cfg.policy.n_reference)
    jobs = tuple((JOB.format(model_id=mid), n) for mid in model_names(cfg))
    return Work(NAME, jobs, "samples", bound=bound)


def run(ctx: Context) -> Path:
    cfg = ctx.cfg
    trained = ctx.need("train-rm")
    ctx.need("sample")
    records = trained["rms"] + ([trained["evaluator"]] if trained["evaluator"] else [])
    all_keys = keys(cfg, ctx.upstream())
    todo = []
    for mid, model_name in model_names(cfg).items():
        name = JOB.format(model_id=mid)
        if not ctx.skip(name, all_keys[name]):
            todo.append((name, dict(run_dir=str(ctx.root), out_rel=layout.scores_file(mid),
                                    model_dir=model_dir(ctx, model_name), model_id=mid,
                                    max_length=cfg.reward.max_length, batch_size=BATCH_SIZE, device=cfg.device,
                                    threads=cfg.threads, show_progress=ctx.show_progress,
                                    trust_remote_code=loaded(cfg, model_name) and cfg.pretrain.trust_remote_code)))
    # scoring jobs are short and share this process's tokenised samples (one tokenisation for all models)
    ctx.run_jobs(job_score, todo, all_keys, seeds_of=lambda kw: {}, pool=False, work=work(cfg, ctx.root))
    key = keys(cfg, ctx.upstream())["score"]
    ctx.run_one("score", key, lambda: assemble_reward_tensor(ctx.root, records),
                [layout.REWARDS, layout.MODELS], mark=False, announce=False)
    return ctx.root / layout.REWARDS


def loaded(cfg: RunConfig, model_name: str) -> bool:
    """Whether the scoring model `model_name` is a trained RM loaded from a checkpoint (`evaluator.rm_checkpoint`)
    rather than one the run finetuned."""
    return model_name == layout.EVALUATOR_RM and bool(cfg.evaluator.rm_checkpoint)


def model_dir(ctx: Context, model_name: str) -> str:
    """What a scoring job loads: the RM the run finetuned (<run>/<model_name>), or the trained evaluator of
    `evaluator.rm_checkpoint` where it was loaded (a kit part verified, a hub id at its pinned commit)."""
    if loaded(ctx.cfg, model_name):
        return ctx.resolve_checkpoint(ctx.cfg.evaluator.rm_checkpoint)
    return str(ctx.root / model_name)


_ENCODED: dict = {}  # (tokenizer hash, max_length, samples hash) -> token ids; one tokenisation per tokenizer


def encoded_samples(run: Path, tok_dir: Path, max_length: int) -> tuple[tuple[list, list, list], object, object,
                                                                          object]:
    """samples.parquet as token ids grouped by prompt, cached per tokenizer within a process.

    Returns ``((prompt_ids, completion_ids, rows), prompt_id, sample_id, tokenizer)``: group g is one prompt
    tokenised once, ``prompt_ids[g]``, with its candidates ``completion_ids[g]`` (each + EOS), which are the
    sample rows ``rows[g]`` of ``prompt_id`` / ``sample_id`` (the file's row order); see ``encode_groups``.
    """
    import numpy as np

    from perm.models import load_tokenizer
    from perm.reward import encode_groups
    from perm.store import hash_path

    key = (hash_path(tok_dir / "tokenizer.json") if (tok_dir / "tokenizer.json").exists() else str(tok_dir),
           max_length, hash_path(run / layout.SAMPLES))
    if key not in _ENCODED:
        tok = load_tokenizer(tok_dir)
        samples = validate_samples(run / layout.SAMPLES)
        prompts = pq.read_table(run / layout.EVAL_PROMPTS, columns=["prompt_id", "prompt"]).to_pandas()
        prompt_of = dict(zip(prompts.prompt_id, prompts.prompt, strict=True))
        by_prompt = samples.groupby("prompt_id", sort=False).indices  # prompt_id -> row indices, in file order
        texts = samples.text.to_numpy()
        p_ids, c_ids, source = encode_groups(tok, [prompt_of[p] for p in by_prompt],
                                             [list(texts[r]) for r in by_prompt.values()], max_length)
        flat_rows = np.concatenate(list(by_prompt.values())) if by_prompt else np.empty(0, dtype=np.int64)
        _ENCODED.clear()
        _ENCODED[key] = ((p_ids, c_ids, [flat_rows[s] for s in source]), samples.prompt_id.to_numpy(),
                         samples.sample_id.to_numpy(), tok)
    return _ENCODED[key]


class SamplesError(ValueError):
    """A samples.parquet that cannot be scored; the message names the file and the column or rows."""


SAMPLES_COLUMNS = {"prompt_id": "integer", "sample_id": "integer", "text": "string"}


OPTIONAL_SAMPLES_COLUMNS = {"is_reference": "bool"}  # checked when present; the reward tensor needs it


def validate_samples(path: Path):
    """Read samples.parquet, refusing missing or mistyped columns and duplicate (prompt_id, sample_id)."""
    import pandas as pd

    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise SamplesError(f"{path}: cannot read as Parquet: {e}") from None
    for col, kind in (SAMPLES_COLUMNS | OPTIONAL_SAMPLES_COLUMNS).items():
        if col not in df.columns:
            if col in OPTIONAL_SAMPLES_COLUMNS:
                continue
            raise SamplesError(f"{path}: missing column '{col}' (expected columns: {', '.join(SAMPLES_COLUMNS)})")
        ok = {"integer": pd.api.types.is_integer_dtype, "bool": pd.api.types.is_bool_dtype,
              "string": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)}[kind]
        if not ok(df[col]):
            raise SamplesError(f"{path}: column '{col}' must be {kind}, found {df[col].dtype}")
    dup = df.duplicated(["prompt_id", "sample_id"], keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise SamplesError(f"{path}: row {i}: duplicate (prompt_id, sample_id) = "
                           f"({df.prompt_id.iloc[i]}, {df.sample_id.iloc[i]})")
    if df.text.isna().any():
        i = int(df.text.isna().to_numpy().nonzero()[0][0])
        raise SamplesError(f"{path}: row {i}: column 'text' is null")
    return df[["prompt_id", "sample_id", "text"]]


def job_score(run_dir: str, out_rel: str, *, model_dir: str, model_id: str, max_length: int, batch_size: int,
              device: str, threads: int | None, show_progress: bool = True,
              trust_remote_code: bool = False) -> dict | None:
    """Score every sample with one RM (a folder, or a hub id ``org/name@rev`` of a loaded evaluator) into
    run_dir/out_rel (prompt_id, sample_id, reward).

    Decoder RMs run each prompt once and its candidates as continuations of its KV cache
    (``perm.prefix.score_prompt_groups``: the same rewards as full-sequence scoring); encoders score whole.

    Under several processes (``python -m perm.launch job_score``) the ranks take turns over the batches the
    single process would run (prompt batches, or length batches of whole sequences for encoders), each
    scored as that process scores it, so the rewards are the same floats; they are gathered to every rank,
    the main process writes the file and returns the info, the others return None once it is written.
    (Two rare fallbacks inside ``score_prompt_groups`` batch across the whole share and then equal the
    single process's rewards only up to rounding: all-padding candidates, and caches that cannot be shared.)
    """
    import numpy as np
    import pyarrow as pa
    import torch.distributed as tdist

    from perm.models import load_reward_model
    from perm.prefix import score_prompt_groups
    from perm.reward import check_finite
    from perm.store import atomic_write_parquet

    dev = torch_setup(device, threads)
    state = None  # accelerate's PartialState when perm.launch started several processes
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        from accelerate import PartialState

        state = PartialState()
        dev = dev if dev.type == "cpu" else state.device  # one GPU per rank
    main = state is None or state.is_main_process
    run = Path(run_dir)
    tok_dir = Path(model_dir) if (Path(model_dir) / "tokenizer.json").exists() else run / layout.TOKENIZER
    (p_ids, c_ids, rows), prompt_ids, sample_ids, tok = encoded_samples(run, tok_dir, max_length)
    model = load_reward_model(model_dir, trust_remote_code=trust_remote_code).to(dev)
    t0 = time.perf_counter()
    bar = job_bar(JOB.format(model_id=model_id), len(prompt_ids), show_progress and main, unit="samples")
    rewards = np.full(len(prompt_ids), np.nan)
    # scoring stays in fp32 even in bf16 runs: a bf16 head rounds rewards into spurious ties (7-bit mantissa),
    # and ties go to the lower sample id for every RM alike, inflating agreement
    if state is None:
        groups = score_prompt_groups(model, p_ids, c_ids, tok.pad_token_id, dev, batch_size=batch_size,
                                     progress=bar)
        for r, group in zip(rows, groups, strict=True):
            rewards[r] = group
    else:
        from accelerate.utils import gather_object

        from perm.batching import length_batches, prompt_batches
        from perm.prefix import score_ids, shares_prompt

        none = np.empty(0, dtype=np.int64)
        if shares_prompt(model):  # the prompt batches score_prompt_groups forms; a rank's share re-forms them
            order = np.argsort([len(p) for p in p_ids], kind="stable")
            plan = prompt_batches(order, np.array([len(c) for c in c_ids], dtype=np.int64), batch_size)
            mine = np.sort(np.concatenate([none, *plan[state.process_index :: state.num_processes]]))
            got = score_prompt_groups(model, [p_ids[g] for g in mine], [c_ids[g] for g in mine],
                                      tok.pad_token_id, dev, batch_size=batch_size, progress=bar)
            part = (np.concatenate([none, *(rows[g] for g in mine)]), np.concatenate([np.empty(0), *got]))
        else:  # scored whole, as score_prompt_groups does: length batches of every candidate, group-major
            whole = [list(p) + list(c) for p, cs in zip(p_ids, c_ids, strict=True) for c in cs]
            plan = length_batches([len(s) for s in whole], batch_size)
            mine = np.sort(np.concatenate([none, *plan[state.process_index :: state.num_processes]]))
            part = (np.concatenate([none, *rows])[mine],
                    score_ids(model, [whole[k] for k in mine], tok.pad_token_id, dev, batch_size=batch_size,
                              progress=bar))
        shares = gather_object([part])  # every rank's (rows, rewards), on every rank
        for r, vals in shares:
            rewards[r] = vals
    bar.close()
    check_finite(rewards, model_id)  # on every rank alike: none waits for a main process that raised
    if main:
        atomic_write_parquet(run / out_rel, pa.table({"prompt_id": pa.array(prompt_ids, pa.int64()),
                                                      "sample_id": pa.array(sample_ids, pa.int64()),
                                                      "reward": pa.array(rewards, pa.float64())}))
    wall = time.perf_counter() - t0
    info = {"rows": len(prompt_ids), "wall_s": wall, "sequences_per_s": len(prompt_ids) / wall}
    if state is not None:
        state.wait_for_everyone()
        if not main:
            return None
        info["rows_per_process"] = [len(r) for r, _ in shares]
    return info


def assemble_reward_tensor(root: Path, records: list[dict]) -> dict:
    """Concatenate scores/*.parquet (+ the gold reward) into rewards.parquet and models.parquet."""
    import pandas as pd

    from perm.store import atomic_write_parquet

    samples = pq.read_table(root / layout.SAMPLES).to_pandas()
    base = samples[["prompt_id", "sample_id", "is_reference"]]
    parts, models = [], []
    for rec in records:
        mid = "evaluator" if rec["role"] == "evaluator" else rec["model_id"]
        scores = pq.read_table(root / layout.scores_file(mid)).to_pandas()
        df = base.merge(scores, on=["prompt_id", "sample_id"], how="left", validate="one_to_one")
        df["model_id"] = mid
        parts.append(df)
        models.append({"model_id": mid, "role": rec["role"], "pretrain_id": rec["pretrain_id"],
                       "finetune_seed": rec["finetune_seed"], "accuracy": rec["accuracy"],
                       "accuracy_se": rec["accuracy_se"], "gold_accuracy": rec.get("gold_accuracy")})
    if "gold_reward" in samples.columns:
        df = base.assign(model_id="gold", reward=samples.gold_reward.astype("float64"))
        parts.append(df)
        models.append({"model_id": "gold", "role": "gold", "pretrain_id": None, "finetune_seed": None,
                       "accuracy": None, "accuracy_se": None, "gold_accuracy": None})
    rewards = pd.concat(parts, ignore_index=True)[["prompt_id", "sample_id", "model_id", "reward", "is_reference"]]
    models_df = pd.DataFrame(models).astype({"finetune_seed": "Int64", "accuracy": "float64",
                                             "accuracy_se": "float64", "gold_accuracy": "float64"})
    atomic_write_parquet(root / layout.REWARDS, rewards)
    atomic_write_parquet(root / layout.MODELS, models_df)
    return {"rows": len(rewards), "models": len(models)}

