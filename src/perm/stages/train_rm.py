"""`perm train-rm`: the reward-model grid (every RM of `reward.layout` over pretrains x finetune seeds) and
the evaluator RM, finetuned with the Bradley-Terry + centering loss (perm.reward.train_reward_model), one job
each, run together (evaluator first: the longest). Manifest names `rm/<pretrain_id>-ft<seed>` and
`evaluator/rm`; outputs rm/<id>/ and evaluator/rm/ with rm.json. A trained evaluator loaded from
`evaluator.rm_checkpoint` (a folder, hub id or the testbed kit's) is evaluated on the run's held-out pairs
instead of finetuned (:func:`job_evaluate_rm`): evaluator/rm/ then holds its rm.json alone. Returns
{"rms": [rm.json, ...], "evaluator": rm.json or None}."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from perm import run_layout as layout
from perm.config import RewardConfig, RunConfig, loaded_grid
from perm.rm_jobs import (  # noqa: F401  (re-exported: the jobs of this stage; tests and perm.launch name them here)
    EVAL_FIELDS,
    encoded_eval_pairs,
    evaluate_files,
    job_reward_model,
    job_reward_model_launched,
    other_evals,
    rm_seeds,
    train_tokens,
)
from perm.stages._context import (
    Context,
    backbone_identity,
    checkpoint_name,
    data_identity,
    stage_key,
    torch_setup,
)
from perm.stages._grid import (
    GRID_FIELDS,
    eval_pair_files,
    evaluator_ids,
    evaluator_pair_files,
    extra_posts,
    grid,
    grid_names,
    loaded_rms,
    pair_count,
    pair_files,
    pairs_key,
    recipe_key,
    rm_id,
    unkeyed_defaults,
)
from perm.stages._plan import Work, optimizer_steps
from perm.store import atomic_path

NAME = "train-rm"
NEEDS = ("testbed", "pretrain", "policy-prefs")
WRITES = {layout.RM: (layout.RM,), layout.EVALUATOR_RM: (layout.EVALUATOR_RM,)}
SUMMARY = "Finetune the reward-model grid and the evaluator."
TAKES_TENSOR = False



def evaluator_recipe(cfg: RunConfig) -> RewardConfig:
    """The evaluator's finetuning recipe: the grid's (`reward`) with the evaluator's own epochs and lr."""
    return replace(cfg.reward, epochs=cfg.evaluator.epochs, lr=cfg.evaluator.lr)


def evaluator_pairs_key(cfg: RunConfig, upstream: Mapping[str, str]) -> dict:
    """:func:`pairs_key` plus the evaluator's own pairs, where it has them (nothing added at 0: keys as
    before)."""
    own = {"evaluator_prefs": upstream["evaluator-prefs"]} if extra_posts(cfg) else {}
    return pairs_key(cfg, upstream) | own


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    c, e = cfg.reward, cfg.evaluator
    data, pairs = data_identity(cfg, upstream), pairs_key(cfg, upstream)
    common = recipe_key(cfg)
    # shared: keys as before
    scope = {} if c.finetune_seed_scope == "shared" else {"scope": c.finetune_seed_scope}
    out = {}
    for name, spec in loaded_rms(cfg).items():  # trained RMs: keyed as a loaded evaluator is
        out[name] = stage_key(cfg, {"loaded": upstream[checkpoint_name(spec)], "testbed": data, **pairs,
                                    "eval": list(eval_pair_files(cfg)), "max_length": c.max_length,
                                    "grid_rm": name})
    finetuned = [] if c.rm_checkpoints else grid(cfg.pretrain.pretrain_ids(), c.finetune_seeds, c.layout)
    for pid, seed in finetuned:
        out[layout.rm_dir(rm_id(pid, seed))] = stage_key(cfg, {
            "common": common, "seed": seed, "testbed": data, **pairs,
            "backbone": backbone_identity(cfg, upstream, pid), **scope})
    if e.enabled:
        out[layout.EVALUATOR_RM] = evaluator_key(cfg, upstream)
    return out


def evaluator_key(cfg: RunConfig, upstream: Mapping[str, str]) -> str:
    """The evaluator RM's key: its finetuning (recipe, pairs, backbone, seeds), or for a trained one loaded
    from `evaluator.rm_checkpoint` its checkpoint's identity (a kit part's recorded hash) and the held-out
    pairs it is evaluated on."""
    c, e = cfg.reward, cfg.evaluator
    data = data_identity(cfg, upstream)
    if e.rm_checkpoint:
        return stage_key(cfg, {"loaded": upstream[checkpoint_name(e.rm_checkpoint)], "testbed": data,
                               **pairs_key(cfg, upstream), "eval": list(eval_pair_files(cfg)),
                               "max_length": c.max_length})
    backbone = upstream[checkpoint_name(e.checkpoint) if e.checkpoint else layout.EVALUATOR_PRETRAIN]
    grid_only = (*GRID_FIELDS, "max_train_pairs")
    reward = unkeyed_defaults(evaluator_recipe(cfg).recipe(grid_only))
    return stage_key(cfg, {"reward": reward, "pairs": e.train_pairs, "backbone": backbone, "testbed": data,
                           **evaluator_pairs_key(cfg, upstream), "seeds": evaluator_ids(cfg)})


def work(cfg: RunConfig, root: Path) -> Work:
    """The RM jobs (the evaluator's first, as they run) and their optimizer steps of `batch_size` pairs:
    the pairs each trains on (the pair files' rows, or what the config draws before they exist; at most
    `max_train_pairs` / `evaluator.train_pairs`) over its epochs."""
    c, e = cfg.reward, cfg.evaluator

    def steps(files: tuple[str, ...], cap: int | None, epochs: float) -> tuple[int | None, str]:
        n, bound = pair_count(cfg, root, files)
        if n is None:
            return None, ""
        if cap is not None:
            n = min(n, cap)
        return optimizer_steps(n, epochs, c.batch_size), bound

    jobs, bounds = [], set()
    if e.trains():
        n, bound = steps(evaluator_pair_files(cfg), e.train_pairs, e.epochs)
        jobs.append((layout.EVALUATOR_RM, n))
        bounds.add(bound)
    n, bound = steps(pair_files(cfg), c.max_train_pairs, c.epochs)
    jobs += [(name, n) for name in grid_names(cfg) if name not in loaded_rms(cfg)]
    bounds.add(bound)
    loads = [f"the evaluator RM {e.rm_checkpoint}"] if e.enabled and e.rm_checkpoint else []
    loads += [f"{len(c.rm_checkpoints)} trained grid RMs (reward.rm_checkpoints)"] if c.rm_checkpoints else []
    loads = f"loads {' and '.join(loads)}" if loads else ""
    return Work(NAME, tuple(jobs), "steps", (c.batch_size, "pairs"), bound=next((b for b in bounds if b), ""),
                unknown="once the data's pairs are imported", note=loads)


def job_seeds(kw: dict) -> dict:
    """The finetuning seeds a job draws (recorded in the manifest)."""
    return rm_seeds(kw["finetune_seed"], kw["pretrain_id"] if kw.get("seed_scope") == "per_rm" else None)


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    c, e = cfg.reward, cfg.evaluator
    backbones = ctx.need("pretrain")
    ctx.need("testbed")
    files, evals = ctx.need("policy-prefs"), eval_pair_files(cfg)
    all_keys = keys(cfg, ctx.upstream())
    env = dict(run_dir=str(ctx.root), pair_files=files, eval_files=evals, **ctx.job_env())
    todo = []
    for (pid, seed, spec), name in zip(loaded_grid(c), loaded_rms(cfg), strict=True):
        _evaluate_loaded(ctx, all_keys[name], evals, name=name, spec=spec, role="rm", pretrain_id=pid,
                         finetune_seed=seed)
    for pid, seed in ([] if c.rm_checkpoints else grid(list(backbones), c.finetune_seeds, c.layout)):
        name = layout.rm_dir(rm_id(pid, seed))
        if not ctx.skip(name, all_keys[name]):
            todo.append((name, dict(env, out_rel=name, backbone=backbones[pid], pretrain_id=pid,
                                    finetune_seed=seed, reward=c, n_pairs=c.max_train_pairs,
                                    seed_scope=c.finetune_seed_scope,
                                    trust_remote_code=cfg.pretrain.trust_remote_code)))
    name = layout.EVALUATOR_RM
    if e.enabled and e.rm_checkpoint:  # a trained evaluator: evaluated here, before the grid's jobs (seconds)
        _evaluate_loaded(ctx, all_keys[name], evals)
    elif e.enabled and not ctx.skip(name, all_keys[name]):
        todo.insert(0, (name, _evaluator_job(ctx, env)))  # trained beside the grid: the longest job first
    if c.processes > 1:  # each job on several processes (DDP), one job at a time
        todo = [(name, kw | {"processes": c.processes}) for name, kw in todo]
        ctx.run_jobs(job_reward_model_launched, todo, all_keys, seeds_of=job_seeds, work=work(cfg, ctx.root),
                     pool=False)
    else:
        ctx.run_jobs(job_reward_model, todo, all_keys, seeds_of=job_seeds, work=work(cfg, ctx.root))
    rms = [json.loads((ctx.root / layout.rm_record(n)).read_text()) for n in grid_names(cfg)]
    ev = json.loads((ctx.root / layout.rm_record(name)).read_text()) if e.enabled else None
    return {"rms": rms, "evaluator": ev}


def _evaluator_job(ctx: Context, env: dict) -> dict:
    """The keyword arguments of the evaluator RM's finetuning job."""
    cfg = ctx.cfg
    e = cfg.evaluator
    return dict(env, out_rel=layout.EVALUATOR_RM, pair_files=evaluator_pair_files(cfg),
                backbone=(ctx.resolve_checkpoint(e.checkpoint) if e.checkpoint
                          else str(ctx.root / layout.EVALUATOR_PRETRAIN)),
                pretrain_id=evaluator_ids(cfg)[0], finetune_seed=evaluator_ids(cfg)[1], seed_scope="per_rm",
                reward=evaluator_recipe(cfg), n_pairs=e.train_pairs, role="evaluator",
                trust_remote_code=cfg.pretrain.trust_remote_code)


def run_evaluator(ctx: Context) -> dict:
    """Finetune the evaluator RM alone, without the grid (what `perm kit build` trains of the recipe's world),
    with the key and job `perm train-rm` gives it; returns its rm.json."""
    cfg = ctx.cfg
    if not cfg.evaluator.trains():
        raise ValueError("run_evaluator: this config finetunes no evaluator (evaluator.enabled: false, or "
                         "evaluator.rm_checkpoint loads one)")
    with ctx.as_stage(NAME):
        if cfg.evaluator.pretrains():
            ctx.need("pretrain")
        ctx.need("testbed")
        files = ctx.need("policy-prefs")
        name, key = layout.EVALUATOR_RM, evaluator_key(cfg, ctx.upstream())
        if not ctx.skip(name, key):
            env = dict(run_dir=str(ctx.root), pair_files=files, eval_files=eval_pair_files(cfg),
                       **ctx.job_env())
            ctx.run_jobs(job_reward_model, [(name, _evaluator_job(ctx, env))], {name: key},
                         seeds_of=job_seeds, work=work(cfg, ctx.root))
    return json.loads((ctx.root / layout.rm_record(name)).read_text())


def _evaluate_loaded(ctx: Context, key: str, eval_files: tuple[str, ...], name: str = layout.EVALUATOR_RM,
                     spec: str | None = None, **record) -> None:
    """Evaluate a trained RM on the run's held-out pairs (in this process: a forward over them), unless done
    for these inputs: the evaluator of `evaluator.rm_checkpoint`, or (`name`, `spec`, ``record``: its role,
    pretrain_id and finetune_seed) a grid RM of `reward.rm_checkpoints`."""
    cfg = ctx.cfg
    spec = spec or cfg.evaluator.rm_checkpoint
    path = ctx.resolve_checkpoint(spec)  # a kit part is verified here; a hub id pinned to its commit
    ctx.run_one(name, key, lambda: job_evaluate_rm(
        str(ctx.root), name, checkpoint=path, spec=spec, eval_files=eval_files,
        max_length=cfg.reward.max_length, trust_remote_code=cfg.pretrain.trust_remote_code,
        **record, **ctx.job_env(pooled=False)), [name], loads=spec)


def job_evaluate_rm(run_dir: str, out_rel: str, *, checkpoint: str, spec: str, eval_files: tuple[str, ...],
                    max_length: int, device: str, threads: int | None, trust_remote_code: bool = False,
                    precision: str = "fp32", attention: str = "auto", show_progress: bool = True,
                    role: str = "evaluator", pretrain_id: str | None = None,
                    finetune_seed: int | None = None) -> dict:
    """Evaluate a trained RM (`evaluator.rm_checkpoint` `spec`, loaded from `checkpoint`) on the run's
    held-out pairs, in fp32 as scoring is, and write its record (rm.json, no weights) to run_dir/out_rel: the
    fields a finetuned evaluator's rm.json has (accuracy on the first eval file, `other_evals` on the rest),
    with what the checkpoint's own rm.json says of its training where it has one (the testbed kit's
    evaluator), under `trained` and in the fields the report reads (n_train_pairs, train_tokens, ...)."""
    from perm.models import load_reward_model, load_tokenizer
    from perm.readout import readout_of
    from perm.shipped import is_shipped, path_of

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    t0 = time.perf_counter()
    tok = load_tokenizer(run / layout.TOKENIZER if (run / layout.TOKENIZER).exists() else checkpoint,
                         trust_remote_code=trust_remote_code)
    model = load_reward_model(checkpoint, trust_remote_code=trust_remote_code).to(dev)
    evals = evaluate_files(model, run, eval_files, tok, max_length, dev)
    own = Path(checkpoint) / layout.RM_RECORD
    trained = json.loads(own.read_text()) if own.is_file() else {}
    backbone = trained.get("backbone")
    if backbone and is_shipped(backbone):  # the kit records its evaluator's backbone by its testbed: name
        backbone = str(path_of(backbone))
    first = evals[eval_files[0]]
    info = {
        "model_id": Path(out_rel).name,
        "role": role,
        "loaded_from": spec,
        "checkpoint": str(checkpoint),
        "pretrain_id": pretrain_id if pretrain_id is not None else trained.get("pretrain_id", spec),
        "finetune_seed": finetune_seed if finetune_seed is not None else trained.get("finetune_seed"),
        "backbone": backbone or str(checkpoint),
        "seeds": trained.get("seeds"),
        "config": trained.get("config"),
        **{k: trained.get(k)
           for k in ("n_train_pairs", "train_tokens", "train_sequence_tokens", "n_train_prompts")},
        "eval_pairs": eval_files[0],
        "n_eval_pairs": first["n_pairs"],
        "accuracy": first["accuracy"],
        "accuracy_se": first["accuracy_se"],
        "gold_accuracy": first.get("gold_accuracy"),
        "eval_mean_reward": first["mean_reward"],
        "other_evals": other_evals(evals, eval_files[1:]),
        "trained": {k: trained[k] for k in ("accuracy", "accuracy_se", "gold_accuracy", "eval_pairs", "steps",
                                            "wall_s", "precision", "pairs_per_s") if k in trained},
        "readout": readout_of(model),
        "wall_s": time.perf_counter() - t0,
        "precision": "fp32",
    }
    # the whole folder: no weights of an evaluator finetuned here before
    with atomic_path(run / out_rel) as tmp:
        tmp.mkdir(parents=True)
        (tmp / layout.RM_RECORD).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


