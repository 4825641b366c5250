"""`perm sample`: a pool of `sample.pool_size` candidates plus `sample.n_reference` separate reference samples
per eval prompt from the SFT policy (perm.policy.sample_pool), with the gold reward on the testbed.
Manifest name `sample`; output samples.parquet. Returns its path."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq

from perm import run_layout as layout
from perm.config import RunConfig, SampleConfig
from perm.progress import job_bar
from perm.stages._context import Context, autocast, data_identity, policy_identity, stage_key, torch_setup
from perm.stages._grid import eval_prompts, policy_ref
from perm.stages._plan import POOLED_ENV, Job, Work, planned_keys
from perm.store import derive_seed, trim_heap

NAME = "sample"
NEEDS = ("testbed", "sft")
WRITES = {"sample": (layout.SAMPLES,)}
SUMMARY = f"Sample a pool of candidates (+ reference samples) per eval prompt into {layout.SAMPLES}."
TAKES_TENSOR = False


def sampling_key(cfg: RunConfig) -> dict:
    """The sample key's slice of the config, under the names it was first recorded with: every field of the
    `sample` section but `memory_gb` (how many prompts decode at once: the samples do not depend on it) and
    `sft.init_from`."""
    s = cfg.sample
    return {"init_from": cfg.sft.init_from, "pool_size": s.pool_size, "n_reference": s.n_reference,
            "temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
            "seed": s.seed, "batch_prompts": s.batch_prompts}


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """The sampling job, from the policy (the SFT stage's, or `sft.checkpoint`)."""
    # keys cached in bf16 (as values) under bf16: not the samples of fp32-cached keys
    kv = {"kv_cache": "compute dtype"} if cfg.precision == "bf16" else {}
    key = stage_key(cfg, {"sampling": sampling_key(cfg), **kv, "policy": policy_identity(cfg, upstream),
                          "testbed": data_identity(cfg, upstream)})
    s = cfg.sample
    args = dict(out_rel=layout.SAMPLES, policy=policy_ref(cfg), sampling=s,
                trust_remote_code=cfg.pretrain.trust_remote_code)
    # in a worker (its share of the cores), so that it can fill one the RM stage leaves idle (Context.ahead)
    return [Job("sample", key, job_sample, args, (layout.SAMPLES,), POOLED_ENV, {"sampling_seed": s.seed},
                "pool")]


keys = planned_keys(plan)


def work(cfg: RunConfig, root: Path) -> Work:
    """The sampling job: its eval prompts, `pool_size` + `n_reference` samples each."""
    n, bound = eval_prompts(cfg, root)
    return Work(NAME, (("sample", n),), "prompts", (cfg.sample.pool_size + cfg.sample.n_reference, "samples"),
                bound=bound)


def run(ctx: Context) -> Path:
    ctx.need("sft")
    ctx.need("testbed")
    ctx.run_planned(plan, lambda: work(ctx.cfg, ctx.root))
    return ctx.root / layout.SAMPLES


def job_sample(run_dir: str, out_rel: str, *, policy: str, sampling: SampleConfig, device: str,
               threads: int | None,
               precision: str = "fp32", attention: str = "auto", show_progress: bool = True,
               trust_remote_code: bool = False) -> dict:
    """Pool of N + K reference samples per eval prompt -> samples.parquet (with gold reward on the testbed).
    """
    from perm.models import attention_for, load_causal_lm, load_tokenizer, use_attention
    from perm.policy import build_samples_table, sample_pool
    from perm.store import atomic_write_parquet

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(policy if (Path(policy) / "tokenizer.json").exists() else run / layout.TOKENIZER,
                         trust_remote_code=trust_remote_code)
    model = load_causal_lm(policy, trust_remote_code=trust_remote_code).to(dev).eval()
    use_attention(model, attention_for(dev, precision, attention))
    if tok.pad_token_id >= model.get_input_embeddings().num_embeddings:
        # perm added a pad token the policy has no embedding for; padding is masked, so EOS can stand in
        tok.pad_token = tok.eos_token
    t = pq.read_table(run / layout.EVAL_PROMPTS).to_pandas()
    n, k = sampling.pool_size, sampling.n_reference
    t0 = time.perf_counter()
    pools = []
    bar = job_bar("sample", len(t), show_progress, unit="prompts", scale=(n + k, "samples"))
    step = sampling.batch_prompts
    memory = None if sampling.memory_gb is None else int(sampling.memory_gb * 1e9)
    for i in range(0, len(t), step):
        # one seed per chunk of `batch_prompts` prompts (batch_prompts is part of the stage key)
        with autocast(dev, precision):
            pools += sample_pool(model, tok, list(t.prompt[i : i + step]), n_samples=n + k,
                                 temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_new_tokens=sampling.max_new_tokens,
                                 seed=derive_seed("sample", sampling.seed, i), batch_prompts=step,
                                 device=dev, memory_bytes=memory)
        bar(min(i + step, len(t)), len(t))
        trim_heap()  # each decode batch leaves buffers of other sizes: return their pages
    bar.close()
    gold_fn = None
    if "post" in t.columns:
        from perm.testbed.gold import gold_reward as gold_fn
    table = build_samples_table(list(t.prompt_id), [p[:n] for p in pools], [p[n:] for p in pools], tok,
                                gold_fn=gold_fn, posts=list(t.post) if gold_fn else None,
                                max_new_tokens=sampling.max_new_tokens)
    atomic_write_parquet(run / out_rel, table)
    wall = time.perf_counter() - t0
    info = {"rows": table.num_rows, "wall_s": wall, "samples_per_s": table.num_rows / wall,
            "precision": precision, "attention": model.config._attn_implementation}
    if gold_fn:
        df = table.to_pandas()
        info["mean_gold"] = float(df[~df.is_reference].gold_reward.mean())
        info["mean_tokens"] = float(df.n_tokens.mean())
        info["frac_eos"] = float(df.ended_with_eos.mean())
    return info

