"""`perm score`: every pool and reference sample scored by every RM and the evaluator (perm.prefix.
score_prompt_groups: a prompt runs once and its candidates continue its KV cache), then the reward tensor
assembled with the gold reward: rewards.parquet and models.parquet (DESIGN step 5). A trained evaluator loaded
from `evaluator.rm_checkpoint` scores from where it is (the testbed kit's, a folder, a hub id). Also the
validation of samples.parquet, which a user may bring. Manifest names `score/<model_id>`
(scores/<model_id>.parquet) and `score`. Returns the path of rewards.parquet."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

from perm import run_layout as layout
from perm.config import RunConfig
from perm.progress import job_bar
from perm.stages._context import Context, backbone_identity, stage_key, torch_setup
from perm.stages._grid import (
    backbone_ref,
    check_named,
    eval_prompts,
    grid_names,
    loaded_rms,
    member_backbone,
    member_plan,
)
from perm.stages._plan import Checkpoint, Job, RunPath, Work, parquet_rows, planned_keys

NAME = "score"
NEEDS = ("pretrain", "train-rm", "train-members", "sample")
JOB = "score/{model_id}"  # the manifest name of one model's scoring job
WRITES = {JOB: (layout.SCORES,), "score": (layout.REWARDS, layout.MODELS, layout.ENSEMBLES)}
SUMMARY = (f"Score every sample with every RM, the evaluator and the gold reward: {layout.REWARDS}, "
           f"{layout.MODELS}.")
TAKES_TENSOR = False
BATCH_SIZE = 64


def model_names(cfg: RunConfig) -> dict[str, str]:
    """scoring job id -> manifest name of the folder it loads: the grid's RMs, the evaluator, then the
    ensemble members (:func:`member_scorers`)."""
    out = {name.split("/", 1)[1]: name for name in grid_names(cfg)}
    out |= {"evaluator": layout.EVALUATOR_RM} if cfg.evaluator.enabled else {}
    return out | {mid: spec["source"] for mid, spec in member_scorers(cfg).items()}


def member_scorers(cfg: RunConfig) -> dict[str, dict]:
    """The ensemble members' scoring jobs (perm.members), by job id: ``source`` (the member folder loaded)
    and ``member`` (its member id), ``load`` (how: ``rm``, ``multihead`` with its ``heads``, ``lora`` on the
    members' backbone, ``mcdropout`` with its rate and draw seed), ``ensemble`` and ``kind`` (the
    models.parquet columns of what it scores) and ``model_ids`` (the models it scores: one, or a multi-head
    RM's heads)."""
    from perm.store import derive_seed

    e = cfg.ensembles
    out = {}
    for mid, spec in member_plan(cfg).items():
        src = layout.member_dir(mid)
        kind = spec["kind"]
        common = {"source": src, "member": mid, "kind": kind}
        if kind == "multihead":
            out[mid] = common | {"load": {"kind": "multihead", "heads": e.size}, "ensemble": "multihead",
                                 "model_ids": [f"multihead-h{h}" for h in range(e.size)]}
        elif kind == "lora":
            out[mid] = common | {"load": {"kind": "lora"}, "ensemble": "lora", "model_ids": [mid]}
        elif kind in ("warm-member", "warm", "grid-soup"):
            out[mid] = common | {"load": {"kind": "rm"}, "model_ids": [mid],
                                 "ensemble": "warm-members" if kind == "warm-member" else kind}
        elif kind == "mcdropout-rm":
            for t in range(e.size):
                out[f"mcdropout-{t}"] = common | {"kind": "mcdropout", "ensemble": "mcdropout",
                                                  "load": {"kind": "mcdropout", "p": e.mc_dropout,
                                                           "seed": derive_seed("mc-dropout-draw", t)},
                                                  "model_ids": [f"mcdropout-{t}"]}
    return out


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """`score/<model_id>` per model whose folder exists; `score` (the assembled tensor) once every model's
    scores exist."""
    samples = upstream["sample"]
    members = member_scorers(cfg)
    jobs = []
    # the evaluator first: the longest job (a bigger model), so that it never runs alone at the stage's end
    for mid, name in sorted(model_names(cfg).items(), key=lambda item: item[1] != layout.EVALUATOR_RM):
        try:
            model = upstream[name]
        except KeyError:  # an ensemble member not made yet
            continue
        obj = {"model": model, "samples": samples, "max_length": cfg.reward.max_length}
        load = dict(members[mid]["load"]) if mid in members else {"kind": "rm"}
        if mid in members:
            obj |= {"load": members[mid]["load"]}
            if load["kind"] == "lora":
                obj["backbone"] = backbone_identity(cfg, upstream, member_backbone(cfg))
                load["backbone"] = backbone_ref(cfg, member_backbone(cfg))
        args = dict(out_rel=layout.scores_file(mid), model_dir=model_ref(cfg, name), model_id=mid,
                    max_length=cfg.reward.max_length, batch_size=BATCH_SIZE, memory_gb=cfg.score.memory_gb,
                    load=load, trust_remote_code=loaded(cfg, name) and cfg.pretrain.trust_remote_code)
        # in the workers (each tokenises the samples once for all the models it scores), so that a grid
        # RM's scoring can fill a worker the RM stage leaves idle (Context.ahead)
        jobs.append(Job(JOB.format(model_id=mid), stage_key(cfg, obj), job_score, args,
                        (layout.scores_file(mid),), ("device", "threads", "show_progress"), {}, "pool"))
    names = [JOB.format(model_id=mid) for mid in model_names(cfg)]
    if all(name in upstream for name in names):
        named = {"named": list(cfg.ensembles.named)} if cfg.ensembles.named else {}  # none: keys as before
        key = stage_key(cfg, {name: upstream[name] for name in sorted(names)} | {"samples": samples} | named)
        rms = grid_names(cfg) + ([layout.EVALUATOR_RM] if cfg.evaluator.enabled else [])
        pretrains = {pid: backbone_ref(cfg, pid) for pid in cfg.pretrain.pretrain_ids()} if members else {}
        args = dict(rms=rms, models=model_names(cfg), members=members, trained=list(member_plan(cfg)),
                    named=cfg.ensembles.named_members(), pretrains=pretrains)
        jobs.append(Job("score", key, job_assemble, args, (layout.REWARDS, layout.MODELS, layout.ENSEMBLES),
                        mark=False, announce=False, after=tuple(names)))
    return jobs


keys = planned_keys(plan)


def work(cfg: RunConfig, root: Path) -> Work:
    """The scoring jobs, one per model: every sample of samples.parquet (its rows where it exists, else the
    eval prompts x (`pool_size` + `n_reference`))."""
    members = member_scorers(cfg)
    check_named(cfg.ensembles.named_members(), [n.split("/", 1)[1] for n in grid_names(cfg)]
                + [mid for spec in members.values() for mid in spec["model_ids"]])
    n = parquet_rows(root / layout.SAMPLES)
    bound = ""
    if n is None:
        prompts, bound = eval_prompts(cfg, root)
        n = prompts * (cfg.sample.pool_size + cfg.sample.n_reference)
    jobs = tuple((JOB.format(model_id=mid), n) for mid in model_names(cfg))
    return Work(NAME, jobs, "samples", bound=bound)


def run(ctx: Context) -> Path:
    for stage in NEEDS:
        ctx.need(stage)
    ctx.run_planned(plan, lambda: work(ctx.cfg, ctx.root))
    return ctx.root / layout.REWARDS


def job_assemble(run_dir: str, *, rms: list[str], models: Mapping[str, str], members: Mapping[str, dict],
                 trained: list[str], named: Mapping, pretrains: Mapping[str, str]) -> dict:
    """The reward tensor (:func:`assemble_reward_tensor`) from the scores of the RMs `rms` (their rm.json)
    and of the ensemble members (`members`, :func:`member_scorers`; `trained` the member folders' ids, whose
    rm.json give their training costs; `named` the config's named ensembles),
    with each scoring job's wall seconds (the run's manifest) and each backbone of `pretrains` (pretrain id ->
    folder) its pretraining record: the costs set beside each ensemble."""
    import json

    from perm.store import RunStore

    root = Path(run_dir)
    records = [json.loads((root / layout.rm_record(n)).read_text()) for n in rms]
    records_of = {mid: json.loads((root / layout.rm_record(layout.member_dir(mid))).read_text())
                  for mid in trained}
    store = RunStore(root)
    score_s = {mid: (store.stage(JOB.format(model_id=mid)) or {}).get("wall_s") for mid in models}
    ensembles = {"members": members, "trained": records_of, "named": named, "score_s": score_s,
                 "pretrains": {pid: json.loads((Path(path) / layout.PRETRAIN_RECORD).read_text())
                               for pid, path in pretrains.items()
                               if (Path(path) / layout.PRETRAIN_RECORD).is_file()}}
    return assemble_reward_tensor(root, records, ensembles)


def loaded(cfg: RunConfig, model_name: str) -> bool:
    """Whether the scoring model `model_name` is a trained RM loaded from a checkpoint
    (`evaluator.rm_checkpoint`, `reward.rm_checkpoints`) rather than one the run finetuned."""
    return (model_name == layout.EVALUATOR_RM and bool(cfg.evaluator.rm_checkpoint)) or (
        model_name in loaded_rms(cfg))


def model_ref(cfg: RunConfig, model_name: str) -> RunPath | Checkpoint:
    """What a scoring job loads: the RM the run finetuned (<run>/<model_name>), or the trained RM of
    `evaluator.rm_checkpoint` / `reward.rm_checkpoints` where it was loaded (a kit part verified, a hub id at
    its pinned commit)."""
    if loaded(cfg, model_name):
        return Checkpoint(loaded_rms(cfg).get(model_name) or cfg.evaluator.rm_checkpoint)
    return RunPath(model_name)


_ENCODED: dict = {}  # (tokenizer hash, max_length, samples hash) -> token ids; one tokenisation per tokenizer


def encoded_samples(run: Path, tok_dir: Path,
                    max_length: int) -> tuple[tuple[list, list, list], object, object, object]:
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
        # prompt_id -> row indices, in file order
        by_prompt = samples.groupby("prompt_id", sort=False).indices
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
            raise SamplesError(f"{path}: missing column '{col}' "
                               f"(expected columns: {', '.join(SAMPLES_COLUMNS)})")
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
              trust_remote_code: bool = False, load: dict | None = None,
              memory_gb: float | None = None) -> dict | None:
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

    load: how an ensemble member is scored (perm.members; one process): ``{"kind": "multihead"}`` writes
    one column ``reward_<h>`` per head, ``{"kind": "lora", "backbone": dir}`` merges the adapter at
    model_dir into the backbone, ``{"kind": "mcdropout", "p": rate, "seed": s}`` is one seeded dropout
    draw; default a plain RM.

    memory_gb: rows per batch from a memory budget (:func:`perm.prefix.rows_within` of this RM and the longest
    prompt and candidate) instead of `batch_size`.
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
    load = load or {"kind": "rm"}
    if load["kind"] != "rm" and state is not None:
        raise ValueError(f"{model_id}: ensemble members are scored in one process")
    if load["kind"] == "lora":
        from perm.members import load_lora_merged

        model = load_lora_merged(load["backbone"], model_dir, pad_token_id=tok.pad_token_id,
                                 trust_remote_code=trust_remote_code).to(dev)
    else:
        model = load_reward_model(model_dir, trust_remote_code=trust_remote_code,
                                  heads=load["kind"] == "multihead").to(dev)
    if memory_gb is not None:
        from perm.prefix import rows_within

        batch_size = rows_within(model, int(memory_gb * 1e9), max(map(len, p_ids), default=1),
                                 max((len(c) for cs in c_ids for c in cs), default=1))
    t0 = time.perf_counter()
    bar = job_bar(JOB.format(model_id=model_id), len(prompt_ids), show_progress and main, unit="samples")
    from perm.readout import reward_shape

    rewards = np.full((len(prompt_ids), *reward_shape(model)), np.nan)
    # scoring stays in fp32 even in bf16 runs: a bf16 head rounds rewards into spurious ties (7-bit mantissa),
    # and ties go to the lower sample id for every RM alike, inflating agreement
    if state is None:
        draw = contextlib.nullcontext()
        if load["kind"] == "mcdropout":
            from perm.members import dropout_on
            from perm.models import seeded

            draw = contextlib.ExitStack()
            draw.enter_context(dropout_on(model, load["p"]))
            draw.enter_context(seeded(load["seed"]))
        with draw:
            groups = score_prompt_groups(model, p_ids, c_ids, tok.pad_token_id, dev, batch_size=batch_size,
                                         progress=bar, mc_dropout=load["kind"] == "mcdropout")
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
    # on every rank alike: none waits for a main process that raised
    check_finite(rewards.reshape(-1), model_id)
    if main:
        columns = ({"reward": pa.array(rewards, pa.float64())} if rewards.ndim == 1 else
                   {f"reward_{h}": pa.array(rewards[:, h], pa.float64()) for h in range(rewards.shape[1])})
        atomic_write_parquet(run / out_rel, pa.table({"prompt_id": pa.array(prompt_ids, pa.int64()),
                                                      "sample_id": pa.array(sample_ids, pa.int64()),
                                                      **columns}))
    wall = time.perf_counter() - t0
    info = {"rows": len(prompt_ids), "wall_s": wall, "sequences_per_s": len(prompt_ids) / wall}
    if state is not None:
        state.wait_for_everyone()
        if not main:
            return None
        info["rows_per_process"] = [len(r) for r, _ in shares]
    return info


def assemble_reward_tensor(root: Path, records: list[dict], ensembles: Mapping | None = None) -> dict:
    """Concatenate scores/*.parquet (+ the gold reward) into rewards.parquet and models.parquet, and the
    ensembles' costs into ensembles.parquet (:func:`ensemble_costs`).

    ensembles: ``members`` (:func:`member_scorers`), ``trained`` (the members' rm.json by member id),
    ``named`` (name -> model ids, `ensembles.named`), ``score_s`` (scoring seconds by job id) and
    ``pretrains`` (pretrain.json by pretrain id). With members or named ensembles models.parquet gets the
    ``ensemble`` (comma-separated names) and ``kind`` columns; members have role ``member``."""
    import pandas as pd

    from perm.store import atomic_write_parquet

    ens = dict(ensembles or {})
    members, trained, named = ens.get("members", {}), ens.get("trained", {}), ens.get("named", {})
    samples = pq.read_table(root / layout.SAMPLES).to_pandas()
    base = samples[["prompt_id", "sample_id", "is_reference"]]
    parts, models = [], []

    def add(mid: str, scores, column: str, row: dict) -> None:
        df = base.merge(scores[["prompt_id", "sample_id", column]].rename(columns={column: "reward"}),
                        on=["prompt_id", "sample_id"], how="left", validate="one_to_one")
        df["model_id"] = mid
        parts.append(df)
        models.append({"model_id": mid, **row})

    for rec in records:
        mid = "evaluator" if rec["role"] == "evaluator" else rec["model_id"]
        add(mid, pq.read_table(root / layout.scores_file(mid)).to_pandas(), "reward",
            {"role": rec["role"], "pretrain_id": rec["pretrain_id"], "finetune_seed": rec["finetune_seed"],
             "accuracy": rec["accuracy"], "accuracy_se": rec["accuracy_se"],
             "gold_accuracy": rec.get("gold_accuracy"), "kind": "grid" if rec["role"] == "rm" else None,
             "ensemble": None})
    for job, spec in members.items():
        rec = trained[spec["member"]]
        scores = pq.read_table(root / layout.scores_file(job)).to_pandas()
        for h, mid in enumerate(spec["model_ids"]):
            acc = rec["heads"][h] if spec["load"]["kind"] == "multihead" else rec
            add(mid, scores, f"reward_{h}" if spec["load"]["kind"] == "multihead" else "reward",
                {"role": "member", "pretrain_id": rec["pretrain_id"], "finetune_seed": None,
                 "accuracy": acc["accuracy"], "accuracy_se": acc["accuracy_se"],
                 "gold_accuracy": acc.get("gold_accuracy"), "kind": spec["kind"],
                 "ensemble": spec["ensemble"]})
    known = {m["model_id"]: m for m in models}
    check_named(named, [m for m, r in known.items() if r["role"] in ("rm", "member")])
    for name, ids in named.items():
        for i in ids:
            known[i]["ensemble"] = ",".join(filter(None, [known[i]["ensemble"], name]))
    if "gold_reward" in samples.columns:
        df = base.assign(model_id="gold", reward=samples.gold_reward.astype("float64"))
        parts.append(df)
        models.append({"model_id": "gold", "role": "gold", "pretrain_id": None, "finetune_seed": None,
                       "accuracy": None, "accuracy_se": None, "gold_accuracy": None, "kind": None,
                       "ensemble": None})
    rewards = pd.concat(parts, ignore_index=True)[["prompt_id", "sample_id", "model_id", "reward",
                                                   "is_reference"]]
    models_df = pd.DataFrame(models).astype({"finetune_seed": "Int64", "accuracy": "float64",
                                             "accuracy_se": "float64", "gold_accuracy": "float64"})
    if not members and not named:  # a run without ensembles of its own: models.parquet as it always was
        models_df = models_df.drop(columns=["kind", "ensemble"])
    costs = ensemble_costs(records, ens | {"grid_params": _saved_parameters(root, records)})
    atomic_write_parquet(root / layout.REWARDS, rewards)
    atomic_write_parquet(root / layout.MODELS, models_df)
    atomic_write_parquet(root / layout.ENSEMBLES, costs)
    return {"rows": len(rewards), "models": len(models), "ensembles": len(costs)}


COST_COLUMNS = ("ensemble", "kind", "n_members", "params_trained", "params_held", "forwards_per_candidate",
                "train_s", "score_s", "note")


def _saved_parameters(root: Path, records: list[dict]) -> int | None:
    """Parameters of the first grid RM as saved (its safetensors header, perm.check.safetensors_params; for
    RMs whose rm.json predates ``params_total``), or None without one."""
    from perm.check import safetensors_params

    grid = [r for r in records if r["role"] == "rm"]
    path = root / layout.rm_dir(grid[0]["model_id"]) / "model.safetensors" if grid else None
    return safetensors_params(path) if path is not None and path.is_file() else None


def ensemble_costs(records: list[dict], ensembles: Mapping) -> pd.DataFrame:
    """What each ensemble costs (the ensembles.parquet rows, :data:`COST_COLUMNS`): parameters trained
    (pretraining included where an ensemble needs backbones of its own), parameters held while scoring,
    forward passes per candidate, and the seconds its training and scoring took on the machine that ran them
    (NaN where not recorded). Grid ensembles: ``single`` (one RM, the grid's mean), ``finetune`` (the finetune
    seeds of one pretrain) and ``pretrain`` (one RM per pretrain, plus pretraining the other backbones: their
    pretrain.json seconds, recorded where they were built)."""
    import numpy as np
    import pandas as pd

    members, trained = ensembles.get("members", {}), ensembles.get("trained", {})
    score_s, pretrains = ensembles.get("score_s", {}), ensembles.get("pretrains", {})
    nan = float("nan")

    def num(x) -> float:
        return nan if x is None else float(x)

    grid = [r for r in records if r["role"] == "rm"]
    per_pretrain: dict[str, list[dict]] = {}
    for r in grid:
        per_pretrain.setdefault(r["pretrain_id"], []).append(r)
    p = num(grid[0].get("params_total", ensembles.get("grid_params"))) if grid else nan
    wall = float(np.mean([num(r.get("wall_s")) for r in grid])) if grid else nan
    sc = float(np.mean([num(score_s.get(r["model_id"])) for r in grid])) if grid else nan
    f = max((len(v) for v in per_pretrain.values()), default=0)
    k = len(per_pretrain)
    rows = [{"ensemble": "single", "kind": "grid", "n_members": 1, "params_trained": p, "params_held": p,
             "forwards_per_candidate": 1, "train_s": wall, "score_s": sc, "note": "one grid RM (their mean)"}]
    if f >= 2:
        rows.append({"ensemble": "finetune", "kind": "grid", "n_members": f, "params_trained": f * p,
                     "params_held": f * p, "forwards_per_candidate": f, "train_s": f * wall,
                     "score_s": f * sc, "note": f"{f} finetunes of one pretrain"})
    if k >= 2:
        first = sorted(per_pretrain)[0]
        extra = [pretrains.get(pid, {}) for pid in sorted(per_pretrain) if pid != first]
        pre_s = sum(num(x.get("wall_s")) for x in extra)
        pre_p = sum(num(x.get("n_params")) for x in extra)
        rows.append({"ensemble": "pretrain", "kind": "grid", "n_members": k, "params_trained": k * p + pre_p,
                     "params_held": k * p, "forwards_per_candidate": k, "train_s": k * wall + pre_s,
                     "score_s": k * sc, "note": f"{k} finetunes on {k} pretrains, with pretraining the other "
                                                f"{k - 1} backbones (their recorded seconds, where they were "
                                                "built)"})
    by_ensemble: dict[str, list[str]] = {}
    for job, spec in members.items():
        by_ensemble.setdefault(spec["ensemble"], []).append(job)
    for name, jobs in by_ensemble.items():
        specs = [members[j] for j in jobs]
        recs = [trained[s["member"]] for s in specs]
        kind = specs[0]["kind"]
        n = sum(len(s["model_ids"]) for s in specs)
        scored = sum(num(score_s.get(j)) for j in jobs)
        if kind == "multihead":
            r = recs[0]
            row = (r["params_trained"], r["params_total"], 1, num(r["wall_s"]), r.get("note", "")
                   or f"one finetune, {n} heads")
        elif kind == "lora":
            adapters = sum(r["params_trained"] for r in recs)
            backbone = recs[0]["params_total"] - recs[0]["params_trained"]
            row = (adapters, backbone + adapters, n, sum(num(r["wall_s"]) for r in recs),
                   f"{n} adapters + heads on one frozen backbone")
        elif kind in ("warm", "warm-member"):
            probe = trained["warm-probe"]
            fts = [trained[m] for m in sorted(trained) if m.startswith("warm-") and m != "warm-probe"]
            t = num(probe["wall_s"]) + sum(num(r["wall_s"]) for r in fts)
            pt = probe["params_trained"] + sum(r["params_trained"] for r in fts)
            if kind == "warm":
                row = (pt, recs[0]["params_total"], 1, t + num(recs[0]["wall_s"]),
                       f"the weight average of {len(fts)} finetunes from one linear probe: one model")
            else:
                row = (pt, sum(r["params_total"] for r in fts), len(fts), t,
                       f"the {len(fts)} WARM finetunes as a prediction ensemble")
        elif kind == "grid-soup":
            row = (f * p, recs[0]["params_total"], 1, f * wall + num(recs[0]["wall_s"]),
                   f"the weight average of the grid's {f} finetune seeds (their training is the finetune "
                   "ensemble's)")
        else:  # mcdropout
            r = recs[0]
            row = (r["params_trained"], r["params_total"], n, num(r["wall_s"]),
                   f"{n} dropout draws of one RM finetuned with dropout")
        rows.append({"ensemble": name, "kind": kind, "n_members": n, "params_trained": row[0],
                     "params_held": row[1], "forwards_per_candidate": row[2], "train_s": row[3],
                     "score_s": scored, "note": row[4]})
    for name, ids in ensembles.get("named", {}).items():
        rows.append({"ensemble": name, "kind": "named", "n_members": len(ids), "params_trained": nan,
                     "params_held": nan, "forwards_per_candidate": len(ids), "train_s": nan,
                     "score_s": sum(num(score_s.get(i)) for i in ids), "note": "named in the config: "
                     + "+".join(ids)})
    df = pd.DataFrame(rows, columns=list(COST_COLUMNS))
    for c in ("params_trained", "params_held", "train_s", "score_s"):
        df[c] = df[c].astype("float64")
    df["n_members"] = df.n_members.astype("int64")
    df["forwards_per_candidate"] = df.forwards_per_candidate.astype("int64")
    return df
