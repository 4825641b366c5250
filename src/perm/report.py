"""The report: the paper's Figures 1–4 and Table 1 (plus gold-reward and reward-hacking figures) as PNGs,
one self-contained HTML page and a Markdown Table 1, from the tables of :func:`perm.analysis.run_analysis`.

* :func:`load_analysis` reads what :func:`perm.analysis.save_analysis` wrote (``<name>.parquet``).
* :func:`make_figures` draws every figure whose data is present into ``out_dir/*.png``.
* :func:`write_report` writes ``out_dir/{index.html, table1.md, figures/*.png}``.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so importing this module
never changes a notebook's backend) and saved without the "Software" PNG text chunk, so the same tables
give byte-identical PNGs. The page embeds them as ``data:`` URIs and has no script and no external asset:
it can be mailed or archived as one file. Every piece of text on it goes through :func:`html.escape`.

Colours follow the ranker kind in every figure: single RM grey, finetune ensemble (or "same pretrain")
blue, pretrain ensemble (or "different pretrain") orange, evaluator green, gold reward black.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, PercentFormatter

from perm import bon
from perm.store import atomic_write_bytes, atomic_write_text

REQUIRED_TABLES = ("meta", "models", "figure1", "figure2", "figure3", "figure4", "table1")
FIGURES = ("fig_seed", "fig1", "fig2", "fig3", "fig4", "fig_gold", "fig_hacking")

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


class AnalysisNotFoundError(FileNotFoundError):
    """The analysis directory is missing or lacks tables that :func:`perm.analysis.save_analysis` writes."""


# ----------------------------------------------------------------------------------------------------
# Loading


def load_analysis(analysis_dir: Path) -> dict[str, pd.DataFrame]:
    """Read every ``<name>.parquet`` table that :func:`perm.analysis.save_analysis` wrote into ``analysis_dir``.

    The tables of :data:`REQUIRED_TABLES` must be there (they may be empty); others, such as
    ``hacking``, are read when present. Raises :class:`AnalysisNotFoundError` naming the directory and
    the missing files, or ``ValueError`` naming a file that is not readable Parquet.
    """
    path = Path(analysis_dir)
    hint = "run `perm analyze` (perm.analysis.run_analysis + save_analysis) first"
    if not path.is_dir():
        raise AnalysisNotFoundError(f"{path}: no analysis directory here; {hint}")
    files = {p.stem: p for p in sorted(path.glob("*.parquet")) if not p.name.startswith(".")}
    missing = [f"{name}.parquet" for name in REQUIRED_TABLES if name not in files]
    if missing:
        raise AnalysisNotFoundError(f"{path}: missing {', '.join(missing)}; {hint}")
    tables = {}
    for name, file in files.items():
        try:
            tables[name] = pd.read_parquet(file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{file}: cannot read as Parquet ({exc})") from exc
    return tables


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
    if "R" not in df.columns or df.empty or not _present(df.R.iloc[0]):
        return []
    r = int(df.R.iloc[0])
    coarse = " With so few pretrains the seed part of the interval is coarse." if r < 10 else ""
    return [f"Intervals resample the R = {r} pretrain seeds (their finetunes nested) and the prompts.{coarse}"]


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
        "and by RMs that share neither (orange). Rewards are centred per prompt, so 0 is the average SFT "
        "sample (n = 1). If the preference data pinned the reward down, the lines would coincide. The ranker "
        "always likes its own pick best (winner's curse); blue above orange is the paper's claim that sharing "
        "a pretrain makes RMs agree. Bands: 90% intervals over pretrain seeds and prompts.",
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
    ax.set_ylabel("reward of the best-of-n pick\n(centred per prompt)")
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
    ax.plot(ns, [float(chance[n]) for n in ns], color="#9a9a9a", linestyle="--", linewidth=1.2, label="chance")
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
        "finetune seed or neither. Dashed: on the whole pool; solid: at the best-of-n picks of the other RMs "
        "(where the paper expects disagreement to grow). Bands: 90% intervals over pretrain seeds and prompts.",
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
            ax.axhline(float(pool.loc[key, "estimate"]), color=STYLE[key]["color"], linestyle="--", linewidth=1)
    _n_axis(ax, ns)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("share of RM-to-RM variance")
    ax.legend(loc="best")
    out.figure = fig
    out.notes += _seed_note(picks)
    table = df[df.statistic.isin(["share_pt", "share_ft", "share_res"])].copy()
    table["where"] = ["pool" if w == "pool" else f"picks, n = {int(n)}" for w, n in zip(table.weighting, table.n,
                                                                                         strict=True)]
    table["cell"] = [_interval(e, lo, hi) for e, lo, hi in zip(table.estimate, table.lo, table.hi, strict=True)]
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
        "One RM picks the best of n; the other RMs score the picks. A two-way ANOVA of those scores "
        "(prompts × scoring RM) gives the fraction of their variance explained by which RM is scoring. It "
        "grows with n when stronger selection — further from the SFT policy — drives the RMs apart. "
        "Averaged over rankers and random n-subsets; band: 90% interval over pretrain seeds and prompts.",
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
    lo, hi = (band.lo.to_numpy(float), band.hi.to_numpy(float)) if "lo" in band.columns else (mean - se, mean + se)
    ax.fill_between(x, lo, hi, color="#5b4a8b", alpha=0.18, linewidth=0)
    ax.plot(x, mean, color="#5b4a8b", marker="o", label="fraction explained by the scoring RM")
    _n_axis(ax, _ns(df))
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("variance explained by the RM")
    ax.legend(loc="upper left")
    out.figure = fig
    numbers = pd.DataFrame(
        {
            "n": band.n.astype(int),
            "fraction": [_fmt(m, s) for m, s in zip(band["mean"], band.se, strict=True)],
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


_BUILDERS: dict[str, Callable[[Mapping[str, pd.DataFrame]], FigureResult]] = {
    "fig_seed": _figure_seed,
    "fig1": _figure1,
    "fig2": _figure2,
    "fig3": _figure3,
    "fig4": _figure4,
    "fig_gold": _figure_gold,
    "fig_hacking": _figure_hacking,
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
            drawn.append((res, _png_bytes(res.figure) if res.figure is not None else None))
    return drawn


def make_figures(results: Mapping[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Draw the report's figures into ``out_dir/<name>.png`` (atomically) and return their paths by name.

    Names: ``fig1`` (reward of the ranker's pick, the paper's Figure 1), ``fig2`` (top-1 agreement),
    ``fig3`` (variance explained by the RM), ``fig4`` (evaluator reward and win rate, one panel per
    aggregator), ``fig_gold`` (gold reward with the gold-ranked ceiling), ``fig_hacking`` (length and
    copying of the picks). A figure whose data is absent is left out of the returned dict.
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


# ----------------------------------------------------------------------------------------------------
# Table 1


def _table1_rows(table1: pd.DataFrame) -> list[dict]:
    """Table 1's rows in the paper's order (ensembles, each by method, then the single RM).

    Each row: ``ensemble`` (named on the first row of its group only, as in the paper), ``kind``
    (``finetune``, ``pretrain`` or ``single``), ``method``, the ``reward`` / ``win rate`` strings and
    ``reward_mean`` / ``win_rate_mean``.
    """
    rows = []
    for ensemble in ("finetune", "pretrain", "single RM"):
        part = table1[table1.ensemble == ensemble]
        order = ("single RM",) if ensemble == "single RM" else PAPER_AGGREGATOR_ORDER
        for agg in order:
            cell = part[part.aggregator == agg]
            if cell.empty:
                continue
            row = cell.iloc[0]
            rows.append(
                {
                    "ensemble": "" if rows and rows[-1]["group"] == ensemble else ensemble,
                    "group": ensemble,
                    "kind": ensemble.split()[0],
                    "method": AGGREGATOR_LABELS.get(agg, agg),
                    "reward": str(row["reward"]),
                    "win rate": str(row["win rate"]),
                    "reward_mean": float(row["reward_mean"]),
                    "win_rate_mean": float(row["win_rate_mean"]),
                }
            )
    return rows


def _table1_caption(table1: pd.DataFrame, meta: Mapping) -> str:
    if table1.empty:
        return "Table 1: no evaluator or gold reward, so no table."
    n, target = int(table1.n.iloc[0]), str(table1.target.iloc[0])
    judge = "Auto-evaluator" if target == "evaluator" else "Gold"
    prompts = f" over {int(meta['n_prompts'])} prompts" if _present(meta.get("n_prompts")) else ""
    single = table1[table1.ensemble == "single RM"]
    if "R" in table1.columns and not single.empty and single.R.notna().any():
        prompts = prompts.replace(" over ", " and ") or " and the prompts"
        seeds = (f" over R = {int(single.R.iloc[0])} pretrain seeds (finetunes nested; ensembles jackknifed over "
                 f"their members){prompts}")
    else:
        seeds = prompts
    return (
        f"Table 1: {judge} rewards (centred per prompt) and win rate versus the SFT samples of the "
        f"best-of-{n} pick, mean ± standard error{seeds}."
    )


def table1_markdown(table1: pd.DataFrame, meta: Mapping | None = None) -> str:
    """Table 1 in the paper's layout (``ensemble | method | reward | win rate``) as Markdown."""
    lines = [
        _table1_caption(table1, meta or {}),
        "",
        "| ensemble | method | reward | win rate |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['ensemble']} | {r['method']} | {r['reward']} | {r['win rate']} |" for r in _table1_rows(table1)
    ]
    return "\n".join(lines) + "\n"


def table1_markdown_all(table1: pd.DataFrame, meta: Mapping | None = None) -> str:
    """:func:`table1_markdown` for each judge in the table, the gold reward first."""
    return "\n".join(table1_markdown(part, meta) for part in _by_target(table1))


# ----------------------------------------------------------------------------------------------------
# HTML


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "—"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _pct(value, se=None, digits: int = 1) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    text = f"{100 * value:.{digits}f}%"
    if se is not None and np.isfinite(se):
        # Keep a tiny standard error visible instead of rounding it to "± 0.0".
        text += f" ± {100 * se:.{digits}f}" if round(100 * se, digits) > 0 else f" ± {100 * se:.1g}"
    return text


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; ``headers`` are plain text, cells are HTML (already escaped)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _frame_table(df: pd.DataFrame) -> str:
    return _table(
        [str(c) for c in df.columns], [[_e(_num(v)) for v in row] for row in df.itertuples(index=False)]
    )


def _last(df: pd.DataFrame | None, relation: str):
    if df is None or df.empty:
        return None
    row = df[(df.n == df.n.max()) & (df.relation == relation)]
    return None if row.empty else row.iloc[0]


Card = tuple[str, str, str]  # (label, big number, detail), all plain text


def _card_accuracy(rm_records, ceiling) -> Card | None:
    accs = [r for r in rm_records or [] if r.get("role", "rm") == "rm" and _is_number(r.get("accuracy"))]
    if not accs:
        return None
    lo, hi = min(r["accuracy"] for r in accs), max(r["accuracy"] for r in accs)
    where = accs[0].get("eval_pairs")
    detail = f"{len(accs)} reward models on held-out preference pairs" + (
        f" ({Path(where).name}, {accs[0].get('n_eval_pairs')} pairs)" if where else "")
    if ceiling is not None:
        detail += f"; label-noise ceiling {_pct(ceiling)}"
    ev = [r for r in rm_records if r.get("role") == "evaluator" and _is_number(r.get("accuracy"))]
    if ev:
        detail += f"; evaluator {_pct(ev[0]['accuracy'])}"
    return ("RM accuracy (in distribution)", f"{_pct(lo)}–{_pct(hi)}", detail)


def _card_seed(results) -> Card | None:
    """The report's first sentence: how much of the RM-to-RM variation follows each seed."""
    df = results.get("seed_variance")
    if df is None or df.empty:
        return None
    pool = df[df.weighting == "pool"].set_index("statistic")
    if not {"share_pt", "share_ft"} <= set(pool.index):
        return None
    pt, ft = pool.loc["share_pt"], pool.loc["share_ft"]
    if not (np.isfinite(pt.estimate) and np.isfinite(ft.estimate)):
        return None
    r = int(pt.R)
    return (
        "Where RMs disagree: pretraining vs finetuning seed",
        f"{_pct(pt.estimate, digits=0)} vs {_pct(ft.estimate, digits=0)}",
        f"of the RM-to-RM variation on the policy's outputs, {_interval(pt.estimate, pt.lo, pt.hi)} comes from "
        f"the pretraining seed and {_interval(ft.estimate, ft.lo, ft.hi)} from the finetuning seed (90% "
        f"intervals over R = {r} pretrains and the prompts{'; coarse with so few pretrains' if r < 10 else ''})",
    )


def _card_agreement(results) -> Card | None:
    fig2 = results.get("figure2")
    rows = [(g, _last(fig2, g)) for g in ("same_pretrain", "neither")]
    rows = [(g, r) for g, r in rows if r is not None]
    if not rows:
        return None
    n = int(fig2.n.max())
    chance = float(rows[0][1].chance) if "chance" in fig2.columns else 1 / n
    big = " vs ".join(_pct(r["mean"], digits=0) for _, r in rows)
    detail = "; ".join(f"{PAIR_LABELS[g]} {_interval(r['mean'], r.lo, r.hi)}" for g, r in rows)
    return (f"Top-1 agreement at n = {n}", big, f"{detail}; chance {_pct(chance)}")


def _card_figure1(results) -> Card | None:
    fig1 = results.get("figure1")
    rows = {g: _last(fig1, g) for g in ("self", "same_pretrain", "neither")}
    other = rows["neither"] if rows["neither"] is not None else rows["same_pretrain"]
    if rows["self"] is None or other is None:
        return None
    who = "RMs sharing neither seed" if rows["neither"] is not None else "RMs of the same pretrain"
    detail = "; ".join(
        f"{STYLE[g]['label']} {_interval(r['mean'], r.lo, r.hi, pct=False)}" for g, r in rows.items() if r is not None
    )
    return (
        f"Reward of the best-of-{int(fig1.n.max())} pick",
        f"{_num(rows['self']['mean'], 2)} → {_num(other['mean'], 2)}",
        f"judged by the ranker itself → by {who} ({detail})",
    )


def _card_figure3(results) -> Card | None:
    fig3 = results.get("figure3")
    if fig3 is None or fig3.empty:
        return None
    a, b = fig3.sort_values("n").iloc[[0, -1]].itertuples()
    return (
        "Variance explained by the RM",
        f"{_pct(a.mean, digits=0)} → {_pct(b.mean, digits=0)}",
        f"from n = {a.n} to n = {b.n} ({_pct(a.mean, a.se)} → {_pct(b.mean, b.se)})",
    )


def _card_table1(results) -> Card | None:
    table1 = results.get("table1")
    if table1 is None or table1.empty or not (table1.ensemble != "single RM").any():
        return None
    ens = table1[table1.ensemble != "single RM"]
    best = ens.loc[ens.reward_mean.idxmax()]
    label = f"{best.ensemble} ensemble · {AGGREGATOR_LABELS.get(best.aggregator, best.aggregator)}"
    single = table1[table1.ensemble == "single RM"]
    s = single.iloc[0] if not single.empty else None
    has_wins = np.isfinite(best.win_rate_mean) and (s is None or np.isfinite(s.win_rate_mean))
    if has_wins:
        big = _pct(best.win_rate_mean) + (f" vs {_pct(s.win_rate_mean)}" if s is not None else "")
        detail = f"win rate vs SFT at n = {best.n}" + (" (ensemble vs single RM)" if s is not None else "")
    else:
        big, detail = best.reward, f"{best.target} reward at n = {best.n}"
    detail += f"; {best.target} reward {best.reward}" + (f" vs {s.reward}" if s is not None else "")
    return (f"Table 1 best: {label}", big, detail)


def _card_gold(results) -> Card | None:
    fig4 = results.get("figure4")
    if fig4 is None or fig4.empty:
        return None
    g = fig4[(fig4.target == "gold") & (fig4.metric == "reward")]
    g = g[g.n == g.n.max()]
    ceil = g[g.ranker == "gold"]
    if ceil.empty or not ceil["mean"].iloc[0] > 0:
        return None
    top = float(ceil["mean"].iloc[0])
    share = {}
    for kind in ("single", "finetune", "pretrain", "evaluator"):
        agg = _pick_aggregator(g, kind) if kind in ("finetune", "pretrain") else "none"
        r = g[(g.ranker == kind) & (g.aggregator == agg)]
        if not r.empty:
            share[kind] = float(r["mean"].iloc[0]) / top
    if not share:
        return None
    shown = [k for k in ("pretrain", "single") if k in share] or list(share)[:1]
    big = " vs ".join(_pct(share[k], digits=0) for k in shown)
    detail = ", ".join(f"{STYLE[k]['label']} {_pct(v, digits=0)}" for k, v in share.items())
    return (f"Share of the gold-ranked ceiling at n = {int(g.n.iloc[0])}", big, detail)


def _headlines(results, rm_records, ceiling) -> list[Card]:
    """The cards at the top of the page: the run's main numbers."""
    cards = [
        _card_seed(results),
        _card_accuracy(rm_records, ceiling),
        _card_agreement(results),
        _card_figure1(results),
        _card_figure3(results),
        _card_table1(results),
        _card_gold(results),
    ]
    return [c for c in cards if c is not None]


def _is_number(value) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )


def _ceiling(learnability: Mapping | None) -> float | None:
    """The label-noise ceiling: a learnability entry whose name contains "ceiling" with a value in (0, 1]."""
    for name, value in (learnability or {}).items():
        if isinstance(value, Mapping):
            value = value.get("value")
        elif isinstance(value, tuple | list) and value:
            value = value[0]
        if "ceiling" in str(name).lower() and _is_number(value) and 0 < value <= 1:
            return float(value)
    return None


def _learnability_html(learnability: Mapping) -> str:
    rows = []
    for name, value in learnability.items():
        description = ""
        if isinstance(value, Mapping) and "value" in value:
            description = str(value.get("description", ""))
            shown = _num(value["value"])
            if _is_number(value.get("se")):
                shown += f" ± {_num(value['se'])}"
        elif isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], str):
            shown, description = _num(value[0]), value[1]
        elif isinstance(value, Mapping):
            shown = "; ".join(f"{k}: {_num(v)}" for k, v in value.items())
        else:
            shown = _num(value)
        rows.append([f"<b>{_e(name)}</b>", f'<span class="num">{_e(shown)}</span>', _e(description)])
    return _table(["check", "value", "what it means"], rows, "learn")


def _accuracy_bar(acc, ceiling) -> str:
    """A bar from chance (50%) to 100%, with the label-noise ceiling marked."""
    if not _is_number(acc):
        return ""
    width = max(0.0, min(1.0, (acc - 0.5) / 0.5)) * 100
    mark = ""
    if ceiling is not None:
        pos = max(0.0, min(1.0, (ceiling - 0.5) / 0.5)) * 100
        mark = f'<i class="ceil" style="left:{pos:.1f}%" title="label-noise ceiling"></i>'
    return f'<span class="bar"><b style="width:{width:.1f}%"></b>{mark}</span>'


def _models_html(results, rm_records, ceiling) -> str:
    models = results.get("models")
    member = {}
    if models is not None and not models.empty:
        for r in models.itertuples():
            badges = []
            if getattr(r, "in_finetune", False):
                badges.append('<span class="chip finetune">finetune ens.</span>')
            if getattr(r, "in_pretrain", False):
                badges.append('<span class="chip pretrain">pretrain ens.</span>')
            member[str(r.model_id)] = " ".join(badges)
    if rm_records:
        has_gold = any(_is_number(r.get("gold_accuracy")) for r in rm_records)
        headers = ["model", "role", "pretrain", "finetune seed", "accuracy", "", "in"]
        if has_gold:
            headers.insert(6, "gold accuracy")
        rows = []
        for r in rm_records:
            acc = _pct(r["accuracy"], r.get("accuracy_se")) if _is_number(r.get("accuracy")) else "—"
            row = [
                f"<code>{_e(r.get('model_id', '?'))}</code>",
                _e(r.get("role", "rm")),
                _e(r["pretrain_id"] if _present(r.get("pretrain_id")) else "—"),
                _e(int(r["finetune_seed"]) if _is_number(r.get("finetune_seed")) else "—"),
                f'<span class="num">{_e(acc)}</span>',
                _accuracy_bar(r.get("accuracy"), ceiling),
                member.get(str(r.get("model_id")), ""),
            ]
            if has_gold:
                g = r.get("gold_accuracy")
                row.insert(6, f'<span class="num">{_e(_pct(g) if _is_number(g) else "—")}</span>')
            rows.append(row)
        legend = (
            "Accuracy: fraction of held-out preference pairs ranked as the labels do (± standard error). "
            "The bar runs from chance (50%) to 100%"
            + (f"; the black tick is the label-noise ceiling ({_pct(ceiling)})" if ceiling else "")
            + (
                "; gold accuracy is agreement with the gold reward instead of the noisy labels"
                if has_gold
                else ""
            )
            + "."
        )
        return _table(headers, rows, "models") + f'<p class="note">{_e(legend)}</p>'
    if models is None or models.empty:
        return '<p class="missing">No models table.</p>'
    rows = [
        [
            f"<code>{_e(r.model_id)}</code>",
            _e(r.role),
            _e(r.pretrain_id if _present(r.pretrain_id) else "—"),
            _e(int(r.finetune_seed) if _is_number(r.finetune_seed) else "—"),
            member.get(str(r.model_id), ""),
        ]
        for r in models.itertuples()
    ]
    return _table(["model", "role", "pretrain", "finetune seed", "in"], rows, "models") + (
        '<p class="missing">No accuracies were passed to the report (rm_records), so this table cannot show '
        "how well each RM learned.</p>"
    )


def _figure_html(res: FigureResult, png: bytes | None) -> str:
    cls = "fig wide" if res.wide else "fig"
    parts = [f'<figure class="{cls}" id="{_e(res.name)}"><h3>{_e(res.title)}</h3>']
    if png is None:
        parts.append(f'<p class="missing">Not drawn: {_e(res.skipped)}</p>')
    else:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="{_e(res.title)}" src="data:image/png;base64,{data}">')
    parts.append(f"<figcaption>{_e(res.caption)}</figcaption>")
    parts += [f'<p class="missing">{_e(note)}</p>' for note in res.notes]
    if res.numbers:
        tables = "".join(f"<h4>{_e(name)}</h4>{_frame_table(df)}" for name, df in res.numbers)
        parts.append(f"<details><summary>Numbers behind the figure</summary>{tables}</details>")
    parts.append("</figure>")
    return "".join(parts)


def _by_target(table1: pd.DataFrame) -> list[pd.DataFrame]:
    """Table 1 per judge, the exact gold reward first, then the evaluator."""
    if table1 is None or table1.empty or "target" not in table1.columns:
        return [table1 if table1 is not None else pd.DataFrame()]
    order = [t for t in ("gold", "evaluator") if (table1.target == t).any()]
    order += [t for t in table1.target.unique() if t not in order]
    return [table1[table1.target == t] for t in order]


def _table1_html(table1: pd.DataFrame, meta: Mapping) -> str:
    if table1 is None or table1.empty:
        return '<p class="missing">No Table 1: the tensor has no evaluator or gold reward.</p>'
    rows = _table1_rows(table1)
    best = {k: np.nanmax([r[k] for r in rows]) if rows else np.nan for k in ("reward_mean", "win_rate_mean")}
    body = []
    for r in rows:
        cells = [
            f'<span class="chip {r["kind"]}">{_e(r["ensemble"])}</span>' if r["ensemble"] else "",
            _e(r["method"]),
        ]
        for text, key in (("reward", "reward_mean"), ("win rate", "win_rate_mean")):
            bold = " best" if np.isfinite(r[key]) and r[key] == best[key] else ""
            cells.append(f'<span class="num{bold}">{_e(r[text])}</span>')
        body.append(cells)
    return f'<p class="caption">{_e(_table1_caption(table1, meta))} Best in bold.</p>' + _table(
        ["ensemble", "method", "reward", "win rate"], body, "table1"
    )


CONTRAST_LABELS = {
    "same_pretrain - neither": "RMs sharing a pretrain vs sharing neither seed (the clean test)",
    "same_pretrain - different_pretrain": "the paper's grouping: same vs different pretrain (mixes two causes)",
    "pretrain - single": "pretrain ensemble vs a single RM",
    "finetune - single": "finetune ensemble vs a single RM",
    "pretrain - finetune": "pretrain ensemble vs finetune ensemble",
}


def _contrasts_html(results) -> str:
    """The paper's claims as contrasts at the largest n, each signed so > 0 is the paper's finding, with its
    interval over seeds and prompts and whether the interval excludes 0."""
    df = results.get("contrasts")
    if df is None or df.empty:
        return '<p class="missing">No contrasts: the tensor lacks the pairs or ensembles they compare.</p>'
    last = df[df.n == df.n.max()]
    last = last[(last.figure != "table1") | (last.aggregator == "mean")]
    rows = []
    for r in last.itertuples():
        what = CONTRAST_LABELS.get(r.contrast, r.contrast)
        where = {"figure1": "Figure 1 (pick reward)", "figure2": "Figure 2 (agreement)"}.get(
            r.figure, f"Table 1: {r.target} {str(r.metric).replace('_', ' ')}, mean")
        verdict = ("holds" if r.lo > 0 else "reversed" if r.hi < 0 else "undecided") if np.isfinite(r.lo) else "—"
        rows.append([_e(where), _e(what), f'<span class="num">{_e(_interval(r.estimate, r.lo, r.hi, pct=False))}</span>',
                     _e(_num(r.se_prompt)), _e(int(r.R)), _e(verdict)])
    n = int(last.n.max())
    intro = (f"At n = {n}. Each contrast is signed so that > 0 is the paper's finding; 'holds' means the 90% "
             "interval over pretrain seeds (finetunes nested) and prompts excludes 0. The prompt-only se is what "
             "an analysis that ignores training randomness would report. Ensembles are jackknifed over their "
             "members. R: pretrains (or ensemble members) behind the interval. All of it is conditional on the "
             "SFT policy, its pool and the evaluator.")
    return f'<p class="note">{_e(intro)}</p>' + _table(
        ["where", "contrast", "estimate [90% interval]", "prompt-only se", "R", "verdict"], rows, "contrasts")


def _chip_class(label: str) -> str:
    low = label.lower()
    for key, cls in (
        ("pretrain ens", "pretrain"),
        ("perm", "pretrain"),
        ("finetune ens", "finetune"),
        ("single", "single"),
        ("gold", "gold"),
        ("evaluator", "evaluator"),
        ("sft", "sft"),
    ):
        if key in low:
            return cls
    return "sft"


def _examples_html(examples: Sequence[Mapping]) -> str:
    out = []
    for i, ex in enumerate(examples, 1):
        rows = list(ex.get("rows", []))
        best = {}
        for key in ("evaluator", "gold"):
            vals = [r.get(key) for r in rows if _is_number(r.get(key))]
            best[key] = max(vals) if vals else None
        body = []
        for r in rows:
            label = str(r.get("label", ""))
            cells = [
                f'<span class="chip {_chip_class(label)}">{_e(label)}</span>',
                f'<div class="text">{_e(r.get("text", ""))}</div>',
            ]
            for key in ("evaluator", "gold"):
                v = r.get(key)
                shown = f"{v:+.2f}" if _is_number(v) else "—"
                bold = " best" if _is_number(v) and v == best[key] and len(rows) > 1 else ""
                cells.append(f'<span class="num{bold}">{_e(shown)}</span>')
            body.append(cells)
        title = f"Example {i}" + (f" · prompt {ex['prompt_id']}" if "prompt_id" in ex else "")
        out.append(
            f'<div class="example"><h4>{_e(title)}</h4><div class="prompt">{_e(ex.get("prompt", ""))}</div>'
            + _table(["output", "text", "evaluator", "gold"], body, "examples")
            + "</div>"
        )
    return "".join(out)


_CSS = """
:root{--ink:#1d1f23;--mute:#5f6670;--line:#e3e5e8;--bg:#fafaf8;--card:#fff;
--single:#8a8a8a;--finetune:#2f6fb0;--pretrain:#e07b1f;--evaluator:#2a9a4a;--gold:#111;--self:#b2332b}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.55 -apple-system,BlinkMacSystemFont,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1800px;margin:0 auto;padding:28px 32px 64px}
header h1{font-size:28px;margin:0 0 4px;letter-spacing:-.01em}
header .sub{color:var(--mute);font-size:14px}
h2{font-size:19px;margin:40px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:0 0 8px}
h4{font-size:13px;margin:14px 0 6px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}
p.lead{font-size:16px;max-width:920px;color:#2b2f36}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:14px;margin:18px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card .k{font-size:12px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:24px;font-weight:650;margin:4px 0;font-variant-numeric:tabular-nums}
.card .d{font-size:12.5px;color:var(--mute)}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(500px,100%),1fr));gap:18px;grid-auto-flow:row dense}
figure.fig{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px}
figure.wide{grid-column:1/-1}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption,.caption,.note{font-size:13.5px;color:#3a3f47;margin-top:8px}
.missing{font-size:13px;color:#8a5a00;background:#fff7e6;border-left:3px solid #f0b429;
padding:6px 10px;margin:8px 0;border-radius:0 6px 6px 0}
table{border-collapse:collapse;font-size:13.5px;background:var(--card);margin:6px 0}
th,td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.best{font-weight:700}
table.table1 td:nth-child(n+3),table.table1 th:nth-child(n+3){text-align:right}
details{margin-top:10px;font-size:13px}
details summary{cursor:pointer;color:var(--mute)}
details table{font-size:12.5px;display:block;overflow-x:auto}
pre{background:#f3f3f0;border:1px solid var(--line);border-radius:8px;padding:12px;overflow-x:auto;
font-size:12.5px;line-height:1.45}
code{font-size:12.5px}
.chip{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;color:#fff;white-space:nowrap;
background:var(--single)}
.chip.finetune{background:var(--finetune)}.chip.pretrain{background:var(--pretrain)}
.chip.evaluator{background:var(--evaluator)}.chip.gold{background:var(--gold)}
.chip.sft{background:#d9dce1;color:var(--ink)}
.bar{display:inline-block;position:relative;width:140px;height:10px;background:#eceef1;border-radius:5px;
vertical-align:middle}
.bar b{display:block;height:100%;background:var(--finetune);border-radius:5px;opacity:.8}
.bar .ceil{position:absolute;top:-3px;width:2px;height:16px;background:#111}
.example{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:14px 0}
.prompt{white-space:pre-wrap;font-size:13.5px;color:#3a3f47;background:#f6f6f3;border-radius:6px;
padding:10px 12px;max-height:220px;overflow:auto}
.example table{width:100%}
.text{white-space:pre-wrap}
table.learn td:first-child{white-space:nowrap}
footer{margin-top:48px;color:var(--mute);font-size:12.5px}
"""


def _lead(meta: Mapping) -> str:
    text = (
        "Reward models that differ only in the random seed of their pretraining (and of their finetuning) "
        "rerank the same samples of an SFT policy by best-of-n. If the preference data pinned the reward "
        "down they would agree. Figures 1–3 measure how much they do not, and how much of that follows the "
        "pretraining seed; Figure 4 and Table 1 ask whether an ensemble of reward models from different "
        "pretrains (a PERM) picks better outputs than one reward model or an ensemble of finetuning seeds, "
        "as judged by a stronger evaluator (and, on the testbed, by the gold reward)."
    )
    facts = []
    if _present(meta.get("n_prompts")):
        facts.append(f"{int(meta['n_prompts'])} prompts")
    if _present(meta.get("pool_size")):
        facts.append(f"a pool of {int(meta['pool_size'])} samples per prompt")
    if _present(meta.get("n_reference")) and int(meta["n_reference"]):
        facts.append(f"{int(meta['n_reference'])} separate SFT samples for win rates")
    if _present(meta.get("n_rms")):
        pre = f" from {int(meta['n_pretrains'])} pretrains" if _present(meta.get("n_pretrains")) else ""
        facts.append(f"{int(meta['n_rms'])} reward models{pre}")
    judges = [f"the {what} ({meta[role]})" for role, what in JUDGES if _present(meta.get(role))]
    if judges:
        facts.append("picks judged by " + " and ".join(judges))
    if _present(meta.get("ns")):
        facts.append(f"n ∈ {{{str(meta['ns']).replace(',', ', ')}}}")
    return f'<p class="lead">{_e(text)}</p>' + (
        f'<p class="sub">{_e("This run: " + "; ".join(facts) + ".")}</p>' if facts else ""
    )


def _page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    nav = " · ".join(f'<a href="#{_e(anchor)}">{_e(name)}</a>' for anchor, name, _ in sections if name)
    body = "".join(
        (f'<section id="{_e(anchor)}"><h2>{_e(name)}</h2>{content}</section>' if name else content)
        for anchor, name, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><div class="sub">{nav}</div></header>{body}'
        "<footer>After Eisenstein et al. (2023), Reward Model Underspecification in Language Model "
        "Alignment. Written by perm.report from the analysis tables; figures are embedded, so this file "
        "stands alone. The same figures are in figures/*.png and Table 1 in table1.md.</footer>"
        "</main></body></html>\n"
    )


def write_report(
    results: Mapping[str, pd.DataFrame],
    out_dir: Path,
    *,
    config_yaml: str | None = None,
    rm_records: list[dict] | None = None,
    examples: list[dict] | None = None,
    learnability: dict | None = None,
    title: str = "perm report",
) -> Path:
    """Write ``out_dir/index.html`` (one self-contained page), ``out_dir/table1.md`` and
    ``out_dir/figures/*.png``; returns the path of ``index.html``.

    Args:
        results: the tables of :func:`perm.analysis.run_analysis` (or :func:`load_analysis`).
        config_yaml: the run's resolved config, shown verbatim in a collapsed block.
        rm_records: one dict per model with ``model_id, role, pretrain_id, finetune_seed, accuracy,
            accuracy_se`` and optionally ``gold_accuracy`` (accuracies as fractions in [0, 1]).
        examples: dicts with ``prompt`` (and optionally ``prompt_id``) and ``rows``, a list of
            ``{label, text, evaluator, gold}`` (e.g. the SFT sample, best-of-64 of a single RM, of the
            pretrain ensemble); the best evaluator and gold scores are set in bold.
        learnability: name → value, ``(value, description)`` or ``{"value", "description", "se"}``;
            shown as a table. An entry whose name contains "ceiling" and whose value lies in (0, 1] is
            taken as the label-noise ceiling and marked on every RM's accuracy bar.
        title: the page title.

    Figures whose data is absent are not drawn; the page says which and why.
    """
    out = Path(out_dir)
    meta = _meta(results)
    drawn = _draw_all(results)
    _write_figures(drawn, out / "figures")
    table1 = results.get("table1", pd.DataFrame())
    atomic_write_text(out / "table1.md", table1_markdown_all(table1, meta))
    ceiling = _ceiling(learnability)

    cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="d">{_e(d)}</div></div>'
        for k, v, d in _headlines(results, rm_records, ceiling)
    )
    sections = [("top", "", _lead(meta) + f'<div class="cards">{cards}</div>')]
    if not learnability:
        sections.append(
            (
                "learnability",
                "Did the reward models learn?",
                '<p class="missing">No learnability checks were passed to the report; read the seed '
                "effects below with care until the RMs are known to have learned the task.</p>",
            )
        )
    else:
        intro = (
            "Before the seed effects mean anything the reward models must have learned the task: "
            "accuracy near the label-noise ceiling, positive correlation with the gold reward on the "
            "policy's samples, and best-of-n gains at small n."
        )
        sections.append(
            (
                "learnability",
                "Did the reward models learn?",
                f'<p class="note">{_e(intro)}</p>' + _learnability_html(learnability),
            )
        )
    sections.append(("models", "Reward models", _models_html(results, rm_records, ceiling)))
    skipped = [res for res, png in drawn if png is None]
    figs = "".join(_figure_html(res, png) for res, png in drawn if png is not None)
    figs += "".join(_figure_html(res, None) for res in skipped)
    sections.append(("figures", "Figures", f'<div class="figs">{figs}</div>'))
    sections.append(("contrasts", "The paper's claims, with intervals over seeds", _contrasts_html(results)))
    sections.append(("table1", "Table 1 · Ensembles at the largest n", "".join(
        _table1_html(part, meta) for part in _by_target(table1))))
    if examples:
        sections.append(("examples", "Example prompts", _examples_html(examples)))
    if config_yaml:
        sections.append(
            (
                "config",
                "Configuration",
                f"<details><summary>Resolved configuration of this run</summary><pre>{_e(config_yaml)}</pre></details>",
            )
        )
    path = out / "index.html"
    atomic_write_text(path, _page(title, sections))
    return path
