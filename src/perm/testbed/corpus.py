"""The pretraining corpus: web-like text from the same world as the posts.

Documents, in a seeded random order, of three kinds (fractions are expectations):

* 60% a post followed by its reference summary, written exactly as prompt + completion
  (``f"{post}\\nTL;DR: {summary}"``), so that pretraining already teaches what a good summary is, as
  Reddit and C4 web text do for real models;
* 25% a plain post;
* 15% three to six generic sentences that use the world's key words outside any post.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from perm.testbed.world import (
    format_completion,
    format_prompt,
    generic_sentences,
    reference_summary,
    sample_post,
)

P_TLDR = 0.60
P_POST = 0.25


def corpus_documents(rng: random.Random, n: int, exclude: set[str]) -> Iterator[str]:
    """Yield ``n`` documents; posts in ``exclude`` (held-out splits) are skipped and new ones added."""
    made = 0
    while made < n:
        u = rng.random()
        if u < P_TLDR + P_POST:
            post = sample_post(rng)
            if post.text in exclude:
                continue
            exclude.add(post.text)
            if u < P_TLDR:
                yield format_prompt(post.text) + format_completion(reference_summary(post, rng))
            else:
                yield post.text
        else:
            yield " ".join(generic_sentences(rng, rng.randint(3, 6)))
        made += 1
