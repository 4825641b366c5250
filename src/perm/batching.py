"""Batching and padding of token-id sequences: length-sorted index batches, right and left padding.

Reward-model scoring and training (:mod:`perm.reward`, :mod:`perm.prefix`) and the SFT policy
(:mod:`perm.policy`) batch the same way. The helpers live here, depending on numpy and torch only, so that
those modules share them without importing one another (the policy does not need the RM module for them).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (sorted, stable), so padding stays small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence: (B, T) long input ids and attention mask (1 on real tokens).

    Right padding (the default) puts every sequence at the start of its row; ``left=True`` puts it at the
    end, as prefills that continue each row after its last token need (see :func:`left_padded_positions`).
    """
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(t - len(s), t) if left else slice(0, len(s))
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token, counting up; 0 on padding."""
    return (mask.cumsum(-1) - 1).clamp_(min=0)


def distinct(items: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """Distinct items in first-seen order, and for each input item the index of its distinct copy:
    ``items[i] == out[where[i]]``. Lets a batch run a sequence once however many pairs it sits in."""
    first: dict = {}
    where = np.fromiter((first.setdefault(x, len(first)) for x in items), dtype=np.int64, count=len(items))
    return list(first), where


def prompt_batches(order: np.ndarray, sizes: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive prompts of ``order`` (length-sorted), each batch with at most ``batch_size`` prompts and
    closed as soon as it holds ``batch_size`` candidates or more; prompts without candidates are dropped."""
    out, cur, n = [], [], 0
    for g in order:
        if sizes[g] == 0:
            continue
        cur.append(g)
        n += int(sizes[g])
        if n >= batch_size or len(cur) >= batch_size:
            out.append(np.asarray(cur))
            cur, n = [], 0
    if cur:
        out.append(np.asarray(cur))
    return out


def last_real(seq: Sequence[int], pad_id: int) -> int:
    """Index of the last non-pad token of ``seq`` (0 when it has none)."""
    return next((i for i in range(len(seq) - 1, -1, -1) if seq[i] != pad_id), 0)


def merge_prefixes(
    prefixes: Sequence[Sequence[int]], min_share: float = 0.5
) -> tuple[list[list[int]], np.ndarray, list[list[int]]]:
    """Group sequences that start alike (the same prompt) under one common prefix.

    Returns ``(common, owner, rest)``: ``prefixes[i] == common[owner[i]] + rest[i]``. Sequences are sorted and
    a run of neighbours joins one group while the group's common prefix stays non-empty and at least
    ``min_share`` of its longest member, so pairs of one prompt share its forward pass and unrelated prompts
    that happen to start with the same few tokens do not. Groups are numbered by their first member.
    """
    order = sorted(range(len(prefixes)), key=lambda i: tuple(prefixes[i]))
    members: list[list[int]] = []
    common_len: list[int] = []
    longest: list[int] = []
    for i in order:
        p = prefixes[i]
        if members:
            head = prefixes[members[-1][0]]
            n = min(common_len[-1], len(p))
            k = next((j for j in range(n) if head[j] != p[j]), n)
            if k >= 1 and k >= min_share * max(longest[-1], len(p)):
                members[-1].append(i)
                common_len[-1], longest[-1] = k, max(longest[-1], len(p))
                continue
        members.append([i])
        common_len.append(len(p))
        longest.append(len(p))
    groups = sorted(range(len(members)), key=lambda g: min(members[g]))
    owner = np.empty(len(prefixes), dtype=np.int64)
    common, rest = [], [[] for _ in prefixes]
    for new, g in enumerate(groups):
        k = common_len[g]
        common.append(list(prefixes[members[g][0]][:k]))
        for i in members[g]:
            owner[i] = new
            rest[i] = list(prefixes[i][k:])
    return common, owner, rest
