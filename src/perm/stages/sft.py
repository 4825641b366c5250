"""`perm sft`: the SFT policy, trained on sft_train's reference summaries (perm.policy.train_sft, summary
tokens only) from a backbone of its own (`sft.init_from` naming a checkpoint, by default the shipped
testbed backbone of pretrain seed 5, which no grid RM shares), the first pretrained backbone or from scratch —
or `sft.checkpoint` registered instead (a local dir, a hub id, or the testbed kit's `testbed:kit/policy`,
verified against its recorded hash and testbed). Manifest name `policy`; output policy/. Returns the policy's
directory or hub id."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import BackboneConfig, RunConfig, SftConfig
from perm.progress import job_bar
from perm.stages._context import (
    Context,
    backbone_identity,
    checkpoint_name,
    data_identity,
    read_column,
    stage_key,
    torch_setup,
)
from perm.stages._grid import backbone_ref, policy_ref, sft_heldout
from perm.stages._plan import POOLED_ENV, Checkpoint, Job, Work, optimizer_steps, parquet_rows, planned_keys
from perm.store import atomic_path, derive_seed

NAME = "sft"
NEEDS = ("testbed", "pretrain")
WRITES = {layout.POLICY: (layout.POLICY,)}
SUMMARY = "Train the SFT policy (summary tokens only), or register sft.checkpoint."
TAKES_TENSOR = False
SFT_DATA_SEED = derive_seed("sft-data-order", 0)


def sft_key(cfg: RunConfig) -> dict:
    """The policy key's slice of the `sft` section, under the names it was first recorded with."""
    return sft_record(cfg.sft)


def sft_record(c: SftConfig) -> dict:
    """The recipe a trained policy's policy.json records (the names of the kit's recorded policy)."""
    return {"sft_epochs": c.epochs, "sft_lr": c.lr, "sft_batch_size": c.batch_size}


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """The SFT job; none where `sft.checkpoint` is the policy."""
    c = cfg.sft
    if c.checkpoint:
        return []
    if c.init_checkpoint():
        init, init_ref = upstream[checkpoint_name(c.init_checkpoint())], Checkpoint(c.init_checkpoint())
    elif c.init_from == "pretrain":
        pid = cfg.pretrain.pretrain_ids()[0]
        init, init_ref = backbone_identity(cfg, upstream, pid), backbone_ref(cfg, pid)
    else:
        init, init_ref = cfg.pretrain.backbone, None
    key = stage_key(cfg, {"sft": sft_key(cfg), "init": init, "testbed": data_identity(cfg, upstream),
                          "max_length": cfg.reward.max_length})
    args = dict(out_rel=layout.POLICY, init=init_ref, backbone=cfg.pretrain.backbone, sft=c,
                max_length=cfg.reward.max_length)
    return [Job("policy", key, job_sft, args, (layout.POLICY,), POOLED_ENV, {"data_seed": SFT_DATA_SEED},
                start={"init": c.init_from})]


keys = planned_keys(plan)


def run(ctx: Context) -> str:
    cfg = ctx.cfg
    c = cfg.sft
    if not c.checkpoint:
        ctx.need("testbed")
        if not c.init_checkpoint() and c.init_from == "pretrain":
            ctx.need("pretrain")
        ctx.run_planned(plan)
    return ctx.resolve(policy_ref(cfg))  # sft.checkpoint: pinned to its commit / converted, as every one


def work(cfg: RunConfig, root: Path) -> Work:
    """The SFT job and its optimizer steps (of `sft.batch_size` sequences); none with `sft.checkpoint`."""
    c = cfg.sft
    if c.checkpoint:
        return Work(NAME, note=f"loads the policy {c.checkpoint}")
    n = parquet_rows(root / layout.SFT_TRAIN) or cfg.testbed.n_sft
    return Work(NAME, (("policy", optimizer_steps(n - sft_heldout(n), c.epochs, c.batch_size)),),
                "steps", (c.batch_size, "sequences"))


def job_sft(run_dir: str, out_rel: str, *, init: str | None, backbone: BackboneConfig, sft: SftConfig,
            max_length: int,
            device: str, threads: int | None, precision: str = "fp32", attention: str = "auto",
            show_progress: bool = True) -> dict:
    """Train the SFT policy on sft_train (summary tokens only) from `init` (a backbone dir)
    or from scratch."""
    from perm.models import (
        attention_for,
        gpt_neox_config,
        load_causal_lm,
        load_tokenizer,
        make_accelerator,
        new_causal_lm,
        save_model,
        use_attention,
    )
    from perm.policy import train_sft

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / layout.TOKENIZER)
    data_seed = SFT_DATA_SEED
    if init is not None:
        model = load_causal_lm(init)
    else:
        cfg = gpt_neox_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, **backbone.shape())
        model = new_causal_lm(cfg, derive_seed("sft-init", 0))
    use_attention(model, attention_for(dev, precision, attention))
    prompts, completions = read_column(run / layout.SFT_TRAIN, "prompt", "completion")
    n_eval = sft_heldout(len(prompts))
    bar = job_bar(out_rel, 1, show_progress, scale=(sft.batch_size, "sequences"))
    state = train_sft(model.to(dev), tok, prompts[n_eval:], completions[n_eval:], epochs=sft.epochs,
                      lr=sft.lr, batch_size=sft.batch_size, max_length=max_length,
                      data_seed=data_seed,
                      eval_prompts=prompts[:n_eval], eval_completions=completions[:n_eval], progress=bar,
                      accelerator=make_accelerator(dev, precision))
    bar.close()
    model = state.pop("model")
    info = {k: v for k, v in state.items() if isinstance(v, int | float | str)}
    info.update(data_seed=data_seed, init=init or "scratch", precision=precision,
                attention=model.config._attn_implementation)
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, {"config": sft_record(sft), **info}, layout.POLICY_RECORD)
    return info
