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
