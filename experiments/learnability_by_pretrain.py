"""Does the pretraining seed change how well RMs learn? Pool the RMs of one or more finished runs over the same
backbones (e.g. full layouts of two worlds) and test pretrain against finetune seed.

    python experiments/learnability_by_pretrain.py RUN_DIR [RUN_DIR ...]      (statsmodels: the [dev] extra)

Per RM: in-distribution accuracy (rm.json) and the mean per-prompt Spearman rho with gold on the run's pool
(perm.report_inputs.learnability, what the report shows). Prints the mean of each pretrain per run and, over all
RMs, type-2 ANOVAs (statsmodels OLS) of ``y ~ run + pretrain`` and ``y ~ run + finetune_seed``, and the run x
pretrain interaction (does the backbone effect change between worlds?). With one run the run term is dropped.
Measured 2026-12-02 on runs/full and runs/full-bf16 (docs/history/results.md, the full layout; 2-core AMD EPYC
AVX512-BF16 VM): pretrain p = 0.0036 (rho) and 0.0022 (accuracy), finetune seed p = 0.59 and 0.38, run x
pretrain interaction p = 0.78 and 0.67.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from perm.report_inputs import learnability, rm_records


def table(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        records = [r for r in rm_records(run) if r["role"] == "rm"]
        entries = learnability(run, records)
        for r in records:
            rho = entries.get(f"Spearman with gold on the pool: {r['model_id']}")
            rows.append({"run": str(run), "pretrain": str(r["pretrain_id"]), "finetune_seed": str(r["finetune_seed"]),
                         "accuracy": r["accuracy"], "rho": rho["value"] if rho else float("nan")})
    return pd.DataFrame(rows)


def main(runs: list[Path]) -> None:
    df = table(runs)
    print(df.groupby(["pretrain", "run"])[["rho", "accuracy"]].mean().unstack("run").round(3).to_string())
    run_term = "C(run) + " if df.run.nunique() > 1 else ""
    for y in ("rho", "accuracy"):
        d = df.dropna(subset=[y])
        for factor in ("pretrain", "finetune_seed"):
            fit = smf.ols(f"{y} ~ {run_term}C({factor})", d).fit()
            p = anova_lm(fit, typ=2).loc[f"C({factor})", "PR(>F)"]
            print(f"{y}: {factor} p = {p:.4f} ({len(d)} RMs, {d[factor].nunique()} levels)")
        if run_term:
            fit = smf.ols(f"{y} ~ C(run) * C(pretrain)", d).fit()
            print(f"{y}: run x pretrain interaction p = {anova_lm(fit, typ=2).loc['C(run):C(pretrain)', 'PR(>F)']:.4f}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
