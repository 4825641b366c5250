"""`perm analyze`: the figures' and Table 1's numbers (perm.analysis.run_analysis over the reward tensor)
into analysis/ — from this run's tensor, or a user's (`--rewards --models`), whose analysis reads nothing
else of the run. Manifest name `analyze`. Returns the analysis directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import RunConfig
from perm.stages._context import Context
from perm.store import atomic_path, hash_obj

NAME = "analyze"
NEEDS = ("score", "sample")
WRITES = {"analyze": (layout.ANALYSIS,)}
SUMMARY = "Compute the figures' and Table 1's numbers (this run's reward tensor, or --rewards/--models)."
TAKES_TENSOR = True  # --rewards/--models: a user's reward tensor instead of this run's (run(ctx, R, M))


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    """Keyed on the tensor: this run's score and sample outputs, or a user's files (`rewards`, `models`, and
    `ensembles`, the costs beside the models file, only where it exists), and on `reward.finetune_seed_scope`
    (what a shared finetune seed means for the pair relations)."""
    if "rewards" in upstream:
        tensor = {"rewards": upstream["rewards"], "models": upstream["models"]}
        if "ensembles" in upstream:
            tensor["ensembles"] = upstream["ensembles"]
    else:
        tensor = {"score": upstream["score"], "samples": upstream["sample"]}
    # the scope says which RM pairs are `same_finetune`; v2: the seed-aware tables (issue 12); v3: intervals
    # over the crossed seed design, scale-free Figures 1 and 3, Table 1 over every ensemble (issue 27)
    return {"analyze": hash_obj({"analysis": cfg.analysis, "tensor": tensor, "version": 4,
                                 "scope": cfg.reward.finetune_seed_scope})}


def run(ctx: Context, rewards: Path | None = None, models: Path | None = None) -> Path:
    from perm.analysis import load_ensemble_costs, load_reward_tensor, run_analysis, save_analysis
    from perm.report_inputs import samples_and_posts
    from perm.store import hash_path

    external = rewards is not None
    if external:  # a user's tensor: nothing of this run's samples or data may leak into its analysis
        upstream = {"rewards": hash_path(rewards), "models": hash_path(models)}
        costs_path = Path(models).parent / layout.ENSEMBLES
        if costs_path.exists():
            upstream["ensembles"] = hash_path(costs_path)
    else:
        rewards, models = ctx.need("score"), ctx.root / layout.MODELS
        costs_path = Path(models).parent / layout.ENSEMBLES
        upstream = ctx.upstream()
    a = ctx.cfg.analysis

    def analyze() -> dict:
        tensor = load_reward_tensor(rewards, models)
        costs = load_ensemble_costs(costs_path)
        samples, posts = (None, None) if external else samples_and_posts(ctx.root)
        results = run_analysis(tensor, ns=list(a.ns) if a.ns else None, anova_draws=a.anova_draws,
                               seed=a.seed, samples=samples, posts=posts, scale=a.scale,
                               scope=ctx.cfg.reward.finetune_seed_scope, bootstrap=a.bootstrap, level=a.level,
                               figure3_method=a.figure3, pick_ranker_name=a.pick_ranker,
                               coverage_sims=a.coverage_sims, costs=costs)
        with atomic_path(ctx.root / layout.ANALYSIS) as tmp:
            save_analysis(results, tmp)
        return {"prompts": tensor.n_prompts, "pool": tensor.pool_size}

    ctx.run_one("analyze", keys(ctx.cfg, upstream)["analyze"], analyze, [layout.ANALYSIS], announce=False)
    return ctx.root / layout.ANALYSIS


