"""The replicate-grid calibration table of docs/results.md from `perm compare --out DIR` (its summary.parquet):
for the headline statistics at the largest n, the grids' range, the sd between them, the runs' own seed-aware
se and prompt-only se, and their ratios (with the seed-aware se honest, sd / se is about 1), plus the median
ratio over every statistic that has a seed-aware se.

    python experiments/calibration_table.py runs/compare-reps
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = [
    ("agreement", "neither", "Figure 2 agreement, neither"),
    ("agreement", "same_finetune", "Figure 2 agreement, same_finetune"),
    ("agreement", "same_pretrain", "Figure 2 agreement, same_pretrain"),
    ("agreement: same_pretrain - neither", "contrast", "… contrast same_pretrain − neither"),
    ("pick reward under other RMs", "same_pretrain", "Figure 1 pick reward, same_pretrain"),
    ("pick reward: same_pretrain - neither", "contrast", "… contrast same_pretrain − neither"),
    ("variance explained by the RM", "fraction", "Figure 3 variance due to the scoring RM"),
    ("table1 gold reward: pretrain - single", "mean", "Table 1 gold reward, pretrain ensemble − single"),
    ("table1 gold reward: finetune - single", "mean", "Table 1 gold reward, finetune ensemble − single"),
    ("table1 gold reward: pretrain - finetune", "mean", "Table 1 gold reward, pretrain − finetune ensemble"),
]


def main(folder: Path) -> None:
    d = pd.read_parquet(folder / "summary.parquet")
    d = d[d.n.isna() | (d.n == d.n.max())] if "n" in d.columns else d
    runs = int(d.runs.max())
    print(f"| statistic | {runs} grids | between-grid sd | seed-aware se | sd / se | prompt-only se | sd / prompt se |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for stat, key, label in ROWS:
        r = d[(d.statistic == stat) & (d.key == key)]
        if r.empty:
            continue
        r = r.iloc[0]
        print(f"| {label} | {r['min']:.3f} … {r['max']:.3f} | {r.sd:.3f} | {r.se_within:.3f} | "
              f"{r.sd_over_se_within:.2f} | {r.se_prompt:.3f} | {r.sd_over_se_prompt:.2f} |")
    ratio = d.sd_over_se_within.to_numpy(float)
    ratio = ratio[np.isfinite(ratio)]
    prompt = d.sd_over_se_prompt.to_numpy(float)
    prompt = prompt[np.isfinite(prompt)]
    print(f"\nOver all {len(ratio)} statistics with a seed-aware se: median sd / se {np.median(ratio):.2f} "
          f"(quartiles {np.quantile(ratio, 0.25):.2f}–{np.quantile(ratio, 0.75):.2f}); against the prompt-only se "
          f"median {np.median(prompt):.2f} (up to {prompt.max():.1f}).")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
