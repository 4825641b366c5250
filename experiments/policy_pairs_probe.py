"""Probe: does an RM trained on the SFT policy's own samples track gold on the pool?

    python experiments/policy_pairs_probe.py RUN_DIR N_POSTS policy|mix PAIRS_PER_POST

Uses a finished run (e.g. runs/bench-tiny from `python benchmarks/pipeline.py`): samples 2 x PAIRS_PER_POST
completions from the run's SFT policy for the first N_POSTS sft_train posts, labels each pair with the
testbed's Bradley-Terry raters on the gold reward, finetunes one RM from pretrain seed0 for one epoch
(`mix`: topped up to 10k pairs with the perturbation pairs of prefs_train), and reports its rank
correlation with gold on the run's pool and the exact best-of-n gold gain (centred per prompt).

Measured 2026-11-27 on runs/bench-tiny (tiny.yaml), 2 CPU cores:
  grid RMs (10k perturbation pairs):   pool Spearman 0.06-0.075; best-of-n gold n=2/4/64: +0.07/+0.07/-0.20
  3,182 policy pairs (4000 posts x 1):  pool Spearman 0.15;       +0.16/+0.24/+0.70   (21 s of training)
  9,600 policy pairs (4000 posts x 3):  pool Spearman 0.28;       +0.28/+0.38/+0.68   (60 s of training)
  (accuracy on the perturbation prefs_eval drops to ~0.45: a different distribution)
A run-level option for this (a `policy_prefs` stage between SFT and the RM grid) is the proposed fix for
the testbed's failing learnability check; see the README.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from scipy.stats import spearmanr

from perm.bon import expected_best_of_n, standardize
from perm.models import load_causal_lm, load_reward_backbone, load_tokenizer
from perm.policy import decode_samples, sample_pool
from perm.prefix import score_ids
from perm.reward import encode, train_reward_model
from perm.testbed.candidates import bradley_terry_labels
from perm.testbed.gold import gold_reward_batch

MAX_LEN = 192


def policy_pairs(run: str, tok, n_posts: int, pairs_per_post: int):
    """(prompts, chosen, rejected) from BT-gold labels on pairs of the run's SFT policy samples."""
    policy = load_causal_lm(f"{run}/policy").eval()
    sft = pq.read_table(f"{run}/data/sft_train.parquet").to_pandas().iloc[:n_posts]
    k = pairs_per_post
    pools = sample_pool(policy, tok, list(sft.prompt), n_samples=2 * k, temperature=1.0, top_p=1.0,
                        max_new_tokens=32, seed=123, batch_prompts=32)
    a = sum((decode_samples(tok, [p[2 * j] for p in pools]) for j in range(k)), [])
    b = sum((decode_samples(tok, [p[2 * j + 1] for p in pools]) for j in range(k)), [])
    posts = pd.concat([sft] * k, ignore_index=True)
    ga, gb = gold_reward_batch(list(posts.post), a), gold_reward_batch(list(posts.post), b)
    keep = ga != gb
    a_first = bradley_terry_labels(ga, gb, np.random.default_rng(0))[keep]
    a, b = np.asarray(a)[keep], np.asarray(b)[keep]
    agree = np.mean(np.where(a_first, ga[keep] > gb[keep], gb[keep] > ga[keep]))
    print(f"policy pairs {keep.sum()}, labels agreeing with gold {agree:.3f}")
    return list(posts.prompt[keep]), list(np.where(a_first, a, b)), list(np.where(a_first, b, a))


def main(run: str, n_posts: int, mode: str, pairs_per_post: int) -> None:
    torch.set_num_threads(2)
    tok = load_tokenizer(f"{run}/tokenizer")
    prompts, chosen, rejected = policy_pairs(run, tok, n_posts, pairs_per_post)
    if mode == "mix":
        t = pq.read_table(f"{run}/data/prefs_train.parquet").to_pandas().iloc[: max(0, 10000 - len(chosen))]
        prompts, chosen, rejected = prompts + list(t.prompt), chosen + list(t.chosen), rejected + list(t.rejected)
    ev = pq.read_table(f"{run}/data/prefs_eval.parquet").to_pandas()
    rm = load_reward_backbone(f"{run}/pretrain/seed0", pad_token_id=tok.pad_token_id, head_seed=1)
    state = train_reward_model(
        rm, chosen=encode(tok, prompts, chosen, MAX_LEN), rejected=encode(tok, prompts, rejected, MAX_LEN),
        eval_chosen=encode(tok, list(ev.prompt), list(ev.chosen), MAX_LEN),
        eval_rejected=encode(tok, list(ev.prompt), list(ev.rejected), MAX_LEN), pad_id=tok.pad_token_id,
        center_coef=0.01, epochs=1.0, batch_size=32, lr=1e-3, warmup_frac=0.06, weight_decay=0.0,
        max_grad_norm=1.0, eval_every=10**9, data_seed=1, dropout_seed=1)
    rm = state["model"]
    print(f"prefs_eval accuracy {state['evals'][-1]['accuracy']:.3f}, {len(chosen)} pairs, {state['wall_s']:.0f} s")
    s = pq.read_table(f"{run}/samples.parquet").to_pandas()
    s = s[~s.is_reference].sort_values(["prompt_id", "sample_id"])
    prompt_of = pq.read_table(f"{run}/data/eval_prompts.parquet").to_pandas().set_index("prompt_id").prompt
    s = s.assign(r=score_ids(rm, encode(tok, list(prompt_of.loc[s.prompt_id]), list(s.text), MAX_LEN),
                             tok.pad_token_id, "cpu"))
    rho = [spearmanr(g.r, g.gold_reward).statistic for _, g in s.groupby("prompt_id") if g.gold_reward.nunique() > 1]
    print(f"pool Spearman with gold {np.nanmean(rho):.3f}")
    n_prompts = s.prompt_id.nunique()
    proxy = s.r.to_numpy().reshape(n_prompts, -1)
    gold = standardize(s.gold_reward.to_numpy().reshape(n_prompts, -1))
    print("best-of-n gold gain:", {n: round(float(expected_best_of_n(proxy, gold, n).mean()), 3) for n in (2, 4, 16, 64)})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
