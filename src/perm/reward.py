"""Reward models: the Bradley-Terry + centering loss, tokenising pairs, finetuning, pairwise accuracy.

Batched scoring, full-sequence (:func:`perm.prefix.score_ids`) or sharing each prompt, is :mod:`perm.prefix`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from perm.batching import distinct, pad_batch
from perm.models import seeded
from perm.optim import adamw_linear, apply_update
from perm.packed import packs, pair_rewards_packed
from perm.prefix import (
    UnsharableCache,
    merge_prefixes,
    pair_rewards_shared,
    score_ids,  # noqa: F401  (re-exported: tests/test_models.py imports it from here)
    score_pairs,
    sequence_rewards,
    shares_prompt,
    split_pairs,
)


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, center_coef: float = 0.0,
    weights: torch.Tensor | None = None, *, of: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """mean(-log sigmoid(r+ - r-)) + center_coef * mean((r+ + r-)^2).

    r_chosen, r_rejected: (B,) rewards of the preferred and the other completion of each pair. The
    centering term (Eisenstein et al. 2023, eq. 1) pins the reward's free offset near zero; BT alone is
    invariant to adding a constant. (B, H) rewards of H heads (a multi-head ensemble): each head's loss is
    its own pairs' weighted mean (``weights`` (B, H) >= 0, e.g. bootstrap counts; None = all 1), and the loss
    is their mean over heads, so a head's loss reaches no other head's parameters.

    of: these pairs are a micro-batch of a larger batch, and the loss returned is their part of that batch's
    loss (the parts of its micro-batches sum to it, and so do their gradients): the pairs' terms are divided
    by the larger batch's normaliser instead of their own: its number of pairs (no ``weights``), or its (H,)
    per-head weight sums (with ``weights``), :func:`loss_normaliser`.
    """
    if of is not None:
        per_pair = -F.logsigmoid(r_chosen - r_rejected)
        if center_coef != 0.0:
            per_pair = per_pair + center_coef * (r_chosen + r_rejected) ** 2
        if weights is None:
            return (per_pair.sum(0) / of).mean()
        w = weights.to(per_pair.dtype).reshape(per_pair.shape)
        return ((w * per_pair).sum(0) / torch.as_tensor(of, dtype=per_pair.dtype).clamp_min(1e-12)).mean()
    if r_chosen.ndim == 1 and weights is None:
        bt = -F.logsigmoid(r_chosen - r_rejected).mean()
        if center_coef == 0.0:
            return bt
        return bt + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    per_pair = -F.logsigmoid(r_chosen - r_rejected)
    if center_coef != 0.0:
        per_pair = per_pair + center_coef * (r_chosen + r_rejected) ** 2
    if weights is None:
        return per_pair.mean(0).mean()
    w = weights.to(per_pair.dtype).reshape(per_pair.shape)
    return ((w * per_pair).sum(0) / w.sum(0).clamp_min(1e-12)).mean()


def loss_normaliser(n_pairs: int, weights: torch.Tensor | None) -> float | torch.Tensor:
    """What :func:`bradley_terry_loss` divides a batch's summed terms by: its number of pairs, or with
    ``weights`` ((B, H) or (B,)) its per-head weight sums; the ``of`` of its micro-batches."""
    return float(n_pairs) if weights is None else weights.sum(0)


# ------------------------------------------------------------------------------------------- tokenising


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, each distinct text tokenised once.

    Preference data repeats its texts (a prompt is in every pair of its post, a K-wise completion in K - 1
    pairs): the tokenizer runs on the distinct ones, a few times faster. Equal texts share one list object.
    """
    texts = list(texts)
    index: dict[str, int] = {}
    slot = [index.setdefault(t, len(index)) for t in texts]
    ids = tokenizer(list(index), add_special_tokens=False)["input_ids"] if index else []
    return [ids[k] for k in slot]


def encode(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of prompt + completion + EOS; a too-long prompt is cut from its left (keeps the summary)."""
    p_ids, c_ids = token_ids(tokenizer, prompts), token_ids(tokenizer, completions)
    fit = _fitter(tokenizer, max_length)
    return [pp + cc for pp, cc in (fit(p, c) for p, c in zip(p_ids, c_ids, strict=True))]


def encode_pairs(
    tokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`encode` of each pair's chosen and rejected sequence, in one tokenizer call over their distinct
    texts (a prompt is in both sequences of its pairs)."""
    both = encode(tokenizer, [*prompts, *prompts], [*chosen, *rejected], max_length)
    return both[: len(chosen)], both[len(chosen) :]


def encode_groups(
    tokenizer, prompts: Sequence[str], completions: Sequence[Sequence[str]], max_length: int
) -> tuple[list[list[int]], list[list[list[int]]], list[np.ndarray]]:
    """Candidates grouped by prompt, each prompt tokenised once: ``(prompt_ids, completion_ids, source)``.

    ``completions[i]`` are prompt i's candidates; flat candidate k is the k-th of them all, prompt-major.
    Group g holds ``prompt_ids[g]`` and its candidates ``completion_ids[g]`` (each with EOS), the flat indices
    of which are ``source[g]``, such that ``prompt_ids[g] + completion_ids[g][j] == encode(...)`` of flat
    candidate ``source[g][j]`` exactly. A prompt yields one group, or one per prompt cut when long candidates
    cut it.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"encode_groups: {len(prompts)} prompts but {len(completions)} candidate lists")
    p_ids = token_ids(tokenizer, prompts)
    c_ids = token_ids(tokenizer, [c for cs in completions for c in cs])
    fit = _fitter(tokenizer, max_length)
    out_p, out_c, out_src, k = [], [], [], 0
    for p, cs in zip(p_ids, completions, strict=True):
        by_prompt: dict[int, tuple[list[int], list, list[int]]] = {}  # kept prompt length -> group
        for _ in cs:
            pp, cc = fit(p, c_ids[k])
            by_prompt.setdefault(len(pp), (pp, [], []))
            by_prompt[len(pp)][1].append(cc)
            by_prompt[len(pp)][2].append(k)
            k += 1
        for pp, cc, src in by_prompt.values():
            out_p.append(pp)
            out_c.append(cc)
            out_src.append(np.asarray(src, dtype=np.int64))
    return out_p, out_c, out_src


def _fitter(tokenizer, max_length: int):
    """(prompt ids, completion ids) -> (prompt part, completion part + EOS) of one sequence of encode()."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.cls_token_id] if _is_encoder(tokenizer) else []

    def fit(p: list[int], c: list[int]) -> tuple[list[int], list[int]]:
        c = c + eos
        room = max_length - len(c) - len(bos)
        if room < 1:
            c, room = c[: max_length - len(bos) - 1], 1
        return bos + p[-room:], c

    return fit


def _is_encoder(tokenizer) -> bool:
    return tokenizer.cls_token_id is not None and tokenizer.eos_token_id is None


# ---------------------------------------------------------------------------------------------- metrics


def pair_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray) -> tuple[float, float]:
    """Fraction of pairs with r+ > r- (ties count 1/2) and its binomial standard error."""
    correct = (r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected)
    acc = float(np.mean(correct))
    return acc, float(np.std(correct, ddof=1) / math.sqrt(len(correct))) if len(correct) > 1 else 0.0


# --------------------------------------------------------------------------------------------- training


def pair_rewards(model, chosen, rejected, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rewards of full chosen and rejected sequences, in one right-padded forward pass; a sequence in
    several pairs of the batch (K-wise comparisons) runs once."""
    unique, where = distinct([tuple(s) for s in [*chosen, *rejected]])
    ids, mask = pad_batch([list(s) for s in unique], pad_id)
    r = sequence_rewards(model, ids.to(device), mask.to(device))
    r = r.index_select(0, torch.as_tensor(where, dtype=torch.long, device=r.device))  # (2B,)
    return r[: len(chosen)], r[len(chosen) :]


def micro_batches(idx: np.ndarray, size: int | None,
                  owner: np.ndarray | None = None) -> list[np.ndarray]:
    """A step's pair indices ``idx`` as contiguous slices of at most ``size`` pairs, in order (None, or
    ``size`` >= len(idx): ``[idx]``). ``owner``: each pair's prompt group (indexed by pair); a slice then ends
    at the last group boundary that fits in it, so a prompt's pairs run in one slice unless the prompt alone
    has more than ``size`` of the step's pairs."""
    if size is None or len(idx) <= size:
        return [idx]
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    out, start = [], 0
    while start < len(idx):
        end = min(start + size, len(idx))
        if owner is not None and end < len(idx):
            g = owner[idx[start : end + 1]]
            starts = np.flatnonzero(g[1:] != g[:-1]) + 1  # offsets (1..size) where a new group begins
            if len(starts):
                end = start + int(starts[-1])
        out.append(idx[start:end])
        start = end
    return out


def backward_pairs(acc, model, idx: np.ndarray, rewards, *, center_coef: float,
                   pair_weights: np.ndarray | None = None, micro_batch_size: int | None = None,
                   owner: np.ndarray | None = None) -> torch.Tensor:
    """Forward and backward the Bradley-Terry + centering loss of pairs ``idx`` (one optimizer step's, or one
    process's slice of it) into the parameters' gradients; returns the batch's loss (detached).

    rewards: ``rewards(part) -> (r_chosen, r_rejected)`` of pair indices ``part``. micro_batch_size: run the
    pairs in :func:`micro_batches` of at most that many (``owner``: keep prompt groups whole where they fit),
    each backward on its part of the batch's loss (:func:`bradley_terry_loss` ``of``: its pairs' share, or
    with ``pair_weights`` each head's weight share), so the gradients summed over the micro-batches are the
    whole batch's up to float rounding, with one micro-batch's activations in memory at a time. Under DDP the
    gradients are synchronised once, at the last micro-batch's backward (``acc.no_sync`` before it). None:
    the batch in one forward and backward, the loss as :func:`bradley_terry_loss` of all its pairs."""
    parts = micro_batches(idx, micro_batch_size, owner)

    def weights_of(part, device):
        return None if pair_weights is None else torch.as_tensor(pair_weights[part], device=device)

    if len(parts) == 1:
        rc, rr = rewards(idx)
        loss = bradley_terry_loss(rc, rr, center_coef, weights_of(idx, rc.device))
        acc.backward(loss)
        return loss.detach()
    of = loss_normaliser(len(idx), None if pair_weights is None else torch.as_tensor(pair_weights[idx]))
    total = None
    for k, part in enumerate(parts):
        sync = contextlib.nullcontext() if k == len(parts) - 1 else acc.no_sync(model)
        with sync:
            rc, rr = rewards(part)
            w = weights_of(part, rc.device)
            loss = bradley_terry_loss(rc, rr, center_coef, w, of=of if w is None else of.to(rc.device))
            acc.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total


def train_reward_model(
    model,
    *,
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    eval_chosen: Sequence[Sequence[int]],
    eval_rejected: Sequence[Sequence[int]],
    pad_id: int,
    center_coef: float,
    epochs: float,
    batch_size: int,
    lr: float,
    warmup_frac: float,
    weight_decay: float,
    max_grad_norm: float,
    eval_every: int,
    data_seed: int,
    dropout_seed: int,
    prompts: Sequence[Sequence[int]] | None = None,
    eval_prompts: Sequence[Sequence[int]] | None = None,
    share_prompt: bool | None = None,
    pack: bool | None = None,
    group_by_prompt: bool = False,
    eval_gold_diff: Sequence[float] | None = None,
    pair_weights: np.ndarray | None = None,
    micro_batch_size: int | None = None,
    accelerator=None,
    progress=None,
) -> dict:
    """Finetune `model` (backbone + scalar head) on token-id pairs; returns a plain state dict of metrics.

    Pairs are full sequences (``chosen[i]``, ``rejected[i]``), or, with ``prompts``, completions: the pair
    is then ``prompts[i] + chosen[i]`` vs ``prompts[i] + rejected[i]`` (likewise ``eval_prompts``).
    share_prompt: run each pair's common prefix (its prompt) once, forward and backward, under both
    completions (same loss and gradients up to rounding, fewer FLOPs). None = on for decoder models, off for
    encoders, which cannot share.
    pack: how a shared prompt runs. Packed (:func:`perm.packed.pair_rewards_packed`: a batch's pairs grouped
    by prompt, each group's prompt and distinct completions as one sequence under a block-causal mask, the
    batch one dense forward), or a prefill and continuations on its gathered KV cache
    (:func:`perm.prefix.pair_rewards_shared`). None = packed where the model packs (:func:`perm.packed.packs`,
    decided once here), else the cache; True requires packing, False the cache. The data order, batches and
    loss are the same either way.
    eval_gold_diff: gold(chosen) - gold(rejected) of the eval pairs, where known: every eval then reports
    ``gold_accuracy`` too (:func:`evaluate_pairs`); the last eval is of the final weights.
    group_by_prompt: shuffle whole prompts rather than pairs, so the pairs of one prompt (pairs sharing at
    least half of their common prefix, :func:`perm.prefix.merge_prefixes`) sit next to each other in the
    data order and, with ``share_prompt``, share one prompt forward; batches keep ``batch_size`` pairs (a
    prompt's pairs may straddle two batches). With one pair per prompt the order equals the ungrouped one.
    Data order depends only on `data_seed`, dropout masks only on `dropout_seed` (the head was initialised
    by its own seed when the model was built).
    pair_weights: (n_pairs, H) weights of each pair in each head's loss (a multi-head model's bootstrap
    counts, perm.members); the model then reads H rewards per sequence (:func:`bradley_terry_loss`).
    micro_batch_size: gradient accumulation: each step's pairs (each process's slice under DDP) run forward
    and backward in slices of at most this many (:func:`backward_pairs`; prompt groups kept whole where they
    fit), their gradients summed into the step's; the same data order, steps and schedule, the same loss and
    gradients up to float rounding (dropout masks are drawn per slice). None = each step's pairs in one pass.
    """
    from perm.models import fp32_reward_head, make_accelerator

    chosen, rejected = _joined(prompts, chosen), _joined(prompts, rejected)
    eval_chosen, eval_rejected = _joined(eval_prompts, eval_chosen), _joined(eval_prompts, eval_rejected)
    can_share = shares_prompt(model)
    if share_prompt and not can_share:
        raise ValueError(
            f"share_prompt=True, but {type(model).__name__} is not a decoder-only model with a KV cache"
        )
    share = can_share if share_prompt is None else share_prompt
    packed = bool(share) and pack is not False and packs(model)
    if pack and not packed:
        raise ValueError(f"pack=True, but {type(model).__name__} cannot run packed prompt groups"
                         + ("" if share else " (no shared prompt)"))
    split = (
        split_pairs(chosen, rejected, pad_id) if share or group_by_prompt else None
    )  # (prefixes, chosen tails, rejected tails)
    groups = owner = None
    if group_by_prompt:
        _, owner, _ = merge_prefixes(split[0])
        by_group = np.argsort(owner, kind="stable")  # members in index order, groups by first member
        groups = np.split(by_group, np.cumsum(np.bincount(owner))[:-1]) if len(owner) else []
    acc = accelerator or make_accelerator()
    n = len(chosen)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt, sched = adamw_linear(model, lr=lr, weight_decay=weight_decay, total=total, warmup_frac=warmup_frac)
    head_ctx = contextlib.ExitStack()
    if acc.mixed_precision != "no":  # bf16: rewards (and their BT differences) from an fp32 head
        head_ctx.enter_context(fp32_reward_head(model))
    model, opt, sched = acc.prepare(model, opt, sched)
    device = acc.device
    rng = np.random.default_rng(data_seed)
    state = {"step": 0, "total_steps": total, "share_prompt": share, "packed": packed,
             "group_by_prompt": group_by_prompt,
             "n_prompts": len(groups) if groups is not None else None, "train_loss": [], "evals": []}

    def shuffled():
        if groups is None:
            return rng.permutation(n)
        return np.concatenate([groups[g] for g in rng.permutation(len(groups))])

    def rewards(part, shared: bool):
        return _batch_rewards(model, part, split if shared else None, chosen, rejected, pad_id, device,
                              packed and shared)

    step = dict(center_coef=center_coef, pair_weights=pair_weights, micro_batch_size=micro_batch_size,
                owner=owner)
    t0 = time.perf_counter()
    with seeded(dropout_seed):
        model.train()
        order = shuffled()
        pos = seen = 0
        while state["step"] < total:
            if pos >= n:
                order, pos = shuffled(), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            # `accelerate launch`: each DDP rank takes its slice of the global batch
            if acc.num_processes > 1:
                # contiguous: keeps prompt groups
                idx = np.array_split(idx, acc.num_processes)[acc.process_index]
            opt.zero_grad(set_to_none=True)
            try:
                loss = backward_pairs(acc, model, idx, functools.partial(rewards, shared=share), **step)
            except UnsharableCache:  # a cache whose rows cannot be gathered (sliding window, ...)
                if share_prompt:
                    raise
                share = state["share_prompt"] = False
                opt.zero_grad(set_to_none=True)  # the step again from its first pair, unshared
                loss = backward_pairs(acc, model, idx, functools.partial(rewards, shared=False), **step)
            apply_update(acc, model, opt, sched, max_grad_norm)
            state["step"] += 1
            seen += len(idx)
            state["train_loss"].append(loss.item())
            if state["step"] % eval_every == 0 or state["step"] == total:
                state["evals"].append(
                    evaluate_pairs(model, eval_chosen, eval_rejected, pad_id, device, state["step"],
                                   gold_diff=eval_gold_diff)
                )
                model.train()
            if progress is not None:
                progress(state["step"], total, loss.item())
    state["wall_s"] = time.perf_counter() - t0
    state["pairs_per_s"] = seen * acc.num_processes / state["wall_s"]  # pairs trained on, all ranks
    # the head as it was (same parameters), so the saved RM is a plain *ForSequenceClassification
    head_ctx.close()
    state["model"] = acc.unwrap_model(model).eval()
    return state


def _batch_rewards(model, idx, split, chosen, rejected, pad_id: int, device, packed: bool = False):
    """(B,) chosen and rejected rewards of pairs ``idx``; through their shared prefixes when ``split`` is
    given, packed by prompt (``packed``) or through the prompts' KV cache."""
    if split is None:
        return pair_rewards(model, [chosen[i] for i in idx], [rejected[i] for i in idx], pad_id, device)
    prefixes, chosen_tails, rejected_tails = split
    rewards = pair_rewards_packed if packed else pair_rewards_shared
    return rewards(
        model,
        [prefixes[i] for i in idx],
        [chosen_tails[i] for i in idx],
        [rejected_tails[i] for i in idx],
        pad_id,
        device,
    )


def _joined(prompts, completions) -> Sequence[Sequence[int]]:
    if prompts is None:
        return completions
    if len(prompts) != len(completions):
        raise ValueError(f"train_reward_model: {len(prompts)} prompts but {len(completions)} completions")
    return [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]


def evaluate_pairs(model, chosen, rejected, pad_id: int, device, step: int = 0, gold_diff=None) -> dict:
    """Accuracy against the labels (± se) and mean reward on held-out pairs.

    gold_diff: optional (n_pairs,) gold(chosen) - gold(rejected); adds `gold_accuracy`, the fraction of pairs
    with a gold preference that the RM orders as gold does (no label noise, so no ceiling below 1).
    A multi-head model (H rewards per sequence): each head is evaluated alone (``heads``: one dict per head)
    and the top-level numbers are their means over heads.
    """
    rc, rr = score_pairs(model, chosen, rejected, pad_id, device)
    if rc.ndim == 2:
        heads = [_pair_metrics(rc[:, h], rr[:, h], gold_diff) for h in range(rc.shape[1])]
        mean = {k: float(np.mean([m[k] for m in heads])) for k in heads[0]}
        return mean | {"step": step, "heads": heads}
    return {"step": step} | _pair_metrics(rc, rr, gold_diff)


def _pair_metrics(rc: np.ndarray, rr: np.ndarray, gold_diff) -> dict:
    accuracy, se = pair_accuracy(rc, rr)
    extra = {}
    if gold_diff is not None:
        gd = np.asarray(gold_diff, dtype=np.float64)
        keep = gd != 0
        extra["gold_accuracy"] = float(np.mean(np.sign(rc - rr)[keep] == np.sign(gd[keep])))
    return extra | {
        "accuracy": accuracy,
        "accuracy_se": se,
        "mean_reward": float(np.mean(np.concatenate([rc, rr]))),
        "loss": float(np.mean(np.logaddexp(0.0, -(rc - rr)))),  # -log sigmoid, overflow-free
    }


class NonFiniteRewardError(ValueError):
    """A model produced NaN or infinite rewards."""


def check_finite(rewards: np.ndarray, model_id: str) -> None:
    """Refuse NaN/inf rewards: they would silently poison every best-of-n statistic downstream."""
    bad = ~np.isfinite(rewards)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NonFiniteRewardError(
            f"model {model_id}: {int(bad.sum())} non-finite rewards (first at row {i}: {rewards[i]})"
        )
