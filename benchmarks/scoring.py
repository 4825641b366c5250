"""Best-of-n scoring: perm's shared-prompt scoring vs plain batched full-sequence scoring.

    python benchmarks/scoring.py [--prompt-lens 200 500] [--prompts 32 16] [--n 64] [--threads 1]

Tiny GPT-NeoX reward model (see _bench.py), random tokens, CPU, fp32. Each prompt has N candidates of 30
tokens (29 + EOS). ``perm`` is :func:`perm.prefix.score_prompt_groups` (each prompt once, candidates as
continuations of its KV cache); ``full`` is :func:`perm.prefix.score_ids` on the concatenated sequences, at
the same batch size (64 sequences / continuation rows per forward). The token-count limit of the speed-up
is (P + R) / (P / N + R). Both methods' rewards are compared (max |difference|).
"""

from __future__ import annotations

import argparse
import time

import _bench as B


def run(method: str, prompt_len: int, cand_len: int, n: int, prompts: int, batch_size: int) -> dict:
    import numpy as np
    import torch
    from transformers import GPTNeoXForSequenceClassification

    from perm.models import seeded
    from perm.prefix import score_ids, score_prompt_groups

    cfg = B.tiny_config()
    cfg.num_labels = 1
    with seeded(0):
        model = GPTNeoXForSequenceClassification(cfg).eval()
    rng = np.random.default_rng(0)
    p_ids = [B.random_ids(rng, prompt_len) for _ in range(prompts)]
    c_ids = [[B.random_ids(rng, cand_len - 1) + [B.EOS] for _ in range(n)] for _ in range(prompts)]

    def score(p, c):
        if method == "perm":
            return np.concatenate(score_prompt_groups(model, p, c, B.PAD, "cpu", batch_size=batch_size))
        return score_ids(
            model,
            [a + b for a, cs in zip(p, c, strict=True) for b in cs],
            B.PAD,
            "cpu",
            batch_size=batch_size,
        )

    start_rss = B.rss_mb()
    score(p_ids[:1], [c_ids[0][:8]])  # warm-up
    t0 = time.perf_counter()
    with torch.inference_mode():
        rewards = score(p_ids, c_ids)
    seconds = time.perf_counter() - t0
    t = prompt_len + cand_len
    if method == "perm":  # each prompt once, then N continuations of R tokens after P cached ones
        flops = prompts * (
            B.forward_flops(prompt_len, B.causal_pairs(prompt_len))
            + B.forward_flops(n * cand_len, n * B.causal_pairs(cand_len, prompt_len), n * t)
        )
    else:
        flops = prompts * B.forward_flops(n * t, n * B.causal_pairs(t), n * t)
    return {"seconds": seconds, "flops": flops, "start_rss_mb": start_rss, "rewards": rewards}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[200, 500])
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 16], help="prompts per prompt length")
    ap.add_argument("--cand-len", type=int, default=30)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(B.machine(a.threads))
    peak = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    for prompt_len, prompts in zip(a.prompt_lens, a.prompts, strict=True):
        limit = (prompt_len + a.cand_len) / (prompt_len / a.n + a.cand_len)
        print(f"P = {prompt_len}, R = {a.cand_len}, N = {a.n}, {prompts} prompts, batch {a.batch_size}:")
        kw = dict(prompt_len=prompt_len, cand_len=a.cand_len, n=a.n, prompts=prompts, batch_size=a.batch_size)
        res = {m: B.isolated(run, a.threads, method=m, **kw) for m in ("perm", "full")}
        for m, label in (("perm", "perm (shared prompt)"), ("full", "full-sequence score_ids")):
            print(B.report(label, res[m], peak))
        diff = abs(res["perm"]["rewards"] - res["full"]["rewards"]).max()
        print(
            f"  speed-up {res['full']['seconds'] / res['perm']['seconds']:.2f}x (token-count limit {limit:.2f}x), "
            f"max |reward difference| {diff:.1e}"
        )
    peak_end = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
