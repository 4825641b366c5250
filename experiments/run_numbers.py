"""Print the numbers the README quotes, straight from a finished run directory.

    python experiments/run_numbers.py RUN_DIR

Learnability (DESIGN.md's check: accuracy vs the label-noise ceiling, rank correlation with gold on the
policy's pool, gold gain of best-of-n), the seed effects (Figures 1-3 at n = 64), Table 1, gold best-of-n
by ranker, and the wall time of every stage from the manifest. Nothing is computed here that the pipeline
did not save, except the learnability entries, which `perm report` computes the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from perm.report_inputs import learnability, rm_records


def _pm(mean: float, se: float | None, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and se == se else "")


def main(root: Path) -> None:
    a = root / "analysis"
    records = rm_records(root)
    print("## learnability")
    for name, entry in learnability(root, records).items():
        print(f"{name}: {_pm(entry['value'], entry.get('se'))}")
    for r in records:
        other = "; ".join(f"{k}: acc {v['accuracy']:.3f}, gold {v.get('gold_accuracy', float('nan')):.3f}"
                          for k, v in r.get("other_evals", {}).items())
        print(f"  {r['model_id']:<12} {r['role']:<9} acc {_pm(r['accuracy'], r['accuracy_se'])} "
              f"gold_acc {r.get('gold_accuracy') or float('nan'):.3f} on {r.get('eval_pairs') or 'data/prefs_eval.parquet'}"
              f" ({r.get('n_eval_pairs', '?')} pairs); {other}")

    f4 = pd.read_parquet(a / "figure4.parquet")
    print("\n## gold reward (centred) / gold win rate of the best-of-n pick")
    for ranker, agg in (("single", "none"), ("finetune", "mean"), ("pretrain", "mean"), ("evaluator", "none"),
                        ("gold", "none")):
        rows = f4[(f4.ranker == ranker) & (f4.aggregator == agg) & (f4.target == "gold")]
        if rows.empty:
            continue
        rew = rows[rows.metric == "reward"].set_index("n")
        win = rows[rows.metric == "win_rate"].set_index("n")
        cells = [f"n={n}: {rew.loc[n, 'mean']:+.2f} / {win.loc[n, 'mean']:.2f}" for n in (2, 4, 64) if n in rew.index]
        print(f"  {ranker}/{agg}: " + "; ".join(cells))

    print("\n## seed effects")
    f2 = pd.read_parquet(a / "figure2.parquet")
    for n in (4, 16, 64):
        rows = f2[f2.n == n].set_index("group")
        print(f"  Figure 2, n={n}: " + "; ".join(f"{g} {_pm(r['mean'], r['se'])}" for g, r in rows.iterrows())
              + f"; chance {1 / n:.3f}")
    f1 = pd.read_parquet(a / "figure1.parquet")
    rows = f1[f1.n == f1.n.max()].set_index("group")
    print(f"  Figure 1, n={f1.n.max()}: " + "; ".join(f"{g} {_pm(r['mean'], r['se'])}" for g, r in rows.iterrows()))
    f3 = pd.read_parquet(a / "figure3.parquet").set_index("n")
    print("  Figure 3: " + "; ".join(f"n={n} {_pm(100 * r['mean'], 100 * r['se'], 1)}%"
                                     for n, r in f3.iterrows() if n in (1, 64)))

    print("\n## Table 1")
    t1 = pd.read_parquet(a / "table1.parquet")
    for _, r in t1.iterrows():
        print(f"  {r['ensemble']:<9} {r['aggregator']:<15} reward {_pm(r['reward_mean'], r['reward_se'])}  "
              f"win rate {_pm(r['win_rate_mean'], r['win_rate_se'])}")

    print("\n## wall time per stage (s)")
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    total = 0.0
    for name, rec in stages.items():
        total += rec.get("wall_s") or 0.0
        print(f"  {name:<24} {rec.get('wall_s') or 0:7.1f}")
    print(f"  {'sum':<24} {total:7.1f}  (with parallel workers the sum exceeds the wall time)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
