"""The README's real-scale cost table: perm.estimate on configs/tldr-pythia.yaml with the preset's models'
published shapes (what `perm check --gpu` reads from the hub) and the TL;DR comparisons' 92,858 training pairs.

    python experiments/gpu_estimates.py [--gpu h100] [override ...]
"""

from __future__ import annotations

import argparse

from perm.config import configs_dir, load_config
from perm.estimate import GPUS, Shape, estimate, table

SHAPES = {  # parameters (safetensors), layers, width: EleutherAI's Pythia configs
    "grid": Shape.of(162_322_944, 12, 768),  # pythia-160m (PolyPythias seeds)
    "evaluator": Shape.of(1_011_781_632, 16, 2048),  # pythia-1b-deduped
    "policy": Shape.of(1_011_781_632, 16, 2048),  # the TRL TL;DR SFT policy (pythia-1b-deduped)
}
TLDR_TRAIN_PAIRS = 92_858  # openai/summarize_from_feedback, comparisons, train split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = ap.parse_args()
    cfg = load_config(configs_dir() / "tldr-pythia.yaml", args.overrides)
    workers = cfg.workers if isinstance(cfg.workers, int) else 1
    print("\n".join(table(estimate(cfg, SHAPES, TLDR_TRAIN_PAIRS, cfg.data.n_eval_prompts, args.gpu), args.gpu,
                          workers)))


if __name__ == "__main__":
    main()
