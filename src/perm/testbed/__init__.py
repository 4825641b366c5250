"""The embedded synthetic TL;DR world: posts from latent facts, reference summaries, a gold reward,
candidate summaries, Bradley–Terry preference labels, a pretraining corpus and a tokenizer.

Entry point: :func:`build_testbed`. Later stages use :func:`format_prompt`, :func:`gold_reward` /
:func:`gold_reward_batch` (to score policy samples) and :func:`label_pairs` (to label new pairs with the
testbed's raters).
"""

from perm.testbed.build import build_testbed
from perm.testbed.candidates import (
    DEFAULT_TEMPERATURE,
    bradley_terry_labels,
    calibrate_temperature,
    expected_agreement,
    label_pairs,
    preference_probability,
)
from perm.testbed.gold import GoldParts, gold_parts, gold_reward, gold_reward_batch
from perm.testbed.tokenizer import EOS_TOKEN, PAD_TOKEN
from perm.testbed.world import PROMPT_TEMPLATE, format_completion, format_prompt, post_from_prompt

__all__ = [
    "DEFAULT_TEMPERATURE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "PROMPT_TEMPLATE",
    "GoldParts",
    "bradley_terry_labels",
    "build_testbed",
    "calibrate_temperature",
    "expected_agreement",
    "format_completion",
    "format_prompt",
    "gold_parts",
    "gold_reward",
    "gold_reward_batch",
    "label_pairs",
    "post_from_prompt",
    "preference_probability",
]
