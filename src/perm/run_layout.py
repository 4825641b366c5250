"""Every path of a run directory, named once: the stages write and read these, perm.report_inputs, perm.kit
and perm.shipped read them, and nothing else in perm spells them (tests/test_run_layout.py greps for strays).

Paths are POSIX strings relative to the run directory (``root / SAMPLES``); those of a grid member are
patterns (``RM = "rm/{rm_id}"``) with a function that fills them in (:func:`rm_dir`). A folder written by one
job is also its manifest name (``rm/seed0-ft0``, ``evaluator/rm``, ``policy``).

    config.yaml  manifest.json               the resolved config; per stage: status, key, output hashes, ...
    data/        tokenizer/                  the testbed (or imported pairs) and the run's tokenizer
    pretrain/<pretrain_id>/  evaluator/pretrain/   backbones pretrained in the run (+ pretrain.json)
    policy/                                  the SFT policy (+ policy.json)
    policy_prefs.parquet  policy_prefs_eval.parquet  evaluator_prefs.parquet   the policy's own pairs
    rm/<rm_id>/  evaluator/rm/               the RMs (+ rm.json)
    members/<member_id>/                     ensemble members on one backbone (+ rm.json; perm.members)
    samples.parquet  scores/<model_id>.parquet  rewards.parquet  models.parquet  ensembles.parquet
    analysis/  report/ (index.html)
    converted/  .checkpoints/<job>/  .testbed.tmp/   conversions, a killed pretrain's state, scratch
"""

from __future__ import annotations

import re

CONFIG = "config.yaml"
MANIFEST = "manifest.json"

DATA = "data"
TOKENIZER = "tokenizer"
DATA_FILES = {  # the files of data/ (perm.testbed.build writes them; the data stage imports a user's pairs)
    "corpus": "corpus.parquet",
    "sft_train": "sft_train.parquet",
    "prefs_train": "prefs_train.parquet",
    "prefs_eval": "prefs_eval.parquet",
    "eval_prompts": "eval_prompts.parquet",
    "stats": "testbed.json",
}


def _data(name: str) -> str:
    return f"{DATA}/{DATA_FILES[name]}"


CORPUS = _data("corpus")
SFT_TRAIN = _data("sft_train")
PREFS_TRAIN = _data("prefs_train")
PREFS_EVAL = _data("prefs_eval")
EVAL_PROMPTS = _data("eval_prompts")
TESTBED_SCRATCH = ".testbed.tmp"  # where the testbed is built before it moves into data/ and tokenizer/

PRETRAIN = "pretrain/{pretrain_id}"
EVALUATOR = "evaluator"
EVALUATOR_PRETRAIN = f"{EVALUATOR}/pretrain"
PRETRAIN_RECORD = "pretrain.json"  # in a backbone's folder (and a shipped backbone's)
CHECKPOINTS = ".checkpoints"  # <run>/.checkpoints/<job's folder>/: the training state of a killed pretrain

POLICY = "policy"
POLICY_RECORD = "policy.json"
POLICY_PREFS = "policy_prefs.parquet"
POLICY_PREFS_EVAL = "policy_prefs_eval.parquet"
EVALUATOR_PREFS = "evaluator_prefs.parquet"

RM = "rm/{rm_id}"
EVALUATOR_RM = f"{EVALUATOR}/rm"
RM_RECORD = "rm.json"
MEMBER = "members/{member_id}"

SAMPLES = "samples.parquet"
SCORES = "scores/{model_id}.parquet"
REWARDS = "rewards.parquet"
MODELS = "models.parquet"
# beside models.parquet: what each ensemble cost (optional for a user's tensor)
ENSEMBLES = "ensembles.parquet"
ANALYSIS = "analysis"
REPORT = "report"
REPORT_INDEX = "index.html"  # in report/
CONVERTED = "converted"


def pretrain_dir(pretrain_id: str) -> str:
    return PRETRAIN.format(pretrain_id=pretrain_id)


def rm_dir(rm_id: str) -> str:
    return RM.format(rm_id=rm_id)


def member_dir(member_id: str) -> str:
    return MEMBER.format(member_id=member_id)


def scores_file(model_id: str) -> str:
    return SCORES.format(model_id=model_id)


def rm_record(folder: str) -> str:
    """The rm.json of an RM's folder (:data:`RM` or :data:`EVALUATOR_RM`)."""
    return f"{folder}/{RM_RECORD}"


RM_RECORDS_GLOB = rm_record(RM.format(rm_id="*"))  # every grid RM's rm.json
CHECKPOINT_STATE = CHECKPOINTS + "/{job}"


def checkpoint_state(job: str) -> str:
    """Where the pretrain job writing folder `job` keeps its training state until its backbone is saved."""
    return CHECKPOINT_STATE.format(job=job)


def shown(pattern: str) -> str:
    """A pattern as the docs show it: ``rm/{rm_id}`` -> ``rm/<rm_id>``."""
    return re.sub(r"\{(\w+)\}", r"<\1>", pattern)


def match(pattern: str, path: str) -> dict[str, str] | None:
    """The fields that fill `pattern` in to `path` (``{}`` for a pattern without fields), or None where it
    does not match; a field is one path segment."""
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    m = re.fullmatch(regex, path)
    return m.groupdict() if m else None
