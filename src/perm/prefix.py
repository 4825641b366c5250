"""Share the prompt: score many continuations of one prompt against a single forward pass of that prompt.

In a causal (decoder-only) model a token's hidden states depend only on the tokens before it, so a prompt's
keys and values at every layer are the same whatever follows. Best-of-n scoring therefore runs each prompt
once and only the candidates' own tokens against its KV cache (:func:`score_prompt_groups`), and RM training
runs a pair's prompt once, with gradient, under both the chosen and the rejected continuation
(:func:`pair_rewards_shared`). Both equal full-sequence computation up to float rounding
(``tests/test_prefix.py``: within 1e-5 in fp32, rewards and every parameter's gradient).

One shared forward, for ``b`` prompts and ``n`` continuation rows where row ``i`` continues prompt
``owner[i]``:

- prompts are left-padded to ``(b, P)`` with positions ``cumsum(mask) - 1``: each prompt ends at
  column P - 1;
- each layer's prompt keys/values ``(b, H, P, D)`` are gathered to ``(n, H, P, D)`` (rows ``owner``);
- continuations are right-padded to ``(n, R)`` with positions ``len(prompt) + 0..R-1`` and attention mask
  ``[prompt mask | own mask]`` of shape ``(n, P + R)``;
- the reward is the model's own read-out on the continuation's ids, at their last non-pad token: the
  candidate's last real token, where full-sequence scoring of ``prompt + candidate`` reads it too.

The read-out (:func:`readout_of`, the model config's ``perm_reward_readout``; ``reward.readout``) is ``last``
(the head on the last real token: any ``*ForSequenceClassification``) or, for decoder models, ``sum`` /
``mean``: the head applied to every real token's final hidden state, summed or averaged over the whole
sequence, prompt included. A prompt's own tokens then add the same amount to every continuation of it, so
sharing the prompt stays exact: the prefill returns that amount (:attr:`PromptCache.score_sum`) and the
continuations add their own tokens'. Under ``sum`` the ranking of one prompt's candidates is by their own
tokens alone; Bradley-Terry differences cancel the prompt's part exactly.

Encoder models (BERT: bidirectional, reward at the first token) cannot share a prompt; they, and caches other
than plain ``DynamicLayer`` s (sliding windows, linear attention), fall back to full-sequence scoring
(:func:`score_ids`).

Decoders whose attention takes a block-causal 4-D mask run a prompt and its completions packed into one
sequence instead (:mod:`perm.packed`; :func:`score_prompt_groups` and ``perm.reward.train_reward_model``
choose it per model): one dense forward, no gathered cache. The prefill + continuation path here is the
fallback for the other decoders (an attention implementation that drops a user mask), and ``pack=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from perm.batching import (  # noqa: F401  (merge_prefixes re-exported)
    distinct,
    last_real,
    left_padded_positions,
    length_batches,
    merge_prefixes,
    pad_batch,
    prompt_batches,
)
from perm.kv_cache import cache_kwarg, cache_of, plain_dynamic_layers
from perm.models import reward_head
from perm.readout import (  # noqa: F401
    READOUT_KEY,
    READOUTS,
    readout_of,
    reward_shape,
    set_readout,
    shares_prompt,
)


def _forward(model, mask: torch.Tensor, **kw):
    """``model(**kw)`` and, for a pooled read-out, the head's score of every token, 0 where ``mask`` is 0."""
    readout = readout_of(model)
    if readout == "last":
        return model(**kw), None
    out = model(**kw, output_hidden_states=True)
    s = reward_head(getattr(model, "module", model))(out.hidden_states[-1])[..., 0]  # (n, T)
    return out, s * mask.to(s.dtype)


def _pooled(model, out, scores, lengths, prompt_sum=None) -> torch.Tensor:
    """(n,) rewards from ``_forward``'s output: the last token's logit, or the per-token scores summed, plus
    ``prompt_sum`` (the shared prompt's part, when only the continuations ran), and divided by ``lengths`` for
    ``mean``."""
    if scores is None:
        return out.logits[:, 0] if out.logits.shape[-1] == 1 else out.logits  # (n,) or (n, H) heads
    total = scores.sum(1) if prompt_sum is None else scores.sum(1) + prompt_sum.to(scores.dtype)
    return total / lengths.to(total.dtype) if readout_of(model) == "mean" else total


def sequence_rewards(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n,) rewards of right-padded full sequences ``ids`` (mask 1 on real tokens), by the model's
    read-out."""
    out, scores = _forward(model, mask, input_ids=ids, attention_mask=mask)
    return _pooled(model, out, scores, mask.sum(1))


# ------------------------------------------------------------------------------------------ one forward


class UnsharableCache(ValueError):
    """The model's KV cache is not made of plain ``DynamicLayer`` s (sliding windows, linear attention,
    ...)."""


@dataclass
class PromptCache:
    """Keys and values of a batch of left-padded prompts.

    keys, values: per layer (b, H, P + spare, D), positions P.. free for continuations; mask: (b, P) long, 1
    on real prompt tokens; lengths: (b,) long. Empty lists when P == 0 (every prompt empty): the continuations
    then run on their own. score_sum: (b,) the head's scores summed over each prompt's tokens, for a pooled
    read-out (``sum`` / ``mean``); None for ``last``.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor
    score_sum: torch.Tensor | None = None


class _RowsLayer(DynamicLayer):
    """A ``DynamicLayer`` that starts from gathered prompt rows ``(n, H, P + spare, D)``, of which the first
    ``length`` positions are filled: the continuation is written into the spare room in place (one copy of
    the cache per chunk, not two), or appended by concatenation when it does not fit."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self._k, self._v, self.length = keys, values, length
        self.device, self.is_initialized = keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end <= self._k.shape[-2]:
            self._k[:, :, self.length : end] = key_states
            self._v[:, :, self.length : end] = value_states
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        self.length = end
        return self.keys, self.values


def prefill(
    model, prompts: Sequence[Sequence[int]], pad_id: int, device, spare: int = 0
) -> PromptCache | None:
    """Run the prompts once (left-padded); None if the model's cache is not made of plain ``DynamicLayer`` s.

    spare: room left after the prompt in the key/value tensors, so continuations up to that length are
    written in place. Keeps the autograd graph (training shares the prompt's backward too); wrap in
    ``torch.no_grad`` to score.
    """
    ids, mask = pad_batch(prompts, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    pooled = readout_of(model) != "last"
    if ids.shape[1] == 0:
        zeros = torch.zeros(len(prompts), device=device) if pooled else None
        return PromptCache([], [], mask, mask.sum(1), zeros)
    out, scores = _forward(model, mask, input_ids=ids, attention_mask=mask,
                           position_ids=left_padded_positions(mask), use_cache=True)
    cache = cache_of(out)
    if not plain_dynamic_layers(cache):
        return None
    keys, values = [la.keys for la in cache.layers], [la.values for la in cache.layers]
    if spare > 0:
        keys, values = [_with_room(k, spare) for k in keys], [_with_room(v, spare) for v in values]
    return PromptCache(keys, values, mask, mask.sum(1), scores.sum(1) if pooled else None)


def _with_room(x: torch.Tensor, spare: int) -> torch.Tensor:
    out = x.new_empty((*x.shape[:2], x.shape[2] + spare, x.shape[3]))
    out[:, :, : x.shape[2]] = x
    return out


def continuation_rewards(
    model, prompts: PromptCache, owner: torch.Tensor, continuations: Sequence[Sequence[int]], pad_id: int
) -> torch.Tensor:
    """(n,) rewards of ``prompt[owner[i]] + continuations[i]``, running only the continuations' tokens.

    owner: (n,) long, on the prompts' device. Every continuation needs a token other than ``pad_id`` (the
    read-out is the last such token); keeps the autograd graph.
    """
    ids, cmask = pad_batch(continuations, pad_id)  # right-padded (n, R)
    device = prompts.mask.device
    ids, cmask = ids.to(device), cmask.to(device)
    positions = prompts.lengths[owner, None] + torch.arange(ids.shape[1], device=device)  # (n, R)
    lengths = prompts.lengths[owner] + cmask.sum(1)  # whole-sequence lengths, for a mean read-out

    def rewards(out, scores):  # pooled: the prompt's tokens count too, as in full-sequence scoring
        prompt_sum = None if scores is None else prompts.score_sum.index_select(0, owner)
        return _pooled(model, out, scores, lengths, prompt_sum)

    if not prompts.keys:
        return rewards(*_forward(model, cmask, input_ids=ids, attention_mask=cmask, position_ids=positions,
                                 use_cache=False))
    cache = DynamicCache()
    p = prompts.mask.shape[1]
    cache.layers = [
        _RowsLayer(k.index_select(0, owner), v.index_select(0, owner), p)  # (n, H, P + spare, D) each
        for k, v in zip(prompts.keys, prompts.values, strict=True)
    ]
    mask = torch.cat([prompts.mask.index_select(0, owner), cmask], dim=1)  # (n, P + R)
    return rewards(*_forward(
        model,
        cmask,
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg(model): cache},
    ))


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_ids(
    model, seqs: Sequence[Sequence[int]], pad_id: int, device, batch_size: int = 64, progress=None,
    mc_dropout: bool = False,
) -> np.ndarray:
    """Reward of each token sequence, (len(seqs),) float64, batched by length with dynamic padding.

    Full-sequence scoring, for any reward model: the reference the shared-prompt scoring equals, and its
    fallback where a prompt cannot be shared. ``mc_dropout``: score in the model's train mode (dropout on: one
    MC-dropout draw, perm.members.dropout_on) instead of eval mode.
    """
    if not mc_dropout:
        model.eval()
    out = np.empty((len(seqs), *reward_shape(model)), dtype=np.float64)
    done = 0
    for idx in length_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        out[idx] = sequence_rewards(model, ids.to(device), mask.to(device)).float().cpu().numpy()
        done += len(idx)
        if progress is not None:
            progress(done, len(seqs))
    return out


def rows_within(model, memory_bytes: int, prompt_length: int, candidate_length: int) -> int:
    """How many rows one scoring batch of ``model`` may hold within ``memory_bytes`` (at least 1): each row a
    candidate of up to ``candidate_length`` tokens on its prompt's key/value cache of up to ``prompt_length``
    positions (gathered per row, in fp32: scoring runs in fp32), plus its activations (the residual stream and
    the MLP's hidden width per token, a few copies alive at once). An estimate from the shapes: leave room
    (the prompts' own prefill and cache, before their candidates are gathered, are not counted)."""
    from perm.kv_cache import kv_dims

    cfg = model.config
    layers, kv_heads, head_dim = kv_dims(cfg)
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    fp32 = 4
    total = prompt_length + candidate_length
    cache = 2 * layers * kv_heads * head_dim * total * fp32
    activations = 4 * candidate_length * (hidden + inter) * fp32 + heads * candidate_length * total * fp32
    return max(1, int(memory_bytes // (cache + activations)))


@torch.no_grad()
def score_prompt_groups(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    device,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    pack: bool | None = None,
    pack_tokens: int | None = None,
    mc_dropout: bool = False,
) -> list[np.ndarray]:
    """Reward of ``prompt_ids[g] + completion_ids[g][j]`` for every group g and candidate j.

    Returns one (len(completion_ids[g]),) float64 array per group, equal to :func:`score_ids` of the
    concatenated sequences (within float rounding). Prompts are batched by length (at most ``batch_size``
    prompts and about ``batch_size`` candidates per batch, :func:`perm.batching.prompt_batches`). Decoders run
    each prompt once and its candidates as continuations of its cache, in length-sorted chunks of
    ``batch_size`` rows, so the gathered cache never exceeds ``batch_size`` rows; with ``pack=True`` (models
    that pack, :func:`perm.packed.packs`) each batch runs as one forward of packed rows instead, a prompt and
    its candidates per row (rows of at most ``pack_tokens`` tokens or twice the prompt; None: the default of
    :func:`perm.packed.pack_rows`). Encoder models are scored whole. The cache path is the default because it
    scored the default's pools faster (packed 0.76-0.92x of it, benchmarks/README.md): a packed row repeats
    the prompt for every chunk of candidates and its masked attention computes the whole square.
    pack: None or False = the cache path; True = packed (an error for a model that cannot pack).
    mc_dropout: score in the model's train mode (one MC-dropout draw, perm.members.dropout_on; the cache
    path); default eval mode. A multi-head model's arrays are (len, H).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"score_prompt_groups: {len(prompt_ids)} prompts but {len(completion_ids)} groups")
    sizes = np.array([len(c) for c in completion_ids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    flat_out = np.empty((int(starts[-1]), *reward_shape(model)), dtype=np.float64)
    split = lambda: [flat_out[starts[g] : starts[g + 1]] for g in range(len(sizes))]  # noqa: E731
    from perm.packed import packs, score_packed  # perm.packed builds on this module

    if pack and mc_dropout:
        raise ValueError("mc_dropout scores through the prompt cache: pack must be None or False")
    if pack:
        if not packs(model):
            raise ValueError(f"pack=True, but {type(model).__name__} cannot run packed prompt groups")
        flat_out[:] = score_packed(model, prompt_ids, completion_ids, pad_id, device, batch_size=batch_size,
                                   progress=progress, pack_tokens=pack_tokens)
        return split()
    if not shares_prompt(model):
        whole = [list(p) + list(c) for p, cs in zip(prompt_ids, completion_ids, strict=True) for c in cs]
        flat_out[:] = score_ids(model, whole, pad_id, device, batch_size=batch_size, progress=progress,
                                mc_dropout=mc_dropout)
        return split()
    if not mc_dropout:
        model.eval()
    flat = [c for cs in completion_ids for c in cs]
    flat_group = np.repeat(np.arange(len(sizes)), sizes)  # group of each flat candidate
    # a candidate made only of padding has no read-out of its own (full-sequence scoring reads in the prompt)
    readable = np.array([any(t != pad_id for t in c) for c in flat], dtype=bool)
    whole = list(np.flatnonzero(~readable))  # flat indices scored as full sequences
    local = np.zeros(len(sizes), dtype=np.int64)
    done, total, can_share = 0, len(flat), True
    for group in prompt_batches(np.argsort([len(p) for p in prompt_ids], kind="stable"), sizes, batch_size):
        idx = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in group])
        idx = idx[readable[idx]]
        if len(idx) == 0:
            continue
        spare = max((len(flat[k]) for k in idx), default=0)
        prompts = prefill(model, [prompt_ids[g] for g in group], pad_id, device, spare) if can_share else None
        if prompts is None:  # a cache whose rows we cannot gather: score the rest whole
            can_share = False
            whole += list(idx)
            continue
        local[group] = np.arange(len(group))
        owner = torch.as_tensor(local[flat_group[idx]], device=prompts.mask.device)  # (len(idx),)
        for chunk in length_batches([len(flat[k]) for k in idx], batch_size):
            rows = owner[torch.as_tensor(chunk, device=owner.device)]
            r = continuation_rewards(model, prompts, rows, [flat[k] for k in idx[chunk]], pad_id)
            flat_out[idx[chunk]] = r.float().cpu().numpy()
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if whole:
        seqs = [list(prompt_ids[flat_group[k]]) + list(flat[k]) for k in whole]
        flat_out[whole] = score_ids(model, seqs, pad_id, device, batch_size=batch_size, mc_dropout=mc_dropout)
        if progress is not None:
            progress(total, total)
    return split()


# ------------------------------------------------------------------------------------------------ pairs


def split_pairs(
    chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Split each pair of full sequences at their longest common prefix: (prefixes, chosen tails, rejected
    tails).

    The prefix (the prompt, and any leading tokens the two completions share) is computed once; each tail
    keeps at least its last non-pad token, where the reward is read.
    """
    prefixes, ct, rt = [], [], []
    for a, b in zip(chosen, rejected, strict=True):
        n = min(len(a), len(b))
        k = next((i for i in range(n) if a[i] != b[i]), n)
        k = min(k, last_real(a, pad_id), last_real(b, pad_id))
        prefixes.append(list(a[:k]))
        ct.append(list(a[k:]))
        rt.append(list(b[k:]))
    return prefixes, ct, rt


def pair_rewards_shared(
    model,
    prefixes: Sequence[Sequence[int]],
    chosen_tails: Sequence[Sequence[int]],
    rejected_tails: Sequence[Sequence[int]],
    pad_id: int,
    device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rewards of ``prefix + chosen_tail`` and of ``prefix + rejected_tail``, the prefix run once.

    The prefix's cache is repeated for both continuations, so its backward pass is shared as well; pairs of
    the batch whose prefixes start with the same prompt (:func:`merge_prefixes`) share one prompt forward
    too, and a completion that sits in several of them (K-wise comparisons) is run once for all its pairs
    (the same rewards and, summed over its pairs, the same gradients). With dropout on, the continuations of
    one prompt see it under one dropout mask (the unshared forward draws one per sequence).
    """
    common, owner, rest = merge_prefixes(prefixes)
    prompts = prefill(model, common, pad_id, device)
    if prompts is None:
        raise UnsharableCache(
            f"{type(model).__name__}: its KV cache is not plain DynamicLayers; use share_prompt=False"
        )
    b = len(prefixes)
    seqs = [(int(g), tuple(r) + tuple(t)) for g, r, t in zip(owner, rest, chosen_tails, strict=True)]
    seqs += [(int(g), tuple(r) + tuple(t)) for g, r, t in zip(owner, rest, rejected_tails, strict=True)]
    unique, where = distinct(seqs)  # a completion in several pairs of the batch (K-wise) runs once
    rows = torch.as_tensor([g for g, _ in unique], dtype=torch.long, device=prompts.mask.device)
    r = continuation_rewards(model, prompts, rows, [list(t) for _, t in unique], pad_id)
    r = r.index_select(0, torch.as_tensor(where, dtype=torch.long, device=r.device))
    return r[:b], r[b:]


def score_pairs(
    model,
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    pad_id: int,
    device,
    batch_size: int = 64,
    pack: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards (float64) of full chosen and rejected sequences; decoders run each pair's common prefix once,
    and each distinct completion of a prompt once however many pairs it is in (K-wise comparisons), packed or
    through the prompt's cache (``pack``: as in :func:`score_prompt_groups`)."""
    if not shares_prompt(model):
        return (
            score_ids(model, chosen, pad_id, device, batch_size=batch_size),
            score_ids(model, rejected, pad_id, device, batch_size=batch_size),
        )
    prefixes, ct, rt = split_pairs(chosen, rejected, pad_id)
    common, owner, rest = merge_prefixes(prefixes)  # pairs of one prompt: one prompt forward
    candidates: list[dict[tuple, int]] = [{} for _ in common]  # a completion in several pairs is scored once
    sc = np.zeros(len(prefixes), dtype=np.int64)
    sr = np.zeros(len(prefixes), dtype=np.int64)
    for i, (g, r) in enumerate(zip(owner, rest, strict=True)):
        sc[i] = candidates[g].setdefault((*r, *ct[i]), len(candidates[g]))
        sr[i] = candidates[g].setdefault((*r, *rt[i]), len(candidates[g]))
    groups = score_prompt_groups(model, common, [[list(c) for c in cands] for cands in candidates], pad_id,
                                 device, batch_size=batch_size, pack=pack)
    if not groups:
        return np.empty(0), np.empty(0)
    rc = np.array([groups[g][s] for g, s in zip(owner, sc, strict=True)], dtype=np.float64)
    rr = np.array([groups[g][s] for g, s in zip(owner, sr, strict=True)], dtype=np.float64)
    return rc, rr
