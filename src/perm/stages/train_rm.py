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
    backbone_ref,
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
from perm.stages._plan import POOLED_ENV, Checkpoint, Job, RunPath, Work, optimizer_steps, planned_keys
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


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """The trained RMs of `reward.rm_checkpoints` (each evaluated where it is), the evaluator (loaded and
    evaluated, or finetuned: the longest job, first), then the grid's RM jobs."""
    c, e = cfg.reward, cfg.evaluator
    data, pairs = data_identity(cfg, upstream), pairs_key(cfg, upstream)
    evals = eval_pair_files(cfg)
    jobs = []
    for pid, seed, spec in loaded_grid(c):  # trained RMs: keyed as a loaded evaluator is
        name = layout.rm_dir(rm_id(pid, seed))
        key = stage_key(cfg, {"loaded": upstream[checkpoint_name(spec)], "testbed": data, **pairs,
                              "eval": list(evals), "max_length": c.max_length, "grid_rm": name})
        jobs.append(_evaluation(cfg, name, key, spec, role="rm", pretrain_id=pid, finetune_seed=seed))
    if e.enabled and e.rm_checkpoint:  # a trained evaluator: evaluated here, before the grid's jobs (seconds)
        jobs.append(_evaluation(cfg, layout.EVALUATOR_RM, evaluator_key(cfg, upstream), e.rm_checkpoint))
    elif e.enabled:  # trained beside the grid: the longest job first
        jobs.append(_evaluator_job(cfg, upstream))
    # shared: keys as before
    scope = {} if c.finetune_seed_scope == "shared" else {"scope": c.finetune_seed_scope}
    common = recipe_key(cfg)
    fn, how, launched = rm_job(cfg)
    finetuned = [] if c.rm_checkpoints else grid(cfg.pretrain.pretrain_ids(), c.finetune_seeds, c.layout)
    for pid, seed in finetuned:
        name = layout.rm_dir(rm_id(pid, seed))
        key = stage_key(cfg, {"common": common, "seed": seed, "testbed": data, **pairs,
                              "backbone": backbone_identity(cfg, upstream, pid), **scope})
        args = dict(out_rel=name, pair_files=pair_files(cfg), eval_files=evals,
                    backbone=backbone_ref(cfg, pid), pretrain_id=pid, finetune_seed=seed, reward=c,
                    n_pairs=c.max_train_pairs, seed_scope=c.finetune_seed_scope,
                    trust_remote_code=cfg.pretrain.trust_remote_code, **launched)
        seeds = rm_seeds(seed, pid if c.finetune_seed_scope == "per_rm" else None)
        jobs.append(Job(name, key, fn, args, (name,), POOLED_ENV, seeds, how, pooled_env=True))
    return jobs


def rm_job(cfg: RunConfig) -> tuple:
    """How an RM finetuning job runs: (function, how, extra arguments) — in the pool's workers, or with
    `reward.processes` > 1 on that many processes (DDP), one job at a time."""
    p = cfg.reward.processes
    return (job_reward_model_launched, "here", {"processes": p}) if p > 1 else (job_reward_model, "pool", {})


keys = planned_keys(plan)


def _evaluation(cfg: RunConfig, name: str, key: str, spec: str, **record) -> Job:
    """The job evaluating a trained RM (`spec`) on the run's held-out pairs, in this process (a forward over
    them): the evaluator of `evaluator.rm_checkpoint`, or (``record``: its role, pretrain_id and
    finetune_seed) a grid RM of `reward.rm_checkpoints`."""
    args = dict(out_rel=name, checkpoint=Checkpoint(spec), spec=spec, eval_files=eval_pair_files(cfg),
                max_length=cfg.reward.max_length, trust_remote_code=cfg.pretrain.trust_remote_code, **record)
    return Job(name, key, job_evaluate_rm, args, (name,), POOLED_ENV, start={"loads": spec})


def _evaluator_job(cfg: RunConfig, upstream: Mapping[str, str]) -> Job:
    """The evaluator RM's finetuning job."""
    e = cfg.evaluator
    pid, seed = evaluator_ids(cfg)
    args = dict(out_rel=layout.EVALUATOR_RM, pair_files=evaluator_pair_files(cfg),
                eval_files=eval_pair_files(cfg),
                backbone=Checkpoint(e.checkpoint) if e.checkpoint else RunPath(layout.EVALUATOR_PRETRAIN),
                pretrain_id=pid, finetune_seed=seed, seed_scope="per_rm", reward=evaluator_recipe(cfg),
                n_pairs=e.train_pairs, role="evaluator", trust_remote_code=cfg.pretrain.trust_remote_code)
    fn, how, launched = rm_job(cfg)
    return Job(layout.EVALUATOR_RM, evaluator_key(cfg, upstream), fn, args | launched, (layout.EVALUATOR_RM,),
               POOLED_ENV, rm_seeds(seed, pid), how, pooled_env=True)


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


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    ctx.need("pretrain")
    ctx.need("testbed")
    ctx.need("policy-prefs")
    ctx.run_planned(plan, lambda: work(cfg, ctx.root))
    rms = [json.loads((ctx.root / layout.rm_record(n)).read_text()) for n in grid_names(cfg)]
    ev = (json.loads((ctx.root / layout.rm_record(layout.EVALUATOR_RM)).read_text()) if cfg.evaluator.enabled
          else None)
    return {"rms": rms, "evaluator": ev}


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
        ctx.need("policy-prefs")
        ctx.run_planned(lambda cfg, up: [_evaluator_job(cfg, up)], lambda: work(cfg, ctx.root))
    return json.loads((ctx.root / layout.rm_record(layout.EVALUATOR_RM)).read_text())


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


