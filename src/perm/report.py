"""The report page: one self-contained HTML page and a Markdown Table 1 from the tables of
:func:`perm.analysis.run_analysis`, with the figures of :mod:`perm.figures` embedded.

* :func:`load_analysis` reads what :func:`perm.analysis.save_analysis` wrote (``<name>.parquet``).
* :func:`perm.figures.make_figures` (re-exported here) draws every figure whose data is present.
* :func:`write_report` writes ``out_dir/{index.html, table1.md, figures/*.png}``.

The page opens with the headline cards (the first says how much of the RM-to-RM variation follows the
pretraining and the finetuning seed), then the learnability checks, the reward models, the figures, the
paper's claims as contrasts with intervals over seeds, Table 1 under the gold reward and the evaluator, the
cheaper ensembles (when the tensor has named ensembles: their quality against their cost beside the grid's
ensembles) and example picks. It embeds the PNGs as ``data:`` URIs and has no script and no external asset: it
can be mailed or archived as one file. Every piece of text on it goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from perm.analysis import ONE_FINETUNE, ONE_PRETRAIN
from perm.figures import (  # noqa: F401  (re-exported)
    AGGREGATOR_LABELS,
    FIGURES,
    JUDGES,
    OPTIONAL_FIGURES,
    PAIR_LABELS,
    PAPER_AGGREGATOR_ORDER,
    STYLE,
    FigureResult,
    _draw_all,
    _interval,
    _meta,
    _pick_aggregator,
    _present,
    _write_figures,
    cost_axis,
    ensemble_label,
    make_figures,
    named_ensembles,
)
from perm.run_layout import ENSEMBLES, REPORT_INDEX
from perm.store import atomic_write_text

REQUIRED_TABLES = ("meta", "models", "figure1", "figure2", "figure3", "figure4", "table1")


class AnalysisNotFoundError(FileNotFoundError):
    """The analysis directory is missing or lacks tables that :func:`perm.analysis.save_analysis` writes."""


# ----------------------------------------------------------------------------------------------------
# Loading


def load_analysis(analysis_dir: Path) -> dict[str, pd.DataFrame]:
    """Read every ``<name>.parquet`` table that :func:`perm.analysis.save_analysis` wrote into
    ``analysis_dir``.

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
# Table 1


def _table1_rows(table1: pd.DataFrame) -> list[dict]:
    """Table 1's rows in the paper's order (ensembles, each by method, then the named ensembles, then the
    single RM).

    Each row: ``ensemble`` (named on the first row of its group only, as in the paper), ``kind``
    (``finetune``, ``pretrain``, ``named`` or ``single``), ``method``, the ``reward`` / ``win rate`` strings
    and ``reward_mean`` / ``win_rate_mean``.
    """
    rows = []
    named = [e for e in dict.fromkeys(table1.ensemble) if e not in ("finetune", "pretrain", "single RM")]
    for ensemble in ("finetune", "pretrain", *named, "single RM"):
        part = table1[table1.ensemble == ensemble]
        order = (("single RM",) if ensemble == "single RM"
                 else (*PAPER_AGGREGATOR_ORDER, "none") if ensemble in named
                 else PAPER_AGGREGATOR_ORDER)
        for agg in order:
            cell = part[part.aggregator == agg]
            if cell.empty:
                continue
            row = cell.iloc[0]
            rows.append(
                {
                    "ensemble": "" if rows and rows[-1]["group"] == ensemble else ensemble,
                    "group": ensemble,
                    "kind": "named" if ensemble in named else ensemble.split()[0],
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
        seeds = (f" over R = {int(single.R.iloc[0])} pretrain seeds (finetunes nested; ensembles jackknifed "
                 f"over their members){prompts}")
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
    unresolved = [what for what, row in (("pretrain", pt), ("finetune seed", ft))
                  if not np.isfinite(row.lo) and isinstance(getattr(row, "note", ""), str) and row.note]
    why = (f"no interval over {' or '.join(w + 's' for w in unresolved)}: in this layout the RM pairs that "
           f"share a {' or a '.join(unresolved)} all share the same one, and how much a seed moves the RMs "
           "differs from seed to seed (reward.layout: full gives intervals)" if unresolved else "")
    if len(unresolved) == 2:
        paren = f" ({why})"
    else:
        paren = (f" (90% intervals over {resamples_phrase(results)}"
                 + (f"; {coverage_range(results, 'share_pt')} for the pretrain share"
                    if coverage_range(results, "share_pt") else "") + (f"; {why}" if why else "") + ")")
    return (
        "Where RMs disagree: pretraining vs finetuning seed",
        f"{_pct(pt.estimate, digits=0)} vs {_pct(ft.estimate, digits=0)}",
        f"of the RM-to-RM variation on the policy's outputs, {_interval(pt.estimate, pt.lo, pt.hi)} comes "
        f"from the pretraining seed and {_interval(ft.estimate, ft.lo, ft.hi)} from the finetuning seed"
        + paren,
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
        f"{STYLE[g]['label']} {_interval(r['mean'], r.lo, r.hi, pct=False)}"
        for g, r in rows.items() if r is not None
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
    paper = "method" in fig3.columns and str(b.method) == "paper"
    null = (f"; {_pct(b.null)} with the RMs exchangeable" if "null" in fig3.columns and np.isfinite(b.null)
            else "")
    return (
        "Variance explained by the RM" + (" (paper's raw rewards)" if paper else ""),
        f"{_pct(a.mean, digits=0)} → {_pct(b.mean, digits=0)}",
        f"from n = {a.n} to n = {b.n} ({_pct(a.mean, a.se)} → {_pct(b.mean, b.se)}{null})",
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
            if _present(getattr(r, "ensemble", None)):
                badges += [f'<span class="chip named">{_e(name)}</span>'
                           for name in str(r.ensemble).split(",")]
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


def _count(value) -> str:
    """A parameter count or a number of forwards, short: 1.2B, 350M, 12k, 3."""
    if not _is_number(value):
        return "—"
    v = float(value)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def _seconds(value) -> str:
    return f"{float(value):,.0f}" if _is_number(value) and abs(value) >= 100 else (
        f"{float(value):.3g}" if _is_number(value) else "—")


def _ensembles_table_html(part: pd.DataFrame) -> str:
    target = str(part.target.iloc[0])
    rows = []
    for r in part.itertuples():
        share = (_interval(r.share, r.share_lo, r.share_hi) if _present(r.share) and np.isfinite(r.share)
                 else "—")
        if (_present(r.share_note) and str(r.share_note) and np.isfinite(r.share)
                and not np.isfinite(r.share_lo)):
            share += f" ({r.share_note})"
        elif _present(r.share_note) and str(r.share_note) and not np.isfinite(r.share):
            share = f"— ({r.share_note})"
        kind = r.ensemble if r.ensemble in ("single", "finetune", "pretrain") else "named"
        rows.append([
            f'<span class="chip {kind}">{_e(ensemble_label(r.ensemble))}</span>',
            _e(AGGREGATOR_LABELS.get(r.aggregator, r.aggregator) if r.aggregator != "none" else
               ("single RM" if r.ensemble == "single" else "its own reward")),
            f'<span class="num">{_e(_interval(r.estimate, r.lo, r.hi, pct=False))}</span>',
            f'<span class="num">{_e(share)}</span>',
            *[f'<span class="num">{_e(_count(getattr(r, c)))}</span>'
              for c in ("params_trained", "params_held", "forwards_per_candidate")],
            *[f'<span class="num">{_e(_seconds(getattr(r, c)))}</span>' for c in ("train_s", "score_s")],
        ])
    return _table(["ensemble", "aggregator", f"{target} reward [90% interval]",
                   "share of the pretrain ensemble's gain recovered [90% interval]", "params trained",
                   "params held", "forwards per candidate", "train s", "score s"], rows, "ensembles")


def _ensembles_html(results, figure, by_n=None) -> str:
    """The cheaper-ensembles section: the named ensembles' best-of-n quality against their cost, beside the
    single RM and the grid's ensembles (figure, table per judge), and their contrasts with the grid."""
    df = results["ensembles"]
    n = int(df.n.iloc[0]) if _present(df.n.iloc[0]) else None
    col, _ = cost_axis(df)
    intro = (
        f"Ensembles that are cheaper to train than the pretrain ensemble, because their members share one "
        f"backbone (several heads, LoRA adapters, weight-averaged or MC-dropout members) or are a user's own "
        f"choice of models, rerank the same pool as the grid's ensembles. Reward of the best-of-{n or 'n'} "
        "pick, centred per prompt. The share of the pretrain ensemble's gain is (ensemble − single RM) / "
        "(pretrain ensemble − single RM) with the same aggregator (a one-member ensemble, ranking by its own "
        "reward, against the pretrain ensemble's mean); undefined where that gain's own interval includes 0. "
        "A named ensemble's interval is a jackknife over its members plus the prompt bootstrap the grid's "
        "cells use, conditional on its backbone: one backbone cannot show how much another pretraining seed "
        "would move it, which the pretrain ensemble's interval includes. "
        + (f"Costs come from {ENSEMBLES}." if col
           else f"There are no costs (no {ENSEMBLES}): the cost columns are empty."))
    parts = [f'<p class="note">{_e(intro)}</p>']
    parts += [_figure_html(*f) for f in (figure, by_n) if f is not None]
    parts += [_ensembles_table_html(part) for part in _by_target(df)]
    agree = results.get("agreement_pretrain")
    if agree is not None and not agree.empty:
        top = agree[(agree.n == agree.n.max()) & agree.aggregator.isin(["mean", "none"])
                    & ~agree.ranker.isin(["pretrain", "evaluator", "gold"])]
        rows = [[_e(r.ranker), f'<span class="num">{r.mean:.0%} ± {r.se:.0%}</span>']
                for r in top.itertuples()]
        parts.append(f"<h4>How often its best-of-{int(agree.n.max())} pick is the pretrain ensemble's "
                     "(mean aggregator; exact over the pool's n-subsets, ± se over prompts)</h4>"
                     + _table(["ensemble", "same pick as the pretrain ensemble"], rows, "agreement"))
    c = results.get("contrasts")
    if c is not None and not c.empty and (c.figure == "ensembles").any():
        c = c[(c.figure == "ensembles") & (c.metric == "reward") & c.aggregator.isin(["mean", "none"])]
        rows = []
        for r in c.itertuples():
            verdict = (("> 0" if r.lo > 0 else "< 0" if r.hi < 0 else "undecided") if np.isfinite(r.lo)
                       else "—")
            shown = (_interval(r.estimate, r.lo, r.hi) if r.contrast.endswith("share of pretrain gain")
                     else _interval(r.estimate, r.lo, r.hi, pct=False))
            rows.append([_e(r.target), _e(r.contrast),
                         _e(r.aggregator if r.aggregator != "none" else "own reward"),
                         f'<span class="num">{_e(shown)}</span>', _e(verdict)])
        if rows:
            parts.append("<h4>Contrasts with the grid (reward, mean aggregator)</h4>" + _table(
                ["judge", "contrast", "aggregator", "estimate [90% interval]", "interval"], rows,
                "contrasts"))
    return "".join(parts)


CONTRAST_LABELS = {
    "same_pretrain - neither": "RMs sharing a pretrain vs sharing neither seed (the clean test)",
    "same_pretrain - different_pretrain": "the paper's grouping: same vs different pretrain "
                                          "(mixes two causes)",
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
    df = df[df.figure != "ensembles"]  # named ensembles' contrasts: in the cheaper-ensembles section
    if df.empty:
        return '<p class="missing">No contrasts: the tensor lacks the pairs or ensembles they compare.</p>'
    last = df[df.n == df.n.max()]
    last = last[(last.figure != "table1") | (last.aggregator == "mean")]
    rows = []
    for r in last.itertuples():
        what = CONTRAST_LABELS.get(r.contrast, r.contrast)
        where = {"figure1": "Figure 1 (pick reward)", "figure2": "Figure 2 (agreement)"}.get(
            r.figure, f"Table 1: {r.target} {str(r.metric).replace('_', ' ')}, mean")
        verdict = (("holds" if r.lo > 0 else "reversed" if r.hi < 0 else "undecided") if np.isfinite(r.lo)
                   else "—")
        if verdict != "—" and ONE_PRETRAIN in str(getattr(r, "note", "") or ""):
            verdict += ", one pretrain's pairs *"  # the interval cannot see that pretrain's finetuning noise
        rows.append([_e(where), _e(what),
                     f'<span class="num">{_e(_interval(r.estimate, r.lo, r.hi, pct=False))}</span>',
                     _e(_num(r.se_prompt)), _e(int(r.R)), _e(verdict)])
    n = int(last.n.max())
    cov = coverage_range(results, "single mean")
    intro = (f"At n = {n}. Each contrast is signed so that > 0 is the paper's finding; 'holds' means the 90% "
             f"interval over {resamples_phrase(results)} excludes "
             f"0{f' ({cov} on this design)' if cov else ''}. "
             "The prompt-only se is what an analysis that ignores training randomness would report. "
             "Table 1's rows average every ensemble of a kind the layout has and are jackknifed over "
             "pretrains and finetune seeds (paired: both sides from the same deletions). R: pretrains behind "
             "the interval. All of it is conditional on the SFT policy, its pool and the evaluator.")
    if last.note.astype(str).str.contains(ONE_PRETRAIN, regex=False).any():
        intro += (" * Every same_pretrain pair here comes from one pretrain's finetunes (the paper layout), "
                  "so the interval cannot see how far their finetuning noise moves the contrast (on the "
                  "embedded testbed, reruns that differed only in that noise moved Figure 2's by about twice "
                  "its se). Check with replicate runs (perm compare) or reward.layout: full.")
    if last.note.astype(str).str.contains(ONE_FINETUNE, regex=False).any():
        intro += (" Likewise every same_finetune pair shares one finetune seed (across the pretrains), so "
                  "the paper's different_pretrain group leans on that one seed's draw.")
    return f'<p class="note">{_e(intro)}</p>' + _table(
        ["where", "contrast", "estimate [90% interval]", "prompt-only se", "R", "verdict"], rows, "contrasts")


COVERAGE_LABELS = {"single mean": "a mean over RMs and prompts (Figures 1, 2, Table 1's single RM)",
                   "share_pt": "the pool's pretrain share (the seed decomposition)",
                   "share_ft": "the pool's finetune share (the seed decomposition)"}


def _coverage_label(statistic: str) -> str:
    if statistic.startswith("named ensemble ("):  # perm.coverage.simulate_named_coverage
        return (f"a {statistic} of one backbone, jackknifed over its members with the prompt bootstrap "
                "(Cheaper ensembles; planted members, no seed design)")
    return COVERAGE_LABELS.get(statistic, statistic)


def coverage_range(results, statistic: str) -> str:
    """``simulated coverage a–b%`` of the 90% intervals of ``statistic`` over the planted scenarios of
    :mod:`perm.coverage` on this run's design, or "" without a coverage table."""
    cov = results.get("coverage")
    if cov is None or cov.empty or statistic not in set(cov.statistic):
        return ""
    c = cov[cov.statistic == statistic].coverage
    lo, hi = float(c.min()), float(c.max())
    return (f"simulated coverage {lo:.0%}–{hi:.0%}" if round(lo, 2) != round(hi, 2)
            else f"simulated coverage {lo:.0%}")


def resamples_phrase(results) -> str:
    """What the run's seed-aware intervals resample, in words (from the analysis meta)."""
    meta = results.get("meta")
    if meta is None or meta.empty or "resamples" not in meta.columns:
        return "pretrain seeds (finetunes nested) and prompts"
    return str(meta.resamples.iloc[0])


def _coverage_html(results) -> str:
    """The simulated coverage of the intervals on this run's design, by planted scenario and statistic."""
    cov = results.get("coverage")
    if cov is None or cov.empty:
        return ('<p class="missing">Not simulated (analysis.coverage_sims: 0): the intervals\' coverage on '
                "this design is unknown.</p>")
    level = float(cov.level.iloc[0])
    intro = (f"Each interval resamples {resamples_phrase(results)}, with a small-sample t correction for few "
             f"seeds. How often its nominal {level:.0%} interval holds the truth on this run's own seed "
             f"design, in {int(cov.sims.iloc[0])} simulated grids per scenario with planted seed effects (sd "
             "of the pretrain and finetune effects; seeds' effect sizes vary from seed to seed in the share "
             "scenarios; perm.coverage). Coverage below the nominal level means the interval is too narrow "
             "for that kind of effect; a relation whose pairs all come from one pretrain (the paper layout's "
             "same_pretrain) carries that pretrain's idiosyncrasy, which no resampling of this "
             "design can see.")
    rows = [[_e(_coverage_label(r.statistic)),
             _e(f"{r.sigma_pt:g}" if np.isfinite(r.sigma_pt) else "—"),
             _e(f"{r.sigma_ft:g}" if np.isfinite(r.sigma_ft) else "—"),
             f'<span class="num">{r.coverage:.0%} ± {r.mc_se:.0%}</span>', _e(f"{r.width:.3f}")]
            for r in cov.itertuples()]
    return f'<p class="note">{_e(intro)}</p>' + _table(
        ["statistic", "pretrain effect sd", "finetune effect sd", f"coverage of {level:.0%} intervals",
         "mean width"], rows, "coverage")


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
--single:#8a8a8a;--finetune:#2f6fb0;--pretrain:#e07b1f;--evaluator:#2a9a4a;--gold:#111;--self:#b2332b;
--named:#2a9d8f}
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
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(500px,100%),1fr));gap:18px;\
grid-auto-flow:row dense}
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
.chip.evaluator{background:var(--evaluator)}.chip.gold{background:var(--gold)}.chip.named{background:var(--named)}
.chip.sft{background:#d9dce1;color:var(--ink)}
.bar{display:inline-block;position:relative;width:140px;height:10px;background:#eceef1;border-radius:5px;
vertical-align:middle}
.bar b{display:block;height:100%;background:var(--finetune);border-radius:5px;opacity:.8}
.bar .ceil{position:absolute;top:-3px;width:2px;height:16px;background:#111}
.example{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;\
margin:14px 0}
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
    own = {res.name: (res, png) for res, png in drawn if res.name in OPTIONAL_FIGURES}
    drawn = [(res, png) for res, png in drawn if res.name not in OPTIONAL_FIGURES]
    skipped = [res for res, png in drawn if png is None]
    figs = "".join(_figure_html(res, png) for res, png in drawn if png is not None)
    figs += "".join(_figure_html(res, None) for res in skipped)
    sections.append(("figures", "Figures", f'<div class="figs">{figs}</div>'))
    sections.append(("contrasts", "The paper's claims, with intervals over seeds", _contrasts_html(results)))
    sections.append(("coverage", "How far to trust the intervals", _coverage_html(results)))
    sections.append(("table1", "Table 1 · Ensembles at the largest n", "".join(
        _table1_html(part, meta) for part in _by_target(table1))))
    if named_ensembles(results.get("ensembles")):
        sections.append(("cheaper", "Cheaper ensembles", _ensembles_html(
            results, own.get("fig_ensembles"), own.get("fig_ensembles_n"))))
    if examples:
        sections.append(("examples", "Example prompts", _examples_html(examples)))
    if config_yaml:
        sections.append(
            (
                "config",
                "Configuration",
                "<details><summary>Resolved configuration of this run</summary>"
                f"<pre>{_e(config_yaml)}</pre></details>",
            )
        )
    path = out / REPORT_INDEX
    atomic_write_text(path, _page(title, sections))
    return path
