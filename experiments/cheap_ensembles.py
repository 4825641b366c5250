"""The cheaper-ensembles section of docs/results.md from a finished `configs/cheap-ensembles.yaml` run.

    python experiments/cheap_ensembles.py runs/cheap-ensembles [--write]

Prints (or, with --write, puts between ``<!-- cheap:begin -->`` and ``<!-- cheap:end -->`` of docs/results.md)
the machine (CPU, precision, the fp32 matmul peak measured now), every ensemble's gold reward of the best-of-n
pick at the largest n with its 90% interval and the share of the pretrain ensemble's gain it recovers, beside
its costs (analysis/ensembles.parquet), and each member kind's held-out accuracy and pool rank correlation with
the gold reward (WARM's average beside its members).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _bench import matmul_peak  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
BEGIN, END = "<!-- cheap:begin -->", "<!-- cheap:end -->"


def pool_rho(run: Path) -> pd.Series:
    """Per model: the mean over prompts of the Spearman correlation of its pool rewards with the gold reward."""
    r = pd.read_parquet(run / "rewards.parquet")
    r = r[~r.is_reference]
    r["rank"] = r.groupby(["model_id", "prompt_id"]).reward.rank()
    wide = r.pivot_table(index=["prompt_id", "sample_id"], columns="model_id", values="rank")
    out = {}
    for m in wide.columns:
        if m == "gold":
            continue
        both = wide[[m, "gold"]]
        out[m] = float(np.nanmean([g[m].corr(g["gold"]) for _, g in both.groupby(level=0)]))  # all-tied: skipped
    return pd.Series(out)


def _iv(est, lo, hi, digits: int = 3) -> str:
    if not np.isfinite(est):
        return "—"
    return f"{est:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def section(run: Path) -> str:
    hw = json.loads((run / "manifest.json").read_text())["hardware"]
    peak = matmul_peak()
    table = pd.read_parquet(run / "analysis" / "ensembles.parquet")
    gold = table[(table.target == "gold") & (table.metric == "reward")]
    n = int(gold.n.max())
    models = pd.read_parquet(run / "models.parquet")
    rho = pool_rho(run)
    con = pd.read_parquet(run / "analysis" / "contrasts.parquet")
    con = con[(con.target == "gold") & (con.metric == "reward")].set_index(["contrast", "aggregator"])

    def vs(name: str, other: str, agg: str) -> str:
        key = (f"{name} - {other}", agg)
        if (name, other) == ("finetune", "pretrain"):  # the grid's contrast is signed the paper's way
            c = con.loc[("pretrain - finetune", agg)]
            return _iv(-c.estimate, -c.hi, -c.lo)
        if name == other or key not in con.index:
            return "—"
        c = con.loc[key]
        return _iv(c.estimate, c.lo, c.hi)

    grid_pt = con.loc[("pretrain - single", "mean")]
    agree = pd.read_parquet(run / "analysis" / "agreement_pretrain.parquet")
    agree = agree[agree.n == agree.n.max()].set_index(["ranker", "aggregator"])
    cov = pd.read_parquet(run / "analysis" / "coverage.parquet")
    named_cov = cov[cov.statistic.str.startswith("named ensemble")]
    lines = [BEGIN, "", f"### `{run.name}` (`configs/cheap-ensembles.yaml`): best-of-{n}, 90% intervals", "",
             f"Machine: {hw['cpu']['model']} ({hw['device']}), precision {hw['precision']}; fp32 matmul peak "
             f"measured when this table was written: {peak['flops_per_s'] / 1e9:.0f} GFLOP/s (not during the "
             "run, which shared the cores with other jobs). Seconds are this machine's; "
             "the pretrain ensemble's include pretraining the other 4 backbones as recorded where the testbed's "
             "were built. Mean aggregator (a one-model ensemble ranks by its own reward); every aggregator is in "
             "analysis/ensembles.parquet. The pretrain ensemble's gain over a single RM is "
             f"{_iv(grid_pt.estimate, grid_pt.lo, grid_pt.hi)}: its interval includes 0, so the share of it an "
             "ensemble recovers is undefined here, and each ensemble is compared with both ends instead."
             if grid_pt.lo <= 0 <= grid_pt.hi else "", "",
             "| ensemble | gold reward [90%] | − single RM [90%] | − pretrain ensemble [90%] | share of the pretrain "
             "gain | same pick as the pretrain ensemble | params trained | params held | forwards | train s | "
             "score s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in gold[gold.aggregator.isin(["mean", "none"])].iterrows():
        agg = "mean" if r.ensemble in ("finetune", "pretrain") else r.aggregator
        share = _iv(r.share, r.share_lo, r.share_hi, 2) if np.isfinite(r.share) and np.isfinite(r.share_lo) else "—"
        same = agree.loc[(r.ensemble, r.aggregator), "mean"] if (r.ensemble, r.aggregator) in agree.index else np.nan
        lines.append(f"| {r.ensemble} | {_iv(r.estimate, r.lo, r.hi)} | {vs(r.ensemble, 'single', agg)} | "
                     f"{vs(r.ensemble, 'pretrain', agg)} | {share} | {same:.0%} | {r.params_trained:,.0f} | "
                     f"{r.params_held:,.0f} | {r.forwards_per_candidate:.0f} | {r.train_s:,.0f} | "
                     f"{r.score_s:,.1f} |")
    for c in named_cov.itertuples():
        lines += ["", f"Simulated coverage of a {c.statistic}'s 90% interval (perm.coverage, planted members of "
                  f"one backbone, {c.sims} ensembles): {c.coverage:.0%} ± {c.mc_se:.0%}."]
    lines += ["", "Members: held-out accuracy (policy pairs) and gold accuracy, mean over the kind's models, and "
              "the pool's rank correlation with the gold reward (mean over prompts):", "",
              "| models | n | accuracy | gold accuracy | pool ρ with gold |", "|---|---|---|---|---|"]
    groups = models[models.role.isin(["rm", "member"])].copy()
    groups["group"] = np.where(groups.role == "rm", "grid RMs", groups.kind)
    for g, part in groups.groupby("group", sort=False):
        lines.append(f"| {g} | {len(part)} | {part.accuracy.mean():.3f} | {part.gold_accuracy.mean():.3f} | "
                     f"{rho[part.model_id].mean():.3f} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--write", action="store_true", help="update docs/results.md")
    args = ap.parse_args(argv)
    new = section(args.run)
    if not args.write:
        print(new)
        return
    text = RESULTS.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Cheaper ensembles (issue 31)\n\n" + new + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
