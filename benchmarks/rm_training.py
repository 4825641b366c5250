"""Reward-model training throughput: perm's loop (shared prompt) vs TRL's RewardTrainer, pairs per second.

    python benchmarks/rm_training.py [--pairs 512] [--prompt-len 200] [--resp-len 30] [--pairs-per-prompt 1]
                                     [--threads 1] [--no-trl]

Tiny GPT-NeoX reward model (see _bench.py), random tokens, CPU, fp32; one epoch over the same pairs, batch
size 16, the same learning rate, linear schedule without warmup, grad-norm clip 1, AdamW without weight
decay, ``center_rewards_coefficient`` = 0.01, dropout 0, no gradient checkpointing (TRL's RewardConfig turns
it on by default; off here, as perm does not use it). Three runs, each in its own process from the same
initial weights: perm with the shared prompt (the default for decoders), perm with ``share_prompt=False``
(its own unshared loop: one forward of the 2B full sequences), and TRL (needs ``pip install trl``: the
``bench`` extra). The token-count limit of the speed-up over an unshared step is
2 (P + R) / (P + 2 R). With ``--pairs-per-prompt K`` each prompt has K pairs (as the testbed's policy pairs
have 3, and TL;DR comparisons several per post); perm then trains with ``group_by_prompt`` (a prompt's pairs
in one batch, its forward run once for all of them) and the limit is 2K (P + R) / (P + 2K R).
"""

from __future__ import annotations

import argparse
import time

import _bench as B

LR, BATCH, CENTER = 1e-4, 16, 0.01


def _data(pairs: int, prompt_len: int, resp_len: int, per_prompt: int = 1):
    import numpy as np

    rng = np.random.default_rng(0)
    distinct = [B.random_ids(rng, prompt_len) for _ in range(-(-pairs // per_prompt))]
    prompts = [p for p in distinct for _ in range(per_prompt)][:pairs]
    chosen = [B.random_ids(rng, resp_len - 1) + [B.EOS] for _ in range(pairs)]
    rejected = [B.random_ids(rng, resp_len - 1) + [B.EOS] for _ in range(pairs)]
    return prompts, chosen, rejected


def _model():
    from transformers import GPTNeoXForSequenceClassification

    from perm.models import seeded

    cfg = B.tiny_config()
    cfg.num_labels = 1
    with seeded(0):
        return GPTNeoXForSequenceClassification(cfg)


def _flops(method: str, pairs: int, prompt_len: int, resp_len: int, per_prompt: int = 1) -> float:
    t = prompt_len + resp_len
    if method == "perm":  # prompt once per prompt, two continuations per pair after it; training = 3x forward
        fwd = B.forward_flops(prompt_len, B.causal_pairs(prompt_len)) / per_prompt + B.forward_flops(
            2 * resp_len, 2 * B.causal_pairs(resp_len, prompt_len), 2 * resp_len
        )
    else:
        fwd = B.forward_flops(2 * t, 2 * B.causal_pairs(t), 2 * t)
    return 3 * pairs * fwd


def run_perm(pairs: int, prompt_len: int, resp_len: int, share: bool, per_prompt: int = 1) -> dict:
    from perm.reward import train_reward_model

    prompts, chosen, rejected = _data(pairs, prompt_len, resp_len, per_prompt)
    start_rss = B.rss_mb()
    common = dict(
        pad_id=B.PAD,
        center_coef=CENTER,
        batch_size=BATCH,
        lr=LR,
        warmup_frac=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_every=10**9,
        data_seed=0,
        dropout_seed=0,
        share_prompt=share,
        group_by_prompt=per_prompt > 1,
    )
    few = slice(0, 2 * BATCH)
    train_reward_model(
        _model(),
        prompts=prompts[few],
        chosen=chosen[few],
        rejected=rejected[few],
        eval_prompts=prompts[:2],
        eval_chosen=chosen[:2],
        eval_rejected=rejected[:2],
        epochs=1.0,
        **common,
    )  # warm-up
    model = _model()
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
    return {
        "seconds": seconds,
        "start_rss_mb": start_rss,
        "mean_loss": sum(state["train_loss"]) / len(state["train_loss"]),
        "flops": _flops("perm" if share else "full", pairs, prompt_len, resp_len, per_prompt),
    }


def run_trl(pairs: int, prompt_len: int, resp_len: int, out_dir: str, per_prompt: int = 1) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    prompts, chosen, rejected = _data(pairs, prompt_len, resp_len, per_prompt)
    ds = Dataset.from_dict(
        {
            "chosen_ids": [p + c for p, c in zip(prompts, chosen, strict=True)],
            "rejected_ids": [p + r for p, r in zip(prompts, rejected, strict=True)],
        }
    )
    args = RewardConfig(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
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
        out = RewardTrainer(model=_model(), args=args, train_dataset=data, processing_class=tok)
        assert not out.model.is_gradient_checkpointing
        out.remove_callback(PrinterCallback)  # its end-of-training dict of metrics
        return out

    make(ds.select(range(2 * BATCH))).train()  # warm-up
    trainer = make(ds)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "start_rss_mb": start_rss,
        "mean_loss": out.training_loss,
        "flops": _flops("full", pairs, prompt_len, resp_len),
    }


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--resp-len", type=int, default=30)
    ap.add_argument("--pairs-per-prompt", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL (compare with perm's unshared loop only)")
    a = ap.parse_args()
    print(B.machine(a.threads))
    peak = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    p, r, k = a.prompt_len, a.resp_len, a.pairs_per_prompt
    print(f"{a.pairs} pairs ({k} per prompt), prompt {p}, chosen/rejected {r} tokens, batch {BATCH}, one epoch:")
    kw = dict(pairs=a.pairs, prompt_len=p, resp_len=r, per_prompt=k)
    res = {
        "perm": B.isolated(run_perm, a.threads, share=True, **kw),
        "perm-unshared": B.isolated(run_perm, a.threads, share=False, **kw),
    }
    if not a.no_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("  TRL is not installed (pip install trl): comparing with perm's unshared loop only")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                res["trl"] = B.isolated(run_trl, a.threads, out_dir=tmp, **kw)
    labels = {
        "perm": "perm (shared prompt)",
        "perm-unshared": "perm, share_prompt=False",
        "trl": "TRL RewardTrainer",
    }
    for m, rec in res.items():
        print(B.report(labels[m], rec, peak) + f"  {a.pairs / rec['seconds']:.1f} pairs/s")
    limit = 2 * k * (p + r) / (p + 2 * k * r)
    for base in ("trl", "perm-unshared"):
        if base in res:
            print(
                f"  speed-up vs {labels[base]}: {res[base]['seconds'] / res['perm']['seconds']:.2f}x "
                f"(token-count limit {limit:.2f}x)"
            )
    print(
        "  mean train loss over the epoch: "
        + ", ".join(f"{m} {rec['mean_loss']:.4f}" for m, rec in res.items())
    )
    peak_end = B.isolated(B.matmul_peak, a.threads)["flops_per_s"]
    print(f"fp32 matmul peak again at the end: {peak_end / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
