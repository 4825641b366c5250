"""Facts several stages share, computed from the config alone (and, for counts, the run directory's files
where they exist already): the RM grid (ids, its (pretrain, finetune seed) members, the evaluator's ids),
the pair files the RMs train and are evaluated on, the posts the SFT policy holds out, the evaluator's extra
posts and the eval prompts. No stage module spells these itself, and none imports another stage module: they
meet here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig, loaded_grid
from perm.stages._plan import Checkpoint, RunPath, parquet_rows

# ----------------------------------------------------------------------------------------------- the grid


def rm_id(pretrain_id: str, finetune_seed: int) -> str:
    return f"{pretrain_id}-ft{finetune_seed}"


def grid(pretrain_ids: list[str], finetune_seeds: tuple[int, ...], layout: str) -> list[tuple[str, int]]:
    """(pretrain_id, finetune_seed) of every RM. paper: one RM per pretrain (first seed) + all seeds of the
    first pretrain; full: the whole product."""
    if layout == "full":
        return [(p, s) for p in pretrain_ids for s in finetune_seeds]
    first = [(pretrain_ids[0], s) for s in finetune_seeds]
    return first + [(p, finetune_seeds[0]) for p in pretrain_ids[1:]]


def grid_of(cfg: RunConfig) -> list[tuple[str, int]]:
    """(pretrain_id, finetune_seed) of the run's grid RMs: the trained RMs of `reward.rm_checkpoints`, else
    :func:`grid` of the pretrains and finetune seeds."""
    c = cfg.reward
    if c.rm_checkpoints:
        return [(p, s) for p, s, _ in loaded_grid(c)]
    return grid(cfg.pretrain.pretrain_ids(), c.finetune_seeds, c.layout)


def loaded_rms(cfg: RunConfig) -> dict[str, str]:
    """Manifest name -> checkpoint of every trained RM of `reward.rm_checkpoints` (empty: the grid is
    finetuned)."""
    return {layout.rm_dir(rm_id(p, s)): ckpt for p, s, ckpt in loaded_grid(cfg.reward)}


def backbone_ref(cfg: RunConfig, pretrain_id: str) -> Checkpoint | RunPath:
    """What a job loads as grid backbone `pretrain_id`: its checkpoint of `pretrain.checkpoints`, or the
    backbone the run pretrained."""
    c = cfg.pretrain
    if c.checkpoints:
        return Checkpoint(dict(zip(c.pretrain_ids(), c.checkpoints, strict=True))[pretrain_id])
    return RunPath(layout.pretrain_dir(pretrain_id))


def policy_ref(cfg: RunConfig) -> Checkpoint | RunPath:
    """What a job loads as the SFT policy: `sft.checkpoint`, or the policy the run trained."""
    return Checkpoint(cfg.sft.checkpoint) if cfg.sft.checkpoint else RunPath(layout.POLICY)


def grid_names(cfg: RunConfig) -> list[str]:
    """Manifest names (= folders) of the grid's RMs, in grid order."""
    return [layout.rm_dir(rm_id(p, s)) for p, s in grid_of(cfg)]


def evaluator_ids(cfg: RunConfig) -> tuple[str, int]:
    """(pretrain_id, finetune_seed) of the evaluator: its own, never a grid RM's."""
    e = cfg.evaluator
    return f"evaluator-seed{e.pretrain_seed}", e.pretrain_seed if e.finetune_seed is None else e.finetune_seed


# ---------------------------------------------------------------------------------- the finetuning recipe

# keyed per RM or via pairs_key
GRID_FIELDS = ("finetune_seeds", "layout", "pairs", "finetune_seed_scope", "pairs_from", "rm_checkpoints")


UNKEYED_AT = {"readout": "last", "micro_batch_size": None, "processes": 1, "rm_checkpoints": []}
"""`reward` fields added after runs were made -> the value that behaves as before, at which a key
leaves them out."""


def unkeyed_defaults(reward: dict, fields: tuple[str, ...] = tuple(UNKEYED_AT)) -> dict:
    """Leave out of the keys the fields added after runs were made, at their old behaviour (keys as before):
    those of `fields` (default: every field of :data:`UNKEYED_AT`; keys made after some of them existed, such
    as the ensemble members', pass the later ones)."""
    def plain(v):  # a typed section holds tuples where its dict form held lists
        return list(v) if isinstance(v, tuple) else v

    return {k: v for k, v in reward.items() if not (k in fields and plain(v) == UNKEYED_AT[k])}


def recipe_key(cfg: RunConfig) -> dict:
    """The part of `reward` every grid RM's key holds (the recipe; the grid's own fields are keyed per RM)."""
    return unkeyed_defaults(cfg.reward.recipe(GRID_FIELDS))


def pairs_key(cfg: RunConfig, upstream: Mapping[str, str]) -> dict:
    """What the RMs' training pairs depend on beyond the testbed (empty for the testbed's own pairs)."""
    if cfg.reward.pairs == "testbed":
        return {}
    return {"pairs": cfg.reward.pairs, "policy_prefs": upstream["policy-prefs"]}


# ------------------------------------------------------------------------------ the ensembles' members


def member_backbone(cfg: RunConfig) -> str:
    """The pretrain id the ensemble members are built on (`ensembles.backbone`, else the first: the finetune
    ensemble's)."""
    ids = cfg.pretrain.pretrain_ids()
    b = cfg.ensembles.backbone or ids[0]
    if b not in ids:
        raise ValueError(f"ensembles.backbone: {b!r} is not one of the grid's pretrains {ids}")
    return b


def check_named(named: Mapping[str, list[str] | tuple[str, ...]], scored: list[str]) -> None:
    """Refuse a named ensemble (`ensembles.named`: name -> model ids) of a model the run does not score:
    ``scored`` are its model ids that may be members (the grid's RMs and the ensemble members). The score
    stage checks it when it plans (before anything trains) and again when it assembles the tensor."""
    for name, ids in named.items():
        missing = [i for i in ids if i not in scored]
        if missing:
            raise ValueError(f"ensembles.named: {name}: no reward model or member {missing} in this run (its "
                             f"models: {', '.join(scored)})")


def member_plan(cfg: RunConfig) -> dict[str, dict]:
    """Every member folder `train-members` makes, by member id, in the order they can be made: ``kind``
    (multihead, lora, probe, warm-member, warm, grid-soup, mcdropout-rm), ``member`` (the finetuning job's
    member spec), ``reward`` (its recipe: `reward` with the kind's learning rate, epochs or dropout),
    ``seeds`` (derived from the kind and the member's index alone, so every backbone would get the same),
    ``from_members`` / ``from_rms`` (folders it starts from or averages) and a ``note``."""
    from perm.store import derive_seed

    e = cfg.ensembles
    recipe = cfg.reward

    def seeds(kind: str, i: int, *extra: str) -> dict:
        names = ("head_seed", "data_seed", "dropout_seed", *extra)
        return {n: derive_seed(f"{kind}-{n}", i) for n in names}

    out: dict[str, dict] = {}
    if "multihead" in e.kinds:
        out["multihead"] = {"kind": "multihead", "member": {"kind": "multihead", "heads": e.size},
                            "reward": recipe, "seeds": seeds("multihead", 0, "bootstrap_seed"),
                            "note": f"one finetune with {e.size} heads, each on its own bootstrap of the "
                                    "pairs"}
    if "lora" in e.kinds:
        for h in range(e.size):
            out[f"lora-{h}"] = {"kind": "lora", "member": {"kind": "lora", "rank": e.lora_rank,
                                                           "alpha": e.lora_alpha},
                                "reward": replace(recipe, lr=e.lora_lr),
                                "seeds": seeds("lora", h, "adapter_seed"),
                                "note": f"LoRA adapter (rank {e.lora_rank}) and head on the frozen backbone"}
    if "warm" in e.kinds:
        out["warm-probe"] = {"kind": "probe", "member": {"kind": "probe"},
                             "reward": replace(recipe, lr=e.warm_probe_lr, epochs=e.warm_probe_epochs),
                             "seeds": seeds("warm-probe", 0), "note": "linear probe: the head alone"}
        for m in range(e.size):
            scale = e.warm_lr_scales[m % len(e.warm_lr_scales)]
            out[f"warm-{m}"] = {"kind": "warm-member", "member": {"kind": "warm"},
                                "reward": replace(recipe, lr=cfg.reward.lr * scale),
                                "seeds": seeds("warm", m),
                                "from_members": ("warm-probe",),
                                "note": f"finetune from the probe at {scale:g} x reward.lr"}
        out["warm"] = {"kind": "warm", "from_members": tuple(f"warm-{m}" for m in range(e.size)),
                       "note": f"weight average of the {e.size} finetunes of one initialisation (WARM)"}
        soup = [layout.rm_dir(rm_id(p, s))
                for p, s in grid_of(cfg)
                if p == member_backbone(cfg)]
        if len(soup) >= 2:
            out["grid-soup"] = {"kind": "grid-soup", "from_rms": tuple(soup),
                                "note": f"weight average of the grid's {len(soup)} finetune seeds of one "
                                        "pretrain (different head initialisations)"}
    if "mcdropout" in e.kinds:
        out["mcdropout"] = {"kind": "mcdropout-rm", "member": {"kind": "mcdropout"},
                            "reward": replace(recipe, dropout=e.mc_dropout), "seeds": seeds("mcdropout", 0),
                            "note": f"one RM finetuned with dropout {e.mc_dropout:g}, scored {e.size} times"}
    return out


# --------------------------------------------------------------------------------------------- the posts


def sft_heldout(n_posts: int) -> int:
    """How many of sft_train's first posts the SFT policy holds out (its eval loss); policy-prefs puts its
    pairs on those posts into policy_prefs_eval.parquet, so no RM trains on them either."""
    return max(1, n_posts // 20)


def extra_posts(cfg: RunConfig) -> int:
    """Posts of the evaluator's own policy pairs (`evaluator.extra_posts`; null: as many as the grid's
    training posts, at most prefs_train's); 0 where it has none (testbed pairs, no evaluator, or a trained
    evaluator loaded from `evaluator.rm_checkpoint`). With `reward.pairs_from`, nonzero means the source's
    file is used."""
    e, t = cfg.evaluator, cfg.testbed
    if not e.trains() or cfg.reward.pairs == "testbed":
        return 0
    if e.extra_posts is None:
        return min(t.n_sft - sft_heldout(t.n_sft), t.n_prefs_train)
    return e.extra_posts


def eval_prompts(cfg: RunConfig, root: Path) -> tuple[int, str]:
    """Eval prompts the pools are sampled on: the file's rows where it exists, else the config's count and
    why it is an upper bound ("" where it is exact: the testbed writes exactly that many)."""
    n = parquet_rows(root / layout.EVAL_PROMPTS)
    if n is not None:
        return n, ""
    if cfg.data.prefs is None:
        return cfg.testbed.n_eval_prompts, ""
    return cfg.data.n_eval_prompts, "the eval pairs' distinct prompts, at most data.n_eval_prompts"


# ---------------------------------------------------------------------------------------- the pair files

TESTBED_PAIRS = (layout.PREFS_TRAIN,)
EVALUATOR_PAIRS = layout.EVALUATOR_PREFS
POLICY_PAIRS = (layout.POLICY_PREFS, layout.POLICY_PREFS_EVAL)  # the outputs of manifest name policy-prefs
EVALUATOR_POSTS = layout.PREFS_TRAIN  # posts no SFT example (and, with policy pairs, no grid pair) uses


def pair_files(cfg: RunConfig) -> tuple[str, ...]:
    """Training pair files for `reward.pairs`: the testbed's, the policy's own, or both (policy pairs
    first)."""
    c = cfg.reward
    if c.pairs == "testbed":
        return TESTBED_PAIRS
    return (layout.POLICY_PREFS,) + (TESTBED_PAIRS if c.pairs == "mix" else ())


def evaluator_pair_files(cfg: RunConfig) -> tuple[str, ...]:
    """The evaluator's training pair files: the grid's, then its own policy pairs on further posts."""
    return pair_files(cfg) + ((EVALUATOR_PAIRS,) if extra_posts(cfg) else ())


def eval_pair_files(cfg: RunConfig) -> tuple[str, ...]:
    """Held-out pairs for the RMs: in distribution first (policy pairs on the SFT's held-out posts when the
    RMs train on policy pairs), then the testbed's prefs_eval."""
    if cfg.reward.pairs == "testbed":
        return (layout.PREFS_EVAL,)
    return (layout.POLICY_PREFS_EVAL, layout.PREFS_EVAL)


def pairs_per_post(cfg: RunConfig) -> int:
    """Pairs drawn per post before ties are dropped: C(K, 2) K-wise, else `policy_pairs.per_post`."""
    c = cfg.policy_pairs
    return c.kwise * (c.kwise - 1) // 2 if c.kwise else c.per_post


def pair_count(cfg: RunConfig, root: Path, files: tuple[str, ...]) -> tuple[int | None, str]:
    """Training pairs in `files` together: their rows where every file exists; else, for files not written
    yet, what the config draws, with why that is an upper bound (policy pairs: ties are dropped), or None
    for pairs a user's data brings that are not imported yet."""
    n, bound = 0, ""
    t, undrawn = cfg.testbed, "policy pairs not drawn yet, ties are dropped"
    for rel in files:
        got = parquet_rows(root / rel)
        if got is None and cfg.reward.pairs_from and rel in (*POLICY_PAIRS, EVALUATOR_PAIRS):
            got = _source_rows(cfg.reward.pairs_from, rel)  # not copied yet: the source's
        if got is None and rel == layout.POLICY_PREFS:
            got, bound = (t.n_sft - sft_heldout(t.n_sft)) * pairs_per_post(cfg), undrawn
        elif got is None and rel == EVALUATOR_PAIRS:
            got, bound = extra_posts(cfg) * pairs_per_post(cfg), undrawn
        elif got is None and rel in TESTBED_PAIRS and cfg.data.prefs is None:
            got = t.n_prefs_train
        if got is None:
            return None, ""
        n += got
    return n, bound


def _source_rows(spec: str, rel: str) -> int | None:
    """Rows of pair file `rel` in `reward.pairs_from` (unverified: only a count for the plan), or None."""
    from perm.config import is_kit
    from perm.shipped import path_of

    folder = path_of(spec) if is_kit(spec) else Path(spec).expanduser()
    return parquet_rows(folder / rel) if folder.is_dir() else None
