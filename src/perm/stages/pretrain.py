"""`perm pretrain`: the seed-varied backbones (perm.pretrain.pretrain on the testbed corpus, one job per
pretrain seed, plus the evaluator's own bigger backbone), or the configured checkpoints registered instead.
Manifest names `pretrain/<pretrain_id>` and `evaluator/pretrain`. Returns pretrain_id -> backbone path or
hub id (``org/name@<sha>`` once pinned; a conversion under <run>/converted/ with `convert_bin`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import BackboneConfig, PretrainConfig, RunConfig
from perm.progress import job_bar
from perm.stages._context import Context, data_identity, read_column, stage_key, torch_setup
from perm.stages._grid import backbone_ref
from perm.stages._plan import POOLED_ENV, Job, Work, planned_keys
from perm.store import atomic_path

NAME = "pretrain"
NEEDS = ("testbed",)
WRITES = {layout.PRETRAIN: (layout.PRETRAIN,), layout.EVALUATOR_PRETRAIN: (layout.EVALUATOR_PRETRAIN,)}
SUMMARY = "Pretrain the seed-varied backbones (or register existing checkpoints)."
TAKES_TENSOR = False


def train_args(cfg: RunConfig) -> dict:
    return cfg.pretrain.train_args()


def evaluator_train_args(cfg: RunConfig) -> dict:
    """The evaluator's pretraining: the grid's recipe with its own number of steps."""
    return dict(train_args(cfg), steps=cfg.evaluator.pretrain_steps)


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """The evaluator's backbone (the longest job, first, so parallel workers finish together), then one job
    per pretrain seed; none for backbones loaded from `pretrain.checkpoints`."""
    c, e = cfg.pretrain, cfg.evaluator
    jobs = []
    common = dict(checkpoint_every=c.checkpoint_every, recipe=c)
    if e.pretrains():
        name = layout.EVALUATOR_PRETRAIN
        key = stage_key(cfg, {"backbone": e.backbone, "train": evaluator_train_args(cfg),
                              "seed": e.pretrain_seed, "testbed": data_identity(cfg, upstream)})
        jobs.append(_job(name, key, common | dict(init_seed=e.pretrain_seed, data_seed=e.pretrain_seed,
                                                  backbone=e.backbone, steps=e.pretrain_steps)))
    if not c.checkpoints:
        data = data_identity(cfg, upstream)
        # how a checkpoint is read (convert_bin) does not change what a pretrain from scratch trains
        recipe = c.recipe_key()
        for pid, init_s, data_s in zip(c.pretrain_ids(), c.init_seeds or c.seeds, c.data_seeds or c.seeds,
                                       strict=True):
            name = layout.pretrain_dir(pid)
            key = stage_key(cfg, {"common": recipe, "init": init_s, "data": data_s, "testbed": data})
            jobs.append(_job(name, key, common | dict(init_seed=init_s, data_seed=data_s, backbone=c.backbone,
                                                      steps=c.steps)))
    return jobs


def _job(name: str, key: str, args: dict) -> Job:
    return Job(name, key, job_pretrain, {"out_rel": name, **args}, (name,), POOLED_ENV,
               {"init_seed": args["init_seed"], "data_seed": args["data_seed"]}, "pool")


keys = planned_keys(plan)


def work(cfg: RunConfig, root: Path) -> Work:
    """The pretraining jobs (evaluator's first, as they run) and their optimizer steps of `batch_size`
    sequences each; none where the backbones are checkpoints."""
    c, e = cfg.pretrain, cfg.evaluator
    jobs = [(layout.EVALUATOR_PRETRAIN, e.pretrain_steps)] if e.pretrains() else []
    if not c.checkpoints:
        jobs += [(layout.pretrain_dir(pid), c.steps) for pid in c.pretrain_ids()]
    loaded = f"loads {len(c.checkpoints)} backbone checkpoints" if c.checkpoints else ""
    if e.trains() and e.checkpoint:
        loaded += (" and " if loaded else "loads ") + "the evaluator's"
    return Work(NAME, tuple(jobs), "steps", (c.batch_size, "sequences"), note=loaded)


def run(ctx: Context) -> dict[str, str]:
    cfg = ctx.cfg
    c, e = cfg.pretrain, cfg.evaluator
    if not c.checkpoints or e.pretrains():
        ctx.need("testbed")
        ctx.run_planned(plan, lambda: work(cfg, ctx.root))
    # what the jobs load: a hub id at its pinned commit, a .bin-only checkpoint's conversion, a backbone here
    return {pid: ctx.resolve(backbone_ref(cfg, pid)) for pid in c.pretrain_ids()}


def job_pretrain(run_dir: str, out_rel: str, *, init_seed: int, data_seed: int, backbone: BackboneConfig,
                 recipe: PretrainConfig, steps: int, device: str, threads: int | None,
                 precision: str = "fp32", attention: str = "auto",
                 show_progress: bool = True, checkpoint_every: int = 0) -> dict:
    """Pretrain one backbone into run_dir/out_rel (atomically); returns its info. With `checkpoint_every`, the
    training state is checkpointed under run_dir/.checkpoints/out_rel, and a rerun of a killed job resumes
    there (:func:`perm.pretrain.pretrain`); the checkpoint is removed once the backbone is saved. `recipe`:
    the training fields (perm.config.PRETRAIN_TRAIN_FIELDS) but `steps`, which the evaluator's backbone has
    of its own."""
    import shutil

    from perm.models import attention_for, gpt_neox_config, load_tokenizer, save_model
    from perm.pretrain import pack_corpus, pretrain

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / layout.TOKENIZER)
    (texts,) = read_column(run / layout.CORPUS, "text")
    train = dict(recipe.train_args(), steps=steps)
    train_blocks, held = pack_corpus(texts, tok, train["seq_len"])
    cfg = gpt_neox_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          **backbone.shape())
    bar = job_bar(out_rel, train["steps"], show_progress, scale=(train["batch_size"], "sequences"))
    ckpt = run / layout.checkpoint_state(out_rel)
    model, info = pretrain(config=cfg, train_blocks=train_blocks, heldout_blocks=held, init_seed=init_seed,
                           data_seed=data_seed, device=dev, progress=bar, bf16=precision == "bf16",
                           attention=attention_for(dev, precision, attention), checkpoint_dir=ckpt,
                           checkpoint_every=checkpoint_every,
                            **{k: train[k]
                               for k in ("steps", "batch_size", "lr", "warmup_steps", "weight_decay")})
    bar.close()
    info.update(n_params=sum(p.numel() for p in model.parameters()), precision=precision,
                attention=model.config._attn_implementation)
    with atomic_path(run / out_rel) as tmp:
        record = {"config": {"backbone": backbone.shape(), **train}, **info}
        save_model(model, tok, tmp, record, layout.PRETRAIN_RECORD)
    shutil.rmtree(ckpt, ignore_errors=True)
    return info
