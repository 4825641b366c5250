"""Replicate runs side by side: how much the headline statistics move between whole runs.

Every standard error in a run's analysis is over prompts (Figures 1 and 2 also give one over RM pairs);
neither covers the randomness of training the grid itself — new pretrains move every RM of the grid
together. Running the same config with other seeds (``pretrain.seeds``, ``reward.finetune_seeds``, the
evaluator's ``pretrain_seed``) and comparing the runs is the direct measure. ``perm compare RUN RUN ...``
reads each run's ``analysis/`` and gives, per statistic:

* each run's value and within-run se (``per_run``);
* across runs (``summary``): the mean, the between-run standard deviation ``sd`` (ddof 1), its standard
  error of the mean ``se_between = sd / sqrt(R)``, the mean within-run se, and their ratio
  ``sd / se_within`` (≈ 1 when the prompt se tells the whole story; ≫ 1 when training randomness dominates);
* the paper's contrasts computed within each run, then across runs, with the number of runs in which the
  contrast is positive, each signed so that positive is the paper's finding: agreement *same − different*
  pretrain (Figure 2), pick reward *same − different* (Figure 1), and *pretrain − finetune* ensemble
  (Table 1, gold best-of-n).

The within-run se of a contrast is not given (its two groups share prompts and are not independent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FILES = ("figure1", "figure2", "figure3", "figure4", "table1")


class CompareError(ValueError):
    """Runs that cannot be compared; the message names the run directory and what is missing."""


def _read(run: Path) -> dict[str, pd.DataFrame]:
    a = run / "analysis"
    out = {}
    for name in FILES:
        path = a / f"{name}.parquet"
        if not path.exists():
            raise CompareError(f"{run}: no analysis/{name}.parquet (run `perm analyze` on it first)")
        out[name] = pd.read_parquet(path)
    return out


def run_statistics(run: str | Path) -> pd.DataFrame:
    """One run's headline statistics, long: statistic, key, n, value, se (within run; NaN for contrasts)."""
    run = Path(run)
    t = _read(run)
    rows: list[dict] = []

    def put(stat, key, n, value, se=np.nan):
        rows.append({"statistic": stat, "key": key, "n": int(n), "value": float(value), "se": float(se)})

    for fig, stat, short in (("figure2", "agreement", "agreement"),
                             ("figure1", "pick reward under other RMs", "pick reward")):
        f = t[fig]
        for _, r in f.iterrows():
            put(stat, r["group"], r["n"], r["mean"], r["se"])
        for n, g in f.groupby("n"):
            m = g.set_index("group")["mean"]
            if {"same_pretrain", "different_pretrain"} <= set(m.index):
                put(f"{short}: same - different", "contrast", n, m["same_pretrain"] - m["different_pretrain"])
    for _, r in t["figure3"].iterrows():
        put("variance explained by the RM", "fraction", r["n"], r["mean"], r["se"])

    tb = t["table1"]
    for _, r in tb.iterrows():
        agg = r["aggregator"]
        key = r["ensemble"] if agg in (r["ensemble"], "none", "—", "") else f"{r['ensemble']}/{agg}"
        put(f"table1 {r['target']} reward", key, r["n"], r["reward_mean"], r["reward_se"])
        put(f"table1 {r['target']} win rate", key, r["n"], r["win_rate_mean"], r["win_rate_se"])
    for (target, n), g in tb.groupby(["target", "n"]):
        by = g.set_index(["ensemble", "aggregator"])
        for agg in sorted(set(g.aggregator)):
            if ("pretrain", agg) in by.index and ("finetune", agg) in by.index:
                for col, label in (("reward_mean", "reward"), ("win_rate_mean", "win rate")):
                    put(f"table1 {target} {label}: pretrain - finetune", agg, n,
                        by.loc[("pretrain", agg), col] - by.loc[("finetune", agg), col])

    f4 = t["figure4"]
    gold = f4[(f4.target == "gold") & (f4.metric == "reward")]
    if not gold.empty:
        for (ranker, agg), g in gold.groupby(["ranker", "aggregator"]):
            if ranker in ("single", "finetune", "pretrain", "evaluator"):
                for _, r in g.iterrows():
                    put("gold reward of the pick", f"{ranker}/{agg}", r["n"], r["mean"], r["se"])
        ens = gold[gold.ranker.isin(["pretrain", "finetune"])]
        for (agg, n), g in ens.groupby(["aggregator", "n"]):
            m = g.set_index("ranker")["mean"]
            if {"pretrain", "finetune"} <= set(m.index):
                put("gold reward: pretrain - finetune", agg, n, m["pretrain"] - m["finetune"])
    out = pd.DataFrame(rows, columns=["statistic", "key", "n", "value", "se"])
    out.insert(0, "run", str(run))
    return out


def compare_runs(runs: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_run, summary) for two or more runs; statistics present in every run only."""
    if len(runs) < 2:
        raise CompareError(f"compare needs at least two runs, got {len(runs)}")
    names = [str(Path(r)) for r in runs]
    if len(set(names)) != len(names):
        raise CompareError("compare: the same run is named twice")
    per_run = pd.concat([run_statistics(r) for r in runs], ignore_index=True)
    idx = ["statistic", "key", "n"]
    counts = per_run.groupby(idx).run.nunique()
    common = counts[counts == len(runs)].index
    if len(common) == 0:
        raise CompareError("compare: the runs share no statistic (different n or layouts)")
    per_run = per_run.set_index(idx).loc[common].reset_index()
    rows = []
    for key, g in per_run.groupby(idx, sort=False):
        v = g.value.to_numpy()
        sd = float(np.std(v, ddof=1))
        se_within = float(np.mean(g.se)) if g.se.notna().all() else np.nan
        contrast = " - " in key[0]
        rows.append(dict(zip(idx, key, strict=True)) | {
            "contrast": contrast,
            "runs": len(v),
            "mean": float(np.mean(v)),
            "sd": sd,
            "se_between": sd / np.sqrt(len(v)),
            "se_within": se_within,
            "sd_over_se_within": sd / se_within if se_within and se_within > 0 else np.nan,
            "positive": int(np.sum(v > 0)) if contrast else -1,
            "min": float(np.min(v)),
            "max": float(np.max(v)),
        })
    summary = pd.DataFrame(rows).sort_values(idx, kind="stable").reset_index(drop=True)
    return per_run.sort_values(["run", *idx], kind="stable").reset_index(drop=True), summary


def summary_markdown(summary: pd.DataFrame, runs: list[str | Path], n: int | None = None) -> str:
    """The summary at one n (default: the largest n every run has) as a Markdown table."""
    if n is not None and n not in set(summary.n):
        raise CompareError(f"--n {n}: the runs have n = {sorted(set(summary.n))}")
    n = int(summary.n.max()) if n is None else n
    s = summary[summary.n == n]
    lines = [
        f"# {len(runs)} runs compared at n = {n}",
        "",
        "Runs: " + ", ".join(f"`{r}`" for r in runs),
        "",
        "sd: between runs (ddof 1); se_between = sd / sqrt(runs); se_within: the mean of the runs' own (prompt) "
        "se; positive: for a contrast (signed so that > 0 is the paper's finding), the runs in which it is > 0.",
        "",
        "| statistic | key | mean | sd | se_between | se_within | sd / se_within | positive | range |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def f(x):
        return "—" if x != x else f"{x:.3f}"

    for _, r in s.iterrows():
        lines.append(f"| {r['statistic']} | {r['key']} | {f(r['mean'])} | {f(r['sd'])} | {f(r['se_between'])} | "
                     f"{f(r['se_within'])} | {f(r['sd_over_se_within'])} | "
                     f"{str(r['positive']) + '/' + str(r['runs']) if r['contrast'] else '—'} | "
                     f"{f(r['min'])} … {f(r['max'])} |")
    return "\n".join(lines) + "\n"


def write_comparison(runs: list[str | Path], out: str | Path, n: int | None = None) -> Path:
    """per_run.parquet, summary.parquet and summary.md into `out` (each written atomically)."""
    import pyarrow as pa

    from perm.store import atomic_write_parquet, atomic_write_text

    per_run, summary = compare_runs(runs)
    markdown = summary_markdown(summary, runs, n)  # a bad n fails here, before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(out / "per_run.parquet", pa.Table.from_pandas(per_run, preserve_index=False))
    atomic_write_parquet(out / "summary.parquet", pa.Table.from_pandas(summary, preserve_index=False))
    atomic_write_text(out / "summary.md", markdown)
    return out / "summary.md"
