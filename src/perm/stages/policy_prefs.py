"""`perm` stage policy-prefs: preference pairs of the SFT policy's own samples on sft_train posts, labelled by
the testbed's Bradley-Terry raters on the gold reward (perm.policy.sample_pool, perm.testbed.gold,
perm.testbed.candidates.bradley_terry_labels), for `reward.pairs: policy | mix`. Manifest name
`policy-prefs`; outputs policy_prefs.parquet (training) and policy_prefs_eval.parquet (pairs on the posts the
SFT policy held out: the RMs' in-distribution eval set). With `evaluator.extra_posts`, manifest name
`evaluator-prefs` too: the same kind of pairs on that many prefs_train posts, from a random stream of their
own, in evaluator_prefs.parquet (the evaluator's training pairs after the grid's). With `reward.pairs_from`
(the testbed kit's pairs, or a folder of them) the same files are copied into the run instead, under the same
manifest names, keyed on the source's identity (the kit's recorded hash, or the files' content): nothing is
sampled. Returns the grid RMs' training pair files."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from perm import run_layout as layout
from perm.config import RunConfig
from perm.progress import job_bar
from perm.stages._context import (
    Context,
    autocast,
    data_identity,
    pairs_name,
    policy_identity,
    read_column,
    stage_key,
    torch_setup,
)
from perm.stages._grid import (
    EVALUATOR_PAIRS,
    EVALUATOR_POSTS,
    POLICY_PAIRS,
    extra_posts,
    pair_files,
    policy_ref,
    sft_heldout,
)
from perm.stages._plan import POOLED_ENV, Job, Work, parquet_rows, planned_keys
from perm.store import derive_seed, hash_obj

NAME = "policy-prefs"
NEEDS = ("testbed", "sft")
WRITES = {"policy-prefs": POLICY_PAIRS, "evaluator-prefs": (EVALUATOR_PAIRS,)}
SUMMARY = ("Draw preference pairs of the SFT policy's own samples, labelled on the gold reward "
           "(reward.pairs: policy | mix), or copy reward.pairs_from.")
TAKES_TENSOR = False
CHUNK_ROWS = 576


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """The policy pairs' job (and the evaluator's, with `evaluator.extra_posts`): drawn from the policy, or
    copied from `reward.pairs_from`; none with testbed pairs."""
    c, p = cfg.reward, cfg.policy_pairs
    if c.pairs == "testbed":
        return []
    parts = [("policy-prefs", POLICY_PAIRS)] + ([("evaluator-prefs", (EVALUATOR_PAIRS,))]
                                                if extra_posts(cfg) else [])
    if c.pairs_from:  # copied from a kit or folder: keyed on its identity alone (no precision: no sampling)
        source = upstream[pairs_name(c.pairs_from)]
        testbed = cfg.testbed if cfg.data.prefs is None else None
        return [Job(name, hash_obj({"pairs_from": source, "files": list(files)}), job_copy_pairs,
                    dict(spec=c.pairs_from, files=files, testbed=testbed), files, announce=False)
                for name, files in parts]
    common = {"policy": policy_identity(cfg, upstream), "testbed": data_identity(cfg, upstream),
              "per_post": p.per_post, "kwise": p.kwise, "seed": p.seed,
              "max_new_tokens": p.max_new_tokens, "chunk": chunk_prompts(cfg),
              "label_temperature": cfg.testbed.label_temperature,
              **({"kv_cache": "compute dtype"} if cfg.precision == "bf16" else {})}  # as the sample stage's
    args = dict(policy=policy_ref(cfg), pairs_per_post=p.per_post, kwise=p.kwise,
                max_new_tokens=p.max_new_tokens, seed=p.seed, batch_prompts=chunk_prompts(cfg),
                label_temperature=cfg.testbed.label_temperature)
    jobs = [Job("policy-prefs", stage_key(cfg, {**common, "heldout": "sft"}), job_policy_prefs,
                dict(args, out_rel=layout.POLICY_PREFS), POLICY_PAIRS, POOLED_ENV,
                start={"pairs_per_post": p.per_post, "kwise": p.kwise})]
    if extra_posts(cfg):
        key = stage_key(cfg, {**common, "posts": EVALUATOR_POSTS, "n_posts": extra_posts(cfg),
                              "stream": "evaluator-prefs"})
        jobs.append(Job("evaluator-prefs", key, job_policy_prefs,
                        dict(args, out_rel=EVALUATOR_PAIRS, posts_rel=EVALUATOR_POSTS,
                             n_posts=extra_posts(cfg), heldout=False, stream="evaluator-prefs"),
                        (EVALUATOR_PAIRS,), POOLED_ENV, start={"posts": extra_posts(cfg)}))
    return jobs


keys = planned_keys(plan)


def samples_per_post(cfg: RunConfig) -> int:
    """Samples the policy draws per sft_train post: K (K-wise) or two per disjoint pair."""
    p = cfg.policy_pairs
    return p.kwise if p.kwise else 2 * p.per_post


def work(cfg: RunConfig, root: Path) -> Work | None:
    """The pair-drawing jobs (policy-prefs, and evaluator-prefs with `evaluator.extra_posts`): posts each,
    K (or two per pair) samples a post; none with testbed pairs."""
    if cfg.reward.pairs == "testbed":
        return None
    if cfg.reward.pairs_from:
        return Work(NAME, note=f"copies the policy pairs of {cfg.reward.pairs_from}")
    jobs = [("policy-prefs", parquet_rows(root / layout.SFT_TRAIN) or cfg.testbed.n_sft)]
    if extra_posts(cfg):
        jobs.append(("evaluator-prefs", extra_posts(cfg)))
    return Work(NAME, tuple(jobs), "posts", (samples_per_post(cfg), "samples"))


def chunk_prompts(cfg: RunConfig) -> int:
    """Posts sampled together (one seed each chunk): about CHUNK_ROWS rows per decode batch, as many as the
    default `sample` stage runs (8 prompts x 72 samples), so the pairs are drawn as fast as the pool. Depends
    on the samples per post alone, so resizing the pool does not redraw the RMs' training pairs."""
    return max(1, CHUNK_ROWS // samples_per_post(cfg))


def run(ctx: Context) -> tuple[str, ...]:
    cfg = ctx.cfg
    if cfg.reward.pairs != "testbed":
        ctx.need("testbed")
        if not cfg.reward.pairs_from:
            ctx.need("sft")
        ctx.run_planned(plan)
    return pair_files(cfg)


def job_copy_pairs(run_dir: str, *, spec: str, files: tuple[str, ...], testbed) -> dict:
    """`reward.pairs_from`: copy its pair files `files` into the run, after checking the kit's files against
    their recorded sha256 and `testbed` (perm.shipped.pairs_folder; None: a user's data)."""
    import shutil

    from perm.shipped import pairs_folder
    from perm.store import atomic_path

    folder, run = pairs_folder(spec, files, testbed), Path(run_dir)
    info = {"pairs_from": spec}
    for f in files:
        with atomic_path(run / f) as tmp:
            shutil.copyfile(folder / f, tmp)
        info[f"{f.removesuffix('.parquet')}_pairs"] = parquet_rows(run / f)
    return info


def kwise_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b) of a post's samples: all C(k, 2) of them, a < b, in lexicographic order."""
    a, b = np.triu_indices(k, 1)
    return a.astype(np.int64), b.astype(np.int64)


def job_policy_prefs(run_dir: str, out_rel: str, *, policy: str, pairs_per_post: int, max_new_tokens: int,
                     seed: int, batch_prompts: int, device: str, threads: int | None,
                     kwise: int | None = None, label_temperature: float | None = None,
                     precision: str = "fp32", attention: str = "auto",
                     show_progress: bool = True, eval_rel: str = layout.POLICY_PREFS_EVAL,
                     posts_rel: str = layout.SFT_TRAIN, n_posts: int | None = None, heldout: bool = True,
                     stream: str = "policy-prefs") -> dict:
    """Preference pairs of the SFT policy's own samples on sft_train posts, labelled by the testbed's
    Bradley-Terry raters on the gold reward (ties dropped), as TL;DR comparisons were collected.

    Disjoint (`kwise` None): 2 x pairs_per_post samples per post, paired (0, 1), (2, 3), ...; K-wise: K
    samples per post and every one of their C(K, 2) pairs, each labelled by its own rater draw (InstructGPT's
    comparisons), with `sample_a` / `sample_b` naming the two samples so a completion can be scored once for
    all its pairs. `batch_prompts` posts are sampled together, each chunk with its own seed. Pairs on the
    posts the SFT policy held out go to `eval_rel` (in-distribution accuracy), the rest to
    `out_rel` (training).

    posts_rel, n_posts: the distinct prompts of another testbed file (in file order, the first `n_posts`; its
    posts are read back from the prompts), e.g. prefs_train's for the evaluator's own pairs; heldout=False
    then writes every pair to `out_rel` and no eval file. stream: the name the sampling and label seeds are
    derived from (another stream, other samples and labels)."""
    import pyarrow as pa

    from perm.models import attention_for, load_causal_lm, load_tokenizer, use_attention
    from perm.policy import decode_samples, sample_pool
    from perm.store import atomic_write_parquet
    from perm.testbed.candidates import bradley_terry_labels
    from perm.testbed.gold import gold_reward_batch

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / layout.TOKENIZER)
    model = use_attention(load_causal_lm(policy).to(dev).eval(), attention_for(dev, precision, attention))
    if posts_rel == layout.SFT_TRAIN:
        prompts, posts = read_column(run / posts_rel, "prompt", "post")
    else:  # a pairs file (one or more rows per post): its distinct prompts, in order
        from perm.testbed import post_from_prompt

        prompts = list(dict.fromkeys(read_column(run / posts_rel, "prompt")[0]))
        posts = [post_from_prompt(q) for q in prompts]
    if n_posts is not None:
        if n_posts > len(prompts):
            raise ValueError(f"policy-prefs: {n_posts} posts asked of {posts_rel}, which has {len(prompts)}")
        prompts, posts = prompts[:n_posts], posts[:n_posts]
    if kwise is not None and kwise < 2:
        raise ValueError(f"policy-prefs: kwise must be >= 2, got {kwise}")
    n_per = kwise if kwise else 2 * pairs_per_post
    ia, ib = kwise_pairs(kwise) if kwise else (np.arange(0, n_per, 2), np.arange(1, n_per, 2))
    per_post = len(ia)
    t0 = time.perf_counter()
    bar = job_bar(stream, len(prompts), show_progress, unit="posts", scale=(n_per, "samples"))
    first, second, sa, sb = [], [], [], []
    for i in range(0, len(prompts), batch_prompts):
        with autocast(dev, precision):
            pools = sample_pool(model, tok, prompts[i : i + batch_prompts], n_samples=n_per, temperature=1.0,
                                top_p=1.0, max_new_tokens=max_new_tokens, seed=derive_seed(stream, seed, i),
                                batch_prompts=batch_prompts, device=dev)
        for j, pool in enumerate(pools):
            texts = decode_samples(tok, pool)
            first += [texts[a] for a in ia]
            second += [texts[b] for b in ib]
            sa += [(i + j) * n_per + int(a) for a in ia]
            sb += [(i + j) * n_per + int(b) for b in ib]
        bar(min(i + batch_prompts, len(prompts)), len(prompts))
    bar.close()
    sample_s = time.perf_counter() - t0
    p_rep = [p for p in prompts for _ in range(per_post)]
    post_rep = [p for p in posts for _ in range(per_post)]
    ga, gb = gold_reward_batch(post_rep, first), gold_reward_batch(post_rep, second)
    keep = ga != gb
    a_wins = bradley_terry_labels(ga, gb, np.random.default_rng(derive_seed(f"{stream}-labels", seed)),
                                  label_temperature)
    sel = np.flatnonzero(keep)
    chosen = [first[i] if a_wins[i] else second[i] for i in sel]
    rejected = [second[i] if a_wins[i] else first[i] for i in sel]
    g_c = np.where(a_wins, ga, gb)[sel]
    g_r = np.where(a_wins, gb, ga)[sel]
    s_c = np.where(a_wins, sa, sb)[sel]
    s_r = np.where(a_wins, sb, sa)[sel]
    columns = {"prompt": [p_rep[i] for i in sel], "chosen": chosen, "rejected": rejected,
               "gold_chosen": pa.array(g_c, pa.float64()), "gold_rejected": pa.array(g_r, pa.float64()),
               "label_agrees_gold": pa.array(g_c > g_r),
               "sample_chosen": pa.array(s_c, pa.int64()), "sample_rejected": pa.array(s_r, pa.int64())}
    table = pa.table(columns)
    held = sel // per_post < (sft_heldout(len(prompts)) if heldout else 0)  # posts the SFT policy held out
    if heldout and (not held.any() or held.all()):
        raise ValueError(f"policy-prefs: {int(held.sum())} held-out and {int((~held).sum())} training pairs "
                         f"({sft_heldout(len(prompts))} held-out posts x {per_post} pairs, ties dropped); "
                         "raise testbed.n_sft or policy_pairs.per_post")
    wall = time.perf_counter() - t0
    info = {"wall_s": wall, "sample_s": sample_s, "samples": len(prompts) * n_per,
            "samples_per_s": len(prompts) * n_per / sample_s, "kwise": kwise, "chunk_prompts": batch_prompts,
            "precision": precision, "attention": model.config._attn_implementation,
            "posts": len(prompts), "posts_file": posts_rel, "stream": stream}
    for name, rel, rows in (("train", out_rel, ~held), ("eval", eval_rel, held))[: 2 if heldout else 1]:
        part = table.filter(pa.array(rows))
        part = part.add_column(0, "pair_id", pa.array(range(part.num_rows), pa.int64()))
        atomic_write_parquet(run / rel, part)
        info[f"{name}_pairs"] = part.num_rows
        info[f"{name}_label_agreement"] = float(np.mean(part.column("label_agrees_gold").to_numpy()))
    return info
