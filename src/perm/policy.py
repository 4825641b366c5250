"""The SFT policy: supervised finetuning on reference summaries, and sampling candidate pools from it.

Data contract: a prompt is ``f"{post}\\nTL;DR:"``, a completion is ``" " + summary``. Prompt and completion
are tokenised separately (as they are when sampling: the policy continues the prompt's tokens) and the
completion is followed by EOS.

SFT loss: next-token cross-entropy on the completion tokens and the EOS only, averaged over those tokens
in the batch; prompt positions and padding carry label -100.

Sampling (:func:`sample_pool`) prefills each prompt once and repeats its KV cache ``n_samples`` times, then
decodes all rows together with a hand-written loop, instead of ``generate(num_return_sequences=n)``, which
runs the prompt through the model n times. :func:`sample_pool_plain` is that baseline, for benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from perm.batching import left_padded_positions, length_batches, pad_batch
from perm.kv_cache import cache_kwarg, cache_of, forward_params, plain_dynamic_layers
from perm.models import seeded
from perm.optim import adamw_linear, optimizer_step

IGNORE = -100


class Completion(list):
    """A sampled completion's token ids (a plain ``list[int]``, EOS excluded) that also records how it ended.

    ``ended_with_eos`` is True if the policy emitted EOS, False if it was cut at ``max_new_tokens``.
    """

    def __init__(self, ids: Sequence[int] = (), ended_with_eos: bool = False):
        super().__init__(ids)
        self.ended_with_eos = bool(ended_with_eos)

    def __repr__(self) -> str:
        return f"Completion({list.__repr__(self)}, ended_with_eos={self.ended_with_eos})"


# ------------------------------------------------------------------------------------------------ SFT


def encode_sft(
    tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Per example ``(ids, n_prompt)``: prompt ids + completion ids + EOS, and how many leading ids
    are prompt.

    A too-long example loses prompt tokens from the left (the summary and the "TL;DR:" cue are kept); a
    completion longer than ``max_length - 1`` is cut from the right, keeping one prompt token.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"encode_sft: {len(prompts)} prompts but {len(completions)} completions")
    if tokenizer.eos_token_id is None:
        raise ValueError("encode_sft: the tokenizer has no eos_token; the policy must learn where to stop")
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(p_ids, c_ids, strict=True):
        c = (c + [tokenizer.eos_token_id])[: max_length - 1]
        p = p[-(max_length - len(c)) :]
        out.append((p + c, len(p)))
    return out


def sft_batch(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict:
    """Left-pad a list of ``(ids, n_prompt)`` into model inputs and labels, all (B, T).

    Left padding puts every completion at the end of its row, so the loss needs logits only for the last
    ``keep = max completion length + 1`` positions (``logits_to_keep``), not for the whole prompt.
    ``labels[b, t] = ids[b, t]`` on completion and EOS positions, -100 on prompt and padding.
    """
    input_ids, mask = pad_batch([ids for ids, _ in examples], pad_id, left=True)
    t = input_ids.shape[1]
    labels = torch.full_like(input_ids, IGNORE)
    for b, (ids, n_prompt) in enumerate(examples):
        start = t - len(ids) + n_prompt
        labels[b, start:] = input_ids[b, start:]
    keep = max(len(ids) - n_prompt for ids, n_prompt in examples) + 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": left_padded_positions(mask),
        "labels": labels,
        "keep": keep,
    }


def sft_batches(
    examples: Sequence[tuple[list[int], int]], *, batch_size: int, pad_id: int, steps: int, data_seed: int
) -> Iterator[dict]:
    """``steps`` batches (see :func:`sft_batch`); a fresh permutation each epoch, drawn only from
    ``data_seed``."""
    rng = np.random.default_rng(data_seed)
    order, pos = rng.permutation(len(examples)), 0
    for _ in range(steps):
        if pos >= len(examples):
            order, pos = rng.permutation(len(examples)), 0
        yield sft_batch([examples[i] for i in order[pos : pos + batch_size]], pad_id)
        pos += batch_size


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (!= -100) positions.

    logits: (B, K, V) for the last K positions of the rows (K = T for all of them); labels: (B, T).
    The logit at position t predicts the token at t + 1, so the logits at the last position and the labels
    at the first T - K + 1 positions are unused (:func:`sft_batch` makes sure those are all -100).
    """
    k = logits.shape[1]
    targets = labels[:, labels.shape[1] - k + 1 :]  # (B, K - 1)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def sft_forward_loss(model, batch: dict, device) -> torch.Tensor:
    """The SFT loss of one batch from :func:`sft_batch`, computing logits only where the loss needs them."""
    kwargs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
    }
    params = forward_params(model)
    if "position_ids" in params:
        kwargs["position_ids"] = batch["position_ids"].to(device)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = batch["keep"]
    logits = model(**kwargs).logits
    return sft_loss(logits, batch["labels"].to(device))


@torch.no_grad()
def sft_eval_loss(model, examples, pad_id: int, device, batch_size: int = 32) -> float:
    """Token-weighted mean SFT loss over ``examples`` (eval mode, length-sorted batches)."""
    model.eval()
    total, count = 0.0, 0
    for idx in length_batches([len(ids) for ids, _ in examples], batch_size):
        batch = sft_batch([examples[i] for i in idx], pad_id)
        n = int((batch["labels"] != IGNORE).sum())
        total += sft_forward_loss(model, batch, device).item() * n
        count += n
    return total / max(count, 1)


def train_sft(
    model,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    max_length: int,
    data_seed: int,
    warmup_frac: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    dropout_seed: int = 0,
    eval_prompts: Sequence[str] | None = None,
    eval_completions: Sequence[str] | None = None,
    accelerator=None,
    progress: Callable | None = None,
) -> dict:
    """Supervised finetuning of a causal LM on (prompt, completion) pairs; returns a plain state dict.

    AdamW, linear warmup over ``warmup_frac`` of the steps then linear decay to 0, gradient clipping at
    ``max_grad_norm``. Data order depends only on ``data_seed``, dropout only on ``dropout_seed``.
    State: ``step, total_steps, train_loss`` (per step), ``eval_loss_before`` / ``eval_loss`` (held-out,
    when eval pairs are given, else None), ``wall_s``, ``tokens_per_s`` (all tokens through the model),
    the seeds, and ``model`` (unwrapped, in eval mode).
    """
    from perm.models import make_accelerator

    if tokenizer.pad_token_id is None:
        raise ValueError("train_sft: the tokenizer has no pad_token (see perm.models.load_tokenizer)")
    pad_id = tokenizer.pad_token_id
    examples = encode_sft(tokenizer, prompts, completions, max_length)
    eval_examples = None
    if eval_prompts is not None:
        eval_examples = encode_sft(tokenizer, eval_prompts, eval_completions or [], max_length)

    acc = accelerator or make_accelerator()
    total = max(1, int(round(epochs * math.ceil(len(examples) / batch_size))))
    opt, sched = adamw_linear(model, lr=lr, weight_decay=weight_decay, total=total, warmup_frac=warmup_frac)
    model, opt, sched = acc.prepare(model, opt, sched)
    device = acc.device
    state = {
        "step": 0,
        "total_steps": total,
        "train_loss": [],
        "data_seed": data_seed,
        "dropout_seed": dropout_seed,
        "eval_loss_before": None,
        "eval_loss": None,
    }
    if eval_examples:
        state["eval_loss_before"] = sft_eval_loss(model, eval_examples, pad_id, device)
    tokens = 0
    t0 = time.perf_counter()
    with seeded(dropout_seed):
        model.train()
        for batch in sft_batches(
            examples, batch_size=batch_size, pad_id=pad_id, steps=total, data_seed=data_seed
        ):
            loss = sft_forward_loss(model, batch, device)
            optimizer_step(acc, model, opt, sched, loss, max_grad_norm)
            tokens += batch["input_ids"].numel()
            state["step"] += 1
            state["train_loss"].append(loss.item())
            if progress is not None:
                progress(state["step"], total, loss.item())
    state["wall_s"] = time.perf_counter() - t0
    state["tokens_per_s"] = tokens / state["wall_s"]
    model = acc.unwrap_model(model).eval()
    if eval_examples:
        state["eval_loss"] = sft_eval_loss(model, eval_examples, pad_id, device)
    state["model"] = model
    return state


# ------------------------------------------------------------------------------------------- sampling


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Draw one token per row from softmax(logits / temperature), truncated to the top-p nucleus.

    logits: (R, V); u: (R,) uniforms in [0, 1), one per row: the token is the inverse CDF at u, so a
    row's draw depends only on its own logits and its own u. The nucleus is the smallest set of most
    likely tokens whose mass reaches ``top_p`` (the most likely token is always in it), as in
    transformers' ``TopPLogitsWarper``. Returns (R,) token ids.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(-1) - probs
        probs = probs * (mass_before < top_p)
    cdf = probs.cumsum(-1)  # (R, V), unnormalised
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True)
    idx = idx.clamp_(max=logits.shape[-1] - 1)  # (R, 1)
    return (order.gather(-1, idx) if order is not None else idx).squeeze(-1)


def prompt_generators(seed: int, n_prompts: int, device) -> list[torch.Generator]:
    """One random stream per prompt, seeded from (seed, prompt index), so a prompt's draws do not depend
    on which other prompts share its batch."""
    states = np.random.SeedSequence(seed).spawn(n_prompts)
    gens = []
    for s in states:
        g = torch.Generator(device=device)
        g.manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        gens.append(g)
    return gens


@torch.no_grad()
def sample_pool(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_prompts: int = 8,
    greedy: bool = False,
    max_prompt_length: int | None = None,
    device=None,
    memory_bytes: int | None = None,
) -> list[list[Completion]]:
    """``n_samples`` completions per prompt: ``out[i][j]`` is the j-th sample's token ids for prompt i.

    Each :class:`Completion` stops at the policy's EOS (excluded from the ids, ``ended_with_eos=True``)
    or after ``max_new_tokens`` tokens (``ended_with_eos=False``). ``greedy=True`` or ``temperature=0``
    takes the argmax (identical to ``generate(do_sample=False)``).

    Prompts are left-padded in batches of ``batch_prompts`` (sorted by length), prefilled once, and each
    prompt's KV cache is repeated ``n_samples`` times into preallocated buffers (:func:`expand_cache`);
    rows that emitted EOS feed padding (their output is ignored) and leave the batch once they are a
    quarter of it (``batch_select_indices``); decoding stops when every row has ended.

    Reproducibility: prompt i (its index in ``prompts``) draws its uniforms from its own generator seeded
    by ``(seed, i)``, ``n_samples`` per step, so the result is a function of (model, prompts, arguments,
    device) and does not depend on ``batch_prompts`` or on which prompts share a batch -- up to
    floating-point differences between batch shapes, which can flip a draw only when a uniform falls
    within rounding of a CDF boundary. Draw separate reference samples with another ``seed``: the same
    seed repeats the pool's random numbers.
    Prompts longer than ``max_prompt_length`` (default: the model's context minus ``max_new_tokens``)
    are cut from the left. ``memory_bytes``: a decode batch holds at most ``batch_prompts`` prompts and no
    more than fit a key/value cache of that many bytes (:func:`prompts_within`; at least one prompt), the
    result as without it.
    """
    if n_samples < 1 or max_new_tokens < 1:
        raise ValueError(
            f"sample_pool: need n_samples >= 1 and max_new_tokens >= 1, got {n_samples}, {max_new_tokens}"
        )
    greedy = greedy or temperature == 0
    if not greedy and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sample_pool: need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    eos_id, pad_id = _special_ids(tokenizer)
    enc = _encode_prompts(model, tokenizer, prompts, max_new_tokens, max_prompt_length)
    gens = prompt_generators(seed, len(prompts), device)
    out: list[list[Completion]] = [[] for _ in prompts]
    if memory_bytes is not None and enc:
        batch_prompts = min(batch_prompts, prompts_within(model, memory_bytes, max(map(len, enc)), n_samples,
                                                          max_new_tokens))
    for idx in length_batches([len(p) for p in enc], batch_prompts):
        pools = _decode_batch(
            model,
            [enc[i] for i in idx],
            [gens[i] for i in idx],
            n_samples=n_samples,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            device=device,
        )
        for i, pool in zip(idx, pools, strict=True):
            out[i] = pool
    return out


def _decode_batch(
    model, prompt_ids, gens, *, n_samples, temperature, top_p, greedy, max_new_tokens, eos_id, pad_id, device
) -> list[list[Completion]]:
    b, n = len(prompt_ids), n_samples
    ids, mask = pad_batch(prompt_ids, pad_id, left=True)
    t = ids.shape[1]
    ids, mask = ids.to(device), mask.to(device)
    pos = left_padded_positions(mask)
    cache_kw = cache_kwarg(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_params(model) else {}

    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra
    )  # prefill: b rows
    cache = expand_cache(cache_of(out), n, t + max_new_tokens)  # row r of the b*n holds prompt r // n
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)  # (b*n, V)
    mask = mask.repeat_interleave(n, dim=0)  # (b*n, T)
    next_pos = pos[:, -1].repeat_interleave(n) + 1  # (b*n,)

    rows = torch.arange(b * n, device=device)  # output row of each batch row
    finished = torch.zeros(b * n, dtype=torch.bool, device=device)  # emitted EOS, still in the batch
    tokens = torch.full((b * n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((b * n,), max_new_tokens, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        if greedy:
            nxt = logits.argmax(-1)
        else:
            u = torch.cat(
                [torch.rand(n, generator=g, device=device) for g in gens]
            )  # (b*n,): fixed use per step
            nxt = sample_tokens(logits, u[rows], temperature, top_p)
        nxt = nxt.masked_fill(finished, pad_id)
        tokens[rows, step] = nxt
        ended = (nxt == eos_id) & ~finished  # finished rows emit pad, which may equal EOS
        lengths[rows[ended]] = step
        finished |= ended
        if step == max_new_tokens - 1:
            break
        n_finished = int(finished.sum())
        if n_finished == len(rows):
            break
        if 4 * n_finished >= len(rows):  # drop finished rows once they are a quarter of the batch
            live = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(live)
            rows, mask, next_pos, nxt, finished = (
                rows[live],
                mask[live],
                next_pos[live],
                nxt[live],
                finished[live],
            )
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = cache_of(out)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1

    tokens, lengths = tokens.cpu().tolist(), lengths.cpu().tolist()
    return [
        [Completion(tokens[r][: lengths[r]], lengths[r] < max_new_tokens) for r in range(i * n, (i + 1) * n)]
        for i in range(b)
    ]


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers of fixed capacity along the sequence.

    ``DynamicLayer.update`` concatenates, i.e. copies the whole cache for every new token; here a token is
    written into its slot and ``keys`` / ``values`` are views of the filled part, so everything else
    (mask sizes, ``get_seq_length``, row selection) behaves as in a ``DynamicLayer``. Keys and values are held
    in the compute dtype, the values' (the projections' output): under bf16 autocast rotary embeddings leave
    the keys in fp32, which would make the cache 1.5 times the size :func:`kv_bytes_per_token` plans for.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
        super().__init__()
        bsz, heads, length, _ = keys.shape  # (B, H, T, D)
        self._k = keys.new_empty((bsz * repeats, heads, capacity, keys.shape[-1]), dtype=values.dtype)
        self._v = values.new_empty((bsz * repeats, heads, capacity, values.shape[-1]))
        # each prompt's cache written `repeats` times, without an intermediate repeat_interleave copy
        self._k.view(bsz, repeats, heads, capacity, -1)[:, :, :, :length] = keys[:, None]
        self._v.view(bsz, repeats, heads, capacity, -1)[:, :, :, :length] = values[:, None]
        self.length, self.device, self.is_initialized = length, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.length + new > self._k.shape[-2]:
            raise RuntimeError(f"PreallocatedLayer: capacity {self._k.shape[-2]} exceeded")
        self._k[:, :, self.length : self.length + new] = key_states
        self._v[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._views()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("PreallocatedLayer cannot be cropped")


def kv_bytes_per_token(model) -> int:
    """Bytes of key/value cache one token of one sequence takes: keys and values of every layer, in the dtype
    the forward computes them (bf16 under bf16 autocast, else the weights' dtype)."""
    from perm.kv_cache import kv_dims

    layers, kv_heads, head_dim = kv_dims(model.config)
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(next(model.parameters()).device.type):
        dtype = torch.get_autocast_dtype(next(model.parameters()).device.type)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def prompts_within(model, memory_bytes: int, prompt_length: int, n_samples: int, max_new_tokens: int) -> int:
    """How many prompts one decode batch may hold within ``memory_bytes`` of key/value cache: each prompt's
    ``n_samples`` rows of up to ``prompt_length + max_new_tokens`` positions (at least 1)."""
    per_prompt = n_samples * (prompt_length + max_new_tokens) * kv_bytes_per_token(model)
    return max(1, int(memory_bytes // per_prompt))


def expand_cache(cache, repeats: int, capacity: int):
    """Repeat each row of a prefilled cache ``repeats`` times along the batch (row r -> rows r*k .. r*k+k-1).

    A ``DynamicCache`` of plain ``DynamicLayer`` s (GPT-NeoX, Llama, GPT-2, ...) gets
    :class:`PreallocatedLayer` s with room for ``capacity`` positions; any other cache (sliding windows,
    hybrid or older transformers) uses its own ``batch_repeat_interleave`` and grows by concatenation.
    """
    if plain_dynamic_layers(cache):
        cache.layers = [PreallocatedLayer(la.keys, la.values, repeats, capacity) for la in cache.layers]
    else:
        cache.batch_repeat_interleave(repeats)
    return cache


@torch.no_grad()
def sample_pool_plain(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_prompts: int = 8,
    max_prompt_length: int | None = None,
    device=None,
) -> list[list[Completion]]:
    """Baseline for benchmarks: ``model.generate(do_sample=True, num_return_sequences=n_samples)`` per batch.

    Same output format and sampling distribution as :func:`sample_pool`, but the prompt is recomputed for
    every return sequence and the random stream is torch's global one (seeded once), so the draws differ.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    eos_id, pad_id = _special_ids(tokenizer)
    enc = _encode_prompts(model, tokenizer, prompts, max_new_tokens, max_prompt_length)
    out: list[list[Completion]] = [[] for _ in prompts]
    with seeded(seed):
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        for idx in length_batches([len(p) for p in enc], batch_prompts):
            ids, mask = pad_batch([enc[i] for i in idx], pad_id, left=True)
            t = ids.shape[1]
            gen = (
                model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=0,
                    num_return_sequences=n_samples,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                )[:, t:]
                .cpu()
                .tolist()
            )
            for r, i in enumerate(idx):
                out[i] = [_cut_at_eos(g, eos_id) for g in gen[r * n_samples : (r + 1) * n_samples]]
    return out


def _cut_at_eos(ids: list[int], eos_id: int) -> Completion:
    if eos_id in ids:
        return Completion(ids[: ids.index(eos_id)], True)
    return Completion(ids, False)


def _special_ids(tokenizer) -> tuple[int, int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("sampling needs a tokenizer with an eos_token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer.eos_token_id, pad


def _encode_prompts(
    model, tokenizer, prompts, max_new_tokens: int, max_prompt_length: int | None
) -> list[list[int]]:
    if max_prompt_length is None:
        context = getattr(model.config, "max_position_embeddings", None)
        max_prompt_length = context - max_new_tokens if context else None
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"no room for the prompt: max_prompt_length={max_prompt_length}")
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if any(len(p) == 0 for p in enc):
        raise ValueError("sampling: an empty prompt (no tokens) cannot be continued")
    return [p[-max_prompt_length:] if max_prompt_length else p for p in enc]


# --------------------------------------------------------------------------------------------- output


def decode_samples(tokenizer, ids: Sequence[Sequence[int]]) -> list[str]:
    """Completions as text, exactly as tokenised (the leading space of " summary" kept, nothing cleaned)."""
    return tokenizer.batch_decode(
        [list(x) for x in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


SAMPLES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.int64()),
        ("sample_id", pa.int64()),
        ("text", pa.string()),
        ("n_tokens", pa.int64()),
        ("is_reference", pa.bool_()),
        ("ended_with_eos", pa.bool_()),
    ]
)


def build_samples_table(
    prompt_ids: Sequence[int],
    pools: Sequence[Sequence[Sequence[int]]],
    references: Sequence[Sequence[Sequence[int]]] | None,
    tokenizer,
    gold_fn: Callable[[str, str], float] | None = None,
    posts: Sequence[str] | None = None,
    *,
    max_new_tokens: int | None = None,
) -> pa.Table:
    """``samples.parquet`` as a table: one row per candidate, pool first, then the prompt's references.

    Columns: ``prompt_id`` (int64), ``sample_id`` (int64: pool ``0..N-1``, references ``N..N+K-1``),
    ``text`` (the decoded completion), ``n_tokens`` (int64, EOS excluded), ``is_reference`` (bool),
    ``ended_with_eos`` (bool; from :class:`Completion`, else ``n_tokens < max_new_tokens`` when that is
    given, else null), and ``gold_reward`` = ``gold_fn(post, text)`` (float64) when ``gold_fn`` is given.
    """
    if len(pools) != len(prompt_ids):
        raise ValueError(f"build_samples_table: {len(prompt_ids)} prompt_ids but {len(pools)} pools")
    if references is not None and len(references) != len(prompt_ids):
        raise ValueError(
            f"build_samples_table: {len(prompt_ids)} prompt_ids but {len(references)} reference lists"
        )
    if gold_fn is not None and (posts is None or len(posts) != len(prompt_ids)):
        raise ValueError("build_samples_table: gold_fn needs posts, one per prompt_id")
    cols: dict[str, list] = {name: [] for name in SAMPLES_SCHEMA.names}
    gold: list[float] = []
    for i, pid in enumerate(prompt_ids):
        cands = [(c, False) for c in pools[i]] + [
            (c, True) for c in (references[i] if references is not None else [])
        ]
        texts = decode_samples(tokenizer, [c for c, _ in cands])
        for j, ((ids, is_ref), text) in enumerate(zip(cands, texts, strict=True)):
            ended = getattr(ids, "ended_with_eos", None)
            if ended is None and max_new_tokens is not None:
                ended = len(ids) < max_new_tokens
            cols["prompt_id"].append(int(pid))
            cols["sample_id"].append(j)
            cols["text"].append(text)
            cols["n_tokens"].append(len(ids))
            cols["is_reference"].append(is_ref)
            cols["ended_with_eos"].append(ended)
            if gold_fn is not None:
                gold.append(float(gold_fn(posts[i], text)))
    table = pa.table(cols, schema=SAMPLES_SCHEMA)
    if gold_fn is not None:
        table = table.append_column(pa.field("gold_reward", pa.float64()), pa.array(gold, type=pa.float64()))
    return table
