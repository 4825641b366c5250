"""Build the testbed's data files: corpus, SFT data, preference pairs, evaluation prompts, tokenizer.

Every split draws from its own random stream (``random.Random(f"perm-testbed:{seed}:{split}")``), and
posts are disjoint across splits (by text), drawn in the order eval prompts, prefs_eval, SFT,
prefs_train, corpus: so the held-out sets do not change when a training split changes size. The same
seed gives byte-identical files.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from perm.run_layout import DATA_FILES, TOKENIZER
from perm.store import atomic_path, atomic_write_json, atomic_write_parquet
from perm.testbed import gold
from perm.testbed.candidates import (
    DEFAULT_TEMPERATURE,
    bradley_terry_labels,
    expected_agreement,
    sample_pair,
)
from perm.testbed.corpus import corpus_documents
from perm.testbed.tokenizer import train_tokenizer
from perm.testbed.world import Post, format_completion, format_prompt, reference_summary, sample_posts

TESTBED_VERSION = 1
"""Bump when the world, the gold reward, the candidates or the labels change: it is part of the testbed
stage's input key, so runs rebuild their data instead of silently reusing an older world."""

FILES = {**DATA_FILES, "tokenizer": TOKENIZER}  # what build_testbed writes: a run's data/, and its tokenizer/

SCHEMAS = {
    "corpus": pa.schema([("text", pa.string())]),
    "sft_train": pa.schema(
        [
            ("prompt_id", pa.int64()),
            ("prompt", pa.string()),
            ("completion", pa.string()),
            ("post", pa.string()),
        ]
    ),
    "prefs": pa.schema(
        [
            ("pair_id", pa.int64()),
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("gold_chosen", pa.float64()),
            ("gold_rejected", pa.float64()),
            ("label_agrees_gold", pa.bool_()),
        ]
    ),
    "eval_prompts": pa.schema(
        [
            ("prompt_id", pa.int64()),
            ("prompt", pa.string()),
            ("post", pa.string()),
            ("reference", pa.string()),
        ]
    ),
}


def split_rng(seed: int, split: str) -> random.Random:
    """The random stream of one split (string seeds are hashed with SHA-512: stable across runs)."""
    return random.Random(f"perm-testbed:{seed}:{split}")


def label_rng(seed: int, split: str) -> np.random.Generator:
    """The stream of one split's Bradley–Terry draws."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def preference_table(
    posts: list[Post], rng: random.Random, labels_rng: np.random.Generator, temperature: float
) -> pa.Table:
    """One pair per post, labelled by Bradley–Terry on gold; columns as ``SCHEMAS["prefs"]``."""
    pairs = [sample_pair(p, rng) for p in posts]
    ga = np.array([x.gold_a for x in pairs])
    gb = np.array([x.gold_b for x in pairs])
    a_wins = bradley_terry_labels(ga, gb, labels_rng, temperature)
    chosen = [x.a.text if w else x.b.text for x, w in zip(pairs, a_wins, strict=True)]
    rejected = [x.b.text if w else x.a.text for x, w in zip(pairs, a_wins, strict=True)]
    g_ch = np.where(a_wins, ga, gb)
    g_rej = np.where(a_wins, gb, ga)
    return pa.table(
        {
            "pair_id": np.arange(len(pairs), dtype=np.int64),
            "prompt": [format_prompt(x.post.text) for x in pairs],
            "chosen": [format_completion(c) for c in chosen],
            "rejected": [format_completion(r) for r in rejected],
            "gold_chosen": g_ch,
            "gold_rejected": g_rej,
            "label_agrees_gold": g_ch > g_rej,
        },
        schema=SCHEMAS["prefs"],
    )


def length_feature_stats(prefs: pa.Table) -> dict[str, float]:
    """How length relates to labels and to gold in a preference table.

    ``longer_chosen``: fraction of pairs (of unequal word counts) whose longer completion was chosen;
    ``longer_gold_better``: the same for the higher-gold completion; ``spearman_gold_length_over_budget``
    / ``_within_budget``: rank correlation of gold with word count among completions over / within the
    budget.
    """
    from scipy.stats import spearmanr

    ch = [len(s.split()) for s in prefs["chosen"].to_pylist()]
    rj = [len(s.split()) for s in prefs["rejected"].to_pylist()]
    lc, lr = np.array(ch), np.array(rj)
    gc, gr = prefs["gold_chosen"].to_numpy(), prefs["gold_rejected"].to_numpy()
    neq = lc != lr
    lengths, golds = np.concatenate([lc, lr]), np.concatenate([gc, gr])
    over = lengths > gold.LENGTH_BUDGET
    return {
        "longer_chosen": float(np.mean(lc[neq] > lr[neq])),
        "longer_gold_better": float(np.mean((lc[neq] > lr[neq]) == (gc[neq] > gr[neq]))),
        "frac_over_budget": float(np.mean(over)),
        "spearman_gold_length_over_budget": float(spearmanr(lengths[over], golds[over]).statistic),
        "spearman_gold_length_within_budget": float(spearmanr(lengths[~over], golds[~over]).statistic),
    }


def build_testbed(
    out_dir: Path,
    *,
    seed: int = 0,
    n_corpus_docs: int = 20000,
    n_sft: int = 4000,
    n_prefs_train: int = 12000,
    n_prefs_eval: int = 1000,
    n_eval_prompts: int = 200,
    label_temperature: float | None = None,
    vocab_size: int = 2048,
) -> dict[str, Path]:
    """Write the testbed into ``out_dir`` and return ``{name: path}`` (names as :data:`FILES`).

    Files (each written atomically): ``corpus.parquet`` (``text``), ``sft_train.parquet``
    (``prompt_id, prompt, completion, post``), ``prefs_train.parquet`` / ``prefs_eval.parquet``
    (``pair_id, prompt, chosen, rejected, gold_chosen, gold_rejected, label_agrees_gold``),
    ``eval_prompts.parquet`` (``prompt_id, prompt, post, reference``), ``tokenizer/`` (Hugging Face
    format) and ``testbed.json`` (the arguments, the temperature used and the label statistics).
    Prompts are ``format_prompt(post)``; completions have one leading space.
    """
    counts = dict(
        n_corpus_docs=n_corpus_docs, n_sft=n_sft, n_prefs_train=n_prefs_train,
        n_prefs_eval=n_prefs_eval, n_eval_prompts=n_eval_prompts,
    )  # fmt: skip
    for name, n in counts.items():
        if n <= 0:
            raise ValueError(f"{name} must be > 0, got {n}")
    if label_temperature is not None and label_temperature <= 0:
        raise ValueError(f"label_temperature must be > 0, got {label_temperature}")
    temperature = DEFAULT_TEMPERATURE if label_temperature is None else float(label_temperature)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f for name, f in FILES.items()}
    seen: set[str] = set()

    rng = split_rng(seed, "eval_prompts")
    posts = sample_posts(rng, n_eval_prompts, seen)
    eval_prompts = pa.table(
        {
            "prompt_id": np.arange(len(posts), dtype=np.int64),
            "prompt": [format_prompt(p.text) for p in posts],
            "post": [p.text for p in posts],
            "reference": [format_completion(reference_summary(p, rng)) for p in posts],
        },
        schema=SCHEMAS["eval_prompts"],
    )

    rng = split_rng(seed, "prefs_eval")
    prefs_eval = preference_table(
        sample_posts(rng, n_prefs_eval, seen), rng, label_rng(seed, "prefs_eval"), temperature
    )

    rng = split_rng(seed, "sft_train")
    posts = sample_posts(rng, n_sft, seen)
    sft = pa.table(
        {
            "prompt_id": np.arange(len(posts), dtype=np.int64),
            "prompt": [format_prompt(p.text) for p in posts],
            "completion": [format_completion(reference_summary(p, rng)) for p in posts],
            "post": [p.text for p in posts],
        },
        schema=SCHEMAS["sft_train"],
    )

    rng = split_rng(seed, "prefs_train")
    prefs_train = preference_table(
        sample_posts(rng, n_prefs_train, seen), rng, label_rng(seed, "prefs_train"), temperature
    )

    docs = list(corpus_documents(split_rng(seed, "corpus"), n_corpus_docs, seen))
    corpus = pa.table({"text": docs}, schema=SCHEMAS["corpus"])
    tokenizer = train_tokenizer(docs, vocab_size=vocab_size)

    atomic_write_parquet(paths["eval_prompts"], eval_prompts)
    atomic_write_parquet(paths["prefs_eval"], prefs_eval)
    atomic_write_parquet(paths["sft_train"], sft)
    atomic_write_parquet(paths["prefs_train"], prefs_train)
    atomic_write_parquet(paths["corpus"], corpus)
    with atomic_path(paths["tokenizer"]) as tmp:
        tokenizer.save_pretrained(str(tmp))
    atomic_write_json(paths["stats"], _stats(counts, seed, vocab_size, temperature, prefs_train, prefs_eval))
    return paths


def _stats(
    counts: dict[str, int], seed: int, vocab_size: int, temperature: float, train: pa.Table, evl: pa.Table
) -> dict[str, Any]:
    def label_stats(t: pa.Table) -> dict[str, float]:
        d = t["gold_chosen"].to_numpy() - t["gold_rejected"].to_numpy()
        return {
            "label_agreement": float(np.mean(t["label_agrees_gold"].to_numpy(zero_copy_only=False))),
            "expected_label_agreement": expected_agreement(d, temperature),
            "mean_abs_gold_diff": float(np.mean(np.abs(d))),
        }

    return {
        "config": {"seed": seed, "vocab_size": vocab_size, "label_temperature": temperature, **counts},
        "gold": {
            "cover_weight": gold.COVER_WEIGHT,
            "invent_weight": gold.INVENT_WEIGHT,
            "length_budget_words": gold.LENGTH_BUDGET,
            "length_weight": gold.LENGTH_WEIGHT,
            "repeat_ngram": gold.REPEAT_NGRAM,
            "repeat_weight": gold.REPEAT_WEIGHT,
            "unfinished_weight": gold.UNFINISHED_WEIGHT,
        },
        "prefs_train": {**label_stats(train), **length_feature_stats(train)},
        "prefs_eval": {**label_stats(evl), **length_feature_stats(evl)},
    }
