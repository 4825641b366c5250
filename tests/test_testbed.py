"""Tests of the embedded testbed: world, gold reward, candidates and labels, and the built files."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perm.testbed import (
    DEFAULT_TEMPERATURE,
    EOS_TOKEN,
    PAD_TOKEN,
    build_testbed,
    calibrate_temperature,
    expected_agreement,
    format_prompt,
    gold_parts,
    gold_reward,
    gold_reward_batch,
    label_pairs,
    post_from_prompt,
    preference_probability,
)
from perm.testbed.build import FILES, SCHEMAS, length_feature_stats
from perm.testbed.candidates import HEDGES, invent_fact, measure_temperature, repeat_span, sample_pair
from perm.testbed.gold import LENGTH_BUDGET, key_words, repeated_ngrams
from perm.testbed.world import (
    ASK,
    LEXICON,
    SLOTS,
    TOPICS,
    VALUES,
    WHEN,
    Facts,
    compact_summary,
    lexicon_words,
    reference_summary,
    render_summary,
    sample_posts,
    tokens,
)

SMALL = dict(n_corpus_docs=1500, n_sft=60, n_prefs_train=4000, n_prefs_eval=400, n_eval_prompts=30)
TINY = dict(
    n_corpus_docs=200, n_sft=20, n_prefs_train=100, n_prefs_eval=30, n_eval_prompts=10, vocab_size=512
)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    return build_testbed(tmp_path_factory.mktemp("testbed"), seed=0, **SMALL)


def read(paths: dict[str, Path], name: str) -> pa.Table:
    return pq.read_table(paths[name])


# ------------------------------------------------------------------------------------------ gold reward

POST = "My roommate crashed my car at the airport on Friday. I feel furious. Should I confront him?"
LONG = (
    "My roommate crashed my car and then we talked about it for a very long time without ever really "
    "agreeing on what to do next."
)


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        # K_p = {roommate, car, airport, friday, furious, confront}. 15 words, all 6 covered, ends in "?".
        ("Roommate crashed my car at the airport on Friday, I'm furious. Should I confront him?", 6.0),
        # covered {car} = +1, invented {sister} = -1.
        ("My sister crashed my car.", 0.0),
        # nothing at all.
        ("", 0.0),
        # covered {roommate, car} = +2, cut off (no final punctuation) = -0.5.
        ("Roommate crashed my car", 1.5),
        # tokens car car car car: trigram (car, car, car) twice -> 1 repeat = -0.5; covered {car} = +1.
        ("car car car car.", 0.5),
        # "ROOMMATE's" -> tokens roommate, s: covered {roommate, car} = +2, invented {gym} = -1.
        ("My ROOMMATE's car was crashed at the gym.", 1.0),
        # covered {roommate, car} = +2; 25 words, 5 past the budget of 20 = -0.2 * 5 = -1.
        (LONG, 1.0),
        # invented {forgive} = -1.
        ("Should I forgive him?", -1.0),
        # no key words, a finished sentence.
        ("I have no idea.", 0.0),
    ],
)
def test_gold_reward_hand_derived(summary, expected):
    """g = covered − invented − 0.2·max(0, words − 20) − 0.5·repeated_trigrams − 0.5·unfinished;
    the arithmetic of each case is in the comment above it."""
    assert gold_reward(POST, summary) == pytest.approx(expected)


def test_gold_parts_of_a_long_summary():
    parts = gold_parts(POST, LONG)
    assert (parts.covered, parts.invented, parts.n_words, parts.excess_words) == (2, 0, 25, 5)
    assert (parts.repeated_ngrams, parts.unfinished, parts.reward) == (0, False, pytest.approx(1.0))


def test_repeated_ngrams_counts_occurrences_beyond_the_first():
    # trigrams abc, bca, cab, abc -> 4 occurrences, 3 distinct
    assert repeated_ngrams("a b c a b c") == 1
    # a 5-word span repeated: its 3 trigrams occur twice
    assert repeated_ngrams("v w x y z v w x y z") == 3
    assert repeated_ngrams("too short") == 0


def test_gold_batch_matches_scalar_and_checks_lengths():
    summaries = ["Roommate crashed my car.", "My sister crashed my car.", ""]
    expected = [gold_reward(POST, s) for s in summaries]
    got = gold_reward_batch([POST] * 3, summaries)
    assert got.dtype == np.float64 and got.tolist() == expected
    with pytest.raises(ValueError, match="differ in length"):
        gold_reward_batch([POST], summaries)


def test_gold_decreases_with_length_past_the_budget():
    """Padding a finished summary with fact-free words is free within the budget, then costs 0.2/word."""
    ref = "Roommate crashed my car at the airport on Friday, I'm furious. Should I confront him?"
    fillers = "so basically honestly like um uh yeah well anyway look okay".split()  # distinct: no repeats
    padded = [" ".join(fillers[:k] + [ref]) for k in range(0, 12)]
    g = np.array([gold_reward(POST, s) for s in padded])
    n = np.array([len(s.split()) for s in padded])
    assert np.all(g[n <= LENGTH_BUDGET] == 6.0)
    over = g[n > LENGTH_BUDGET]
    assert len(over) >= 5 and np.all(np.diff(over) == pytest.approx(-0.2))


# ----------------------------------------------------------------------------------------------- world


def test_world_size_and_lexicon():
    assert len(TOPICS) >= 30
    assert all(len(t.variants) >= 2 for t in TOPICS)
    # every key word names exactly one slot
    assert sum(len(VALUES[s]) for s in SLOTS) == len(LEXICON)
    assert all(w == w.lower() and w.isalpha() for w in LEXICON)


def test_posts_state_exactly_their_facts_and_references_all_of_them():
    rng = random.Random(1)
    for post in sample_posts(rng, 400):
        facts = post.facts.key_words()
        assert lexicon_words(post.text) == facts
        assert 60 <= len(post.text.split()) <= 110
        ref = reference_summary(post, rng)
        parts = gold_parts(post.text, ref)
        assert 8 <= parts.n_words <= 20, ref
        assert (parts.covered, parts.invented) == (len(facts), 0), ref
        assert parts.repeated_ngrams == 0 and not parts.unfinished, ref
        assert parts.reward == len(facts)


def test_compact_summary_fits_the_budget_for_every_topic():
    """The fallback phrasing of a reference fits 20 words even with the longest optional facts."""
    longest_when = max(WHEN, key=lambda w: min(len(p.split()) for p in WHEN[w]))
    for t in TOPICS:
        for v in range(len(t.variants)):
            for ask in ASK:
                for gender in "mf":
                    f = Facts("girlfriend", t.key, "restaurant", longest_when, "embarrassed", ask, gender, v)
                    s = compact_summary(f)
                    assert len(s.split()) <= 20 and lexicon_words(s) == f.key_words(), s


def test_prompt_format_round_trips():
    assert format_prompt("A post.") == "A post.\nTL;DR:"
    assert post_from_prompt(format_prompt(POST)) == POST
    with pytest.raises(ValueError, match="not a testbed prompt"):
        post_from_prompt("no suffix")


# -------------------------------------------------------------------------------- candidates and labels


def _corruptions(post, ref: str, rng: random.Random) -> list[str]:
    """Corrupted versions of a reference: every kind the candidate generator makes, exhaustively."""
    facts = post.facts
    present = [s for s in SLOTS if facts.get(s)]
    out = [render_summary(replace(facts, **{s: None}), rng) for s in present]  # drop one fact
    for s in present:  # swap one fact for another value of its slot
        for other in rng.sample([v for v in VALUES[s] if v != facts.get(s)], 3):
            out.append(render_summary(replace(facts, **{s: other}, variant=0), rng))
    out.append(render_summary(invent_fact(facts, rng), rng))  # invent one
    words, hedges = ref.split(), list(HEDGES)
    while len(words) <= LENGTH_BUDGET:  # pad past the budget
        words = hedges.pop().split() + words
    out.append(" ".join(words))
    out += [repeat_span(ref, rng) for _ in range(5)]  # repeat a span
    out += [" ".join(ref.split()[:k]) for k in range(1, len(ref.split()))]  # truncate anywhere
    sents = post.sentences  # copy one to three sentences, or the whole post
    out += [" ".join(sents[i : i + k]) for k in (1, 2, 3) for i in range(len(sents) - k + 1)]
    out.append(post.text)
    return out


def test_reference_beats_every_corruption():
    rng = random.Random(2)
    for post in sample_posts(rng, 40):
        ref = reference_summary(post, rng)
        g_ref = gold_reward(post.text, ref)
        for c in _corruptions(post, ref, rng):
            assert gold_reward(post.text, c) < g_ref, (ref, c)


def test_pairs_are_distinct_and_never_tied():
    rng = random.Random(3)
    for post in sample_posts(rng, 200):
        pair = sample_pair(post, rng)
        assert pair.a.text != pair.b.text and pair.gold_a != pair.gold_b


def test_preference_probability_hand_values():
    """sigmoid(0) = 0.5; sigmoid(2 / 2) = 1 / (1 + e^-1) = 0.7311; antisymmetric."""
    p = preference_probability(np.array([1.0, 3.0, 1.0]), np.array([1.0, 1.0, 3.0]), 2.0)
    assert p == pytest.approx([0.5, 0.7310586, 0.2689414])
    assert preference_probability(np.array([1e4]), np.array([0.0]), 1e-3)[0] == 1.0  # no overflow
    with pytest.raises(ValueError):
        preference_probability(np.zeros(1), np.zeros(1), 0.0)


def test_label_pairs_follows_the_temperature():
    rng = random.Random(4)
    pairs = [sample_pair(post, rng) for post in sample_posts(rng, 400)]
    posts, a, b = [p.post.text for p in pairs], [p.a.text for p in pairs], [p.b.text for p in pairs]
    gold_a_better = gold_reward_batch(posts, a) > gold_reward_batch(posts, b)
    sharp = label_pairs(posts, a, b, np.random.default_rng(0), temperature=1e-6)
    assert np.array_equal(sharp, gold_a_better)
    flat = label_pairs(posts, a, b, np.random.default_rng(0), temperature=1e6)
    assert 0.4 < np.mean(flat == gold_a_better) < 0.6  # 400 coin flips: sd 0.025
    default = label_pairs(posts, a, b, np.random.default_rng(0))
    assert 0.62 < np.mean(default == gold_a_better) < 0.83  # 72.5% expected, sd 0.022


def test_calibrate_temperature_inverts_expected_agreement():
    d = np.array([0.5, 1.0, 2.0, 3.0, -4.0, 0.0])
    t = calibrate_temperature(d, 0.7)
    assert expected_agreement(d, t) == pytest.approx(0.7, abs=1e-9)
    # the default constant is what calibration on fresh pairs gives (3,000 pairs: T within ~2%)
    assert measure_temperature(3000, seed=7) == pytest.approx(DEFAULT_TEMPERATURE, rel=0.05)


# ------------------------------------------------------------------------------------------ built files


def test_build_writes_exactly_the_files_with_their_schemas(small):
    assert set(small) == set(FILES)
    out = small["corpus"].parent
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())  # no temp files left
    expected = {
        "corpus": (SCHEMAS["corpus"], SMALL["n_corpus_docs"]),
        "sft_train": (SCHEMAS["sft_train"], SMALL["n_sft"]),
        "prefs_train": (SCHEMAS["prefs"], SMALL["n_prefs_train"]),
        "prefs_eval": (SCHEMAS["prefs"], SMALL["n_prefs_eval"]),
        "eval_prompts": (SCHEMAS["eval_prompts"], SMALL["n_eval_prompts"]),
    }
    for name, (schema, rows) in expected.items():
        t = read(small, name)
        assert t.schema.equals(schema), (name, t.schema)
        assert t.num_rows == rows, name
    for name in ("sft_train", "eval_prompts"):
        t = read(small, name).to_pylist()
        assert [r["prompt_id"] for r in t] == list(range(len(t)))
        assert all(r["prompt"] == format_prompt(r["post"]) for r in t)
        col = "completion" if name == "sft_train" else "reference"
        assert all(r[col].startswith(" ") and not r[col].startswith("  ") for r in t)


def test_preference_files_are_consistent_with_gold(small):
    posts_by_split = {}
    for name in ("prefs_train", "prefs_eval"):
        t = read(small, name).to_pylist()
        assert [r["pair_id"] for r in t] == list(range(len(t)))
        posts = [post_from_prompt(r["prompt"]) for r in t]
        posts_by_split[name] = set(posts)
        for col in ("chosen", "rejected"):
            assert all(r[col].startswith(" ") and not r[col].startswith("  ") for r in t)
        gc = gold_reward_batch(posts, [r["chosen"] for r in t])
        gr = gold_reward_batch(posts, [r["rejected"] for r in t])
        assert np.array_equal(gc, [r["gold_chosen"] for r in t])
        assert np.array_equal(gr, [r["gold_rejected"] for r in t])
        assert np.array_equal(gc > gr, [r["label_agrees_gold"] for r in t])
        assert np.all(gc != gr) and all(r["chosen"] != r["rejected"] for r in t)
    for name in ("sft_train", "eval_prompts"):
        posts_by_split[name] = set(read(small, name)["post"].to_pylist())
    names = list(posts_by_split)
    for i, a in enumerate(names):  # posts are disjoint across splits
        for b in names[i + 1 :]:
            assert not posts_by_split[a] & posts_by_split[b], (a, b)


def test_corpus_mixes_summarised_posts_plain_posts_and_sentences(small):
    docs = read(small, "corpus")["text"].to_pylist()
    tldr = [d for d in docs if "\nTL;DR: " in d]
    assert 0.55 < len(tldr) / len(docs) < 0.65  # 60% expected; 1,500 docs: sd 0.013
    plain = [d for d in docs if "\nTL;DR:" not in d and d.rstrip().endswith("?")]
    assert 0.2 < len(plain) / len(docs) < 0.3
    d = tldr[0]
    post, summary = d.split("\nTL;DR: ")
    assert gold_reward(post, summary) == len(key_words(post))  # the reference: every fact


def test_label_agreement_with_gold_is_human_like(small):
    """Expected agreement mean(sigmoid(|Δ|/T)) is in [0.70, 0.75] (its sd over 4,000 pairs is ~0.002);
    the drawn labels are binomial around it (sd sqrt(0.725·0.275/4000) = 0.007): allow 3 sd."""
    t = read(small, "prefs_train")
    d = t["gold_chosen"].to_numpy() - t["gold_rejected"].to_numpy()
    assert 0.70 <= expected_agreement(d, DEFAULT_TEMPERATURE) <= 0.75
    agree = np.mean(t["label_agrees_gold"].to_numpy(zero_copy_only=False))
    assert 0.70 - 0.021 <= agree <= 0.75 + 0.021
    assert calibrate_temperature(d) == pytest.approx(DEFAULT_TEMPERATURE, rel=0.05)


def test_length_is_a_spurious_feature_of_the_training_pairs(small):
    """The longer completion is chosen in ~58% of pairs (sd 0.008 at 4,000 pairs), although among
    completions over the 20-word budget gold falls with length."""
    stats = length_feature_stats(read(small, "prefs_train"))
    assert stats["longer_chosen"] > 0.55
    assert stats["longer_gold_better"] > 0.6
    assert stats["spearman_gold_length_over_budget"] < -0.15
    assert stats["spearman_gold_length_within_budget"] > 0.4


def _features(prompts: list[str], completions: list[str]) -> np.ndarray:
    """Per completion: [key words also in the post, key words not in the post, any key words,
    words, words past the budget, repeated trigrams, unfinished] — all countable by a small model."""
    rows = []
    for prompt, c in zip(prompts, completions, strict=True):
        kp, ks = key_words(post_from_prompt(prompt)), key_words(c)
        parts = gold_parts(post_from_prompt(prompt), c)
        rows.append(
            [len(ks & kp), len(ks - kp), len(ks), parts.n_words, parts.excess_words,
             parts.repeated_ngrams, float(parts.unfinished)]
        )  # fmt: skip
    return np.array(rows, dtype=np.float64)


def _fit_bradley_terry(x: np.ndarray, steps: int = 25) -> np.ndarray:
    """Logistic regression without intercept of label 1 on feature differences x (chosen − rejected),
    by Newton's method with a small ridge."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (1.0 - p) - 1e-3 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(len(w))
        w += np.linalg.solve(hess, grad)
    return w


def _diffs(t: pa.Table, cols: list[int]) -> np.ndarray:
    prompts = t["prompt"].to_pylist()
    return (_features(prompts, t["chosen"].to_pylist()) - _features(prompts, t["rejected"].to_pylist()))[
        :, cols
    ]


@pytest.mark.parametrize(
    ("cols", "min_gold_agreement"),
    [
        ([0, 1, 3, 4, 5, 6], 0.95),  # reads the post: copy detection of key words
        ([2, 3, 4, 5, 6], 0.72),  # blind to the post: counts key words, length, repeats, cut-offs
    ],
)
def test_signal_is_in_features_a_small_model_can_read(small, cols, min_gold_agreement):
    """A linear Bradley–Terry model on a few countable features, fitted to the noisy training labels,
    ranks held-out pairs like gold: the world is learnable from its labels. The post-blind model is
    worse on gold though similar on labels: the preference data underdetermine the reward."""
    w = _fit_bradley_terry(_diffs(read(small, "prefs_train"), cols))
    evl = read(small, "prefs_eval")
    score = _diffs(evl, cols) @ w  # > 0: the model prefers the chosen completion
    gold_chosen_better = evl["label_agrees_gold"].to_numpy(zero_copy_only=False)
    assert np.mean((score > 0) == gold_chosen_better) >= min_gold_agreement
    ceiling = np.mean(gold_chosen_better)  # accuracy of gold itself against the labels
    assert np.mean(score > 0) >= ceiling - 0.1


def test_tokenizer_loads_offline_and_round_trips(small):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small["tokenizer"])
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (PAD_TOKEN, EOS_TOKEN, EOS_TOKEN)
    assert tok.pad_token_id != tok.eos_token_id
    row = read(small, "eval_prompts").to_pylist()[0]
    text = row["prompt"] + row["reference"]
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert EOS_TOKEN not in tok.convert_ids_to_tokens(ids)  # nothing added around the text
    # every key word in context is one token (what makes copy detection easy for a small model)
    for row in read(small, "prefs_eval").to_pylist()[:50]:
        text = row["prompt"] + row["chosen"]
        n_key_tokens = sum(t.lstrip("Ġ").lower() in LEXICON for t in tok.tokenize(text))
        assert n_key_tokens == sum(w in LEXICON for w in tokens(text))


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    """Byte-identical files from another process with another string-hash seed; other data from
    another seed."""
    a = build_testbed(tmp_path / "a", seed=5, **TINY)
    code = (
        f"from perm.testbed import build_testbed; build_testbed({str(tmp_path / 'b')!r}, seed=5, **{TINY!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    c = build_testbed(tmp_path / "c", seed=6, **TINY)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) >= 8  # five tables, the stats, and at least two tokenizer files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for name in ("corpus", "sft_train", "prefs_train", "prefs_eval", "eval_prompts"):
        assert a[name].read_bytes() != c[name].read_bytes(), name


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_sft must be > 0"):
        build_testbed(tmp_path, **{**TINY, "n_sft": 0})
    with pytest.raises(ValueError, match="label_temperature"):
        build_testbed(tmp_path, **TINY, label_temperature=-1.0)
