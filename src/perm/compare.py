"""Replicate runs side by side: how much the headline statistics move between whole runs.

A run's analysis gives two standard errors per statistic: ``se``, over its pretrain seeds (finetunes
nested) and prompts (the multi-bootstrap of perm.seedstats), and ``se_prompt``, over prompts only. Running
the same config with other seeds (``pretrain.seeds``, ``reward.finetune_seeds``, the evaluator's seeds) and
comparing the runs is the direct check of the first. ``perm compare RUN RUN ...`` reads each run's
``analysis/`` and gives, per statistic:

* each run's value and its two within-run se's (``per_run``);
* across runs (``summary``): the mean, the between-run standard deviation ``sd`` (ddof 1), its standard
  error of the mean ``se_between = sd / sqrt(R)``, the mean within-run seed-aware se ``se_within`` and
  prompt-only se ``se_prompt``, and the ratios ``sd / se_within`` (≈ 1 when the seed-aware se is honest) and
  ``sd / se_prompt`` (how far an analysis that ignores training randomness is off);
* the contrasts of the run's ``contrasts`` table (each signed so that > 0 is the paper's finding: Figures 1
  and 2 ``same_pretrain - neither`` and the paper's ``same_pretrain - different_pretrain``, Table 1's
  ensembles minus a single RM and pretrain minus finetune ensemble), with the number of runs in which each is
  positive, and the seed-variance shares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from perm.run_layout import ANALYSIS

FILES = ("figure1", "figure2", "figure3", "contrasts", "seed_variance", "table1")


class CompareError(ValueError):
    """Runs that cannot be compared; the message names the run directory and what is missing."""


def _read(run: Path) -> dict[str, pd.DataFrame]:
    a = run / ANALYSIS
    out = {}
    for name in FILES:
        path = a / f"{name}.parquet"
        if not path.exists():
            raise CompareError(f"{run}: no {ANALYSIS}/{name}.parquet (run `perm analyze` on it first)")
        out[name] = pd.read_parquet(path)
    return out


def run_statistics(run: str | Path) -> pd.DataFrame:
    """One run's headline statistics, long: statistic, key, n, value, se (seed-aware), se_prompt."""
    run = Path(run)
    t = _read(run)
    if "relation" not in t["figure1"].columns:
        raise CompareError(f"{run}: analysis/ predates the pair relations; rerun `perm analyze` on it")
    rows: list[dict] = []

    def put(stat, key, n, value, se=np.nan, se_prompt=np.nan):
        rows.append({"statistic": stat, "key": key, "n": int(n), "value": float(value), "se": float(se),
                     "se_prompt": float(se_prompt)})

    for fig, stat in (("figure2", "agreement"), ("figure1", "pick reward under other RMs")):
        for r in t[fig].itertuples():
            put(stat, r.relation, r.n, r.mean, r.se, r.se_prompt)
    for r in t["figure3"].itertuples():
        put("variance explained by the RM", "fraction", r.n, r.mean, r.se, getattr(r, "se_prompt", np.nan))
    for r in t["contrasts"].itertuples():
        what = {"figure1": "pick reward", "figure2": "agreement"}.get(
            r.figure, f"{r.figure} {r.target} {r.metric}")
        put(f"{what}: {r.contrast}", r.aggregator if _present(r.aggregator) else "contrast", r.n, r.estimate,
            r.se, r.se_prompt)
    for r in t["seed_variance"].itertuples():
        if r.statistic.startswith("share_"):
            put(f"seed variance {r.statistic}", r.weighting, 0 if r.weighting == "pool" else r.n, r.estimate,
                r.se, r.se_prompt)
    for r in t["table1"].itertuples(index=False):
        r = r._asdict()
        agg = r["aggregator"]
        key = r["ensemble"] if agg in (r["ensemble"], "none", "—", "") else f"{r['ensemble']}/{agg}"
        for metric, label in (("reward", "reward"), ("win_rate", "win rate")):
            put(f"table1 {r['target']} {label}", key, r["n"], r[f"{metric}_mean"], r[f"{metric}_se"],
                r.get(f"{metric}_se_prompt", np.nan))
    out = pd.DataFrame(rows, columns=["statistic", "key", "n", "value", "se", "se_prompt"])
    out.insert(0, "run", str(run))
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and value is not pd.NA


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
        se_prompt = float(np.mean(g.se_prompt)) if g.se_prompt.notna().all() else np.nan
        contrast = " - " in key[0]
        rows.append(dict(zip(idx, key, strict=True)) | {
            "contrast": contrast,
            "runs": len(v),
            "mean": float(np.mean(v)),
            "sd": sd,
            "se_between": sd / np.sqrt(len(v)),
            "se_within": se_within,
            "sd_over_se_within": sd / se_within if se_within and se_within > 0 else np.nan,
            "se_prompt": se_prompt,
            "sd_over_se_prompt": sd / se_prompt if se_prompt and se_prompt > 0 else np.nan,
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
        "sd: between runs (ddof 1); se_between = sd / sqrt(runs); se_within: the mean of the runs' own "
        "seed-aware se (over their seed design and prompts); se_prompt: the mean of their prompt-only se; "
        "positive: for a contrast (signed so that > 0 is the paper's finding), the runs in which it is > 0. "
        "With the seed-aware se honest, sd / se_within is about 1.",
        "",
        "| statistic | key | mean | sd | se_between | se_within | sd / se_within | se_prompt | "
        "sd / se_prompt | positive | range |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def f(x):
        return "—" if x != x else f"{x:.3f}"

    for _, r in s.iterrows():
        lines.append(f"| {r['statistic']} | {r['key']} | {f(r['mean'])} | {f(r['sd'])} | "
                     f"{f(r['se_between'])} | {f(r['se_within'])} | {f(r['sd_over_se_within'])} | "
                     f"{f(r['se_prompt'])} | {f(r['sd_over_se_prompt'])} | "
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
