"""What the report reads from a run directory besides analysis/: the RMs' records (rm.json), a few example
picks, the learnability checks (did the RMs learn?), and the samples' texts for the reward-hacking
diagnostics. A user's own reward tensor has none of these but its models table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq

from perm import run_layout as layout
from perm.store import read_column


def samples_and_posts(root: Path):
    """samples.parquet texts and the eval prompts' posts, for the reward-hacking diagnostics (if present)."""
    sp, ep = root / layout.SAMPLES, root / layout.EVAL_PROMPTS
    if not sp.exists() or not ep.exists():
        return None, None
    samples = pq.read_table(sp, columns=["prompt_id", "sample_id", "text", "n_tokens"]).to_pandas()
    prompts = pq.read_table(ep).to_pandas()
    if "post" not in prompts.columns:
        return samples, None
    return samples, dict(zip(prompts.prompt_id, prompts.post, strict=True))


def rm_records(root: Path) -> list[dict]:
    recs = []
    evaluator = layout.rm_record(layout.EVALUATOR_RM)
    for p in sorted(root.glob(layout.RM_RECORDS_GLOB)) + sorted(root.glob(evaluator)):
        r = json.loads(p.read_text())
        recs.append({k: r.get(k) for k in ("model_id", "role", "pretrain_id", "finetune_seed", "accuracy",
                                           "accuracy_se", "gold_accuracy", "n_train_pairs", "wall_s",
                                           "eval_pairs", "n_eval_pairs", "backbone", "train_tokens",
                                           "train_sequence_tokens")})
        recs[-1]["other_evals"] = r.get("other_evals") or {}
        if r.get("role") == "evaluator":
            recs[-1]["model_id"] = "evaluator"
    return recs


def records_from_models_table(models: Path) -> list[dict]:
    """rm_records for the report from a user's models.parquet (accuracy columns used when present)."""
    df = pq.read_table(models).to_pandas()
    df = df[df.role != "gold"]
    cols = ["model_id", "role", "pretrain_id", "finetune_seed", "accuracy", "accuracy_se", "gold_accuracy"]
    return [{c: (r[c] if c in df.columns and r[c] == r[c] else None) for c in cols} for _, r in df.iterrows()]


def examples(root: Path, k: int = 3) -> list[dict]:
    """A few prompts with the SFT sample, and the best-of-N picks of one RM and of the pretrain ensemble."""
    import numpy as np

    from perm.analysis import ensemble_members, load_reward_tensor
    from perm.bon import aggregate, standardize

    if not (root / layout.REWARDS).exists():
        return []
    t = load_reward_tensor(root / layout.REWARDS, root / layout.MODELS)
    samples = pq.read_table(root / layout.SAMPLES).to_pandas().set_index(["prompt_id", "sample_id"])
    prompts = pq.read_table(root / layout.EVAL_PROMPTS).to_pandas().set_index("prompt_id")
    members = ensemble_members(t)
    single = t.rm_indices[0]
    picks = {"SFT sample (n = 1)": np.zeros(t.n_prompts, dtype=int),
             f"best-of-{t.pool_size}, single RM ({t.model_ids[single]})": np.argmax(t.pool[single], axis=-1)}
    if len(members.get("pretrain", [])) > 1:
        agg = aggregate(standardize(t.pool[members["pretrain"]]), "mean")
        picks[f"best-of-{t.pool_size}, pretrain ensemble (mean)"] = np.argmax(agg, axis=-1)
    ev = t.role_index("evaluator")
    out = []
    for pi in range(min(k, t.n_prompts)):
        pid = int(t.prompt_ids[pi])
        rows = []
        for label, pick in picks.items():
            sid = int(t.sample_ids[pi, pick[pi]])
            row = samples.loc[(pid, sid)]
            rows.append({"label": label, "text": row.text,
                         "evaluator": float(t.pool[ev, pi, pick[pi]]) if ev is not None else None,
                         "gold": float(row.gold_reward) if "gold_reward" in samples.columns else None})
        out.append({"prompt": prompts.loc[pid].prompt, "rows": rows})
    return out


def learnability(root: Path, records: list[dict]) -> dict:
    """Did the RMs learn? name -> {value, description}: the label-noise ceiling, accuracies, agreement with
    the gold order, rank correlation with gold on the policy's pool, and where the SFT policy stands."""
    import numpy as np
    from scipy.stats import spearmanr

    out: dict = {}

    def put(name, value, description, se=None):
        if value is not None and np.isfinite(value):
            out[name] = ({"value": float(value), "description": description}
                         | ({"se": float(se)} if se else {}))

    rms = [r for r in records if r["role"] == "rm"]
    # by_pretrain leaves every other model out
    pretrain_of = {r["model_id"]: r.get("pretrain_id") for r in rms}
    finetune_of = ({r["model_id"]: r.get("finetune_seed") for r in rms}
                   if all(r.get("seed_scope", "shared") == "shared" for r in rms) else None)
    ev_rel = (rms[0].get("eval_pairs") if rms else None) or layout.PREFS_EVAL  # older rm.json: none
    ev_path = root / ev_rel
    if ev_path.exists() and "label_agrees_gold" in pq.read_schema(ev_path).names:
        (agree,) = read_column(ev_path, "label_agrees_gold")
        put("label-noise ceiling", np.mean(agree),
            f"fraction of held-out labels ({ev_rel}) that agree with the "
            "gold reward: the accuracy a perfect RM would get against these noisy labels")
    if rms:
        acc = np.array([r["accuracy"] for r in rms])
        put("RM accuracy, mean", acc.mean(), f"in-distribution pairwise accuracy on {ev_rel} "
            f"({rms[0].get('n_eval_pairs') or 'all'} pairs) over {len(rms)} RMs "
            f"(range {acc.min():.3f}-{acc.max():.3f}); chance is 0.5")
        gold = [r.get("gold_accuracy") for r in rms]
        if all(g is not None for g in gold):
            put("RM agreement with gold order, mean", np.mean(gold),
                "fraction of held-out pairs the RM orders "
                "as the gold reward does (no label noise: a perfect RM gets 1)")
        for rel in rms[0].get("other_evals", {}):
            other = [r["other_evals"][rel] for r in rms if rel in r.get("other_evals", {})]
            put(f"RM accuracy on {rel}, mean", np.mean([o["accuracy"] for o in other]),
                "out-of-distribution pairwise accuracy against these pairs' labels")
            if all("gold_accuracy" in o for o in other):
                put(f"RM agreement with gold order on {rel}, mean",
                    np.mean([o["gold_accuracy"] for o in other]),
                    "fraction of these pairs the RM orders as the gold reward does")
        split = by_pretrain({r["model_id"]: r["accuracy"] for r in rms}, pretrain_of, finetune_of)
        if split:
            put(f"RM accuracy by pretrain, {split['test']} ANOVA p", split["p"],
                "does the backbone change how well its RMs learn? "
                f"mean accuracy per pretrain: {split['means']}; {split['description']}")
    evaluators = [r for r in records if r["role"] == "evaluator"]
    if rms and evaluators:  # the judge should be clearly stronger than every grid RM, on more pairs
        ev = evaluators[0]
        best = max(rms, key=lambda r: r["accuracy"])
        put("evaluator accuracy - best grid RM's", ev["accuracy"] - best["accuracy"], f"the evaluator's "
            f"in-distribution accuracy ({ev['accuracy']:.3f}) minus the best grid RM's ({best['model_id']}, "
            f"{best['accuracy']:.3f}): > 0 where the judge is stronger than every RM it judges")
        if ev.get("n_train_pairs") and all(r.get("n_train_pairs") for r in rms):
            most = max(r["n_train_pairs"] for r in rms)
            put("evaluator training pairs / grid RM's", ev["n_train_pairs"] / most,
                f"{ev['n_train_pairs']} pairs against at most {most} for a grid RM")
    ratio = pretraining_ratio(records)
    if ratio:
        put("backbone pretraining tokens / RM finetuning tokens, min", ratio["min"], ratio["description"])
    if (root / layout.REWARDS).exists() and (root / layout.SAMPLES).exists():
        rw = pq.read_table(root / layout.REWARDS).to_pandas()
        pool = rw[~rw.is_reference].pivot_table(index=["prompt_id", "sample_id"], columns="model_id",
                                                values="reward")
        if "gold" in pool.columns:
            rho_of = {}
            for mid in [m for m in pool.columns if m != "gold"]:
                # prompts whose pool is constant under either score have no rank correlation: skipped
                rho = [spearmanr(g[mid], g["gold"]).statistic for _, g in pool.groupby(level=0)
                       if g[mid].nunique() > 1 and g["gold"].nunique() > 1]
                rho = np.asarray(rho, dtype=float)
                if len(rho) < 2:
                    continue
                put(f"Spearman with gold on the pool: {mid}", rho.mean(),
                    "rank correlation with the gold reward "
                    "over each prompt's pool of policy samples, averaged over prompts",
                    rho.std(ddof=1) / np.sqrt(len(rho)))
                rho_of[mid] = rho.mean()
            grid_rho = {m: v for m, v in rho_of.items() if m in pretrain_of}
            if "evaluator" in rho_of and grid_rho:
                top = max(grid_rho, key=grid_rho.get)
                put("evaluator Spearman with gold - best grid RM's", rho_of["evaluator"] - grid_rho[top],
                    f"the evaluator's rank correlation with gold on the pool ({rho_of['evaluator']:.3f}) "
                    f"minus the best grid RM's ({top}, {grid_rho[top]:.3f})")
            # the evaluator has no grid pretrain: left out
            split = by_pretrain(rho_of, pretrain_of, finetune_of)
            if split:
                put(f"Spearman with gold by pretrain, {split['test']} ANOVA p", split["p"],
                    "does the backbone change how well its RMs rank the pool? "
                    f"mean rho per pretrain: {split['means']}; {split['description']}")
            rm_ids = [r["model_id"] for r in rms if r.get("model_id") in pool.columns]
            rising = best_of_n_shape(pool, rm_ids)
            if rising:
                put("single RMs whose best-of-n gold rises to n = 16", rising["fraction"],
                    rising["description"])
            samples = pq.read_table(root / layout.SAMPLES).to_pandas()
            pool_gold = samples[~samples.is_reference]
            put("SFT sample, mean gold", pool_gold.gold_reward.mean(),
                "gold reward of a random policy sample (n = 1)")
            put("gold best-of-pool, mean gold", pool_gold.groupby("prompt_id").gold_reward.max().mean(),
                "gold reward of the gold-ranked best of the whole pool: the headroom best-of-n can reach")
            prompts = pq.read_table(root / layout.EVAL_PROMPTS).to_pandas()
            if "post" in prompts.columns:
                from perm.testbed.gold import gold_reward_batch

                put("reference summary, mean gold",
                    gold_reward_batch(list(prompts.post), list(prompts.reference)).mean(),
                    "gold reward of the testbed's reference summaries of the eval posts")
    return out


def by_pretrain(values: Mapping[str, float], pretrain_of: Mapping[str, str | None],
                finetune_of: Mapping[str, object] | None = None) -> dict | None:
    """A per-RM learnability number (accuracy, rho) split by pretrain: the mean of each pretrain with two RMs
    or more and the p-value of the pretrain effect. With ``finetune_of`` (each RM's finetune seed) and
    finetune seeds crossed with the pretrains (a seed on two pretrains or more:
    `reward.finetune_seed_scope: shared`), a two-way additive ANOVA, pretrain + finetune seed, by least
    squares (the pretrain's F test against the model without it): a finetune seed's effect on every backbone
    is then not counted as noise within a pretrain. Otherwise a one-way ANOVA (scipy.stats.f_oneway; the
    finetune seeds within a pretrain are its replicates). None unless two pretrains have two RMs each: the
    paper layout has one pretrain with several, so only ``reward.layout: full`` (or a grid like it) can tell.
    A seed effect on learnability is a different question from Figures 1-3's (do RMs of one backbone rank
    alike?)."""
    import numpy as np
    from scipy.stats import f as f_dist
    from scipy.stats import f_oneway

    groups: dict[str, list[float]] = {}
    members: dict[str, list[str]] = {}
    for mid, v in values.items():
        if pretrain_of.get(mid) is not None and np.isfinite(v):
            groups.setdefault(str(pretrain_of[mid]), []).append(float(v))
            members.setdefault(str(pretrain_of[mid]), []).append(mid)
    groups = {k: g for k, g in groups.items() if len(g) >= 2}
    if len(groups) < 2:
        return None
    sizes = sorted({len(g) for g in groups.values()})
    shape = f"{len(groups)} pretrains with {'-'.join(map(str, sizes))} RMs each"
    means = ", ".join(f"{k} {np.mean(g):.3f}" for k, g in sorted(groups.items()))
    rows = [(k, finetune_of.get(m) if finetune_of else None, values[m]) for k in groups for m in members[k]]
    seeds = {f for _, f, _ in rows if f is not None}
    crossed = finetune_of is not None and all(f is not None for _, f, _ in rows) and len(seeds) >= 2 and any(
        len({k for k, g, _ in rows if g == f}) >= 2 for f in seeds)
    if crossed:
        y = np.array([v for _, _, v in rows])
        pre, fin = sorted(groups), sorted(seeds, key=str)
        ones = np.ones((len(rows), 1))
        dp = np.array([[k == q for q in pre[1:]] for k, _, _ in rows], dtype=float)
        df_ = np.array([[f == q for q in fin[1:]] for _, f, _ in rows], dtype=float)

        def rss(x):
            beta, *_ = np.linalg.lstsq(x, y, rcond=None)
            return float(np.sum((y - x @ beta) ** 2)), int(np.linalg.matrix_rank(x))

        (full, r_full), (reduced, r_red) = rss(np.hstack([ones, dp, df_])), rss(np.hstack([ones, df_]))
        d1, d2 = r_full - r_red, len(y) - r_full
        if d1 >= 1 and d2 >= 1 and full > 0:
            p = float(f_dist.sf(((reduced - full) / d1) / (full / d2), d1, d2))
            return {"p": p, "means": means, "test": "two-way",
                    "description": "two-way additive ANOVA, pretrain + finetune seed (crossed), over "
                                   f"{shape}: the pretrain's F test (a small p: the pretraining seed changes "
                                   "learnability)"}
    p = float(f_oneway(*groups.values()).pvalue)
    return {"p": p, "means": means, "test": "one-way",
            "description": f"one-way ANOVA over {shape} "
                           "(a small p: the pretraining seed changes learnability)"}


def best_of_n_shape(pool, rm_ids: list[str], upto: int = 16) -> dict | None:
    """Does each single RM's exact best-of-n gold (centred per prompt, perm.bon) rise with n up to `upto`, and
    where does it peak? Over-optimisation (gold falling at larger n) is the paper's subject, so the report
    names every RM whose curve turns down and by how much, rather than hiding it."""
    import numpy as np

    from perm.bon import expected_best_of_n, standardize

    pool = pool.sort_index()
    k = pool.index.get_level_values(0).nunique()
    if not rm_ids or "gold" not in pool.columns or len(pool) % k:
        return None
    size = len(pool) // k
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= size]
    gold = standardize(pool["gold"].to_numpy().reshape(k, size))
    rises, notes = 0, []
    for mid in rm_ids:
        proxy = pool[mid].to_numpy().reshape(k, size)
        curve = np.array([expected_best_of_n(proxy, gold, n).mean() for n in ns])
        upto_i = [i for i, n in enumerate(ns) if n <= upto]
        ok = bool(np.all(np.diff(curve[upto_i]) > 0))
        rises += ok
        peak = int(np.argmax(curve))
        fall = curve[peak] - curve[-1]
        notes.append(f"{mid}: peak {curve[peak]:+.2f} at n = {ns[peak]}"
                     + (f", {fall:.2f} lower at n = {ns[-1]}" if fall > 0 else "")
                     + ("" if ok else f" (not rising to n = {upto})"))
    return {"fraction": rises / len(rm_ids),
            "description": f"fraction of the {len(rm_ids)} grid RMs whose best-of-n gold (gold reward, "
                           f"centred per prompt) rises at every n up to {upto}; a fall at larger n is "
                           "over-optimisation. "
                           + "; ".join(notes)}


def pretraining_ratio(records: list[dict]) -> dict | None:
    """How far each RM's backbone was pretrained beyond its finetuning: the backbone's pretraining tokens
    (its pretrain.json) over the tokens the RM's finetuning read (rm.json ``train_tokens``: each distinct
    prompt and completion once per epoch; ``train_sequence_tokens`` counts whole sequences), with the
    backbone's held-out perplexity. None when no RM records both (a hub backbone, an older run)."""
    rows = []
    for r in records:
        rec = Path(str(r.get("backbone", ""))) / layout.PRETRAIN_RECORD
        if not r.get("train_tokens") or not rec.is_file():
            continue
        pre = json.loads(rec.read_text())
        if not pre.get("tokens"):
            continue
        rows.append((r["model_id"], pre["tokens"] / r["train_tokens"],
                     pre["tokens"] / r["train_sequence_tokens"],
                     pre.get("heldout_perplexity_shipped", pre.get("heldout_perplexity")), pre["tokens"]))
    if not rows:
        return None
    notes = "; ".join(f"{m}: {a:.1f}x ({b:.1f}x whole sequences), {t / 1e6:.1f} M tokens, "
                      f"held-out ppl {p:.3f}"
                      for m, a, b, p, t in rows)
    return {"min": min(a for _, a, _, _, _ in rows),
            "description": "each RM's backbone pretraining tokens over the tokens its finetuning read (each "
                           "distinct prompt and completion once per epoch; in brackets, counting whole "
                           f"prompt + completion sequences): {notes}"}
