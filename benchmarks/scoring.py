"""Best-of-n scoring: perm's packed prompt groups and its prefill + continuation path vs plain batched
full-sequence scoring.

    python benchmarks/scoring.py [--prompt-lens 200 500] [--prompts 32 16] [--n 64] [--cand-len 30]
                                 [--model tiny] [--batch-size 64] [--rounds 1] [--threads 1]
    python benchmarks/scoring.py --model seed0 --prompt-lens 92 --prompts 32 --n 72 --cand-len 18 24
                                 # the default's pools: 64 + 8 references of ~21 tokens per ~92-token prompt

A GPT-NeoX reward model (``--model``: the tiny one or the shipped ``testbed:seed0`` backbone with a fresh
head, see _bench.py), random tokens, CPU, fp32, ``sdpa``. Each prompt has N candidates of ``--cand-len``
tokens (EOS included; two values: lengths drawn uniformly between them). Methods, each in its own process:

- ``packed``: :func:`perm.prefix.score_prompt_groups` with ``pack=True`` (a prompt and its candidates as rows
  of at most ``--pack-tokens`` (512) tokens or twice the prompt, under a block-causal mask:
  :mod:`perm.packed`);
- ``prefix``: ``score_prompt_groups`` with ``pack=False`` (each prompt once, its candidates as continuations
  of its KV cache, chunks of ``batch_size`` rows);
- ``full``: :func:`perm.prefix.score_ids` on the concatenated sequences, ``batch_size`` per forward.

The token-count limit of sharing the prompt is (P + R) / (P / N + R) for candidates of R tokens (a packed
row of m candidates repeats its prompt once per row: (P + R) / (P / m + R)). Every method's rewards are
compared with ``full`` (max |difference|). ``--rounds R`` runs the methods R times, interleaved, and keeps each
one's fastest run.
"""

from __future__ import annotations

import argparse
import time

import _bench as B

METHODS = ("packed", "prefix", "full")
LABELS = {
    "packed": "perm packed (pack=True)",
    "prefix": "perm prefix cache (pack=False)",
    "full": "full-sequence score_ids",
}


def _data(prompt_len: int, cand_len: tuple[int, int], n: int, prompts: int):
    import numpy as np

    rng = np.random.default_rng(0)
    p_ids = [B.random_ids(rng, prompt_len) for _ in range(prompts)]
    lens = rng.integers(cand_len[0], cand_len[1] + 1, (prompts, n))
    c_ids = [[B.random_ids(rng, int(m) - 1) + [B.EOS] for m in row] for row in lens]
    return p_ids, c_ids


def run(method: str, model_kind: str, prompt_len: int, cand_len: tuple[int, int], n: int, prompts: int,
        batch_size: int, pack_tokens: int | None = None) -> dict:
    import numpy as np
    import torch

    from perm.prefix import score_ids, score_prompt_groups

    model = B.reward_model(model_kind).eval()
    p_ids, c_ids = _data(prompt_len, cand_len, n, prompts)

    def score(p, c):
        if method == "full":
            seqs = [a + b for a, cs in zip(p, c, strict=True) for b in cs]
            return score_ids(model, seqs, B.PAD, "cpu", batch_size=batch_size)
        return np.concatenate(
            score_prompt_groups(model, p, c, B.PAD, "cpu", batch_size=batch_size, pack=method == "packed",
                                pack_tokens=pack_tokens)
        )

    start_rss = B.rss_mb()
    score(p_ids[:1], [c_ids[0][:8]])  # warm-up
    t0 = time.perf_counter()
    with torch.inference_mode():
        rewards = score(p_ids, c_ids)
    seconds = time.perf_counter() - t0
    dims = B.dims(model.config)
    flops = 0.0
    for cs in c_ids:
        if method == "full":
            flops += sum(B.forward_flops(prompt_len + len(c), B.causal_pairs(prompt_len + len(c)),
                                         prompt_len + len(c), **dims) for c in cs)
        else:  # each prompt once, then its candidates after it (model FLOPs: a packed row's repeat of the
            # prompt and the masked-out attention it computes are not credited)
            t = sum(len(c) for c in cs)
            flops += B.forward_flops(prompt_len + t, B.causal_pairs(prompt_len)
                                     + sum(B.causal_pairs(len(c), prompt_len) for c in cs), prompt_len + t, **dims)
    return {"seconds": seconds, "flops": flops, "start_rss_mb": start_rss, "rewards": rewards}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[200, 500])
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 16], help="prompts per prompt length")
    ap.add_argument("--cand-len", type=int, nargs="+", default=[30], help="candidate tokens, or min max")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", choices=B.MODELS, default="tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pack-tokens", type=int, default=None, help="packed rows' cap (None: perm.packed's, 512)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--rounds", type=int, default=1, help="runs of every method, interleaved; the fastest kept")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if len(a.cand_len) not in (1, 2):
        ap.error("--cand-len takes one length or min max")
    lo, hi = a.cand_len[0], a.cand_len[-1]
    r = (lo + hi) / 2
    print(B.machine(a.threads))
    peak = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    for prompt_len, prompts in zip(a.prompt_lens, a.prompts, strict=True):
        limit = (prompt_len + r) / (prompt_len / a.n + r)
        cap = a.pack_tokens or 512
        per_row = max(1, int((max(cap, 2 * prompt_len) - prompt_len) // r))
        packed_limit = (prompt_len + r) / (prompt_len / min(a.n, per_row) + r)
        cands = f"{lo}" if lo == hi else f"{lo}-{hi}"
        print(f"P = {prompt_len}, R = {cands}, N = {a.n}, {prompts} prompts, model {a.model}, fp32, sdpa, "
              f"batch {a.batch_size}:")
        kw = dict(model_kind=a.model, prompt_len=prompt_len, cand_len=(lo, hi), n=a.n, prompts=prompts,
                  batch_size=a.batch_size, pack_tokens=a.pack_tokens)
        res: dict[str, dict] = {}
        for _ in range(a.rounds):
            for m in a.methods:
                out = B.isolated(run, a.threads, method=m, **kw)
                if m not in res or out["seconds"] < res[m]["seconds"]:
                    res[m] = out
        for m, rec in res.items():
            rate = prompts * a.n / rec["seconds"]
            print(B.report(LABELS[m], rec, peak) + f"  {rate:7.0f} candidates/s")
        for fast, slow in (("packed", "prefix"), ("packed", "full"), ("prefix", "full")):
            if fast in res and slow in res:
                print(f"  speed-up {fast} vs {slow}: {res[slow]['seconds'] / res[fast]['seconds']:.2f}x")
        if "full" in res:
            print(f"  token-count limit vs full: {limit:.2f}x ({packed_limit:.2f}x for packed rows of "
                  f"~{min(a.n, per_row)} candidates)")
            for m in res:
                if m != "full":
                    diff = abs(res[m]["rewards"] - res["full"]["rewards"]).max()
                    print(f"  max |reward difference| {m} vs full: {diff:.1e}")
        elif "packed" in res and "prefix" in res:
            print(f"  max |reward difference| packed vs prefix: "
                  f"{abs(res['packed']['rewards'] - res['prefix']['rewards']).max():.1e}")
        if "packed" in res and "prefix" in res:
            faster = "packed" if res["packed"]["seconds"] < res["prefix"]["seconds"] else "prefix"
            print(f"  faster of the two shared-prompt paths here: {faster}")
    peak_end = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
