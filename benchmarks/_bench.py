"""Shared helpers of the throughput benchmarks: the models, the FLOP count, the matmul peak, isolation.

- Model: a tiny GPT-NeoX (4 layers, hidden 128, 4 heads, MLP 512, vocab 1024), fp32, random tokens; or
  (``--model seed0``) the shipped ``testbed:seed0`` backbone (2 layers, hidden 128, 4 heads, MLP 512) with a
  fresh scalar head, as the default's grid RMs start: ``GPTNeoXForSequenceClassification``, fp32, ``sdpa``.
- FLOPs are *model FLOPs* (the MFU convention): 2 per multiply-add of every matmul a method runs (the
  linear layers of every token it feeds the model, the head where its logits are read, and attention over
  the causal (query, key) pairs it computes); a training step counts 3x its forward. Each method is
  credited only with its own work, so a method that skips redundant work has fewer FLOPs, not more.
- Peak: the best of a few timed 2048 x 2048 fp32 ``torch.matmul`` s, in the same run, on the same threads.
- Memory: every method runs in its own spawned process; ``peak RSS`` is that process's high-water mark
  (``VmHWM`` in /proc/self/status: the peak ``ru_maxrss`` reports, but not carried over from the parent
  through fork + exec), ``+run`` is that peak minus the RSS once the model and data are built,
  before the (smaller) warm-up and the timed run. tracemalloc cannot see torch's buffers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time

VOCAB, PAD, EOS = 1024, 1, 0
HIDDEN, LAYERS, HEADS, MLP = 128, 4, 4, 512


def tiny_config(max_positions: int = 1024):
    from perm.models import gpt_neox_config

    return gpt_neox_config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        intermediate_size=MLP,
        max_position_embeddings=max_positions,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )


def tokenizer():
    """A word-level tokenizer over ``w2 .. w1023`` with EOS 0 and pad 1 (text = token ids, one word each)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": EOS, "<|pad|>": PAD, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def random_ids(rng, n: int) -> list[int]:
    return [int(x) for x in rng.integers(2, VOCAB, n)]


MODELS = ("tiny", "seed0")


def reward_model(kind: str = "tiny"):
    """A fresh fp32 ``GPTNeoXForSequenceClassification`` with ``sdpa`` attention, the same weights every call:
    ``tiny`` (random init, seed 0) or a shipped backbone (``seed0``: ``testbed:seed0``, the default's first
    grid backbone, with a scalar head from head seed 0, dropout 0). Token ids 0 (EOS), 1 (pad) and
    ``2 .. 1023`` mean the same to both (the shipped vocabulary has 1816 ids; EOS 0, pad 1)."""
    from perm.models import seeded, use_attention

    if kind == "tiny":
        from transformers import GPTNeoXForSequenceClassification

        cfg = tiny_config()
        cfg.num_labels = 1
        with seeded(0):
            model = GPTNeoXForSequenceClassification(cfg)
    else:
        from transformers.utils import logging

        from perm.models import load_reward_backbone
        from perm.shipped import SCHEME, path_of

        logging.set_verbosity_error()  # not the load report of a causal LM loaded as a classifier
        logging.disable_progress_bar()
        model = load_reward_backbone(path_of(SCHEME + kind), pad_token_id=PAD, head_seed=0, dropout=0.0)
        assert model.config.eos_token_id == EOS and model.config.vocab_size >= VOCAB
    return use_attention(model, "sdpa")


# ----------------------------------------------------------------------------------------------- FLOPs


def forward_flops(
    tokens: int,
    pairs: int,
    head_rows: int = 0,
    head_width: int = 1,
    *,
    layers: int = LAYERS,
    hidden: int = HIDDEN,
    mlp: int = MLP,
) -> float:
    """Model FLOPs of a forward pass: ``tokens`` through every layer's linear maps, attention over ``pairs``
    (query, key) pairs per layer, and a ``hidden x head_width`` head on ``head_rows`` positions (the tiny
    model's sizes unless given: :func:`dims`)."""
    per_token = layers * (4 * hidden * hidden + 2 * hidden * mlp)  # qkv, out-proj, MLP in and out
    return 2.0 * per_token * tokens + 4.0 * layers * hidden * pairs + 2.0 * hidden * head_width * head_rows


def dims(config) -> dict:
    """The sizes :func:`forward_flops` counts, of a GPT-NeoX config."""
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "mlp": config.intermediate_size}


def causal_pairs(length: int, before: int = 0) -> int:
    """(query, key) pairs of ``length`` new tokens attending causally to ``before`` earlier ones and themselves."""
    return length * before + length * (length + 1) // 2


def matmul_peak(n: int = 2048, reps: int = 5) -> dict:
    """Best observed fp32 FLOP/s of an ``n x n`` torch.matmul (run it through :func:`isolated`)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"flops_per_s": 2.0 * n**3 / best}


# ----------------------------------------------------------------------------------------- isolation


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB (VmRSS: now; VmHWM: its peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _child(fn, kwargs: dict, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    out = fn(**kwargs)  # a dict with "seconds", "flops" and "start_rss_mb" (after building model and data)
    out["peak_rss_mb"] = rss_mb("VmHWM")
    queue.put(out)


def isolated(fn, threads: int, **kwargs) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned process (its own peak memory); returns its dict + peak_rss_mb."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, kwargs, threads, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def machine(threads: int) -> str:
    """The CPU (model name and PyTorch's capability, :func:`perm.hardware.cpu_info`), cores, threads, load,
    torch and transformers versions."""
    import torch
    import transformers

    from perm.hardware import cpu_info, cpu_label

    load = os.getloadavg()[0]
    info = cpu_info()
    return (
        f"{info['model'] or platform.machine()} ({cpu_label(info)}), {os.cpu_count()} cpus, {threads} torch "
        f"thread(s), load average {load:.1f} at start; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def report(name: str, res: dict, peak_flops: float) -> str:
    rate = res["flops"] / res["seconds"]
    return (
        f"  {name:<34}{res['seconds']:>8.2f} s {rate / 1e9:>7.1f} GFLOP/s ({100 * rate / peak_flops:>4.1f}% of peak)"
        f"  peak RSS {res['peak_rss_mb']:>6.0f} MB (+{res['peak_rss_mb'] - res['start_rss_mb']:.0f} MB run)"
    )
