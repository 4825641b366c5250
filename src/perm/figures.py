"""The report's figures: the paper's Figures 1–4, the seed variance shares, the gold reward and the
reward-hacking diagnostics, from the tables of :func:`perm.analysis.run_analysis`.

:func:`make_figures` draws every figure whose data is present into ``out_dir/*.png``; each builder returns a
:class:`FigureResult` (the figure, or why it was skipped, with the numbers behind it) that the HTML page of
:mod:`perm.report` lays out. Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so
importing this module never changes a notebook's backend) and saved without the "Software" PNG text chunk,
so the same tables give byte-identical PNGs.

Colours follow the ranker kind in every figure: single RM grey, finetune ensemble (or "same pretrain")
blue, pretrain ensemble (or "sharing neither seed") orange, "same finetune seed" purple, evaluator green,
gold reward black.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator, PercentFormatter

from perm import bon
from perm.run_layout import ENSEMBLES
from perm.store import atomic_write_bytes

FIGURES = ("fig_seed", "fig1", "fig2", "fig3", "fig4", "fig_gold", "fig_hacking", "fig_ensembles",
           "fig_ensembles_n")
# drawn only when their data exists; never listed as "not drawn"
OPTIONAL_FIGURES = ("fig_ensembles", "fig_ensembles_n")
GRID_ENSEMBLES = ("single", "finetune", "pretrain")
# Named ensembles (cheap members on one backbone, or a user's own) take these colours in order.
NAMED_COLORS = ("#2a9d8f", "#9b5de5", "#c44536", "#3d5a80", "#b8860b", "#6a994e", "#d1495b", "#00798c")
AGGREGATOR_MARKERS = {"none": "P", "mean": "o", "median": "s", "min": "v", "mean_minus_std": "D"}

# One colour and marker per ranker kind (and per relation to the ranker in Figures 1–2).
STYLE = {
    "self": {"color": "#b2332b", "marker": "s", "label": "the ranker itself"},
    "same_pretrain": {"color": "#2f6fb0", "marker": "o", "label": "same pretrain, other finetune seed"},
    "same_finetune": {"color": "#7a4fb0", "marker": "v", "label": "same finetune seed, other pretrain"},
    "neither": {"color": "#e07b1f", "marker": "^", "label": "other pretrain and finetune seed"},
    "different_pretrain": {"color": "#e07b1f", "marker": "^", "label": "different pretrain"},
    "share_pt": {"color": "#e07b1f", "marker": "^", "label": "pretraining seed"},
    "share_ft": {"color": "#2f6fb0", "marker": "o", "label": "finetuning seed"},
    "share_res": {"color": "#8a8a8a", "marker": "s", "label": "neither (interaction, residual)"},
    "single": {"color": "#8a8a8a", "marker": "o", "label": "single RM"},
    "finetune": {"color": "#2f6fb0", "marker": "s", "label": "finetune ensemble"},
    "pretrain": {"color": "#e07b1f", "marker": "^", "label": "pretrain ensemble"},
    "evaluator": {"color": "#2a9a4a", "marker": "D", "label": "evaluator-ranked"},
    "gold": {"color": "#111111", "marker": "*", "label": "gold-ranked (ceiling)"},
}
PAIR_LABELS = {
    "same_pretrain": "pairs sharing a pretrain (other finetune seed)",
    "same_finetune": "pairs sharing a finetune seed (other pretrain)",
    "neither": "pairs sharing neither",
    "different_pretrain": "pairs from different pretrains",
}
RELATIONS = ("same_pretrain", "same_finetune", "neither")
AGGREGATOR_LABELS = {
    "mean": "mean",
    "median": "median",
    "min": "min",
    "mean_minus_std": "mean minus stdev",
    "none": "—",
}
# The paper's Table 1 lists the methods alphabetically.
PAPER_AGGREGATOR_ORDER = ("mean", "mean_minus_std", "median", "min")
JUDGES = (("evaluator", "evaluator"), ("gold", "gold reward"))
FEATURE_LABELS = {
    "n_tokens": "length of the pick (tokens)",
    "copy_4gram": "4-grams copied from the post",
}

_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.edgecolor": "#666666",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.7,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 1.8,
    "lines.markersize": 5.5,
    "savefig.dpi": 144,
}


# ----------------------------------------------------------------------------------------------------
# Figures


@dataclass
class FigureResult:
    """One figure of the report: drawn (``figure`` set) or skipped (``skipped`` says why)."""

    name: str
    title: str
    caption: str
    figure: Figure | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)  # what is drawn only in part, and why
    numbers: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # the values behind it
    wide: bool = False


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _n_axis(ax, ns: Sequence[int], label: bool = True) -> None:
    """Log-2 x-axis with a tick at every n of the grid."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ns), labels=[str(n) for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
    if label:
        ax.set_xlabel("n (candidates reranked)")


def _kl_axis(ax, ns: Sequence[int], label: bool = True) -> None:
    """Secondary top axis at the same n positions, labelled with the best-of-n KL bound (nats)."""
    sec = ax.secondary_xaxis("top")
    kl = bon.kl_bound(np.asarray(ns, dtype=float))
    sec.set_xticks(list(ns), labels=[f"{k:.2f}" for k in np.atleast_1d(kl)])
    sec.xaxis.set_minor_locator(NullLocator())
    sec.tick_params(labelsize=8, colors="#777777")
    if label:
        sec.set_xlabel("KL bound (nats)", fontsize=8.5, color="#777777")


def _line(ax, df: pd.DataFrame, key: str, *, label: str | None = None, dashed: bool = False) -> None:
    """Mean vs n with a shaded band, in the style of ``key``: the interval over seeds and prompts where the
    table has one (``lo``, ``hi``), else ±1 standard error."""
    df = df.sort_values("n")
    x = df.n.to_numpy(dtype=float)
    mean = df["mean"].to_numpy(dtype=float)
    if "lo" in df.columns:
        lo, hi = df.lo.to_numpy(dtype=float), df.hi.to_numpy(dtype=float)
    else:
        se = np.nan_to_num(df.se.to_numpy(dtype=float))
        lo, hi = mean - se, mean + se
    style = STYLE[key]
    ax.fill_between(x, np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean),
                    color=style["color"], alpha=0.16, linewidth=0)
    ax.plot(
        x,
        mean,
        color=style["color"],
        marker=style["marker"],
        linestyle="--" if dashed else "-",
        label=label or style["label"],
        markersize=8 if style["marker"] == "*" else None,
    )


def _ns(df: pd.DataFrame) -> list[int]:
    return sorted(int(n) for n in df.n.unique())


def _meta(results: Mapping[str, pd.DataFrame]) -> dict:
    meta = results.get("meta")
    return {} if meta is None or meta.empty else meta.iloc[0].to_dict()


def _present(value) -> bool:
    """False for None, NaN and pd.NA (what Parquet gives back for a missing value)."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def _pivot(df: pd.DataFrame, column: str, labels: Mapping[str, str]) -> pd.DataFrame:
    """``n`` × line table of "mean ± se" strings, for the numbers behind a figure."""
    cells = df.assign(
        cell=[_fmt(m, s) for m, s in zip(df["mean"], df.se, strict=True)],
        line=[labels.get(v, str(v)) for v in df[column]],
    )
    order = list(dict.fromkeys(cells.line))
    table = cells.pivot(index="n", columns="line", values="cell")[order]
    return table.reset_index()


def _relation_notes(df: pd.DataFrame, meta: Mapping | None = None) -> list[str]:
    """Which of Figures 1–2's pair relations have no pairs, and why; how coarse the seed intervals are."""
    notes = []
    why = {"same_pretrain": "no two RMs share a pretrain",
           "same_finetune": "no two RMs of different pretrains share a finetune seed (or the finetune seed "
                            "scope is per_rm)",
           "neither": "every pair of RMs shares a pretrain or a finetune seed"}
    for rel in RELATIONS:
        if not (df.relation == rel).any():
            notes.append(f"No '{rel}' line: {why[rel]}.")
    notes += _seed_note(df)
    return notes


def _seed_note(df: pd.DataFrame) -> list[str]:
    """What the intervals of ``df`` resample (its ``resamples`` column, else R pretrains, finetunes nested),
    and any row's ``note`` on an interval the design does not give."""
    if "R" not in df.columns or df.empty or not _present(df.R.iloc[0]):
        return []
    r = int(df.R.iloc[0])
    coarse = " With so few pretrains the seed part of the interval is coarse." if r < 10 else ""
    what = (str(df.resamples.iloc[0]) if "resamples" in df.columns and _present(df.resamples.iloc[0])
            else f"the R = {r} pretrain seeds (their finetunes nested) x the prompts")
    notes = [f"Intervals resample {what}.{coarse}"]
    if {"note", "statistic"} <= set(df.columns):
        for statistic, note in dict(zip(df.statistic, df.note, strict=True)).items():
            if isinstance(note, str) and note:
                notes.append(f"The {STYLE.get(statistic, {}).get('label', statistic)} share has no interval: "
                             f"{note}.")
    return notes


def _fmt(mean: float, se: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{mean:.{digits}f}"


def _figure1(results) -> FigureResult:
    out = FigureResult(
        "fig1",
        "Figure 1 · Reward of the ranker's pick, by who judges it",
        "Each RM reranks n samples of the SFT policy; its pick is then scored by the ranker itself (red "
        "squares), by RMs of the same pretrain and another finetune seed (blue circles), by RMs of another "
        "pretrain with the same finetune seed (purple, which differ from the ranker only in the backbone), "
        "and by RMs that share neither (orange). Each judge's rewards are standardised per prompt (centred, "
        "in its own sd over the pool), so 0 is the average SFT sample (n = 1) and no RM's reward scale "
        "counts. If the preference data pinned the reward down, the lines would coincide. The ranker always "
        "likes its own pick best (winner's curse); blue above orange is the paper's claim that sharing a "
        "pretrain makes RMs agree. Bands: 90% intervals over the seed design (pretrains, and finetune seeds "
        "where they are crossed) and prompts.",
    )
    df = results.get("figure1")
    if df is None or df.empty:
        out.skipped = "the figure1 table is empty or absent."
        return out
    fig, axes = _new_figure(5.6, 3.9)
    ax = axes[0, 0]
    for rel in ("self", *RELATIONS):
        part = df[df.relation == rel]
        if not part.empty:
            _line(ax, part, rel, label=f"judged by {STYLE[rel]['label']}" if rel == "self" else
                  f"judged by RMs of the {STYLE[rel]['label']}")
    out.notes += _relation_notes(df)
    _n_axis(ax, _ns(df))
    ax.axhline(0, color="#999999", linewidth=0.8, zorder=0)
    ax.set_ylabel("reward of the best-of-n pick\n(judge's sd, per prompt)")
    ax.legend(loc="upper left")
    out.figure = fig
    labels = {g: STYLE[g]["label"] for g in STYLE}
    out.numbers.append(("reward of the pick", _pivot(df, "relation", labels)))
    return out


def _figure2(results) -> FigureResult:
    out = FigureResult(
        "fig2",
        "Figure 2 · Do two reward models pick the same output?",
        "Probability that two different RMs choose the same best-of-n output, for pairs that share a "
        "pretrain but not a finetune seed (blue), a finetune seed but not a pretrain (purple: only the "
        "backbone differs), or neither (orange). At n = 1 there is nothing to choose; as n grows, agreement "
        "falls towards chance (dashed: two random scorers, given the pool's duplicate texts). Blue above "
        "orange is the paper's claim: the pretraining seed, not only the finetuning seed, decides which "
        "output the aligned policy returns. Exact expectation over n-subsets of the pool; bands: 90% "
        "intervals over pretrain seeds and prompts.",
    )
    df = results.get("figure2")
    if df is None or df.empty:
        out.skipped = "fewer than two reward models, so there are no pairs to compare."
        return out
    fig, axes = _new_figure(5.6, 3.9)
    ax = axes[0, 0]
    ns = _ns(df)
    chance = df.groupby("n").chance.first() if "chance" in df.columns else pd.Series({n: 1.0 / n for n in ns})
    ax.plot(ns, [float(chance[n]) for n in ns], color="#9a9a9a", linestyle="--", linewidth=1.2,
            label="chance")
    for rel in RELATIONS:
        part = df[df.relation == rel]
        if not part.empty:
            _line(ax, part, rel, label=PAIR_LABELS[rel])
    out.notes += _relation_notes(df)
    _n_axis(ax, ns)
    ax.set_ylim(0, 1.04)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("top-1 agreement")
    ax.legend(loc="upper right")
    out.figure = fig
    labels = {g: STYLE[g]["label"] for g in STYLE}
    numbers = _pivot(df, "relation", labels)
    numbers["chance"] = [f"{float(chance[n]):.3f}" for n in numbers.n]
    out.numbers.append(("top-1 agreement", numbers))
    if "kappa" in df.columns:
        out.numbers.append(("chance-adjusted agreement κ = (a − chance)/(1 − chance)",
                            _pivot(df.assign(mean=df.kappa, se=np.nan), "relation", labels)))
    return out


def _figure_seed(results) -> FigureResult:
    out = FigureResult(
        "fig_seed",
        "Where the disagreement comes from · pretraining seed vs finetuning seed",
        "Of the variation between RMs' standardised scores, the share that follows the pretraining seed "
        "(orange), the finetuning seed (blue: head init, data order, dropout) and neither (grey: their "
        "interaction and the rest), from the mean squared differences of pairs that share a pretrain, a "
        "finetune seed or neither. Dashed: on the whole pool; solid: at the best-of-n picks of a ranker in "
        "no pair (the evaluator, else gold: analysis.pick_ranker), where the paper expects disagreement to "
        "grow. Bands: 90% intervals over the seed design (pretrains, and finetune seeds where crossed) and "
        "prompts.",
    )
    df = results.get("seed_variance")
    if df is None or df.empty:
        out.skipped = "fewer than two reward models, or an analysis written before seed variance existed."
        return out
    missing = str(df.missing.iloc[0] or "")
    if missing:
        out.notes.append(f"No pairs of relation {missing}: the shares that need it are not identified.")
    picks = df[(df.weighting == "pick") & df.statistic.isin(["share_pt", "share_ft", "share_res"])]
    pool = df[(df.weighting == "pool")].set_index("statistic")
    if picks.empty or not np.isfinite(picks.estimate.to_numpy(float)).any():
        out.skipped = "the decomposition is not identified on this layout."
        return out
    fig, axes = _new_figure(5.6, 3.9)
    ax = axes[0, 0]
    ns = sorted(int(n) for n in picks.n.unique())
    for key in ("share_pt", "share_ft", "share_res"):
        part = picks[picks.statistic == key].rename(columns={"estimate": "mean"})
        _line(ax, part.assign(n=part.n.astype(int)), key)
        if key in pool.index and np.isfinite(pool.loc[key, "estimate"]):
            ax.axhline(float(pool.loc[key, "estimate"]), color=STYLE[key]["color"], linestyle="--",
                       linewidth=1)
    _n_axis(ax, ns)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("share of RM-to-RM variance")
    ax.legend(loc="best")
    out.figure = fig
    out.notes += _seed_note(picks)
    table = df[df.statistic.isin(["share_pt", "share_ft", "share_res"])].copy()
    table["where"] = ["pool" if w == "pool" else f"picks, n = {int(n)}"
                      for w, n in zip(table.weighting, table.n, strict=True)]
    table["cell"] = [_interval(e, lo, hi)
                     for e, lo, hi in zip(table.estimate, table.lo, table.hi, strict=True)]
    numbers = table.pivot(index="where", columns="statistic", values="cell").reset_index()
    numbers = numbers.rename(columns={"share_pt": "pretraining seed", "share_ft": "finetuning seed",
                                      "share_res": "neither"})
    out.numbers.append(("shares (90% interval)", numbers))
    return out


def _interval(est, lo, hi, pct: bool = True) -> str:
    if not np.isfinite(est):
        return "—"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f"{f(est)} [{f(lo)}, {f(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else f(est)


def _figure3(results) -> FigureResult:
    out = FigureResult(
        "fig3",
        "Figure 3 · Variance explained by the reward model",
        "One RM picks the best of n; the other RMs score the picks. A two-way random-effects ANOVA of those "
        "scores (prompts × scoring RM), standardised per prompt so that no RM's reward scale counts, gives "
        "the share of their variance due to which RM is scoring (method of moments). It grows with n when "
        "stronger selection — further from the SFT policy — drives the RMs apart. Grey: the same with each "
        "prompt's scores shuffled across RMs (no RM differs). Averaged over rankers and random n-subsets; "
        "band: 90% interval over the seed design and prompts, including the subsets' own noise. "
        "(analysis.figure3: paper computes the paper's SS fraction on raw rewards, which unequal reward "
        "scales inflate.)",
    )
    df = results.get("figure3")
    if df is None or df.empty:
        out.skipped = "it needs at least three reward models (one ranker and two scorers)."
        return out
    fig, axes = _new_figure(5.6, 3.9)
    ax = axes[0, 0]
    band = df.sort_values("n")
    x, mean = band.n.to_numpy(float), band["mean"].to_numpy(float)
    se = np.nan_to_num(band.se.to_numpy(float))
    lo, hi = ((band.lo.to_numpy(float), band.hi.to_numpy(float)) if "lo" in band.columns
              else (mean - se, mean + se))
    ax.fill_between(x, lo, hi, color="#5b4a8b", alpha=0.18, linewidth=0)
    paper = "method" in band.columns and str(band.method.iloc[0]) == "paper"
    ax.plot(x, mean, color="#5b4a8b", marker="o",
            label=("SS fraction of the scoring RM (paper, raw rewards)" if paper
                   else "share due to the scoring RM"))
    if "null" in band.columns:
        ax.plot(x, band.null.to_numpy(float), color="#999999", linestyle="--",
                label="RMs exchangeable (null)")
    _n_axis(ax, _ns(df))
    if paper or np.nanmin(lo) >= 0:
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("SS fraction of the scoring RM" if paper else "share of variance due to the scoring RM")
    ax.legend(loc="upper left")
    out.figure = fig
    numbers = pd.DataFrame(
        {
            "n": band.n.astype(int),
            "fraction": [_fmt(m, s) for m, s in zip(band["mean"], band.se, strict=True)],
            **({"null": [f"{v:.3f}" for v in band.null]} if "null" in band.columns else {}),
        }
    )
    out.numbers.append(("fraction of variance", numbers))
    out.notes += _seed_note(df)
    return out


def _ensemble_notes(fig4: pd.DataFrame) -> list[str]:
    notes = []
    if not (fig4.ranker == "finetune").any():
        notes.append("No pretrain has two or more RMs: there is no finetune ensemble (blue).")
    if not (fig4.ranker == "pretrain").any():
        notes.append("All RMs share one pretrain: there is no pretrain ensemble (orange).")
    return notes


def _figure4(results) -> FigureResult:
    out = FigureResult(
        "fig4",
        "Figure 4 · Ensembles judged by the evaluator",
        "Quality of each ranker's best-of-n pick according to the evaluator, which shares no pretrain with "
        "the grid: its reward (top, centred per prompt, so 0 is the average SFT sample) and its win rate "
        "against separate SFT samples (bottom; 50% = no better than SFT). One column per aggregator of the "
        "ensemble members' standardised rewards. The pretrain ensemble (orange) above the finetune ensemble "
        "(blue) and the single RMs (grey, averaged over RMs) means that diversity across pretrains is what "
        "helps — the paper's PERM result. Top axis: the KL bound of best-of-n from the SFT policy.",
        wide=True,
    )
    df = results.get("figure4")
    if df is None or df.empty:
        out.skipped = "the tensor has neither an evaluator nor a gold reward to judge the picks."
        return out
    target = "evaluator" if (df.target == "evaluator").any() else "gold"
    if target == "gold":
        out.notes.append("There is no evaluator: the picks are judged by the gold reward instead.")
        out.title = "Figure 4 · Ensembles judged by the gold reward"
    df = df[df.target == target]
    ens = df[df.ranker.isin(["finetune", "pretrain"])]
    if ens.empty:
        out.skipped = (
            "there is no ensemble: it needs two or more pretrains (pretrain ensemble) or two or more "
            "finetune seeds of one pretrain (finetune ensemble)."
        )
        return out
    out.notes += _ensemble_notes(df)
    aggs = [a for a in PAPER_AGGREGATOR_ORDER if (ens.aggregator == a).any()]
    metrics = [m for m in ("reward", "win_rate") if (df.metric == m).any()]
    if "win_rate" not in metrics:
        out.notes.append("No reference SFT samples in the tensor: the win-rate row is absent.")
    ns = _ns(df)
    fig, axes = _new_figure(
        2.9 * len(aggs) + 0.6, 2.75 * len(metrics) + 0.9, len(metrics), len(aggs), sharey="row"
    )
    for r, metric in enumerate(metrics):
        rows = df[df.metric == metric]
        for c, agg in enumerate(aggs):
            ax = axes[r, c]
            _line(ax, rows[rows.ranker == "single"], "single")
            for kind in ("finetune", "pretrain"):
                part = rows[(rows.ranker == kind) & (rows.aggregator == agg)]
                if not part.empty:
                    _line(ax, part, kind)
            if metric == "win_rate":
                ax.axhline(0.5, color="#999999", linewidth=0.8, zorder=0)
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            else:
                ax.axhline(0, color="#999999", linewidth=0.8, zorder=0)
            _n_axis(ax, ns, label=r == len(metrics) - 1)
            if r == 0:
                _kl_axis(ax, ns, label=True)
                ax.set_title(AGGREGATOR_LABELS[agg])
            if c == 0:
                ax.set_ylabel(f"{target} reward (centred)" if metric == "reward" else "win rate vs SFT")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    out.figure = fig
    labels = {k: STYLE[k]["label"] for k in STYLE}
    for metric in metrics:
        rows = df[(df.metric == metric) & df.ranker.isin(["single", "finetune", "pretrain"])]
        rows = rows.assign(
            line=[
                labels[k] if a == "none" else f"{labels[k]} · {AGGREGATOR_LABELS[a]}"
                for k, a in zip(rows.ranker, rows.aggregator, strict=True)
            ]
        )
        out.numbers.append((f"{target} {metric.replace('_', ' ')}", _pivot(rows, "line", {})))
    return out


def _pick_aggregator(df: pd.DataFrame, kind: str) -> str | None:
    aggs = [a for a in bon.AGGREGATORS if ((df.ranker == kind) & (df.aggregator == a)).any()]
    return aggs[0] if aggs else None  # "mean", the paper's default, when present


def _ranker_lines(ax, rows: pd.DataFrame, gold_label: str) -> pd.DataFrame:
    """Single RM, both ensembles (mean aggregator when present), evaluator- and gold-ranked picks.

    Returns the plotted rows with a ``line`` column naming each line.
    """
    lines = []
    for kind in ("single", "finetune", "pretrain", "evaluator", "gold"):
        agg = _pick_aggregator(rows, kind) if kind in ("finetune", "pretrain") else "none"
        part = rows[(rows.ranker == kind) & (rows.aggregator == agg)]
        if not part.empty:
            label = gold_label if kind == "gold" else STYLE[kind]["label"]
            _line(ax, part, kind, label=label, dashed=kind == "gold")
            lines.append(part.assign(line=label))
    return pd.concat(lines)


def _figure_gold(results) -> FigureResult:
    out = FigureResult(
        "fig_gold",
        "Gold reward of the picks · over-optimisation",
        "The testbed's gold reward of each ranker's best-of-n pick. The black dashed line reranks by the "
        "gold reward itself: the best any ranker could do with this pool. The gap to it is what the proxy "
        "reward models leave on the table; a curve that flattens or bends down as n grows is being "
        "over-optimised (Gao et al., 2023). Ensembles use the mean aggregator. Top axis: KL bound.",
    )
    df = results.get("figure4")
    if df is None or df.empty or not (df.target == "gold").any():
        out.skipped = "there is no gold reward in the tensor (only the testbed knows it)."
        return out
    df = df[df.target == "gold"]
    metrics = [m for m in ("reward", "win_rate") if (df.metric == m).any()]
    out.wide = len(metrics) > 1
    ns = _ns(df)
    fig, axes = _new_figure(5.0 * len(metrics) + 0.4, 4.1, 1, len(metrics))
    numbers = {}
    for c, metric in enumerate(metrics):
        ax = axes[0, c]
        rows = df[df.metric == metric]
        lines = _ranker_lines(ax, rows, gold_label=STYLE["gold"]["label"])
        if metric == "win_rate":
            ax.axhline(0.5, color="#999999", linewidth=0.8, zorder=0)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax.set_ylabel("gold win rate vs SFT")
        else:
            ax.axhline(0, color="#999999", linewidth=0.8, zorder=0)
            ax.set_ylabel("gold reward (centred per prompt)")
        _n_axis(ax, ns)
        _kl_axis(ax, ns)
        if c == 0:
            ax.legend(loc="upper left", fontsize=8.5)
        numbers[metric] = _pivot(lines, "line", {})
    out.notes += _ensemble_notes(df)
    out.figure = fig
    out.numbers += [(f"gold {m.replace('_', ' ')}", t) for m, t in numbers.items()]
    return out


def _figure_hacking(results) -> FigureResult:
    out = FigureResult(
        "fig_hacking",
        "What the picks look like · reward hacking",
        "Surface features of each ranker's best-of-n pick: its length and the fraction of its word 4-grams "
        "copied from the post (n = 1 is the SFT policy). A ranker that drifts away from the gold-ranked "
        "line (black) as n grows is rewarding a feature the gold reward does not — e.g. length. Ensembles "
        "use the mean aggregator.",
    )
    df = results.get("hacking")
    if df is None or df.empty:
        out.skipped = (
            "there is no hacking table (run the analysis with the pool's samples: "
            "run_analysis(..., samples=, posts=))."
        )
        return out
    feats = [f for f in FEATURE_LABELS if (df.feature == f).any()]
    feats += sorted(set(df.feature) - set(feats))
    out.wide = len(feats) > 1
    ns = _ns(df)
    fig, axes = _new_figure(4.6 * len(feats) + 0.4, 3.9, 1, len(feats))
    for c, feat in enumerate(feats):
        ax = axes[0, c]
        rows = df[df.feature == feat]
        lines = _ranker_lines(ax, rows, gold_label="gold-ranked")
        if feat == "copy_4gram":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel(FEATURE_LABELS.get(feat, feat))
        _n_axis(ax, ns)
        if c == 0:
            ax.legend(loc="best", fontsize=8.5)
        out.numbers.append((FEATURE_LABELS.get(feat, feat), _pivot(lines, "line", {})))
    out.figure = fig
    return out


def named_ensembles(table: pd.DataFrame | None) -> list[str]:
    """The named ensembles of an ``ensembles`` table (:func:`perm.analysis.ensemble_table`), in its order."""
    if table is None or table.empty:
        return []
    return [e for e in dict.fromkeys(table.ensemble) if e not in GRID_ENSEMBLES]


def ensemble_color(name: str, named: Sequence[str]) -> str:
    """The colour of an ensemble: the grid's kinds as everywhere, named ones from :data:`NAMED_COLORS`."""
    if name in STYLE:
        return STYLE[name]["color"]
    return NAMED_COLORS[list(named).index(name) % len(NAMED_COLORS)] if name in named else "#555555"


def ensemble_label(name: str) -> str:
    """How the report names an ensemble of the ``ensembles`` table."""
    return STYLE[name]["label"] if name in GRID_ENSEMBLES else f"{name} ensemble"


def cost_axis(rows: pd.DataFrame) -> tuple[str | None, str]:
    """The column that measures training cost (``train_s``, else ``params_trained`` when no ensemble has a
    positive time), or None without either, and the axis label saying which."""
    for col, label in (("train_s", "training cost: train_s (seconds, log scale)"),
                       ("params_trained", "training cost: params_trained (parameters updated by training; "
                                          "no training times; log scale)")):
        if col in rows.columns:
            v = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
            if (np.isfinite(v) & (v > 0)).any():
                return col, label
    return None, f"ensemble (no costs: {ENSEMBLES} absent)"


def _figure_ensembles(results) -> FigureResult:
    out = FigureResult(
        "fig_ensembles",
        "Cheaper ensembles · quality against training cost",
        "Reward of each ensemble's best-of-n pick at the largest n (centred per prompt, so 0 is the average "
        "SFT sample) against what training it cost: one point per ensemble and aggregator (marker), the "
        "single RM and the grid's finetune and pretrain ensembles beside the named ensembles (cheap members "
        "on one backbone, or a user's own). Error bars: 90% intervals; a named ensemble's are over its "
        "members (jackknife) and the prompts, conditional on its backbone, the grid's over the seed design "
        "and prompts.",
        wide=True,
    )
    df = results.get("ensembles")
    named = named_ensembles(df)
    if not named:
        out.skipped = "the tensor has no named ensembles."
        return out
    target = "gold" if (df.target == "gold").any() else "evaluator"
    rows = df[df.target == target].reset_index(drop=True)
    if target == "evaluator":
        out.notes.append("There is no gold reward: the picks are judged by the evaluator.")
    col, xlabel = cost_axis(rows)
    order = list(dict.fromkeys(rows.ensemble))
    if col is not None:
        x = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        known = np.isfinite(x) & (x > 0)
        lacking = sorted(set(rows.ensemble[~known]), key=order.index)
        if lacking:
            out.notes.append(f"No {col} for {', '.join(lacking)}: not placed on the cost axis.")
    else:
        x = np.array([order.index(e) for e in rows.ensemble], dtype=float)
        known = np.ones(len(rows), dtype=bool)
        out.notes.append(f"No {ENSEMBLES} costs: the ensembles are laid out side by side instead.")
    aggs = [a for a in ("none", *bon.AGGREGATORS) if (rows.aggregator == a).any()]
    spread = {a: i - (len(aggs) - 1) / 2 for i, a in enumerate(aggs)}
    fig, axes = _new_figure(7.6, 4.4)
    ax = axes[0, 0]
    for name in order:
        part = rows[(rows.ensemble == name) & known]
        if part.empty:
            continue
        color = ensemble_color(name, named)
        xs, tops = [], []
        for r in part.itertuples():
            xi = x[r.Index]
            xi = xi * 1.07 ** spread[r.aggregator] if col is not None else xi + 0.08 * spread[r.aggregator]
            lo, hi = float(r.lo), float(r.hi)
            err = [[r.estimate - lo], [hi - r.estimate]] if np.isfinite(lo) and np.isfinite(hi) else None
            ax.errorbar([xi], [r.estimate], yerr=err, color=color,
                        marker=AGGREGATOR_MARKERS.get(r.aggregator, "o"),
                        markersize=6, capsize=2.5, linewidth=1.2, linestyle="none")
            xs.append(xi)
            tops.append(hi if np.isfinite(hi) else r.estimate)
        ax.annotate(ensemble_label(name), (min(xs), max(tops)), textcoords="offset points", xytext=(-4, 5),
                    fontsize=8.5, color=color, ha="left", va="bottom")
    if col is not None:
        ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(order)), labels=order)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{target} reward of the best-of-{int(rows.n.iloc[0])} pick")
    ax.axhline(0, color="#999999", linewidth=0.8, zorder=0)
    handles = [Line2D([], [], color="#444444", marker=AGGREGATOR_MARKERS[a], linestyle="none",
                      label="one model: its own reward" if a == "none" else AGGREGATOR_LABELS[a])
               for a in aggs]
    ax.legend(handles=handles, loc="lower right", fontsize=8.5, title="aggregator", title_fontsize=8.5)
    out.figure = fig
    numbers = pd.DataFrame({
        "ensemble": rows.ensemble, "aggregator": [AGGREGATOR_LABELS.get(a, a) for a in rows.aggregator],
        f"{target} reward [90% interval]": [_interval(e, lo, hi, pct=False)
                                            for e, lo, hi in zip(rows.estimate, rows.lo, rows.hi,
                                                                 strict=True)],
        "cost": [f"{v:.4g}" if np.isfinite(v) else "—" for v in
                 (pd.to_numeric(rows[col], errors="coerce") if col else pd.Series(np.nan, index=rows.index))],
    })
    out.numbers.append((f"{target} reward and {col or 'cost'}", numbers))
    return out


def _figure_ensembles_n(results) -> FigureResult:
    out = FigureResult(
        "fig_ensembles_n",
        "Cheaper ensembles · best-of-n quality at every n",
        "Reward of the best-of-n pick (centred per prompt) against n, for the single RM (mean over the "
        "grid's RMs), the grid's finetune and pretrain ensembles and every named ensemble, each with the "
        "mean aggregator (a one-model ensemble ranks by its own reward). Bands: ± 1 se over prompts (the "
        "seed-aware intervals at the largest n are in the cost figure and the table).",
        wide=True,
    )
    fig4, table = results.get("figure4"), results.get("ensembles")
    named = named_ensembles(table)
    if not named or fig4 is None or fig4.empty:
        out.skipped = "the tensor has no named ensembles."
        return out
    target = "gold" if (fig4.target == "gold").any() else "evaluator"
    rows = fig4[(fig4.target == target) & (fig4.metric == "reward")]
    fig, axes = _new_figure(7.6, 4.4)
    ax = axes[0, 0]
    lines = []
    for name in (*GRID_ENSEMBLES, *named):
        part = rows[(rows.ranker == name) & rows.aggregator.isin(["mean", "none"])].sort_values("n")
        if part.empty:
            continue
        color = ensemble_color(name, named)
        style = "-" if name in GRID_ENSEMBLES else "--"
        ax.plot(part.n, part["mean"], style, color=color, marker=STYLE.get(name, {}).get("marker", "o"),
                markersize=4, label=ensemble_label(name), linewidth=1.6 if name in GRID_ENSEMBLES else 1.2)
        ax.fill_between(part.n, part["mean"] - part.se, part["mean"] + part.se, color=color, alpha=0.12,
                        linewidth=0)
        lines.append(part.assign(line=name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (candidates reranked)")
    ax.set_ylabel(f"{target} reward of the best-of-n pick")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    out.figure = fig
    both = pd.concat(lines, ignore_index=True)
    out.numbers.append((f"{target} reward vs n", both.pivot_table(index="n", columns="line", values="mean")
                        .round(4).reset_index()))
    return out


_BUILDERS: dict[str, Callable[[Mapping[str, pd.DataFrame]], FigureResult]] = {
    "fig_seed": _figure_seed,
    "fig1": _figure1,
    "fig2": _figure2,
    "fig3": _figure3,
    "fig4": _figure4,
    "fig_gold": _figure_gold,
    "fig_hacking": _figure_hacking,
    "fig_ensembles": _figure_ensembles,
    "fig_ensembles_n": _figure_ensembles_n,
}


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" text chunk (matplotlib's version) and no timestamp: identical tables, identical bytes.
    fig.savefig(buf, format="png", metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _draw_all(results: Mapping[str, pd.DataFrame]) -> list[tuple[FigureResult, bytes | None]]:
    from matplotlib import rc_context

    drawn = []
    with rc_context(_RC):
        for build in _BUILDERS.values():
            res = build(results)
            if res.figure is None and res.name in OPTIONAL_FIGURES:
                continue
            drawn.append((res, _png_bytes(res.figure) if res.figure is not None else None))
    return drawn


def make_figures(results: Mapping[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Draw the report's figures into ``out_dir/<name>.png`` (atomically) and return their paths by name.

    Names: ``fig1`` (reward of the ranker's pick, the paper's Figure 1), ``fig2`` (top-1 agreement),
    ``fig3`` (variance explained by the RM), ``fig4`` (evaluator reward and win rate, one panel per
    aggregator), ``fig_gold`` (gold reward with the gold-ranked ceiling), ``fig_hacking`` (length and
    copying of the picks), ``fig_ensembles`` (named ensembles' quality against training cost). A figure whose
    data is absent is left out of the returned dict.
    """
    return _write_figures(_draw_all(results), Path(out_dir))


def _write_figures(drawn, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for res, png in drawn:
        if png is not None:
            paths[res.name] = out_dir / f"{res.name}.png"
            atomic_write_bytes(paths[res.name], png)
    return paths
