"""Candidate summaries of varied quality, preference pairs, and Bradley–Terry labels.

A candidate is the reference's facts, possibly corrupted at the **fact level** (drop one or two facts,
swap one for another value of its slot, invent an extra one), rendered in a fresh phrasing, then
possibly corrupted at the **text level** (pad with hedges, repeat a span, truncate); or, instead, one to
three sentences **copied** from the post. A pair is two candidates for the same post with different
gold rewards; the synthetic rater prefers ``a`` with probability ``sigmoid((g_a − g_b) / T)``.

**The spurious length feature.** As on Reddit TL;DR, the longer summary of a training pair is usually
the preferred one: dropped facts and truncation (common) make candidates shorter *and* worse, while
padding, repetition and copying (rarer) make them longer and worse only past the 20-word budget. So in
``prefs_train`` (seed 0, defaults) the longer completion has the higher gold in 66% of pairs and is
chosen in 58.5%, while among completions over the budget gold *falls* with length (Spearman −0.40; +0.74
within the budget). A reward model that learns "longer is better" fits the training labels fairly well
and is exploited by best-of-n on the policy's samples. :func:`perm.testbed.build.length_feature_stats`
measures this; ``testbed.json`` records it for every build.

The default temperature :data:`DEFAULT_TEMPERATURE` was calibrated once with
:func:`calibrate_temperature` on 20,000 pairs (seed 12345) so that labels agree with gold in 72.5% of
pairs, the middle of the 70-75% agreement of human raters on TL;DR.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from perm.testbed.gold import gold_reward_batch
from perm.testbed.world import (
    FEELING,
    SLOTS,
    TOPIC_BY_KEY,
    VALUES,
    Facts,
    Post,
    render_summary,
    sample_posts,
)

DEFAULT_TEMPERATURE = 1.96
"""Bradley–Terry temperature of the synthetic raters: ``measure_temperature()`` gives 1.961 (72.5%
expected agreement with gold); rounded. Recalibrate whenever the candidate mixture or gold changes."""
TARGET_AGREEMENT = 0.725

HEDGES = (
    "so basically",
    "long story short,",
    "honestly",
    "to be fair",
    "I guess",
    "at this point",
    "kind of",
    "if that makes sense",
    "and I don't really know what to think anymore",
    "it's a whole thing",
    "for what it's worth",
    "not gonna lie",
    "like I said",
    "you know",
    "which is a lot",
    "or whatever",
)

# (name, weight): how each candidate's facts are corrupted
FACT_OPS: tuple[tuple[str, float], ...] = (
    ("none", 0.36),
    ("drop1", 0.26),
    ("drop2", 0.12),
    ("swap", 0.12),
    ("invent", 0.09),
    ("swap_drop", 0.05),
)
# (name, weight): how the rendered text is corrupted
TEXT_OPS: tuple[tuple[str, float], ...] = (
    ("none", 0.60),
    ("pad", 0.08),
    ("repeat", 0.05),
    ("truncate", 0.27),
)
COPY_PROB = 0.05


@dataclass(frozen=True)
class Candidate:
    """A candidate summary and how it was made (``recipe`` like ``"drop1+pad"`` or ``"copy"``)."""

    text: str
    recipe: str


def _choice_weighted(rng: random.Random, ops: Sequence[tuple[str, float]]) -> str:
    return rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]


def _present(facts: Facts) -> list[str]:
    return [s for s in SLOTS if facts.get(s)]


def drop_facts(facts: Facts, rng: random.Random, k: int) -> Facts:
    """``facts`` without ``k`` random present facts."""
    slots = rng.sample(_present(facts), min(k, len(_present(facts))))
    return replace(facts, **{s: None for s in slots})


def swap_fact(facts: Facts, rng: random.Random) -> Facts:
    """``facts`` with one present fact replaced by another value of its slot (one lost, one invented)."""
    slot = rng.choice(_present(facts))
    old = facts.get(slot)
    new = rng.choice([v for v in VALUES[slot] if v != old])
    if slot == "event":
        return replace(facts, event=new, variant=rng.randrange(len(TOPIC_BY_KEY[new].variants)))
    return replace(facts, **{slot: new})


def invent_fact(facts: Facts, rng: random.Random) -> Facts:
    """``facts`` plus one fact the post does not state: a missing setting, or a second feeling."""
    absent = [s for s in ("where", "when") if not facts.get(s)]
    if absent and rng.random() < 0.7:
        slot = rng.choice(absent)
        return replace(facts, **{slot: rng.choice(VALUES[slot])})
    if facts.feeling:
        other = rng.choice([f for f in FEELING if f != facts.feeling])
        return replace(facts, feeling=f"{facts.feeling} and {other}")
    return replace(facts, feeling=rng.choice(FEELING))


def pad(text: str, rng: random.Random) -> str:
    """Insert 2-5 distinct hedges (no facts) at clause boundaries: the start, the end, or after a word
    ending in ``,``, ``.`` or ``?``."""
    words = text.split()
    for h in rng.sample(HEDGES, rng.randint(2, 5)):
        slots = [0, len(words)] + [i + 1 for i, w in enumerate(words[:-1]) if w[-1] in ",.?"]
        words.insert(rng.choice(slots), h)
    return " ".join(words)


def repeat_span(text: str, rng: random.Random) -> str:
    """Repeat a random span of 3-7 words right after itself (``k``-word span: ``k − 2`` repeated trigrams)."""
    words = text.split()
    k = min(len(words), rng.randint(3, 7))
    i = rng.randint(0, len(words) - k)
    return " ".join(words[: i + k] + words[i : i + k] + words[i + k :])


def truncate(text: str, rng: random.Random) -> str:
    """Cut the text after 3 to n−1 words."""
    words = text.split()
    if len(words) <= 3:
        return text
    return " ".join(words[: rng.randint(3, len(words) - 1)])


def copy_sentences(post: Post, rng: random.Random) -> str:
    """One to three consecutive sentences of the post, verbatim."""
    n = len(post.sentences)
    k = min(n, rng.choice((1, 1, 2, 3)))
    i = rng.randint(0, n - k)
    return " ".join(post.sentences[i : i + k])


def sample_candidate(post: Post, rng: random.Random) -> Candidate:
    """One candidate summary of ``post`` from the mixture of recipes above."""
    if rng.random() < COPY_PROB:
        return Candidate(copy_sentences(post, rng), "copy")
    fop = _choice_weighted(rng, FACT_OPS)
    facts = post.facts
    if fop == "drop1":
        facts = drop_facts(facts, rng, 1)
    elif fop == "drop2":
        facts = drop_facts(facts, rng, 2)
    elif fop == "swap":
        facts = swap_fact(facts, rng)
    elif fop == "invent":
        facts = invent_fact(facts, rng)
    elif fop == "swap_drop":
        facts = drop_facts(swap_fact(facts, rng), rng, 1)
    text = render_summary(facts, rng)
    top = _choice_weighted(rng, TEXT_OPS)
    if top == "pad":
        text = pad(text, rng)
    elif top == "repeat":
        text = repeat_span(text, rng)
    elif top == "truncate":
        text = truncate(text, rng)
    return Candidate(text, f"{fop}+{top}")


@dataclass(frozen=True)
class Pair:
    """Two candidates for one post, with their gold rewards (``gold_a != gold_b``)."""

    post: Post
    a: Candidate
    b: Candidate
    gold_a: float
    gold_b: float


def sample_pair(post: Post, rng: random.Random, max_tries: int = 50) -> Pair:
    """Two distinct candidates for ``post`` whose gold rewards differ (ties are redrawn)."""
    a = sample_candidate(post, rng)
    for _ in range(max_tries):
        b = sample_candidate(post, rng)
        if b.text == a.text:
            continue
        ga, gb = gold_reward_batch([post.text, post.text], [a.text, b.text])
        if ga != gb:
            return Pair(post, a, b, float(ga), float(gb))
    raise RuntimeError(f"no non-tied pair after {max_tries} draws for post: {post.text[:60]!r}")


# ------------------------------------------------------------------------------------ Bradley–Terry


def preference_probability(gold_a: np.ndarray, gold_b: np.ndarray, temperature: float) -> np.ndarray:
    """P(a preferred over b) = sigmoid((gold_a − gold_b) / temperature); arrays of equal shape."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    d = (np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * d))  # = sigmoid(d), without overflow


def bradley_terry_labels(
    gold_a: np.ndarray, gold_b: np.ndarray, rng: np.random.Generator, temperature: float | None = None
) -> np.ndarray:
    """Draw synthetic preferences: ``True`` where ``a`` is preferred, with probability
    ``sigmoid((gold_a − gold_b) / T)`` (``T`` = :data:`DEFAULT_TEMPERATURE` when None). Bool array."""
    t = DEFAULT_TEMPERATURE if temperature is None else temperature
    p = preference_probability(gold_a, gold_b, t)
    return rng.random(p.shape) < p


def label_pairs(
    posts: Sequence[str],
    summaries_a: Sequence[str],
    summaries_b: Sequence[str],
    rng: np.random.Generator,
    temperature: float | None = None,
) -> np.ndarray:
    """Label arbitrary (post, a, b) triples as the testbed's raters would: bool array, ``True`` = a
    preferred. Gold rewards by :func:`perm.testbed.gold.gold_reward_batch`; ties are coin flips."""
    ga = gold_reward_batch(posts, summaries_a)
    gb = gold_reward_batch(posts, summaries_b)
    return bradley_terry_labels(ga, gb, rng, temperature)


def expected_agreement(gold_diff: np.ndarray, temperature: float) -> float:
    """Expected fraction of Bradley–Terry labels that agree with gold, over non-tied pairs with gold
    differences ``gold_diff``: ``mean(sigmoid(|Δ| / T))``."""
    d = np.abs(np.asarray(gold_diff, dtype=np.float64))
    d = d[d > 0]
    return float(np.mean(preference_probability(d, np.zeros_like(d), temperature)))


def calibrate_temperature(gold_diff: np.ndarray, target: float = TARGET_AGREEMENT) -> float:
    """The temperature ``T`` with ``expected_agreement(gold_diff, T) == target`` (bisection on log T;
    agreement falls monotonically from 1 to 0.5 as ``T`` grows)."""
    if not 0.5 < target < 1.0:
        raise ValueError(f"target agreement must be in (0.5, 1), got {target}")
    lo, hi = np.log(1e-3), np.log(1e3)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if expected_agreement(gold_diff, float(np.exp(mid))) > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def measure_temperature(n_pairs: int = 20000, seed: int = 12345, target: float = TARGET_AGREEMENT) -> float:
    """Calibrate ``T`` on ``n_pairs`` fresh pairs (how :data:`DEFAULT_TEMPERATURE` was obtained)."""
    rng = random.Random(f"perm-testbed-calibration:{seed}")
    pairs = [sample_pair(p, rng) for p in sample_posts(rng, n_pairs)]
    return calibrate_temperature(np.array([x.gold_a - x.gold_b for x in pairs]), target)
