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
    backbone_ref,
    eval_pair_files,
    member_backbone,
    member_plan,
    pair_files,
    pairs_key,
    recipe_key,
    unkeyed_defaults,
)
from perm.stages._plan import POOLED_ENV, Job, RunPath, Work, optimizer_steps, planned_keys

NAME = "train-members"
NEEDS = ("testbed", "pretrain", "policy-prefs", "train-rm")
WRITES = {layout.MEMBER: (layout.MEMBER,)}
SUMMARY = "Train the cheaper ensembles' members on one backbone: multi-head, LoRA, WARM, MC dropout."
TAKES_TENSOR = False
# reward fields added after the members, left out of their keys at their old behaviour
MEMBERS_SINCE = ("micro_batch_size", "processes", "rm_checkpoints")
AVERAGES = ("warm", "grid-soup")  # members made by averaging weights (no training job of their own)


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """One job per member folder. A member trained from another (WARM's finetunes from the probe) or averaged
    from others is keyed on their output hashes, so it enters the plan once they exist (Context.run_planned
    runs the members in such phases)."""
    if not cfg.ensembles.kinds:
        return []
    b = member_backbone(cfg)
    base = {"recipe": recipe_key(cfg), "testbed": data_identity(cfg, upstream), **pairs_key(cfg, upstream),
            "backbone": backbone_identity(cfg, upstream, b)}
    evals = eval_pair_files(cfg)
    jobs = []
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
        if spec["kind"] in AVERAGES:
            args = dict(out_rel=name, sources=tuple(inputs), eval_files=evals,
                        max_length=cfg.reward.max_length, pretrain_id=b, note=spec["note"])
            jobs.append(Job(name, stage_key(cfg, obj), job_average, args, (name,), POOLED_ENV,
                            announce=False, after=tuple(inputs)))
            continue
        source = RunPath(inputs[0]) if spec.get("from_members") else backbone_ref(cfg, b)
        args = dict(out_rel=name, pair_files=pair_files(cfg), eval_files=evals, backbone=source,
                    pretrain_id=b, finetune_seed=0, reward=spec["reward"], n_pairs=cfg.reward.max_train_pairs,
                    role="member", member=spec["member"], seeds=spec["seeds"],
                    trust_remote_code=cfg.pretrain.trust_remote_code)
        jobs.append(Job(name, stage_key(cfg, obj | base), job_reward_model, args, (name,), POOLED_ENV,
                        spec["seeds"] or {}, "pool", after=tuple(inputs)))
    return jobs


keys = planned_keys(plan)


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


def run(ctx: Context) -> dict[str, dict]:
    cfg = ctx.cfg
    if not cfg.ensembles.kinds:
        return {}
    for stage in NEEDS:
        ctx.need(stage)
    ctx.run_planned(plan, lambda: work(cfg, ctx.root))
    return {mid: json.loads((ctx.root / layout.rm_record(layout.member_dir(mid))).read_text())
            for mid in member_plan(cfg)}

