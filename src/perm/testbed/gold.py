"""The gold reward: how good a summary of a post really is, computed from the two texts alone.

::

    g(post, summary) = c·|K_s ∩ K_p| − i·|K_s − K_p| − ℓ·max(0, n_words − B) − r·n_rep − u·unfinished

where

* ``K_p`` / ``K_s`` are the sets of world key words (:data:`perm.testbed.world.LEXICON`) occurring in the
  post / the summary, as whole lowercase ``[a-z0-9]+`` tokens (``"Roommate's"`` counts as ``roommate``).
  On testbed posts ``K_p`` is exactly the post's facts, so the first term counts **key facts covered**
  (``c = 1`` each) and the second **facts invented** (``i = 1`` each: a key word the post does not contain,
  e.g. the wrong person or a made-up place). Each word counts once, however often it appears.
* ``n_words`` is the number of whitespace-separated words of the summary; every word past the budget
  ``B = 20`` costs ``ℓ = 0.2`` (**length**).
* ``n_rep`` is the number of **repeated word trigrams**: occurrences of ``[a-z0-9]+``-token trigrams
  beyond the first of each (``"a b c a b c"`` has trigrams abc, bca, cab, abc: 4 − 3 distinct = 1);
  each costs ``r = 0.5`` (**repetition**).
* ``unfinished`` is 1 when the summary (stripped) is non-empty and does not end in ``.``, ``?`` or ``!``
  (it was cut off), and costs ``u = 0.5`` (**truncation**; a truncated summary also loses the facts that
  were cut off).

A reference summary (every fact, ≤ 20 words, no repeats, a finished sentence) scores the number of facts
of its post (4 to 6); the empty summary scores 0. The function is pure and defined on arbitrary text, so
policy samples are scored exactly as the testbed's own candidates are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perm.testbed.world import LEXICON, tokens

COVER_WEIGHT = 1.0
INVENT_WEIGHT = 1.0
LENGTH_BUDGET = 20
LENGTH_WEIGHT = 0.2
REPEAT_NGRAM = 3
REPEAT_WEIGHT = 0.5
UNFINISHED_WEIGHT = 0.5
SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class GoldParts:
    """The terms of the gold reward of one (post, summary): counts, and the reward they give."""

    covered: int
    invented: int
    n_words: int
    excess_words: int
    repeated_ngrams: int
    unfinished: bool
    reward: float


def key_words(text: str) -> frozenset[str]:
    """World key words in ``text`` (its facts)."""
    return frozenset(t for t in tokens(text) if t in LEXICON)


def repeated_ngrams(text: str, n: int = REPEAT_NGRAM) -> int:
    """Occurrences of word n-grams beyond the first of each, on ``[a-z0-9]+`` tokens."""
    toks = tokens(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(grams) - len(set(grams))


def _parts(post_keys: frozenset[str], summary: str) -> GoldParts:
    s_keys = key_words(summary)
    covered = len(s_keys & post_keys)
    invented = len(s_keys - post_keys)
    n_words = len(summary.split())
    excess = max(0, n_words - LENGTH_BUDGET)
    rep = repeated_ngrams(summary)
    stripped = summary.strip()
    unfinished = bool(stripped) and not stripped.endswith(SENTENCE_END)
    reward = (
        COVER_WEIGHT * covered
        - INVENT_WEIGHT * invented
        - LENGTH_WEIGHT * excess
        - REPEAT_WEIGHT * rep
        - UNFINISHED_WEIGHT * unfinished
    )
    return GoldParts(covered, invented, n_words, excess, rep, unfinished, float(reward))


def gold_parts(post: str, summary: str) -> GoldParts:
    """The gold reward of ``summary`` for ``post`` with its terms (see the module docstring)."""
    return _parts(key_words(post), summary)


def gold_reward(post: str, summary: str) -> float:
    """Gold reward of ``summary`` as a TL;DR of ``post`` (any text; leading/trailing spaces ignored).

    ``g = 1.0·covered − 1.0·invented − 0.2·max(0, words − 20) − 0.5·repeated_trigrams − 0.5·unfinished``,
    where *covered* / *invented* count distinct world key words of the summary that do / do not occur in
    the post, *words* counts whitespace-separated words, *repeated_trigrams* counts word-trigram
    occurrences beyond the first of each, and *unfinished* is 1 for a non-empty summary that does not
    end in ``.``, ``?`` or ``!``. Higher is better; a testbed reference scores its number of facts (4-6).
    Full definition in :mod:`perm.testbed.gold`.
    """
    return _parts(key_words(post), summary).reward


def gold_reward_batch(posts: Sequence[str], summaries: Sequence[str]) -> np.ndarray:
    """:func:`gold_reward` of each (post, summary) pair; float64 array of shape ``(len(posts),)``."""
    if len(posts) != len(summaries):
        raise ValueError(f"posts and summaries differ in length: {len(posts)} != {len(summaries)}")
    cache: dict[str, frozenset[str]] = {}
    out = np.empty(len(posts), dtype=np.float64)
    for k, (p, s) in enumerate(zip(posts, summaries, strict=True)):
        keys = cache.get(p)
        if keys is None:
            keys = cache[p] = key_words(p)
        out[k] = _parts(keys, s).reward
    return out
