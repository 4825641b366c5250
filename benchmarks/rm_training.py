"""Reward-model training throughput: perm's packed prompt groups vs its prefill + continuation path, its
unshared loop and TRL's RewardTrainer, in pairs per second.

    python benchmarks/rm_training.py [--pairs 512] [--prompt-len 200] [--resp-len 30] [--pairs-per-prompt 1]
                                     [--threads 1] [--rounds 1] [--no-trl]
    python benchmarks/rm_training.py --kwise 6 [--posts 64] [--prompt-len 92] [--comp-len 12 20]
                                     [--model seed0] [--batch 64] [--threads 1] [--rounds 1] [--no-trl]

Plain pairs (the first form): a tiny GPT-NeoX reward model (see _bench.py), random tokens, CPU, fp32, each
prompt with ``--pairs-per-prompt`` pairs of fresh chosen/rejected completions of ``--resp-len`` tokens, batch
16, lr 1e-4. K-wise posts (``--kwise K``, the default's regime): each post a prompt of ``--prompt-len``
tokens (92) with K completions of 12-20 tokens (``--comp-len``, EOS included) and all K (K - 1) / 2 pairs
among them (each pair's order drawn at random), batch 64 pairs, lr 7e-4 (the default's), on the shipped
``testbed:seed0`` backbone with a fresh head (``--model``; the default's grid RMs start so). Either way one
epoch, linear schedule without warmup, grad-norm clip 1, AdamW without weight decay,
``center_rewards_coefficient`` = 0.01, dropout 0, no gradient checkpointing (TRL's RewardConfig turns it on
by default; off here, as perm does not use it).

Methods, each in its own process from the same initial weights, over the same data in the same order (a
prompt's pairs kept together by ``group_by_prompt`` when a prompt has several):

- ``packed``: ``train_reward_model(share_prompt=True, pack=True)``, a batch's prompt groups each one row
  (the prompt, then its distinct completions) under a block-causal mask (:mod:`perm.packed`);
- ``shared``: ``share_prompt=True, pack=False``, the prefill + continuation path (each prompt's forward once,
  its completions on its gathered KV cache: :func:`perm.prefix.pair_rewards_shared`), the baseline of the
  issue-28 goal (packed >= 3x its pairs/s in the K-wise regime);
- ``unshared``: ``share_prompt=False``, one padded forward of the batch's distinct full sequences;
- ``TRL``: ``RewardTrainer`` on the same pairs as full sequences (its own data order), where installed
  (``pip install trl``: the ``bench`` extra; ``--no-trl`` skips it).

Printed per method: wall time, model FLOP/s against the fp32 matmul peak measured in the same run, peak RSS,
pairs/s and its ratio to ``shared``; then the largest per-step difference of the training loss between the
perm methods (they follow the same batches, so in fp32 they agree to rounding: <= 1e-5 is the goal for
packed vs the full-sequence loop). ``--rounds R`` runs the methods R times, interleaved, and keeps each
method's fastest run (the losses are the same every round). The token-count limit of the speed-up over the
unshared loop is (K P + sum L) / (P + sum L) for a prompt of P tokens and K distinct completions of L_j.
"""

from __future__ import annotations

import argparse
import time

import _bench as B

CENTER = 0.01
LABELS = {
    "packed": "perm packed (pack=True)",
    "shared": "perm shared prompt (pack=False)",
    "unshared": "perm share_prompt=False",
    "trl": "TRL RewardTrainer",
}
OPTIONS = {
    "packed": {"share_prompt": True, "pack": True},
    "shared": {"share_prompt": True, "pack": False},
    "unshared": {"share_prompt": False},
}


def _data(spec: dict):
    """(prompts, chosen, rejected, posts) of pairs; posts = [(prompt length, distinct completion lengths,
    [(chosen length, rejected length) per pair])], for the FLOP count."""
    import numpy as np

    rng = np.random.default_rng(0)
    prompts, chosen, rejected, posts = [], [], [], []
    if spec["kind"] == "pairs":  # each prompt: per_prompt pairs of fresh completions
        n, k, p, r = spec["pairs"], spec["per_prompt"], spec["prompt_len"], spec["resp_len"]
        distinct = [B.random_ids(rng, p) for _ in range(-(-n // k))]
        prompts = [q for q in distinct for _ in range(k)][:n]
        chosen = [B.random_ids(rng, r - 1) + [B.EOS] for _ in range(n)]
        rejected = [B.random_ids(rng, r - 1) + [B.EOS] for _ in range(n)]
        for i in range(0, n, k):
            m = min(k, n - i)
            posts.append((p, [r] * (2 * m), [(r, r)] * m))
        return prompts, chosen, rejected, posts
    k, p, lo, hi = spec["k"], spec["prompt_len"], spec["comp_min"], spec["comp_max"]
    for _ in range(spec["posts"]):  # K-wise: a prompt, K completions, all K (K - 1) / 2 pairs among them
        prompt = B.random_ids(rng, p)
        comps = [B.random_ids(rng, int(n) - 1) + [B.EOS] for n in rng.integers(lo, hi + 1, k)]
        lens = []
        for i in range(k):
            for j in range(i + 1, k):
                a, b = (i, j) if rng.random() < 0.5 else (j, i)
                prompts.append(prompt)
                chosen.append(comps[a])
                rejected.append(comps[b])
                lens.append((len(comps[a]), len(comps[b])))
        posts.append((p, [len(c) for c in comps], lens))
    return prompts, chosen, rejected, posts


def _flops(method: str, posts, dims: dict) -> float:
    """Model FLOPs of one epoch (3x the forward): each method credited with its own tokens, a post's work
    counted as if no batch boundary split it."""
    f = 0.0
    for p, comps, pairs in posts:
        if method in ("packed", "shared"):  # the prompt once, each distinct completion after it
            t = p + sum(comps)
            f += B.forward_flops(t, B.causal_pairs(p) + sum(B.causal_pairs(c, p) for c in comps), t, **dims)
        else:  # full sequences: each distinct one once (perm), or both of every pair (TRL)
            seqs = comps if method == "unshared" else [c for pair in pairs for c in pair]
            f += sum(B.forward_flops(p + c, B.causal_pairs(p + c), p + c, **dims) for c in seqs)
    return 3 * f


def run_perm(spec: dict, method: str, model_kind: str, batch: int, lr: float) -> dict:
    from perm.reward import train_reward_model

    prompts, chosen, rejected, posts = _data(spec)
    start_rss = B.rss_mb()
    common = dict(
        pad_id=B.PAD,
        center_coef=CENTER,
        batch_size=batch,
        lr=lr,
        warmup_frac=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_every=10**9,
        data_seed=0,
        dropout_seed=0,
        group_by_prompt=len(posts) < len(prompts),
        **OPTIONS[method],
    )
    few = slice(0, 2 * batch)
    train_reward_model(
        B.reward_model(model_kind),
        prompts=prompts[few],
        chosen=chosen[few],
        rejected=rejected[few],
        eval_prompts=prompts[:2],
        eval_chosen=chosen[:2],
        eval_rejected=rejected[:2],
        epochs=1.0,
        **common,
    )  # warm-up
    model = B.reward_model(model_kind)
    t0 = time.perf_counter()
    # the loop evaluates once at its last step: 2 pairs, negligible
    state = train_reward_model(
        model,
        prompts=prompts,
        chosen=chosen,
        rejected=rejected,
        eval_prompts=prompts[:2],
        eval_chosen=chosen[:2],
        eval_rejected=rejected[:2],
        epochs=1.0,
        **common,
    )
    seconds = time.perf_counter() - t0
    assert state["packed"] == (method == "packed") and state["share_prompt"] == (method != "unshared"), state
    return {
        "seconds": seconds,
        "start_rss_mb": start_rss,
        "losses": list(state["train_loss"]),
        "mean_loss": sum(state["train_loss"]) / len(state["train_loss"]),
        "flops": _flops(method, posts, B.dims(model.config)),
    }


def run_trl(spec: dict, model_kind: str, batch: int, lr: float, out_dir: str) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    prompts, chosen, rejected, posts = _data(spec)
    ds = Dataset.from_dict(
        {
            "chosen_ids": [p + c for p, c in zip(prompts, chosen, strict=True)],
            "rejected_ids": [p + r for p, r in zip(prompts, rejected, strict=True)],
        }
    )
    args = RewardConfig(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        center_rewards_coefficient=CENTER,
        activation_checkpointing=False,
        disable_tqdm=True,
        disable_dropout=True,
        max_length=None,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        bf16=False,
        fp16=False,
    )
    tok = B.tokenizer()
    start_rss = B.rss_mb()

    def make(data):
        out = RewardTrainer(model=B.reward_model(model_kind), args=args, train_dataset=data, processing_class=tok)
        assert not out.model.is_gradient_checkpointing
        out.remove_callback(PrinterCallback)  # its end-of-training dict of metrics
        return out

    make(ds.select(range(2 * batch))).train()  # warm-up
    trainer = make(ds)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "start_rss_mb": start_rss,
        "mean_loss": out.training_loss,
        "flops": _flops("trl", posts, B.dims(trainer.model.config)),
    }


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kwise", type=int, default=0, help="K completions per post, all their pairs (0: plain pairs)")
    ap.add_argument("--posts", type=int, default=64, help="K-wise posts")
    ap.add_argument("--comp-len", type=int, nargs=2, default=[12, 20], help="K-wise completion lengths, min max")
    ap.add_argument("--pairs", type=int, default=512, help="plain pairs")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (200 plain; 92 K-wise)")
    ap.add_argument("--resp-len", type=int, default=30, help="plain pairs' chosen/rejected tokens")
    ap.add_argument("--pairs-per-prompt", type=int, default=1, help="plain pairs per prompt")
    ap.add_argument("--model", choices=B.MODELS, default=None, help="tiny (plain) or seed0 (K-wise)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per step (16 plain; 64 K-wise)")
    ap.add_argument("--methods", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    ap.add_argument("--rounds", type=int, default=1, help="runs of every method, interleaved; the fastest kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL")
    a = ap.parse_args()
    kw = a.kwise > 1
    model = a.model or ("seed0" if kw else "tiny")
    batch = a.batch or (64 if kw else 16)
    lr = 7e-4 if kw else 1e-4
    p = a.prompt_len or (92 if kw else 200)
    if kw:
        spec = dict(kind="kwise", posts=a.posts, k=a.kwise, prompt_len=p, comp_min=a.comp_len[0],
                    comp_max=a.comp_len[1])
        pairs = a.posts * a.kwise * (a.kwise - 1) // 2
        what = (f"{a.posts} K-wise posts x {pairs // a.posts} pairs = {pairs} pairs: prompt {p}, {a.kwise} "
                f"completions of {a.comp_len[0]}-{a.comp_len[1]} tokens")
    else:
        spec = dict(kind="pairs", pairs=a.pairs, prompt_len=p, resp_len=a.resp_len, per_prompt=a.pairs_per_prompt)
        pairs = a.pairs
        what = f"{pairs} pairs ({a.pairs_per_prompt} per prompt), prompt {p}, chosen/rejected {a.resp_len} tokens"
    print(B.machine(a.threads))
    peak = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    print(f"{what}; model {model}, fp32, sdpa, batch {batch} pairs, lr {lr:g}, one epoch:")
    run_trl_too = False
    if not a.no_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("  TRL is not installed (pip install trl): perm's methods only")
        else:
            run_trl_too = True
    common = dict(spec=spec, model_kind=model, batch=batch, lr=lr)
    res: dict[str, dict] = {}
    for _ in range(a.rounds):
        for m in [*a.methods, *(["trl"] if run_trl_too else [])]:
            if m == "trl":
                with tempfile.TemporaryDirectory() as tmp:
                    out = B.isolated(run_trl, a.threads, out_dir=tmp, **common)
            else:
                out = B.isolated(run_perm, a.threads, method=m, **common)
            if m not in res or out["seconds"] < res[m]["seconds"]:
                res[m] = out
    base = res.get("shared")
    for m, rec in res.items():
        rate = pairs / rec["seconds"]
        vs = f"  {base['seconds'] / rec['seconds']:.2f}x shared" if base else ""
        print(B.report(LABELS[m], rec, peak) + f"  {rate:7.1f} pairs/s{vs}")
    _, comps, _ = _data(spec)[3][0]
    limit = (len(comps) * p + sum(comps)) / (p + sum(comps))
    for fast, slow in (("packed", "shared"), ("packed", "unshared"), ("shared", "unshared"), ("packed", "trl")):
        if fast in res and slow in res:
            goal = "  (goal >= 3x)" if (fast, slow) == ("packed", "shared") and kw else ""
            print(f"  pairs/s {fast} / {slow}: {res[slow]['seconds'] / res[fast]['seconds']:.2f}x{goal}")
    if "unshared" in res:
        print(f"  token-count limit of sharing the prompt vs unshared (first post): {limit:.2f}x")
    steps = None
    for x, y in (("packed", "unshared"), ("shared", "unshared"), ("packed", "shared")):
        if x in res and y in res:
            lx, ly = res[x]["losses"], res[y]["losses"]
            steps = len(lx)
            d = max(abs(u - v) for u, v in zip(lx, ly, strict=True))
            print(f"  max |loss difference| per step, {x} vs {y}: {d:.1e} over {len(lx)} steps (fp32; goal <= 1e-5)")
    if steps:
        print(f"  {steps} steps of {batch} pairs")
    print("  mean train loss over the epoch: " + ", ".join(f"{m} {rec['mean_loss']:.4f}" for m, rec in res.items()))
    peak_end = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
