"""The report: files written, a self-contained and escaped page, Table 1 in the paper's layout, figures
skipped (and said so) when their data is absent, byte-identical PNGs, and clear loading errors."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from perm import analysis, bon, figures, report

FIGS = ("fig_seed", "fig1", "fig2", "fig3", "fig4", "fig_gold", "fig_hacking")
PROMPT = "POST: my <script>alert('x')</script> landlord & I argued.\nTL;DR:"


def _samples(t: analysis.RewardTensor) -> tuple[pd.DataFrame, dict[int, str]]:
    """Pool samples whose length grows with RM 0's reward, so the hacking figure has something to show."""
    p, n = t.n_prompts, t.pool_size
    words = "the landlord kept my deposit after I moved out".split()
    rng = np.random.default_rng(0)
    samples = pd.DataFrame(
        {
            "prompt_id": np.repeat(t.prompt_ids, n),
            "sample_id": t.sample_ids.reshape(-1),
            "n_tokens": np.clip(np.round(12 + 2 * t.pool[0]).reshape(-1), 3, None).astype(int),
            "text": [" ".join(rng.choice(words, 7)) for _ in range(p * n)],
        }
    )
    return samples, {int(q): " ".join(words) for q in t.prompt_ids}


def _save_and_load(tmp_path, results) -> dict[str, pd.DataFrame]:
    analysis.save_analysis(results, tmp_path / "analysis")
    return report.load_analysis(tmp_path / "analysis")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A run with every table: 3 pretrains × 2 finetune seeds, evaluator, gold, references, hacking."""
    tmp = tmp_path_factory.mktemp("full")
    t = analysis.synthetic_reward_tensor(
        n_pretrains=3, n_finetune=2, n_prompts=30, pool_size=8, n_reference=3
    )
    samples, posts = _samples(t)
    results = _save_and_load(tmp, analysis.run_analysis(t, anova_draws=2, samples=samples, posts=posts))
    records = [
        {
            "model_id": m,
            "role": r,
            "pretrain_id": pre,
            "finetune_seed": seed,
            "accuracy": 0.70 + 0.002 * i,
            "accuracy_se": 0.006,
            "gold_accuracy": 0.80,
        }
        for i, (m, r, pre, seed) in enumerate(
            zip(t.model_ids, t.roles, t.pretrain_ids, t.finetune_seeds, strict=True)
        )
        if r != "gold"
    ]
    examples = [
        {
            "prompt_id": 7,
            "prompt": PROMPT,
            "rows": [
                {"label": "SFT sample", "text": "we argued.", "evaluator": -0.2, "gold": -0.1},
                {
                    "label": "best-of-64 · single RM",
                    "text": "we argued <a lot>",
                    "evaluator": 0.8,
                    "gold": 0.5,
                },
                {
                    "label": "best-of-64 · pretrain ensemble",
                    "text": "he kept my deposit",
                    "evaluator": 1.4,
                    "gold": 1.2,
                },
            ],
        }
    ]
    learnability = {
        "label-noise ceiling": {"value": 0.735, "description": "labels' agreement with the gold reward"},
        "Spearman ρ with gold on the pool": (0.42, "mean over RMs"),
    }
    index = report.write_report(
        results,
        tmp / "report",
        config_yaml="name: demo\nnote: <b>not bold</b>\n",
        rm_records=records,
        examples=examples,
        learnability=learnability,
        title="perm <tiny> report",
    )
    return {
        "results": results,
        "index": index,
        "dir": tmp / "report",
        "html": index.read_text(encoding="utf-8"),
    }


def test_files_written(full):
    out = full["dir"]
    assert full["index"] == out / "index.html"
    assert (out / "table1.md").is_file()
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{f}.png" for f in FIGS)
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temp files


def test_html_self_contained_with_every_figure(full):
    page = full["html"]
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and 'href="http' not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(FIGS)
    on_disk = {(full["dir"] / "figures" / f"{f}.png").read_bytes() for f in FIGS}
    assert {base64.b64decode(e) for e in embedded} == on_disk


def test_html_escapes_text(full):
    page = full["html"]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; landlord &amp; I" in page
    assert "we argued &lt;a lot&gt;" in page
    assert "<title>perm &lt;tiny&gt; report</title>" in page
    assert "note: &lt;b&gt;not bold&lt;/b&gt;" in page and "<details>" in page


def test_html_shows_the_science(full):
    page, results = full["html"], full["results"]
    for reward, win_rate in zip(results["table1"]["reward"], results["table1"]["win rate"], strict=True):
        assert reward in page and win_rate in page
    agree = results["figure2"]
    last = agree[(agree.n == agree.n.max()) & (agree.relation == "same_pretrain")].iloc[0]
    assert f"{100 * last['mean']:.1f}%" in page  # headline: agreement at the largest n
    sv = results["seed_variance"]
    pt = sv[(sv.weighting == "pool") & (sv.statistic == "share_pt")].iloc[0]
    assert "comes from the pretraining seed" in page and f"{100 * pt.estimate:.1f}%" in page  # the first card
    assert page.index("Where RMs disagree") < page.index("RM accuracy (in distribution)")
    assert "the clean test" in page and "The paper&#x27;s claims, with intervals over seeds" in page
    assert "Table 1 best: pretrain ensemble" in page or "Table 1 best: finetune ensemble" in page
    assert "label-noise ceiling" in page and "73.5%" in page  # ceiling marked next to accuracies
    assert "rm-p2-f1" in page and "70.8% ± 0.6" in page  # rm_records row 5: 0.70 + 0.010
    assert "Spearman ρ with gold on the pool" in page and "0.420" in page
    assert "Not drawn" not in page


def test_table1_markdown_layout(full):
    text = (full["dir"] / "table1.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("Table 1: Gold rewards") and "best-of-8" in lines[0]  # gold first
    assert "over R = 3 pretrain seeds" in lines[0] and "and 30 prompts" in lines[0]
    assert "Table 1: Auto-evaluator rewards" in text
    assert lines[2] == "| ensemble | method | reward | win rate |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:13]]
    # The paper's layout: ensemble named once per group, methods alphabetical, single RM last.
    assert [r[:2] for r in rows] == [
        ["finetune", "mean"],
        ["", "mean minus stdev"],
        ["", "median"],
        ["", "min"],
        ["pretrain", "mean"],
        ["", "mean minus stdev"],
        ["", "median"],
        ["", "min"],
        ["single RM", "single RM"],
    ]
    tab = full["results"]["table1"]
    tab = tab[tab.target == "gold"].set_index(["ensemble", "aggregator"])
    assert rows[1][2:] == list(tab.loc[("finetune", "mean_minus_std"), ["reward", "win rate"]])
    assert rows[8][2:] == list(tab.loc[("single RM", "single RM"), ["reward", "win rate"]])


def test_figure4_axes_log2_with_kl_on_top(full):
    res = figures._figure4(full["results"])
    ax = res.figure.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    ns = bon.default_ns(8)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(n) for n in ns]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == [f"{bon.kl_bound(n):.2f}" for n in ns]
    assert len(ax.get_legend_handles_labels()[1]) == 3  # single RM, finetune, pretrain ensemble


def test_make_figures_deterministic(tmp_path, full):
    """Drawn again from the same tables (the fixture's write_report drew them once), byte for byte."""
    again = report.make_figures(full["results"], tmp_path / "again")
    assert sorted(again) == sorted(FIGS)
    for name in FIGS:
        data = again[name].read_bytes()
        assert data == (full["dir"] / "figures" / f"{name}.png").read_bytes(), name
        assert b"Software" not in data and b"tEXt" not in data  # no version or timestamp chunk


def _subset(t: analysis.RewardTensor, keep, reference: bool = True) -> analysis.RewardTensor:
    keep = list(keep)
    return analysis.RewardTensor(
        pool=t.pool[keep],
        reference=t.reference[keep] if reference and t.reference is not None else None,
        model_ids=tuple(t.model_ids[i] for i in keep),
        roles=tuple(t.roles[i] for i in keep),
        pretrain_ids=tuple(t.pretrain_ids[i] for i in keep),
        finetune_seeds=tuple(t.finetune_seeds[i] for i in keep),
        prompt_ids=t.prompt_ids,
        sample_ids=t.sample_ids,
        reference_ids=t.reference_ids if reference else None,
    )


def test_contrasts_of_one_pretrains_pairs_are_marked(tmp_path, full):
    """The paper layout (every same_pretrain pair from the first pretrain's finetunes): the clean contrasts'
    verdicts carry the mark and the table says why; the fixture's grid (pairs in all 3 pretrains) does not."""
    assert "one pretrain&#x27;s pairs" not in full["html"]
    t = analysis.synthetic_reward_tensor(n_pretrains=4, n_finetune=3, n_prompts=20, pool_size=8, seed=5)
    keep = [i for i in range(len(t.model_ids))
            if t.roles[i] != "rm" or t.pretrain_ids[i] == "p0" or t.finetune_seeds[i] == 0]
    results = _save_and_load(tmp_path, analysis.run_analysis(_subset(t, keep), anova_draws=2))
    page = report.write_report(results, tmp_path / "report").read_text(encoding="utf-8")
    c = results["contrasts"]
    marked = c[(c.n == c.n.max()) & c.figure.isin(["figure1", "figure2"])]
    assert len(marked) == 4  # two figures x (same_pretrain - neither, same_pretrain - different_pretrain)
    assert page.count("one pretrain&#x27;s pairs *") == 4
    assert "Every same_pretrain pair here comes from one pretrain" in page
    # ... and the seed shares keep their estimates without intervals, saying why (the full fixture has them)
    assert "no interval over pretrains or finetune seeds" in page
    assert "The pretraining seed share has no interval: every same_pretrain pair has pretrain p0" in page
    assert "no interval over" not in full["html"] and "has no interval" not in full["html"]


def test_one_pretrain_no_hacking(tmp_path):
    """One pretrain, three finetune seeds: no 'different pretrain' line, no pretrain ensemble, and no
    hacking table; the page says each, and still draws what it can."""
    t = analysis.synthetic_reward_tensor(
        n_pretrains=1, n_finetune=3, n_prompts=12, pool_size=4, n_reference=2
    )
    results = _save_and_load(tmp_path, analysis.run_analysis(t, anova_draws=2))
    index = report.write_report(results, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    drawn = sorted(p.stem for p in (tmp_path / "report" / "figures").iterdir())
    assert drawn == ["fig1", "fig2", "fig3", "fig4", "fig_gold"]
    assert page.count("data:image/png;base64,") == 5
    assert "Not drawn: there is no hacking table" in page
    assert "No &#x27;neither&#x27; line: every pair of RMs shares a pretrain or a finetune seed." in page
    assert "there is no pretrain ensemble" in page
    assert "No accuracies were passed to the report" in page
    assert "No learnability checks were passed" in page
    md = (tmp_path / "report" / "table1.md").read_text(encoding="utf-8")
    first = md.split("\n\n")[1]  # the gold table; the evaluator's follows
    groups = [line.split("|")[1].strip() for line in first.splitlines()[2:]]
    assert [g for g in groups if g] == ["finetune", "single RM"]


def test_no_judge_no_ensemble(tmp_path):
    """Two RMs from two pretrains, no evaluator, gold or references: only Figures 1–2 can be drawn."""
    t = analysis.synthetic_reward_tensor(
        n_pretrains=2, n_finetune=1, n_prompts=10, pool_size=4, n_reference=0
    )
    t = _subset(t, t.rm_indices, reference=False)
    results = _save_and_load(tmp_path, analysis.run_analysis(t, anova_draws=2))
    assert results["figure4"].empty and results["table1"].empty
    index = report.write_report(results, tmp_path / "report", examples=[], learnability={})
    page = index.read_text(encoding="utf-8")
    assert sorted(p.stem for p in (tmp_path / "report" / "figures").iterdir()) == ["fig1", "fig2"]
    assert page.count("Not drawn:") == 5  # fig_seed: a layout of same_finetune pairs only
    assert "it needs at least three reward models" in page
    assert "No Table 1" in page
    assert (tmp_path / "report" / "table1.md").read_text(encoding="utf-8").startswith("Table 1: no evaluator")


def test_load_analysis_errors(tmp_path, full):
    with pytest.raises(FileNotFoundError, match=r"no analysis directory.*perm analyze") as info:
        report.load_analysis(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    partial = tmp_path / "partial"
    analysis.save_analysis({k: v for k, v in full["results"].items() if k != "figure2"}, partial)
    with pytest.raises(report.AnalysisNotFoundError, match=r"missing figure2\.parquet"):
        report.load_analysis(partial)
    (partial / "figure2.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="figure2.parquet: cannot read as Parquet"):
        report.load_analysis(partial)


def test_load_analysis_round_trip(tmp_path, full):
    back = _save_and_load(tmp_path, full["results"])
    assert set(back) == set(full["results"]) and "hacking" in back
    for name, df in full["results"].items():
        pd.testing.assert_frame_equal(back[name], df, check_dtype=False)


def test_best_of_n_shape_names_an_over_optimised_rm():
    """A proxy equal to gold rises at every n; one that loves each pool's worst sample beyond its good ones
    rises at first, then falls: named with its peak n and its fall."""
    import numpy as np
    import pandas as pd

    from perm.report_inputs import best_of_n_shape

    rng = np.random.default_rng(0)
    k, size = 30, 64
    gold = rng.normal(size=(k, size))
    hacked = gold.copy()
    worst = gold.argmin(axis=1)
    hacked[np.arange(k), worst] = gold.max(axis=1) + 5.0  # the worst sample ranks first
    idx = pd.MultiIndex.from_product([range(k), range(size)], names=["prompt_id", "sample_id"])
    pool = pd.DataFrame({"gold": gold.ravel(), "good": gold.ravel(), "hacked": hacked.ravel()}, index=idx)
    out = best_of_n_shape(pool, ["good", "hacked"])
    assert out["fraction"] == 0.5
    assert "good: peak +2.33 at n = 64;" in out["description"]
    hacked_note = out["description"].split("hacked: ")[1]
    assert "lower at n = 64" in hacked_note and "not rising to n = 16" in hacked_note


def test_learnability_by_pretrain_needs_replicates_and_finds_a_planted_backbone_effect():
    """The paper layout (one pretrain with several RMs) cannot split learnability by pretrain; the full layout
    can: a backbone whose RMs all learn 0.1 less stands out (small p), finetune noise alone does not."""
    from perm.report_inputs import by_pretrain

    rng = np.random.default_rng(0)
    paper = {f"p0-f{f}": 0.5 + 0.01 * f for f in range(5)} | {f"p{p}-f0": 0.5 for p in range(1, 5)}
    assert by_pretrain(paper, {m: m.split("-")[0] for m in paper}) is None
    noise = {f"p{p}-f{f}": 0.5 + rng.normal(0, 0.02) for p in range(5) for f in range(5)}
    planted = {m: v - (0.1 if m.startswith("p3-") else 0.0) for m, v in noise.items()}
    owner = {m: m.split("-")[0] for m in noise}
    hit, null = by_pretrain(planted, owner), by_pretrain(noise, owner)
    assert hit["p"] < 1e-6 < 0.05 < null["p"]
    assert f"p3 {np.mean([planted[f'p3-f{f}'] for f in range(5)]):.3f}" in hit["means"]
    assert "5 pretrains with 5 RMs each" in hit["description"]
    # crossed finetune seeds: a large finetune-seed effect on every backbone hides a small pretrain effect from
    # the one-way test; the two-way additive ANOVA (pretrain + finetune seed) removes it and finds the backbone
    seed_of = {m: int(m.split("-f")[1]) for m in noise}
    crossed = {m: v + 0.1 * seed_of[m] - (0.05 if m.startswith("p3-") else 0.0) for m, v in noise.items()}
    one, two = by_pretrain(crossed, owner), by_pretrain(crossed, owner, seed_of)
    assert one["test"] == "one-way" and two["test"] == "two-way" and "two-way additive" in two["description"]
    assert two["p"] < 0.01 < 0.05 < one["p"]
    assert by_pretrain(noise, owner, seed_of)["p"] > 0.05
    owner["p4-f0"] = None  # an RM without a pretrain id, and a NaN, are left out
    partial = by_pretrain(noise | {"p4-f1": float("nan")}, owner)
    assert "5 pretrains with 3-5 RMs each" in partial["description"]


def test_pretraining_ratio_reads_each_rms_backbone_record(tmp_path):
    import json

    from perm.report_inputs import pretraining_ratio

    for name, tokens in (("a", 4_000_000), ("b", 1_000_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pretrain.json").write_text(json.dumps({"tokens": tokens, "heldout_perplexity": 1.7}))
    recs = [{"model_id": "a-ft0", "backbone": str(tmp_path / "a"), "train_tokens": 800_000,
             "train_sequence_tokens": 2_000_000},
            {"model_id": "b-ft0", "backbone": str(tmp_path / "b"), "train_tokens": 500_000,
             "train_sequence_tokens": 1_000_000},
            {"model_id": "hub", "backbone": "org/name", "train_tokens": 1}]  # no record: left out
    out = pretraining_ratio(recs)
    assert out["min"] == 2.0
    assert "a-ft0: 5.0x (2.0x whole sequences), 4.0 M tokens" in out["description"] and "hub" not in out["description"]
    assert pretraining_ratio([{"model_id": "x", "backbone": "org/name"}]) is None


def test_rm_records_carry_what_the_token_ratio_needs(tmp_path):
    import json

    from perm.report_inputs import rm_records

    (tmp_path / "rm" / "a-ft0").mkdir(parents=True)
    (tmp_path / "rm" / "a-ft0" / "rm.json").write_text(json.dumps(
        {"model_id": "a-ft0", "role": "rm", "backbone": "/b", "train_tokens": 5, "train_sequence_tokens": 9}))
    (rec,) = rm_records(tmp_path)
    assert (rec["backbone"], rec["train_tokens"], rec["train_sequence_tokens"]) == ("/b", 5, 9)


def test_learnability_says_how_far_the_evaluator_leads_the_best_grid_rm(tmp_path):
    """Issue 13's judge goal, measured where the report lists learnability: the evaluator's accuracy and pool
    rho minus the best grid RM's (each best on its own measure), and its training pairs over a grid RM's."""
    import json

    from perm.report_inputs import learnability, rm_records

    rng = np.random.default_rng(0)
    k, size = 20, 16
    gold = rng.normal(size=(k, size))
    scores = {"gold": gold, "a-ft0": gold + rng.normal(0, 2.0, gold.shape), "b-ft0": gold + rng.normal(0, 1.0, gold.shape),
              "evaluator": gold + rng.normal(0, 0.5, gold.shape)}
    rows = [{"prompt_id": p, "sample_id": s, "model_id": m, "reward": float(v[p, s]), "is_reference": False}
            for m, v in scores.items() for p in range(k) for s in range(size)]
    pd.DataFrame(rows).to_parquet(tmp_path / "rewards.parquet")
    pd.DataFrame([{"prompt_id": p, "sample_id": s, "is_reference": False, "gold_reward": float(gold[p, s])}
                  for p in range(k) for s in range(size)]).to_parquet(tmp_path / "samples.parquet")
    (tmp_path / "data").mkdir()
    pd.DataFrame({"prompt_id": range(k), "prompt": ["p"] * k}).to_parquet(tmp_path / "data" / "eval_prompts.parquet")
    for mid, role, acc, pairs in (("a-ft0", "rm", 0.64, 1000), ("b-ft0", "rm", 0.60, 1000),
                                  ("evaluator", "evaluator", 0.66, 3000)):
        d = tmp_path / ("evaluator/rm" if role == "evaluator" else f"rm/{mid}")
        d.mkdir(parents=True)
        (d / "rm.json").write_text(json.dumps({"model_id": mid, "role": role, "accuracy": acc, "accuracy_se": 0.01,
                                               "pretrain_id": mid.split("-")[0] if role == "rm" else "evaluator-seed9",
                                               "n_train_pairs": pairs}))
    out = learnability(tmp_path, rm_records(tmp_path))
    assert out["evaluator accuracy - best grid RM's"]["value"] == pytest.approx(0.02)
    assert "(a-ft0, 0.640)" in out["evaluator accuracy - best grid RM's"]["description"]
    rho = {m: out[f"Spearman with gold on the pool: {m}"]["value"] for m in ("a-ft0", "b-ft0", "evaluator")}
    assert rho["evaluator"] > rho["b-ft0"] > rho["a-ft0"]  # best by rho is b, not a (best by accuracy)
    lead = out["evaluator Spearman with gold - best grid RM's"]
    assert lead["value"] == pytest.approx(rho["evaluator"] - rho["b-ft0"]) and "(b-ft0," in lead["description"]
    assert out["evaluator training pairs / grid RM's"]["value"] == 3.0


def test_cheaper_ensembles_section_only_with_named_ensembles(tmp_path, full):
    """A tensor with named ensembles gets the "Cheaper ensembles" section: its figure (reward against training
    cost, log x), a table with the share of the pretrain ensemble's gain and the costs, and Table 1's named rows;
    without them the page has no such section and no such figure."""
    from test_named_ensembles import COSTS, with_members

    assert "Cheaper ensembles" not in full["html"] and 'id="cheaper"' not in full["html"]
    assert not (full["dir"] / "figures" / "fig_ensembles.png").exists()
    assert not (full["dir"] / "figures" / "fig_ensembles_n.png").exists()
    t = analysis.synthetic_reward_tensor(n_pretrains=3, n_finetune=2, n_prompts=20, pool_size=8, n_reference=2)
    named = with_members(t, [("lora", 3, "lora"), ("warm", 1, "warm")])
    for costs, axis in ((COSTS, "train_s"), (COSTS.assign(train_s=np.nan), "params_trained"), (None, "no costs")):
        out = tmp_path / axis.replace(" ", "_")
        results = _save_and_load(out, analysis.run_analysis(named, anova_draws=2, bootstrap=30, costs=costs))
        page = report.write_report(results, out / "report").read_text(encoding="utf-8")
        section = page[page.index('<section id="cheaper"><h2>Cheaper ensembles</h2>'):]
        section = section[: section.index("</section>")]
        assert section.count("data:image/png;base64,") == 2 and 'id="fig_ensembles"' in section
        assert 'id="fig_ensembles_n"' in section and page.count('id="fig_ensembles_n"') == 1
        assert (out / "report" / "figures" / "fig_ensembles.png").is_file()
        assert page.count('id="fig_ensembles"') == 1  # not also among the figures
        by_n = figures._figure_ensembles_n(results)
        assert {t.get_text() for t in by_n.figure.axes[0].get_legend().get_texts()} >= {
            "lora ensemble", "warm ensemble", "pretrain ensemble", "single RM"}
        res = figures._figure_ensembles(results)
        assert axis in res.figure.axes[0].get_xlabel()
        assert (res.figure.axes[0].get_xscale() == "log") == (costs is not None)
        assert "share of the pretrain ensemble&#x27;s gain recovered" in section
        assert "same pick as the pretrain ensemble" in section
        assert "lora ensemble" in section and "warm ensemble" in section and "lora - pretrain" in section
        if costs is not None:
            assert ">2<" in section and ">170<" in section  # lora's params trained and held
        assert (">130<" in section) == (axis == "train_s")  # lora's train s
        assert "lora - single" not in page[: page.index('id="cheaper"')]  # not among the paper's claims
    md = (out / "report" / "table1.md").read_text(encoding="utf-8")
    groups = [line.split("|")[1].strip() for line in md.split("\n\n")[1].splitlines()[2:]]
    assert [g for g in groups if g] == ["finetune", "pretrain", "lora", "warm", "single RM"]
