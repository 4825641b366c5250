"""The GPU check of the real-scale preset (`bash benchmarks/gpu_check.sh`): a few minutes, no hub, no internet.

    python benchmarks/gpu_check.py [--device cuda] [--small] [--out DIR]

On the device it prints (and writes to ``DIR/gpu_check.json``):

1. the device, torch, bf16 support and the measured matmul peak (fp32 and bf16);
2. **exactness on the device**: rewards of a random GPT-NeoX reward model at Pythia-160m's shapes (12 layers,
   hidden 768; ``--small``: 2 layers, hidden 64) scored through each prompt's KV cache and packed, against
   full-sequence scoring (fp32), and one Bradley-Terry step's loss and gradients packed vs full-sequence;
3. **sampling reproducibility**: the same samples with 2 or 8 prompts per decode batch, and under a memory
   budget (perm.policy.sample_pool);
4. **step time and peak memory at the preset's shapes** (bf16 autocast on CUDA, fp32 weights): an RM training
   step of 64 pairs with ~512-token prompts for the 160m grid shape and the 1b evaluator shape (24 layers is
   pythia-1b's; 16 here, hidden 2048), whole and in micro-batches of 16 (``reward.micro_batch_size``), and a
   sampling decode batch of 8 prompts x 72 samples, whole and capped by ``sample.memory_gb``;
5. the quick config end to end on the device (``--small`` skips it).

Random weights and token ids stand in for the checkpoints: shapes, not values, set the costs measured here.
Record what it prints in docs/results.md with the card's name.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PAD, EOS = 1, 0


def _cfg(vocab: int, hidden: int, layers: int, heads: int, positions: int = 2048):
    from perm.models import gpt_neox_config

    return gpt_neox_config(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=positions, pad_token_id=PAD,
                           eos_token_id=EOS)


def _rm(cfg, device):
    from transformers import GPTNeoXForSequenceClassification

    cfg.num_labels = 1
    torch.manual_seed(0)
    return GPTNeoXForSequenceClassification(cfg).to(device)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.device(device).type == "cuda" else None


def matmul_peaks(device, n: int) -> dict:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_tflops"] = 2 * n**3 / best / 1e12
    return out


def exactness(device, hidden: int, layers: int, heads: int, prompt: int, completion: int) -> dict:
    """Max |difference| of the shared-prompt and packed rewards (and packed loss / gradients) from full-sequence
    computation, fp32."""
    from perm.packed import packs, pair_rewards_packed
    from perm.prefix import score_ids, score_prompt_groups, split_pairs
    from perm.reward import bradley_terry_loss, pair_rewards

    model = _rm(_cfg(1024, hidden, layers, heads), device).eval()
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(2, 1024, prompt - 7 * g)) for g in range(4)]
    cands = [[list(rng.integers(2, 1024, completion + 3 * j)) + [EOS] for j in range(6)] for _ in prompts]
    whole = score_ids(model, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, device)
    cached = np.concatenate(score_prompt_groups(model, prompts, cands, PAD, device))
    out = {"cache_vs_full": float(np.abs(cached - whole).max())}
    if packs(model):
        packed = np.concatenate(score_prompt_groups(model, prompts, cands, PAD, device, pack=True))
        out["packed_vs_full"] = float(np.abs(packed - whole).max())
        chosen = [p + cs[0] for p, cs in zip(prompts, cands, strict=True)]
        rejected = [p + cs[1] for p, cs in zip(prompts, cands, strict=True)]
        model.train()
        grads = []
        for packed_path in (False, True):
            model.zero_grad()
            if packed_path:
                pre, ct, rt = split_pairs(chosen, rejected, PAD)
                rc, rr = pair_rewards_packed(model, pre, ct, rt, PAD, device)
            else:
                rc, rr = pair_rewards(model, chosen, rejected, PAD, device)
            loss = bradley_terry_loss(rc, rr, 0.01)
            loss.backward()
            grads.append((loss.item(), [p.grad.detach().clone() for p in model.parameters()]))
        out["packed_loss_diff"] = abs(grads[0][0] - grads[1][0])
        out["packed_grad_max_diff"] = max(float((a - b).abs().max()) for a, b in zip(grads[0][1], grads[1][1],
                                                                                      strict=True))
    return out


def _word_policy(device, words: int, hidden: int, layers: int, heads: int):
    """A word-level tokenizer of `words` words (w0, w1, ...) and a random GPT-NeoX policy over it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": EOS, "<|pad|>": PAD, **{f"w{i}": i + 2 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    return tokenizer, GPTNeoXForCausalLM(_cfg(len(vocab), hidden, layers, heads)).to(device).eval()


def sampling(device, hidden: int, layers: int, heads: int) -> dict:
    from perm.policy import sample_pool

    tokenizer, model = _word_policy(device, 200, hidden, layers, heads)
    rng = np.random.default_rng(1)
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, 200, 40 + 5 * k)) for k in range(8)]
    kw = dict(n_samples=6, max_new_tokens=16, seed=0, device=device)
    a = sample_pool(model, tokenizer, prompts, batch_prompts=2, **kw)
    b = sample_pool(model, tokenizer, prompts, batch_prompts=8, **kw)
    c = sample_pool(model, tokenizer, prompts, batch_prompts=8, memory_bytes=1, **kw)
    return {"same_across_batch_sizes": a == b, "same_under_a_memory_budget": a == c}


def rm_step(device, hidden: int, layers: int, heads: int, prompt: int, pairs: int, micro: int | None) -> dict:
    """Seconds and peak memory of Bradley-Terry training steps of `pairs` pairs (one prompt, two completions
    each), bf16 autocast on CUDA."""
    from perm.models import make_accelerator
    from perm.reward import train_reward_model

    model = _rm(_cfg(50304, hidden, layers, heads), device)
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(2, 50000, prompt)) for _ in range(pairs)]
    chosen = [list(rng.integers(2, 50000, 48)) + [EOS] for _ in range(pairs)]
    rejected = [list(rng.integers(2, 50000, 40)) + [EOS] for _ in range(pairs)]
    acc = make_accelerator(device, "bf16" if torch.device(device).type == "cuda" else "fp32")
    _peak_reset(device)
    t0 = time.perf_counter()
    state = train_reward_model(model, prompts=prompts, chosen=chosen, rejected=rejected, eval_prompts=prompts[:2],
                               eval_chosen=chosen[:2], eval_rejected=rejected[:2], pad_id=PAD, center_coef=0.01,
                               epochs=3.0, batch_size=pairs, lr=1e-5, warmup_frac=0.0, weight_decay=0.0,
                               max_grad_norm=1.0, eval_every=10**6, data_seed=0, dropout_seed=0,
                               accelerator=acc, micro_batch_size=micro)
    _sync(device)
    return {"steps": state["step"], "s_per_step": (time.perf_counter() - t0) / state["step"],
            "peak_gb": _peak_gb(device), "micro_batch_size": micro}


def decode_batch(device, hidden: int, layers: int, heads: int, prompt: int, memory_gb: float | None) -> dict:
    """Seconds and peak memory of sampling 72 completions of 48 tokens for each of 8 prompts."""
    from perm.policy import sample_pool

    tokenizer, model = _word_policy(device, 2000, hidden, layers, heads)
    rng = np.random.default_rng(3)
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, 2000, prompt)) for _ in range(8)]
    _peak_reset(device)
    t0 = time.perf_counter()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                        enabled=torch.device(device).type == "cuda"):
        sample_pool(model, tokenizer, prompts, n_samples=72, max_new_tokens=48, seed=0, batch_prompts=8,
                    device=device, memory_bytes=None if memory_gb is None else int(memory_gb * 1e9))
    _sync(device)
    return {"s": time.perf_counter() - t0, "peak_gb": _peak_gb(device), "sample_memory_gb": memory_gb}


def quick_run(device, out: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "perm.cli", "run", "configs/quick.yaml", f"out={out / 'quick'}",
                        f"device={device}", "precision=auto", "--quiet"], capture_output=True, text=True)
    return {"rc": r.returncode, "wall_s": time.perf_counter() - t0, "stderr_tail": r.stderr[-2000:]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="toy shapes (a CPU check of this script)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    args = ap.parse_args(argv)
    dev, small = args.device, args.small
    args.out.mkdir(parents=True, exist_ok=True)
    grid = (64, 2, 4) if small else (768, 12, 12)  # pythia-160m: hidden 768, 12 layers, 12 heads
    evaluator = (96, 2, 4) if small else (2048, 16, 8)  # pythia-1b: hidden 2048 (16 of its 24 layers)
    prompt = 48 if small else 512
    res: dict = {"device": torch.cuda.get_device_name(dev) if torch.device(dev).type == "cuda" else
                 platform.processor() or platform.machine(),
                 "torch": torch.__version__, "small": small,
                 "bf16_supported": torch.cuda.is_bf16_supported() if torch.device(dev).type == "cuda" else None}
    res["matmul"] = matmul_peaks(dev, 512 if small else 8192)
    res["exactness"] = exactness(dev, *grid, prompt=prompt, completion=16)
    res["sampling"] = sampling(dev, *grid)
    pairs = 8 if small else 64
    res["rm_step_grid"] = [rm_step(dev, *grid, prompt=prompt, pairs=pairs, micro=m) for m in (None, pairs // 4)]
    res["rm_step_evaluator"] = [rm_step(dev, *evaluator, prompt=prompt, pairs=pairs, micro=m)
                                for m in (None, pairs // 4)]
    res["decode"] = [decode_batch(dev, *grid, prompt=prompt, memory_gb=g) for g in (None, 0.001 if small else 4.0)]
    if not small:
        res["quick"] = quick_run(dev, args.out)
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
