"""Packed prompt groups: a prompt and several of its completions run as one sequence.

A decoder RM's reward of ``prompt + completion`` depends only on that sequence's tokens. A prompt group (a
prompt and the distinct completions of its pairs, or a pool prompt and a chunk of its candidates) runs as
the single row

    prompt | completion 1 | completion 2 | ... | completion m | right padding

under a block-causal 4-D attention mask (every token sees the prompt and the earlier tokens of its own
block, never another completion) with position ids that restart at ``len(prompt)`` for each completion. Each
completion's tokens then get exactly the hidden states of full-sequence scoring of ``prompt + completion``,
the prompt's tokens run once for all of them (forward and backward), and a batch of groups is one plain
dense forward, right-padded to its longest row (``tests/test_packed.py``: rewards, the Bradley-Terry loss and
every parameter's gradient equal the full-sequence ones within 1e-5 in fp32).

The read-outs are those of full-sequence scoring (:func:`perm.readout.readout_of`): ``last`` reads the head at
the last token of ``prompt + completion`` that is not the config's pad token (in the prompt, where the
completion has none: transformers' ``*ForSequenceClassification`` rule); ``sum`` / ``mean`` add the head's
scores over every position of ``prompt + completion`` (the prompt's tokens count once per completion, pad
ids inside a sequence count too) and ``mean`` divides by that sequence's length.

A group whose row would exceed ``max(pack_tokens, 2 * len(prompt))`` tokens is cut into several rows, each
carrying the prompt: attention computes every (query, key) pair of a row, masked or not, so a row of
hundreds of completions would spend its time there.

Whether a model packs is decided once per model and attention implementation (:func:`packs`): decoder-only
models with position ids, ``sdpa`` or ``eager`` attention, full attention in every layer (no sliding
window) and a probe forward that reproduces full-sequence hidden states. The others keep the prefill +
continuation path of :mod:`perm.prefix` or full-sequence scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from perm.batching import distinct, merge_prefixes, prompt_batches
from perm.kv_cache import forward_params
from perm.models import reward_head
from perm.readout import readout_of, reward_shape, shares_prompt

PACK_TOKENS = 512  # default cap of a packed row's length (raised to twice the prompt for long prompts)
MASK_KINDS = {"sdpa": "bool", "eager": "additive"}  # attention implementations that take a user 4-D mask
_DECISION = "_perm_packs"  # attribute of a model: (attention implementation, packs) decided for it


# ----------------------------------------------------------------------------------------------- decision


def packs(model) -> bool:
    """True if ``model`` runs packed prompt groups exactly; decided once per model and attention
    implementation (a tiny probe forward the first time), then remembered on the model."""
    m = getattr(model, "module", model)  # unwrap DistributedDataParallel
    impl = getattr(m.config, "_attn_implementation", None)
    known = m.__dict__.get(_DECISION)
    if known is not None and known[0] == impl:
        return known[1]
    ok = _packable(m, impl) and _probe(m)
    m.__dict__[_DECISION] = (impl, ok)
    return ok


def _packable(model, impl) -> bool:
    """Architecture checks: a decoder-only model with position ids, a pad token for the ``last`` read-out,
    an attention implementation that takes a user 4-D mask, and full attention in every layer."""
    cfg = model.config
    if not shares_prompt(model) or impl not in MASK_KINDS or getattr(cfg, "pad_token_id", None) is None:
        return False
    if "output_hidden_states" not in forward_params(model) and "kwargs" not in forward_params(model):
        return False
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return getattr(cfg, "sliding_window", None) is None


@torch.no_grad()
def _probe(model) -> bool:
    """Pack a 3-token prompt with completions of 2 and 1 tokens and compare every completion token's final
    hidden state with full-sequence ones: a model that ignores or rejects the 4-D mask fails."""
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        pad = model.config.pad_token_id
        vocab = model.get_input_embeddings().num_embeddings
        tok = [t for t in range(min(vocab, 12)) if t != pad][:6]
        if len(tok) < 6:
            return False
        prompt, comps = tok[:3], [tok[3:5], tok[5:6]]
        batch = pack_rows([prompt], [0, 0], comps, pad)
        h = _hidden(model, batch, dev)[0]  # (T, H)
        full = [prompt + c for c in comps]
        ids = torch.tensor([s + [pad] * (5 - len(s)) for s in full], device=dev)
        mask = (ids != pad).long()
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        got = torch.cat([h[:3], h[3:5], h[5:6]])
        want = torch.cat([ref[0, :5], ref[1, 3:4]])
        tol = 1e-3 if h.dtype == torch.float32 else 5e-2
        return bool(torch.allclose(got.float(), want.float(), atol=tol * (1 + want.abs().max().item()),
                                   rtol=0))
    except (TypeError, ValueError, RuntimeError, NotImplementedError):  # the mask or positions refused
        return False
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- packing


@dataclass
class PackedRows:
    """Packed prompt groups, one group (or one chunk of it) per row, right-padded.

    ids, positions: (B, T) long; segment: (B, T) long, 0 on the prompt, j >= 1 on the row's j-th completion,
    -1 on padding; item: (B, T) long, the item whose completion a column holds, -1 on prompts and padding.
    Per item k (a completion, in input order): row[k], start[k] (its first column), length[k]
    (its tokens), prompt_len[k] (its row's prompt), read[k] (the column of the token the ``last`` read-out
    reads). All (n,) long numpy arrays.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    segment: torch.Tensor
    item: torch.Tensor
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    prompt_len: np.ndarray
    read: np.ndarray


def pack_rows(
    prompts: Sequence[Sequence[int]],
    owner: Sequence[int],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    pack_tokens: int = PACK_TOKENS,
) -> PackedRows:
    """Pack ``prompts[owner[k]] + completions[k]`` for every item k, the items of one prompt in one row (in
    item order) or, past ``max(pack_tokens, 2 * len(prompt))`` tokens, several rows each carrying the prompt
    (every row holds at least one item). Rows are in order of their first item.

    pad_id: the pad token that padding uses and that the ``last`` read-out skips.
    """
    by_group: dict[int, list[int]] = {}
    for k, g in enumerate(owner):
        by_group.setdefault(int(g), []).append(k)
    rows: list[tuple[int, list[int]]] = []
    for g, items in by_group.items():
        p = len(prompts[g])
        cap, cur, used = max(pack_tokens, 2 * p), [], p
        for k in items:
            if cur and used + len(completions[k]) > cap:
                rows.append((g, cur))
                cur, used = [], p
            cur.append(k)
            used += len(completions[k])
        rows.append((g, cur))
    n = len(owner)
    row, start, length, prompt_len, read = (np.zeros(n, dtype=np.int64) for _ in range(5))
    seqs, segs, poss, its = [], [], [], []
    for r, (g, items) in enumerate(rows):
        prompt = list(prompts[g])
        p = len(prompt)
        prompt_read = next((i for i in range(p - 1, -1, -1) if prompt[i] != pad_id), None)
        seq, seg, pos, it = list(prompt), [0] * p, list(range(p)), [-1] * p
        for j, k in enumerate(items, start=1):
            c = completions[k]
            row[k], start[k], length[k], prompt_len[k] = r, len(seq), len(c), p
            last = next((i for i in range(len(c) - 1, -1, -1) if c[i] != pad_id), None)
            # full-sequence scoring reads the last non-pad token of prompt + completion, else position 0
            if last is not None:
                read[k] = len(seq) + last
            elif prompt_read is not None:
                read[k] = prompt_read
            else:
                read[k] = 0 if p > 0 else len(seq)
            seq += c
            seg += [j] * len(c)
            pos += range(p, p + len(c))
            it += [k] * len(c)
        seqs.append(seq)
        segs.append(seg)
        poss.append(pos)
        its.append(it)
    t = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    segment = torch.full((len(rows), t), -1, dtype=torch.long)
    item = torch.full((len(rows), t), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), t), dtype=torch.long)
    for r, (s, sg, ps, it) in enumerate(zip(seqs, segs, poss, its, strict=True)):
        ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        segment[r, : len(s)] = torch.as_tensor(sg, dtype=torch.long)
        item[r, : len(s)] = torch.as_tensor(it, dtype=torch.long)
        positions[r, : len(s)] = torch.as_tensor(ps, dtype=torch.long)
    return PackedRows(ids, positions, segment, item, row, start, length, prompt_len, read)


def block_causal_mask(segment: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) attention mask of packed rows: query q sees key k <= q of the prompt (segment 0) or of its
    own segment. kind ``bool``: True where attended (sdpa); ``additive``: 0 there and ``dtype``'s minimum
    elsewhere (eager attention adds it to the scores).

    Padding (segment -1) sees the prompt and earlier padding, so that no row of the softmax is empty (its
    outputs are never read).
    """
    t = segment.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment.device).tril_()
    q, k = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((k == 0) | (k == q))
    if kind == "bool":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


# ---------------------------------------------------------------------------------------------- rewards


def _hidden(model, batch: PackedRows, device) -> torch.Tensor:
    """(B, T, H) final hidden states of the packed rows, through ``model``'s own forward (its autocast and
    DistributedDataParallel wrappers)."""
    m = getattr(model, "module", model)
    kind = MASK_KINDS[m.config._attn_implementation]
    segment = batch.segment.to(device)
    mask = block_causal_mask(segment, kind, m.get_input_embeddings().weight.dtype)
    out = model(input_ids=batch.ids.to(device), attention_mask=mask, position_ids=batch.positions.to(device),
                output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def _head(model, h: torch.Tensor) -> torch.Tensor:
    """(n,) the scalar head on hidden states (n, D) ((n, H) for H heads), in the head's dtype (fp32 even under
    bf16 autocast when the head is wrapped by :func:`perm.models.fp32_reward_head`)."""
    head = reward_head(getattr(model, "module", model))
    w = next(head.parameters())
    out = head(h.to(w.dtype) if h.dtype != w.dtype and not torch.is_autocast_enabled(h.device.type) else h)
    return out[:, 0] if out.shape[-1] == 1 else out  # (n,) or (n, H) heads


def packed_rewards(model, batch: PackedRows, device) -> torch.Tensor:
    """(n,) rewards of the packed items by the model's read-out, in one forward; keeps the autograd graph."""
    h = _hidden(model, batch, device)
    b, t, _ = h.shape
    flat = h.reshape(b * t, -1)
    row = torch.as_tensor(batch.row, device=h.device)
    if readout_of(model) == "last":
        return _head(model, flat.index_select(0, row * t + torch.as_tensor(batch.read, device=h.device)))
    seg = batch.segment.to(h.device).reshape(-1)
    item = batch.item.to(h.device).reshape(-1)
    real = torch.nonzero(seg >= 0).squeeze(1)
    scores = _head(model, flat.index_select(0, real))  # every real position's score, once
    is_prompt = seg.index_select(0, real) == 0
    prompt = torch.zeros(b, dtype=scores.dtype, device=h.device).index_add_(
        0, torch.div(real[is_prompt], t, rounding_mode="floor"), scores[is_prompt]
    )
    own = real[~is_prompt]
    total = torch.zeros(len(batch.row), dtype=scores.dtype, device=h.device).index_add_(
        0, item.index_select(0, own), scores[~is_prompt]
    )
    total = total + prompt.index_select(0, row)  # the prompt's tokens count in every completion's sum
    if readout_of(model) == "mean":
        n_tokens = torch.as_tensor(batch.prompt_len + batch.length, device=h.device)
        return total / n_tokens.to(total.dtype)
    return total


def group_rewards(
    model,
    prompts: Sequence[Sequence[int]],
    owner: Sequence[int],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    device,
    pack_tokens: int = PACK_TOKENS,
) -> torch.Tensor:
    """(n,) rewards of ``prompts[owner[k]] + completions[k]``, packed (:func:`pack_rows`), in one forward."""
    if len(owner) == 0:
        return torch.zeros(0, device=device)
    return packed_rewards(model, pack_rows(prompts, owner, completions, pad_id, pack_tokens), device)


def pair_rewards_packed(
    model,
    prefixes: Sequence[Sequence[int]],
    chosen_tails: Sequence[Sequence[int]],
    rejected_tails: Sequence[Sequence[int]],
    pad_id: int,
    device,
    pack_tokens: int = PACK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rewards of ``prefix + chosen_tail`` and of ``prefix + rejected_tail``, the pairs of one prompt
    packed into one row.

    Pairs whose prefixes start with the same prompt (:func:`perm.batching.merge_prefixes`) form one group;
    each distinct completion of a group (the rest of its prefix, then its tail) runs once however many pairs
    it is in (K-wise comparisons): the same rewards and, summed over its pairs, the same gradients as running
    every full sequence. With dropout on, one group's completions see its prompt under one dropout mask.
    """
    common, owner, rest = merge_prefixes(prefixes)
    b = len(prefixes)
    seqs = [(int(g), (*r, *t)) for g, r, t in zip(owner, rest, chosen_tails, strict=True)]
    seqs += [(int(g), (*r, *t)) for g, r, t in zip(owner, rest, rejected_tails, strict=True)]
    unique, where = distinct(seqs)
    r = group_rewards(model, common, [g for g, _ in unique], [list(t) for _, t in unique], pad_id, device,
                      pack_tokens)
    r = r.index_select(0, torch.as_tensor(where, dtype=torch.long, device=r.device))
    return r[:b], r[b:]


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_packed(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    device,
    batch_size: int = 64,
    progress=None,
    pack_tokens: int | None = None,
) -> np.ndarray:
    """(total candidates,) float64 rewards of ``prompt_ids[g] + completion_ids[g][j]``, group-major.

    The prompt batches of :func:`perm.batching.prompt_batches` (by prompt length, about ``batch_size``
    candidates each), each one forward of packed rows, so that a process scoring a share of those batches
    (``perm.stages.score.job_score`` under several processes) gets the same floats as a single process.
    """

    model.eval()
    sizes = np.array([len(c) for c in completion_ids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = [c for cs in completion_ids for c in cs]
    flat_group = np.repeat(np.arange(len(sizes)), sizes)
    out = np.empty((len(flat), *reward_shape(model)), dtype=np.float64)
    done = 0
    for group in prompt_batches(np.argsort([len(p) for p in prompt_ids], kind="stable"), sizes, batch_size):
        idx = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in group])
        r = group_rewards(model, prompt_ids, flat_group[idx], [flat[k] for k in idx], pad_id, device,
                          PACK_TOKENS if pack_tokens is None else pack_tokens)
        out[idx] = r.float().cpu().numpy()
        done += len(idx)
        if progress is not None:
            progress(done, len(flat))
    return out
