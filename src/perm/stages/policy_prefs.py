"""`perm` stage policy-prefs: preference pairs of the SFT policy's own samples on sft_train posts, labelled by
the testbed's Bradley-Terry raters on the gold reward (perm.policy.sample_pool, perm.testbed.gold,
perm.testbed.candidates.bradley_terry_labels), for `reward.pairs: policy | mix`. Manifest name
`policy-prefs`; outputs policy_prefs.parquet (training) and policy_prefs_eval.parquet (pairs on the posts the
SFT policy held out: the RMs' in-distribution eval set). Returns the RMs' training pair files."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from perm.config import RunConfig
from perm.progress import Progress
from perm.stages._context import (
    Context,
    autocast,
    data_identity,
    policy_identity,
    read_column,
    stage_key,
    torch_setup,
)
from perm.stages.sft import sft_heldout
from perm.store import derive_seed

NAME = "policy-prefs"
NEEDS = ("testbed", "sft")
TESTBED_PAIRS = ("data/prefs_train.parquet",)


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    c, p = cfg.reward, cfg.policy
    if c.pairs == "testbed":
        return {}
    return {"policy-prefs": stage_key(cfg, {
        "policy": policy_identity(cfg, upstream), "testbed": data_identity(cfg, upstream),
        "per_post": c.policy_pairs_per_post, "seed": p.seed, "max_new_tokens": p.max_new_tokens,
        "batch_prompts": p.batch_prompts, "heldout": "sft"})}


def pair_files(cfg: RunConfig) -> tuple[str, ...]:
    """Training pair files for `reward.pairs`: the testbed's, the policy's own, or both (policy pairs first)."""
    c = cfg.reward
    if c.pairs == "testbed":
        return TESTBED_PAIRS
    return ("policy_prefs.parquet",) + (TESTBED_PAIRS if c.pairs == "mix" else ())


def eval_pair_files(cfg: RunConfig) -> tuple[str, ...]:
    """Held-out pairs for the RMs: in distribution first (policy pairs on the SFT's held-out posts when the
    RMs train on policy pairs), then the testbed's prefs_eval."""
    if cfg.reward.pairs == "testbed":
        return ("data/prefs_eval.parquet",)
    return ("policy_prefs_eval.parquet", "data/prefs_eval.parquet")


def pairs_key(cfg: RunConfig, upstream: Mapping[str, str]) -> dict:
    """What the RMs' training pairs depend on beyond the testbed (empty for the testbed's own pairs)."""
    if cfg.reward.pairs == "testbed":
        return {}
    return {"pairs": cfg.reward.pairs, "policy_prefs": upstream["policy-prefs"]}


def run(ctx: Context) -> tuple[str, ...]:
    cfg = ctx.cfg
    c, p = cfg.reward, cfg.policy
    if c.pairs != "testbed":
        ctx.need("testbed")
        policy = ctx.need("sft")
        key = keys(cfg, ctx.upstream())["policy-prefs"]
        ctx.run_one("policy-prefs", key, lambda: job_policy_prefs(
            str(ctx.root), "policy_prefs.parquet", policy=policy, pairs_per_post=c.policy_pairs_per_post,
            max_new_tokens=p.max_new_tokens, seed=p.seed, batch_prompts=p.batch_prompts,
            **ctx.job_env(pooled=False)),
            ["policy_prefs.parquet", "policy_prefs_eval.parquet"], pairs_per_post=c.policy_pairs_per_post)
    return pair_files(cfg)


def job_policy_prefs(run_dir: str, out_rel: str, *, policy: str, pairs_per_post: int, max_new_tokens: int,
                     seed: int, batch_prompts: int, device: str, threads: int | None, precision: str = "fp32",
                     attention: str = "auto", show_progress: bool = True,
                     eval_rel: str = "policy_prefs_eval.parquet") -> dict:
    """Preference pairs of the SFT policy's own samples on sft_train posts, labelled by the testbed's
    Bradley-Terry raters on the gold reward (ties dropped), as TL;DR comparisons were collected.

    Pairs on the posts the SFT policy held out go to `eval_rel` (in-distribution accuracy), the rest to
    `out_rel` (training)."""
    import numpy as np
    import pyarrow as pa

    from perm.models import attention_for, load_causal_lm, load_tokenizer, use_attention
    from perm.policy import decode_samples, sample_pool
    from perm.store import atomic_write_parquet
    from perm.testbed.candidates import bradley_terry_labels
    from perm.testbed.gold import gold_reward_batch

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / "tokenizer")
    model = use_attention(load_causal_lm(policy).to(dev).eval(), attention_for(dev, precision, attention))
    prompts, posts = read_column(run / "data" / "sft_train.parquet", "prompt", "post")
    k = pairs_per_post
    t0 = time.perf_counter()
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, len(prompts))
    first, second = [], []
    for i in range(0, len(prompts), batch_prompts):
        with autocast(dev, precision):
            pools = sample_pool(model, tok, prompts[i : i + batch_prompts], n_samples=2 * k, temperature=1.0,
                                top_p=1.0, max_new_tokens=max_new_tokens, seed=derive_seed("policy-prefs", seed, i),
                                batch_prompts=batch_prompts, device=dev)
        for pool in pools:  # pairs (0, 1), (2, 3), ... of each post
            texts = decode_samples(tok, pool)
            first += texts[0::2]
            second += texts[1::2]
        bar(min(i + batch_prompts, len(prompts)), len(prompts))
    bar.close()
    p_rep = [p for p in prompts for _ in range(k)]
    post_rep = [p for p in posts for _ in range(k)]
    ga, gb = gold_reward_batch(post_rep, first), gold_reward_batch(post_rep, second)
    keep = ga != gb
    a_wins = bradley_terry_labels(ga, gb, np.random.default_rng(derive_seed("policy-prefs-labels", seed)))
    sel = np.flatnonzero(keep)
    chosen = [first[i] if a_wins[i] else second[i] for i in sel]
    rejected = [second[i] if a_wins[i] else first[i] for i in sel]
    g_c = np.where(a_wins, ga, gb)[sel]
    g_r = np.where(a_wins, gb, ga)[sel]
    columns = {"prompt": [p_rep[i] for i in sel], "chosen": chosen, "rejected": rejected,
               "gold_chosen": pa.array(g_c, pa.float64()), "gold_rejected": pa.array(g_r, pa.float64()),
               "label_agrees_gold": pa.array(g_c > g_r)}
    table = pa.table(columns)
    held = sel // k < sft_heldout(len(prompts))  # pairs on the posts the SFT policy held out
    if not held.any() or held.all():
        raise ValueError(f"policy-prefs: {int(held.sum())} held-out and {int((~held).sum())} training pairs "
                         f"({sft_heldout(len(prompts))} held-out posts x {k} pairs, ties dropped); raise "
                         "testbed.n_sft or reward.policy_pairs_per_post")
    info = {"wall_s": time.perf_counter() - t0, "precision": precision, "attention": model.config._attn_implementation}
    for name, rel, rows in (("train", out_rel, ~held), ("eval", eval_rel, held)):
        part = table.filter(pa.array(rows))
        part = part.add_column(0, "pair_id", pa.array(range(part.num_rows), pa.int64()))
        atomic_write_parquet(run / rel, part)
        info[f"{name}_pairs"] = part.num_rows
        info[f"{name}_label_agreement"] = float(np.mean(part.column("label_agrees_gold").to_numpy()))
    return info

