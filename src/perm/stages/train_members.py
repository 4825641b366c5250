"""`perm train-members`: the ensemble members of `ensembles.kinds` on one backbone (perm.members), each with
the grid's recipe and pairs: a multi-head RM (`members/multihead`), LoRA adapters (`members/lora-<h>`), WARM's
linear probe, finetunes and their weight average (`members/warm-probe`, `members/warm-<m>`, `members/warm`)
with the average of the grid's finetune seeds (`members/grid-soup`), and the RM the MC-dropout draws score
with (`members/mcdropout`). Outputs members/<member_id>/ with rm.json (params trained, wall seconds: the costs
the report sets beside each ensemble's gain). Returns {member_id: rm.json}; {} when `ensembles.kinds` is
empty."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig
from perm.rm_jobs import job_average, job_reward_model
from perm.stages._context import Context, backbone_identity, data_identity, stage_key
from perm.stages._grid import (
    eval_pair_files,
    member_backbone,
    member_plan,
    pair_files,
    pairs_key,
    recipe_key,
    unkeyed_defaults,
)
from perm.stages._plan import Work, optimizer_steps

NAME = "train-members"
NEEDS = ("testbed", "pretrain", "policy-prefs", "train-rm")
WRITES = {layout.MEMBER: (layout.MEMBER,)}
SUMMARY = "Train the cheaper ensembles' members on one backbone: multi-head, LoRA, WARM, MC dropout."
TAKES_TENSOR = False
# reward fields added after the members, left out of their keys at their old behaviour
MEMBERS_SINCE = ("micro_batch_size", "processes", "rm_checkpoints")
AVERAGES = ("warm", "grid-soup")  # members made by averaging weights (no training job of their own)


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    """One key per member folder. A member trained from another (WARM's finetunes from the probe) or averaged
    from others is keyed on their output hashes, so it has a key once they exist."""
    if not cfg.ensembles.kinds:
        return {}
    b = member_backbone(cfg)
    base = {"recipe": recipe_key(cfg), "testbed": data_identity(cfg, upstream), **pairs_key(cfg, upstream),
            "backbone": backbone_identity(cfg, upstream, b)}
    out = {}
    for mid, spec in member_plan(cfg).items():
        name = layout.member_dir(mid)
        inputs = [layout.member_dir(s) for s in spec.get("from_members", ())] + list(spec.get("from_rms", ()))
        try:
            hashes = {i: upstream[i] for i in inputs}
        except KeyError:  # a member it is trained or averaged from is not made yet
            continue
        member = {k: v for k, v in spec.items() if k not in ("from_members", "from_rms")}
        if "reward" in member:  # keyed whole since members existed, less the fields added after them at null
            member["reward"] = unkeyed_defaults(member["reward"].recipe() | legacy_pairs_fields(cfg),
                                                MEMBERS_SINCE)
        obj = {"member": member, "inputs": hashes}
        out[name] = stage_key(cfg, obj if spec["kind"] in AVERAGES else obj | base)
    return out


def work(cfg: RunConfig, root: Path) -> Work:
    """The members' training jobs and their optimizer steps (averages take none)."""
    from perm.stages._grid import pair_count

    c = cfg.reward
    n, bound = pair_count(cfg, root, pair_files(cfg))
    if n is not None and c.max_train_pairs is not None:
        n = min(n, c.max_train_pairs)
    jobs = tuple((layout.member_dir(mid), None if n is None else optimizer_steps(n, spec["reward"].epochs,
                                                                                  c.batch_size))
                 for mid, spec in member_plan(cfg).items() if spec["kind"] not in AVERAGES)
    return Work(NAME, jobs, "steps", (c.batch_size, "pairs"), bound=bound,
                unknown="once the data's pairs are imported")


def legacy_pairs_fields(cfg: RunConfig) -> dict:
    """The policy pairs' fields as the `reward` section held them when the members' keys were first made
    (they are `policy_pairs` now)."""
    return {"policy_pairs_per_post": cfg.policy_pairs.per_post, "policy_kwise": cfg.policy_pairs.kwise}


def seeds_of(kw: dict) -> dict:
    return kw.get("seeds") or {}


def run(ctx: Context) -> dict[str, dict]:
    cfg = ctx.cfg
    if not cfg.ensembles.kinds:
        return {}
    backbones = ctx.need("pretrain")
    ctx.need("testbed")
    files = ctx.need("policy-prefs")
    ctx.need("train-rm")
    b = member_backbone(cfg)
    plan = member_plan(cfg)
    env = dict(run_dir=str(ctx.root), pair_files=files, eval_files=eval_pair_files(cfg), **ctx.job_env())
    # in phases: a member trained or averaged from others waits for them (their hashes key it)
    while True:
        all_keys = keys(cfg, ctx.upstream())
        ready = [(mid, spec) for mid, spec in plan.items() if layout.member_dir(mid) in all_keys
                 and not ctx.complete(layout.member_dir(mid), all_keys[layout.member_dir(mid)])]
        if not ready:
            break
        todo = []
        for mid, spec in ready:
            name = layout.member_dir(mid)
            if spec["kind"] in AVERAGES:
                sources = tuple([layout.member_dir(s) for s in spec.get("from_members", ())]
                                + list(spec.get("from_rms", ())))
                ctx.run_one(name, all_keys[name], lambda name=name, sources=sources, spec=spec: job_average(
                    str(ctx.root), name, sources=sources, eval_files=eval_pair_files(cfg),
                    max_length=cfg.reward.max_length, pretrain_id=b, note=spec["note"],
                    **ctx.job_env(pooled=False)), [name], announce=False)
                continue
            source = (str(ctx.root / layout.member_dir(spec["from_members"][0])) if spec.get("from_members")
                      else backbones[b])
            todo.append((name, dict(env, out_rel=name, backbone=source, pretrain_id=b, finetune_seed=0,
                                    reward=spec["reward"], n_pairs=cfg.reward.max_train_pairs, role="member",
                                    member=spec["member"], seeds=spec["seeds"],
                                    trust_remote_code=cfg.pretrain.trust_remote_code)))
        if todo:
            ctx.run_jobs(job_reward_model, todo, all_keys, seeds_of=seeds_of, work=work(cfg, ctx.root))
    return {mid: json.loads((ctx.root / layout.rm_record(layout.member_dir(mid))).read_text())
            for mid in plan}

