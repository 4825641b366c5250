"""Write policy pairs of a finished run's SFT policy under another scheme, for rm_recipe_sweep.py.

    python experiments/policy_pairs.py RUN_DIR NAME [kwise=K] [pairs_per_post=P] [seed=S] [max_new_tokens=T]

Writes RUN_DIR/sweep-pairs/NAME.parquet (training pairs) and NAME.eval.parquet (the held-out posts' pairs) with
the `policy-prefs` stage's own job (perm.stages.policy_prefs.job_policy_prefs), one thread, and prints its info
(samples per second, pairs, label agreement with gold).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from perm.config import load_config
from perm.stages.policy_prefs import job_policy_prefs


def main(run: Path, name: str, overrides: list[str]) -> None:
    cfg = load_config(run / "config.yaml")  # a run written before the config's sections moved too
    p = cfg.policy_pairs
    kw = {"kwise": None, "pairs_per_post": 3, "seed": p.seed, "max_new_tokens": p.max_new_tokens,
          "batch_prompts": 96}
    for o in overrides:
        k, v = o.split("=", 1)
        kw[k] = yaml.safe_load(v)
    info = job_policy_prefs(str(run), f"sweep-pairs/{name}.parquet", policy=str(run / "policy"), device="cpu",
                            threads=1, show_progress=False, eval_rel=f"sweep-pairs/{name}.eval.parquet",
                            precision=cfg.precision, **kw)
    print(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
