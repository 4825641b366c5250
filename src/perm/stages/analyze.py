"""`perm analyze`: the figures' and Table 1's numbers (perm.analysis.run_analysis over the reward tensor)
into analysis/ — from this run's tensor, or a user's (`--rewards --models`), whose analysis reads nothing
else of the run. Manifest name `analyze`. Returns the analysis directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import AnalysisConfig, RunConfig
from perm.stages._context import Context
from perm.stages._plan import Job, RunPath, planned_keys
from perm.store import atomic_path, hash_obj

NAME = "analyze"
NEEDS = ("score", "sample")
WRITES = {"analyze": (layout.ANALYSIS,)}
SUMMARY = "Compute the figures' and Table 1's numbers (this run's reward tensor, or --rewards/--models)."
TAKES_TENSOR = True  # --rewards/--models: a user's reward tensor instead of this run's (run(ctx, R, M))


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """One job, keyed on the tensor: this run's score and sample outputs, or a user's files (`rewards`,
    `models`, and `ensembles`, the costs beside the models file, only where it exists; :func:`run` hands the
    job their paths), and on `reward.finetune_seed_scope` (what a shared finetune seed means for the pair
    relations)."""
    if "rewards" in upstream:
        tensor = {"rewards": upstream["rewards"], "models": upstream["models"]}
        if "ensembles" in upstream:
            tensor["ensembles"] = upstream["ensembles"]
    else:
        tensor = {"score": upstream["score"], "samples": upstream["sample"]}
    # the scope says which RM pairs are `same_finetune`; v2: the seed-aware tables (issue 12); v3: intervals
    # over the crossed seed design, scale-free Figures 1 and 3, Table 1 over every ensemble (issue 27)
    key = hash_obj({"analysis": cfg.analysis, "tensor": tensor, "version": 4,
                    "scope": cfg.reward.finetune_seed_scope})
    args = dict(rewards=RunPath(layout.REWARDS), models=RunPath(layout.MODELS), external=False,
                analysis=cfg.analysis, scope=cfg.reward.finetune_seed_scope)
    return [Job("analyze", key, job_analyze, args, (layout.ANALYSIS,), announce=False)]


keys = planned_keys(plan)


def run(ctx: Context, rewards: Path | None = None, models: Path | None = None) -> Path:
    from perm.store import hash_path

    if rewards is not None:  # a user's tensor: nothing of this run's may leak into its analysis
        upstream = {"rewards": hash_path(rewards), "models": hash_path(models)}
        costs_path = Path(models).parent / layout.ENSEMBLES
        if costs_path.exists():
            upstream["ensembles"] = hash_path(costs_path)
        # handed the tensor's identities alone: nothing of the config is resolved (no hub, no checkpoint)
        tensor = dict(rewards=str(rewards), models=str(models), external=True)
        ctx.run_planned(lambda cfg, up: [job.with_args(**tensor) for job in plan(cfg, up)],
                        upstream=lambda: upstream)
    else:
        ctx.need("score")
        ctx.run_planned(plan)
    return ctx.root / layout.ANALYSIS


def job_analyze(run_dir: str, *, rewards: str, models: str, external: bool, analysis: AnalysisConfig,
                scope: str) -> dict:
    """The analysis of the reward tensor (`rewards`, `models`; the ensembles' costs beside the models file
    where they exist) into run_dir's analysis/, with this run's samples and posts unless `external` (a
    user's tensor: nothing of this run may leak into its analysis)."""
    from perm.analysis import load_ensemble_costs, load_reward_tensor, run_analysis, save_analysis
    from perm.report_inputs import samples_and_posts

    a, root = analysis, Path(run_dir)
    tensor = load_reward_tensor(rewards, models)
    costs = load_ensemble_costs(Path(models).parent / layout.ENSEMBLES)
    samples, posts = (None, None) if external else samples_and_posts(root)
    results = run_analysis(tensor, ns=list(a.ns) if a.ns else None, anova_draws=a.anova_draws, seed=a.seed,
                           samples=samples, posts=posts, scale=a.scale, scope=scope, bootstrap=a.bootstrap,
                           level=a.level, figure3_method=a.figure3, pick_ranker_name=a.pick_ranker,
                           coverage_sims=a.coverage_sims, costs=costs)
    with atomic_path(root / layout.ANALYSIS) as tmp:
        save_analysis(results, tmp)
    return {"prompts": tensor.n_prompts, "pool": tensor.pool_size}
