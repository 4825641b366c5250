"""Seed-varied causal-LM pretraining: same config and data, differing only in init seed and data order."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from perm.models import new_causal_lm, use_attention
from perm.store import atomic_path, hash_obj

CHECKPOINT_VERSION = 1


def pack_corpus(texts: list[str], tokenizer, seq_len: int,
                heldout_frac: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate documents (each followed by EOS) and cut into (n_chunks, seq_len) token blocks.

    The held-out blocks are the last `heldout_frac` of the stream: fixed, independent of any seed, so every
    pretrain's perplexity is measured on the same text.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // seq_len
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    n_held = max(1, int(round(n * heldout_frac)))
    return blocks[: n - n_held], blocks[n - n_held :]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """exp(mean next-token cross-entropy) over the blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i : i + batch_size].to(device)
        out = model(input_ids=x, labels=x)
        k = x.numel() - x.shape[0]  # predicted positions
        total += out.loss.item() * k
        count += k
    return math.exp(total / max(count, 1))


def pretrain(
    *,
    config,
    train_blocks: torch.Tensor,
    heldout_blocks: torch.Tensor,
    init_seed: int,
    data_seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    device: torch.device,
    progress=None,
    bf16: bool = False,
    attention: str | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
):
    """Train a causal LM from scratch; returns (model, info) with held-out perplexity and timing.

    Initialisation depends only on `init_seed`; the order of training blocks only on `data_seed`.
    bf16: mixed precision (fp32 weights, bf16 autocast around each forward). Autocast is entered per step on
    purpose: it caches the bf16 copy of every weight until its context exits, so one context around the
    whole loop would train on the weights' first-step copies and learn almost nothing.
    attention: the attention implementation (:func:`perm.models.attention_for`); None = the model's default.
    checkpoint_dir, checkpoint_every: every `checkpoint_every` steps the whole training state (weights,
    optimiser, data-order position and generator, torch RNG, losses so far) is written atomically to
    `checkpoint_dir` (:func:`save_training_state`); a call that finds a checkpoint there for the same recipe
    resumes from it and ends with exactly the weights of an uninterrupted run (a checkpoint of another recipe
    is an error). The caller removes the folder once the model is saved.
    """
    model = use_attention(new_causal_lm(config, init_seed), attention).to(device)
    order_rng = np.random.default_rng(data_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    n = len(train_blocks)
    perm = order_rng.permutation(n)
    pos = start = 0
    losses: list[float] = []
    elapsed = 0.0
    recipe = hash_obj({"config": config.to_dict(), "init_seed": init_seed, "data_seed": data_seed,
                       "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                       "weight_decay": weight_decay, "bf16": bf16, "n_blocks": n,
                       "blocks": hash_obj(train_blocks[:4].tolist()), "version": CHECKPOINT_VERSION})
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "state.json").exists():
        start, pos, perm, losses, elapsed = load_training_state(checkpoint_dir, recipe, model, opt, order_rng)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, steps):
        if pos + batch_size > n:  # new epoch, new order from the same data-order stream
            perm, pos = order_rng.permutation(n), 0
        x = train_blocks[torch.from_numpy(perm[pos : pos + batch_size])].to(device)  # (B, T)
        pos += batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup_steps, lr)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (checkpoint_dir is not None and checkpoint_every and (step + 1) % checkpoint_every == 0
                and step + 1 < steps):
            save_training_state(checkpoint_dir, recipe, step + 1, pos, perm, losses,
                                elapsed + time.perf_counter() - t0, model, opt, order_rng)
        if progress is not None:
            progress(step + 1, steps, loss.item())
    wall = elapsed + time.perf_counter() - t0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        ppl = perplexity(model, heldout_blocks, batch_size, device)
    info = {
        "init_seed": init_seed,
        "data_seed": data_seed,
        "steps": steps,
        "tokens": steps * batch_size * train_blocks.shape[1],
        "final_train_loss": float(np.mean(losses[-20:])) if losses else None,  # None: no step taken
        "heldout_perplexity": ppl,
        "attention": model.config._attn_implementation,
        "tokens_per_s": steps * batch_size * train_blocks.shape[1] / wall,
        "wall_s": wall,
        "resumed_at_step": start,
    }
    return model.eval(), info


def save_training_state(directory, recipe: str, step: int, pos: int, perm: np.ndarray, losses: list[float],
                        elapsed: float, model, opt, order_rng: np.random.Generator) -> None:
    """Write the state to resume pretraining after `step` steps, atomically (a kill mid-write keeps the last
    complete checkpoint): weights as safetensors, the optimiser and RNG states as tensors loaded back with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling), the rest as JSON."""
    from safetensors.torch import save_file

    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "perm": torch.from_numpy(np.asarray(perm, dtype=np.int64))}, tmp / "training.pt")
        (tmp / "state.json").write_text(json.dumps({
            "recipe": recipe, "step": step, "pos": pos, "losses": losses, "elapsed_s": elapsed,
            "order_rng": order_rng.bit_generator.state}, default=int))


def load_training_state(directory, recipe: str, model, opt, order_rng: np.random.Generator):
    """Restore what :func:`save_training_state` wrote into `model`, `opt` and `order_rng`; returns (step, pos,
    perm, losses, elapsed). A checkpoint of another recipe (config, seeds, schedule, data) is refused."""
    from safetensors.torch import load_file

    d = Path(directory)
    state = json.loads((d / "state.json").read_text())
    if state["recipe"] != recipe:
        raise ValueError(f"{d}: a pretraining checkpoint of another recipe (config, seeds, schedule or data "
                         "changed); remove the folder to start afresh")
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    rest = torch.load(d / "training.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(rest["optimizer"])
    torch.set_rng_state(rest["torch_rng"])
    order_rng.bit_generator.state = state["order_rng"]
    return state["step"], state["pos"], rest["perm"].numpy(), list(state["losses"]), float(state["elapsed_s"])
