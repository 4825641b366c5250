"""Config entries for the seed-varied assets a user brings, read off how each is published (`perm import`):

* a **finetune-level TL;DR grid** (e.g. ``vwxyzjn/EleutherAI_pythia-1b-deduped__reward__tldr``): one
  repository whose revision branches ``{stage}__{seed}__{timestamp}`` each hold the model of one seed (each RM
  trained from its own SFT seed, on one pretrain) -> ``reward.rm_checkpoints`` entries
  ``<pretrain_id>:<seed>=<repo>@<branch>`` (the latest timestamp of a seed), the grid of trained RMs;
* **MultiBERTs**: one repository per pretraining seed, ``google/multiberts-seed_<k>`` (and
  ``-step_<n>k`` intermediate checkpoints of seeds 0-4), ``.bin`` weights (converted on load,
  `pretrain.convert_bin`) -> ``pretrain.checkpoints``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MULTIBERTS = "google/multiberts-seed_{seed}"


def tldr_grid(repo: str, stage: str = "reward", pretrain_id: str | None = None, api=None) -> list[str]:
    """``reward.rm_checkpoints`` entries of the grid published as `repo`'s ``{stage}__{seed}__{timestamp}``
    branches (``HfApi.list_repo_refs``), one per seed (its latest timestamp), by seed; `pretrain_id` names
    their one pretrain (default: the repository's name). Raises ValueError when no branch matches."""
    if api is None:
        import huggingface_hub

        api = huggingface_hub.HfApi()
    pattern = re.compile(rf"^{re.escape(stage)}__(\d+)__(\d+)$")
    latest: dict[int, tuple[int, str]] = {}
    for branch in api.list_repo_refs(repo).branches:
        m = pattern.match(branch.name)
        if m:
            seed, stamp = int(m.group(1)), int(m.group(2))
            if seed not in latest or stamp > latest[seed][0]:
                latest[seed] = (stamp, branch.name)
    if not latest:
        raise ValueError(f"{repo}: no branch named {stage}__<seed>__<timestamp>")
    pid = re.sub(r"[^A-Za-z0-9_.-]", "_", pretrain_id or repo.rsplit("/", 1)[-1])
    return [f"{pid}:{seed}={repo}@{branch}" for seed, (_, branch) in sorted(latest.items())]


def multiberts(seeds: Iterable[int], step: str | None = None) -> list[str]:
    """``pretrain.checkpoints`` of MultiBERTs seeds (0-24), at an intermediate `step` (e.g. ``2000k``;
    seeds 0-4 only) or final."""
    seeds = list(seeds)
    bad = [s for s in seeds if not 0 <= s <= 24 or (step is not None and s > 4)]
    if bad:
        raise ValueError(f"MultiBERTs seeds are 0-24 (intermediate steps: 0-4); got {bad}")
    if step is not None and not re.fullmatch(r"\d+k", step):
        raise ValueError(f"MultiBERTs steps are named like 2000k; got {step!r}")
    return [MULTIBERTS.format(seed=s) + (f"-step_{step}" if step else "") for s in seeds]


def override(key: str, values: list[str]) -> str:
    """The ``key=[...]`` override that sets a list field to `values` (for `perm run ... key=[...]`)."""
    return f"{key}=[{', '.join(values)}]"
