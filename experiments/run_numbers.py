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

import numpy as np
import pandas as pd

from perm.report_inputs import learnability, rm_records


def _pm(mean: float, se: float | None, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and se == se else "")


def main(root: Path) -> None:
    a = root / "analysis"
    records = rm_records(root)
    print("## learnability")
    for name, entry in learnability(root, records).items():
        detail = f"  ({entry['description']})" if "by pretrain" in name else ""  # the per-pretrain means
        print(f"{name}: {_pm(entry['value'], entry.get('se'))}{detail}")
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

    def iv(r, pct=False):
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        return f"{f(r['mean'])} [{f(r['lo'])}, {f(r['hi'])}] (se {f(r['se'])}, prompt-only {f(r['se_prompt'])})"

    meta = pd.read_parquet(a / "meta.parquet").iloc[0]
    over = meta.get("resamples", "pretrain seeds and prompts")
    print(f"\n## seed effects (90% intervals over {over}; R pretrains)")
    sv = pd.read_parquet(a / "seed_variance.parquet")
    for w, n in (("pool", None), ("pick", 4), ("pick", 16), ("pick", 64)):
        rows = sv[(sv.weighting == w) & ((sv.n == n) if n else sv.n.isna())].set_index("statistic")
        if rows.empty:
            continue
        where = "pool" if n is None else f"picks n={n}"
        def cell(k, rows=rows):
            est, lo, hi = (100 * float(rows.loc[k, c]) for c in ("estimate", "lo", "hi"))
            return f"{k} {est:.1f}% " + (f"[{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else "(no interval)")

        print(f"  seed variance, {where}: " + "; ".join(cell(k) for k in ("share_pt", "share_ft", "share_res"))
              + f"  (R = {int(rows.R.iloc[0])})")
        notes = [rows.loc[k, "note"] for k in ("share_pt", "share_ft") if "note" in rows.columns
                 and isinstance(rows.loc[k, "note"], str) and rows.loc[k, "note"]]
        if notes and n is None:
            print("    no interval: " + " | ".join(notes))
    f2 = pd.read_parquet(a / "figure2.parquet")
    for n in (4, 16, 64):
        rows = f2[f2.n == n].set_index("relation")
        if rows.empty:
            continue
        print(f"  Figure 2, n={n}: " + "; ".join(f"{g} {iv(r)} kappa {r['kappa']:.3f}" for g, r in rows.iterrows())
              + f"; chance {rows.chance.iloc[0]:.4f}")
    f1 = pd.read_parquet(a / "figure1.parquet")
    rows = f1[f1.n == f1.n.max()].set_index("relation")
    print(f"  Figure 1, n={f1.n.max()}: " + "; ".join(f"{g} {iv(r)}" for g, r in rows.iterrows()))
    f3 = pd.read_parquet(a / "figure3.parquet").set_index("n")
    print("  Figure 3: " + "; ".join(f"n={n} {iv(r, pct=True)}" for n, r in f3.iterrows() if n in (1, 64)))
    c = pd.read_parquet(a / "contrasts.parquet")
    c = c[(c.n == c.n.max()) & ((c.figure != "table1") | (c.aggregator == "mean"))]
    print("  contrasts at the largest n (> 0 = the paper's finding):")
    for _, r in c.iterrows():
        where = r["figure"] if r["figure"] != "table1" else f"table1 {r['target']} {r['metric']}"
        print(f"    {where:<28} {r['contrast']:<36} {r['estimate']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] "
              f"se {r['se']:.3f} (prompt-only {r['se_prompt']:.3f}), R = {int(r['R'])}")

    print("\n## Table 1 (se over seeds and prompts; prompt-only se in brackets)")
    t1 = pd.read_parquet(a / "table1.parquet")
    for _, r in t1.iterrows():
        print(f"  {r['target']:<9} {r['ensemble']:<9} {r['aggregator']:<15} "
              f"reward {_pm(r['reward_mean'], r['reward_se'])} ({r.get('reward_se_prompt', float('nan')):.3f})  "
              f"win rate {_pm(r['win_rate_mean'], r['win_rate_se'])} ({r.get('win_rate_se_prompt', float('nan')):.3f})")

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
