"""Candidate sampling: perm's shared-prefill ``sample_pool`` vs ``generate(num_return_sequences=N)``.

    python benchmarks/sampling.py [--prompts 8] [--n 64] [--prompt-len 200] [--new-tokens 30] [--threads 1]

Tiny GPT-NeoX causal LM (see _bench.py), random 200-token prompts, CPU, fp32, ancestral sampling
(temperature 1, top-p 1), 8 prompts per batch. The EOS logit's weights are zeroed so that both methods
decode (nearly) all 30 tokens of every sample. ``sample_pool`` prefills each prompt once and repeats its KV
cache N times; ``generate`` expands the input N times first and prefills every copy.
"""

from __future__ import annotations

import argparse
import time

import _bench as B


def run(method: str, prompts: int, n: int, prompt_len: int, new_tokens: int) -> dict:
    import numpy as np
    import torch

    from perm.models import new_causal_lm
    from perm.policy import sample_pool, sample_pool_plain

    model = new_causal_lm(B.tiny_config(), 0).eval()
    with torch.no_grad():
        model.lm_head.weight[B.EOS].zero_()  # EOS rare: both methods decode ~all new tokens
    tok = B.tokenizer()
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in B.random_ids(rng, prompt_len)) for _ in range(prompts)]
    assert all(len(tok(t)["input_ids"]) == prompt_len for t in texts)
    fn = sample_pool if method == "perm" else sample_pool_plain
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=0, batch_prompts=8, device="cpu")
    start_rss = B.rss_mb()
    fn(model, tok, texts[:1], n_samples=2, **kw)  # warm-up
    t0 = time.perf_counter()
    pools = fn(model, tok, texts, n_samples=n, **kw)
    seconds = time.perf_counter() - t0
    generated = sum(len(c) + c.ended_with_eos for pool in pools for c in pool)
    # decode: each generated token after the first attends to the prompt and the tokens before it; the
    # first token of each sample comes from the prefill's logits. lm_head on one position per row and step.
    steps = generated - prompts * n
    decode_pairs = prompts * n * sum(prompt_len + t for t in range(1, new_tokens))
    prefill_rows = prompts if method == "perm" else prompts * n
    flops = prefill_rows * B.forward_flops(
        prompt_len, B.causal_pairs(prompt_len), 1, B.VOCAB
    ) + B.forward_flops(steps, decode_pairs, steps, B.VOCAB)
    return {"seconds": seconds, "flops": flops, "start_rss_mb": start_rss, "generated": generated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(B.machine(a.threads))
    peak = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    print(f"{a.prompts} prompts of {a.prompt_len} tokens x N = {a.n} samples x {a.new_tokens} new tokens:")
    kw = dict(prompts=a.prompts, n=a.n, prompt_len=a.prompt_len, new_tokens=a.new_tokens)
    res = {m: B.isolated(run, a.threads, method=m, **kw) for m in ("perm", "generate")}
    for m, label in (
        ("perm", "perm sample_pool (shared prefill)"),
        ("generate", "generate(num_return_sequences)"),
    ):
        print(B.report(label, res[m], peak) + f"  {res[m]['generated']} tokens")
    print(f"  speed-up {res['generate']['seconds'] / res['perm']['seconds']:.2f}x")
    peak_end = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
