"""Coverage of perm's intervals on a run's own seed design, by simulation.

An interval over five pretrains is only as good as its small-sample correction, and that depends on the
design: crossed or nested finetune seeds, how many RMs each unit carries (the paper layout's seed0 carries
five of nine). :func:`simulate_coverage` plants known seed structure on the run's design (its pretrain ids,
finetune seeds and scope), many times over, and counts how often the intervals of
:func:`perm.seedstats.multi_bootstrap` cover the planted truth, for two statistics the report's numbers are
made of:

* ``single mean``: the mean over RMs and prompts of per-RM, per-prompt values (a Table 1 single-RM cell,
  Figure 1 and 2's relation means), ``y[m, p] = σ_pt·A[pretrain] + σ_ft·F[finetune seed] + 0.3·AF[m] +
  prompt[p] + noise``, truth 0;
* ``share_pt`` (and ``share_ft``): the pool decomposition's pretrain (finetune) share
  (:func:`perm.seedstats.decomposition_intervals`) on :func:`perm.seedstats.planted_pool` scores whose seed
  effects vary in size from seed to seed (log-normal, sd 0.5: seeds are not all alike), truth
  :func:`heterogeneous_share_pt` (the population share).

Scenarios (σ_pt, σ_ft) span no seed effect, either one, and both. The report prints the range of coverage
over scenarios beside its intervals. A run with named ensembles also gets :func:`simulate_named_coverage`:
their intervals (a jackknife over members plus the prompt bootstrap) on planted ensembles of their sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from perm import seedstats

SCENARIOS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5))
HETEROGENEITY = 0.5  # log-sd of each seed's effect size in the share simulation


def _seed_gain(rng: np.random.Generator, k: int, h: float) -> np.ndarray:
    """(k,) per-unit effect sizes exp(h z − h²), with E[gain²] = 1."""
    return np.exp(h * rng.standard_normal(k) - h * h)


def heterogeneous_share_pt(sigma_pt: float, sigma_ft: float, h: float = HETEROGENEITY, draws: int = 400_000,
                           seed: int = 12345) -> float:
    """The population pretrain share when each seed's effect has size gain·σ (gain = exp(h z − h²)): on
    standardised scores a pair's D is 1 − cov/(sd_a·sd_b), averaged over the seeds' gains (Monte Carlo over
    ``draws`` gain draws), and share_pt = (D_neither − D_same_pretrain) / D_neither."""
    rng = np.random.default_rng(seed)
    g = {k: _seed_gain(rng, draws, h) ** 2 for k in ("p1", "p2", "f1", "f2")}
    pt, ft = sigma_pt**2, sigma_ft**2

    def var(p, f):
        return 1.0 + pt * g[p] + ft * g[f] + 1.0

    d_nei = np.mean(1.0 - 1.0 / np.sqrt(var("p1", "f1") * var("p2", "f2")))
    d_sp = np.mean(1.0 - (1.0 + pt * g["p1"]) / np.sqrt(var("p1", "f1") * var("p1", "f2")))
    return float((d_nei - d_sp) / d_nei)


def simulate_coverage(
    pretrain_ids: Sequence, finetune_seeds: Sequence, scope: str = "shared", n_prompts: int = 100,
    pool_size: int = 16, sims: int = 300, draws: int = 200, level: float = 0.9, seed: int = 0,
    scenarios: Sequence[tuple[float, float]] = SCENARIOS,
    statistics: Sequence[str] = ("single mean", "share_pt", "share_ft"),
) -> pd.DataFrame:
    """Coverage of ``level`` intervals on this design: one row per (scenario, statistic) with ``sigma_pt,
    sigma_ft, statistic, coverage`` (share of ``sims`` simulated grids whose interval holds the truth),
    ``mc_se`` (its binomial se), ``width`` (mean interval width), ``sims``, ``level``, ``resamples``. A share
    the design gives no interval (:func:`perm.seedstats.one_unit_relations`: the paper layout's) or no pairs
    (no same_finetune pairs under per_rm) has no rows."""
    design = seedstats.seed_design(pretrain_ids, finetune_seeds, scope)
    pu, _ = seedstats.pretrain_units(pretrain_ids)
    fu, _ = seedstats.pretrain_units(finetune_seeds)
    m = len(pu)
    relations = seedstats.pair_relations(pretrain_ids, finetune_seeds, scope)
    without = set(seedstats.one_unit_relations(relations, pretrain_ids, finetune_seeds))
    counts = seedstats.relation_counts(relations)
    without |= {f for f, rel in (("pt", "same_pretrain"), ("ft", "same_finetune")) if not counts.get(rel)}
    statistics = [s for s in statistics if not (s.startswith("share_") and s[len("share_"):] in without)]
    rng = np.random.default_rng(seed)
    truths: dict[tuple[float, float], float] = {}
    rows = []
    for sigma_pt, sigma_ft in scenarios:
        hits: dict[str, list[tuple[bool, float]]] = {s: [] for s in statistics}
        for i in range(sims):
            if "single mean" in statistics:
                y = (sigma_pt * rng.standard_normal(pu.max() + 1)[pu]
                     + sigma_ft * rng.standard_normal(fu.max() + 1)[fu]
                     + 0.3 * rng.standard_normal(m))[:, None] + rng.standard_normal(n_prompts)[None]
                y = y + rng.standard_normal((m, n_prompts))
                r = seedstats.multi_bootstrap({"y": seedstats.single_rm_arm(y)}, pretrain_ids, draws=draws,
                                              level=level, seed=i, finetune_seeds=finetune_seeds,
                                              scope=scope).iloc[0]
                hits["single mean"].append((bool(r.lo <= 0.0 <= r.hi), float(r.hi - r.lo)))
            shares = [k for k in ("share_pt", "share_ft") if k in statistics]
            if shares:
                pool = seedstats.planted_pool(rng, pretrain_ids, finetune_seeds, n_prompts, pool_size, 0.0,
                                              0.0)
                a = rng.standard_normal((pu.max() + 1, n_prompts, pool_size))
                f = rng.standard_normal((fu.max() + 1, n_prompts, pool_size))
                ga, gf = (_seed_gain(rng, pu.max() + 1, HETEROGENEITY),
                          _seed_gain(rng, fu.max() + 1, HETEROGENEITY))
                pool = pool + sigma_pt * (ga[:, None, None] * a)[pu] + sigma_ft * (gf[:, None, None] * f)[fu]
                if (sigma_pt, sigma_ft) not in truths:  # share_ft is share_pt with the factors' roles swapped
                    truths[(sigma_pt, sigma_ft)] = {"share_pt": heterogeneous_share_pt(sigma_pt, sigma_ft),
                                                    "share_ft": heterogeneous_share_pt(sigma_ft, sigma_pt)}
                df = seedstats.decomposition_intervals(
                    pool, pretrain_ids, finetune_seeds, scope=scope, draws=draws, level=level, seed=i,
                ).set_index("statistic")
                for k in shares:
                    truth, r = truths[(sigma_pt, sigma_ft)][k], df.loc[k]
                    hits[k].append((bool(r.lo <= truth <= r.hi), float(r.hi - r.lo)))
        for stat, h in hits.items():
            cov = float(np.mean([c for c, _ in h]))
            rows.append({"sigma_pt": sigma_pt, "sigma_ft": sigma_ft, "statistic": stat, "coverage": cov,
                         "mc_se": float(np.sqrt(cov * (1 - cov) / len(h))),
                         "width": float(np.mean([w for _, w in h])),
                         "sims": len(h), "level": level, "resamples": design.describe()})
    return pd.DataFrame(rows)


def planted_members(rng: np.random.Generator, n_prompts: int, pool_size: int, k: int, n_feat: int = 3,
                    bias: float = 0.5, sigma_seed: float = 0.7, sigma_noise: float = 0.7
                    ) -> tuple[np.ndarray, np.ndarray]:
    """K members of one backbone: each scores the candidates' quality q plus the backbone's bias on feature 0
    (a signal they share), plus its own seed effect (its own random weights b_k ~ N(0, σ_seed²) on the
    candidates' features, the same on every prompt) and noise. Returns ``(scores (K, P, N), target)``, the
    target being q standardised per prompt."""
    from perm import bon

    q = rng.standard_normal((n_prompts, pool_size))
    f = rng.standard_normal((n_feat, n_prompts, pool_size))
    b = rng.normal(0, sigma_seed, (k, n_feat))
    scores = (q + bias * f[0])[None] + np.einsum("kj,jpn->kpn", b, f)
    scores = scores + sigma_noise * rng.standard_normal((k, n_prompts, pool_size))
    return scores, bon.standardize(q)


def simulate_named_coverage(sizes: Sequence[int], n_prompts: int = 60, pool_size: int = 16,
                            n: int | None = None, sims: int = 100, draws: int = 200, level: float = 0.9,
                            seed: int = 0, truth_draws: int = 200) -> pd.DataFrame:
    """Coverage of a named ensemble's ``level`` interval (:func:`perm.seedstats.named_ensemble_intervals`: a
    jackknife over its members plus a prompt bootstrap) for each member count of ``sizes`` (>= 2), on
    :func:`planted_members` ensembles: the share of ``sims`` simulated ensembles, each with fresh members on
    fresh prompts, whose interval of the best-of-``n`` value (default: the pool size) holds its expectation
    over members and prompts (from ``truth_draws`` member draws on 500 prompts). Rows as
    :func:`simulate_coverage`'s, statistic ``named ensemble (K members)``, sigma_pt / sigma_ft NaN."""
    n = pool_size if n is None else n
    rows = []
    for k in sorted({int(s) for s in sizes if s >= 2}):
        rng = np.random.default_rng([seed, k, 1])
        truth = float(np.mean([
            seedstats.ensemble_pick_values(*planted_members(rng, 500, pool_size, k), n).mean()
            for _ in range(truth_draws)]))
        rng = np.random.default_rng([seed, k, 2])
        hits = []
        for i in range(sims):
            members, target = planted_members(rng, n_prompts, pool_size, k)
            r = seedstats.named_ensemble_intervals(members, target, n, draws=draws, level=level,
                                                   seed=i).iloc[0]
            hits.append((bool(r.lo <= truth <= r.hi), float(r.hi - r.lo)))
        cov = float(np.mean([c for c, _ in hits]))
        rows.append({"sigma_pt": np.nan, "sigma_ft": np.nan, "statistic": f"named ensemble ({k} members)",
                     "coverage": cov, "mc_se": float(np.sqrt(cov * (1 - cov) / len(hits))),
                     "width": float(np.mean([w for _, w in hits])), "sims": len(hits), "level": level,
                     "resamples": "jackknife over its members + prompt bootstrap"})
    return pd.DataFrame(rows)
