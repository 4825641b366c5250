"""The testbed kit: what the experiment holds fixed, trained once by a recipe in the repository and shipped in
the package beside the testbed's backbones (src/perm/testbed/kit/).

In the paper the SFT policy, the human comparisons and the T5-XXL evaluator are fixed inputs; the experiment
is the grid of reward models. The kit makes the testbed's world the same kind of input: the SFT policy
(``policy/``, ``sft.checkpoint: testbed:kit/policy``), its preference pairs (the grid's training pairs
``policy_prefs.parquet``, their held-out pairs ``policy_prefs_eval.parquet`` and the evaluator's extra posts
``evaluator_prefs.parquet``; ``reward.pairs_from: testbed:kit``) and the trained evaluator RM (``evaluator/``,
``evaluator.rm_checkpoint: testbed:kit/evaluator``), with ``kit.json``: the sha256 of every file per part, the
recipe (:func:`world`) and its hash, the testbed it was built on, the stage keys of the run it came from and a
summary. perm.shipped verifies a part against that record before a run loads it, and keys the run's stages on
the part's recorded hash, so a kit-loading run has the same world on every CPU and trains only the grid.

``perm kit build [configs/testbed-kit.yaml] [--from RUN] [--out DIR]`` (or ``python -m perm.kit build``)
regenerates it: it runs the recipe's world stages (testbed, SFT, policy pairs, the evaluator alone: no grid)
in the recipe's run directory, or reuses a finished run of the recipe (``--from``), after checking that the
run's config and recorded stage keys are the recipe's, then copies the parts into the kit atomically and
records their hashes. ``perm kit verify [DIR]`` checks a kit against its record and, for the package's, the
recipe against the one it records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from perm import run_layout as layout
from perm.config import ConfigError, RunConfig, configs_dir, load_config, to_dict
from perm.shipped import (
    EVALUATOR,
    KIT_FOLDERS,
    KIT_RECORD,
    PAIR_FILES,
    PAIRS,
    POLICY,
    KitError,
    kit_files,
    kit_record,
    kit_testbed_identity,
    verify_kit,
)
from perm.store import RunStore, hash_obj

RECIPE = configs_dir() / "testbed-kit.yaml"
SOURCES = {POLICY: layout.POLICY, EVALUATOR: layout.EVALUATOR_RM}  # a model part's folder in the recipe's run
WORLD_STAGES = ("testbed", layout.POLICY, "policy-prefs", "evaluator-prefs", layout.EVALUATOR_RM)  # the kit's
GRID_ONLY = ("finetune_seeds", "layout", "finetune_seed_scope", "max_train_pairs", "epochs", "lr",
             "pairs_from")
"""reward fields that only the grid reads (the evaluator has its own epochs and lr): not part of the world."""
KIT_SINCE = ("micro_batch_size", "processes", "rm_checkpoints")
"""reward fields added after the kit was recorded: out of its world at their old behaviour (null), like
a key."""
KIT_FIELDS = (("sft", "checkpoint"), ("reward", "pairs_from"), ("evaluator", "rm_checkpoint"))


def world(cfg: RunConfig) -> dict:
    """The recipe of a kit: every setting the world's stages read (the testbed, precision and attention, the
    SFT policy's training and initialisation, the pairs' drawing, the evaluator and the reward fields it
    finetunes with); the grid's own fields and the run's plumbing (out, workers, the pool) are left out."""
    from perm.stages._grid import unkeyed_defaults
    from perm.stages.sft import sft_record

    p, pp = cfg.sft, cfg.policy_pairs
    reward = {k: v for k, v in to_dict(cfg.reward).items() if k not in GRID_ONLY}
    reward |= {"policy_pairs_per_post": pp.per_post, "policy_kwise": pp.kwise}  # the names kit.json records
    return {"testbed": kit_testbed_identity(to_dict(cfg.testbed)), "precision": cfg.precision,
            "attention": cfg.attention,
            "policy": {"init_from": p.init_from, **sft_record(p), "max_new_tokens": pp.max_new_tokens,
                       "seed": pp.seed},
            "reward": unkeyed_defaults(reward, KIT_SINCE),
            "evaluator": {k: v for k, v in to_dict(cfg.evaluator).items() if k != "rm_checkpoint"}}


def check_recipe(cfg: RunConfig, recipe: Path) -> None:
    """A kit recipe trains the whole world on the testbed in a pinned precision; raises KitError naming
    the field."""
    bad = [f"{section}.{name}" for section, name in KIT_FIELDS
           if getattr(getattr(cfg, section), name) is not None]
    problems = [f"{', '.join(bad)} must be null (a kit recipe trains what the kit ships)"] if bad else []
    if cfg.data.prefs is not None:
        problems.append("data.prefs must be null (the kit is the embedded testbed's)")
    if not cfg.evaluator.enabled:
        problems.append("evaluator.enabled must be true (the kit ships the evaluator)")
    if cfg.reward.pairs == "testbed":
        problems.append("reward.pairs must be policy or mix (the kit ships the policy's pairs)")
    if cfg.precision == "auto":
        problems.append("precision must be fp32 or bf16, not auto "
                        "(the recipe builds the same world on every CPU)")
    if problems:
        raise KitError(f"{recipe}: not a kit recipe: {'; '.join(problems)}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def world_diff(have: dict, want: dict) -> list[str]:
    """The fields where world `have` differs from `want`, as ``field: have -> want``."""
    a, b = _flat(have), _flat(want)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def upstream_of(run: Path, cfg: RunConfig) -> dict[str, str]:
    """The ``upstream`` mapping of stage keys (perm.stages._context) for run directory `run` read with config
    `cfg`, without writing there: its finished stages' output hashes and the keys of `cfg`'s checkpoints (a
    shipped backbone by its recorded hash, a hub id at the commit the run's manifest pinned, a
    folder by content)."""
    from perm.hub import model_ref, model_specs
    from perm.shipped import is_shipped, key
    from perm.stages._context import checkpoint_key, checkpoint_name

    store = RunStore(run)
    m = store.manifest()
    up = {name: store.output_hash(name) for name, rec in m["stages"].items() if rec.get("status") == "done"}
    pins = m.get("hub_refs", {})
    for spec in model_specs(cfg):
        ref = model_ref(spec)
        up[checkpoint_name(spec)] = (key(spec) if is_shipped(spec)
                                     else ref.key(pins.get(ref.reference)) if ref
                                     else checkpoint_key(spec))
    return up


def world_keys(cfg: RunConfig, upstream: dict[str, str]) -> dict[str, str]:
    """The keys of the world's stages under `cfg` (those of WORLD_STAGES the config has)."""
    from perm.stages import policy_prefs, sft, testbed
    from perm.stages.train_rm import evaluator_key

    keys: dict[str, str] = {}
    for module in (testbed, sft, policy_prefs):
        keys |= module.keys(cfg, upstream)
    keys[layout.EVALUATOR_RM] = evaluator_key(cfg, upstream)
    return {name: keys[name] for name in WORLD_STAGES if name in keys}


def check_run(run: Path, cfg: RunConfig, recipe: Path) -> dict[str, str]:
    """Check that run directory `run` holds the world of recipe `cfg`: its config's world is the recipe's, and
    each world stage finished with the key the recipe gives it (same inputs: shipped backbones, testbed, code)
    and intact outputs. Returns those keys; raises KitError naming the run, the stage or
    field and what differs."""
    run = Path(run)
    if not (run / layout.MANIFEST).is_file() or not (run / layout.CONFIG).is_file():
        raise KitError(f"{run}: not a run directory (no {layout.MANIFEST} and {layout.CONFIG})")
    try:
        have = load_config(run / layout.CONFIG)
    except ConfigError as e:
        raise KitError(f"{run / layout.CONFIG}: {e}") from None
    diff = world_diff(world(have), world(cfg))
    if diff:
        raise KitError(f"{run} was not run with the recipe {recipe} (run -> recipe): {'; '.join(diff)}")
    store = RunStore(run)
    try:
        keys = world_keys(cfg, upstream_of(run, cfg))
    except KeyError as e:
        raise KitError(f"{run}: {e.args[0]} has not finished "
                       "(finish the run, or build without --from)") from None
    for name, key in keys.items():
        rec = store.stage(name)
        if not rec or rec.get("status") != "done":
            raise KitError(f"{run}: {name} has not finished (finish the run, or build without --from)")
        if rec.get("key") != key:
            raise KitError(f"{run}: {name} was made from other inputs than the recipe's (recorded key "
                           f"{rec.get('key', '')[:12]}, the recipe's {key[:12]}): a shipped backbone, the "
                           "testbed generator or perm's keys changed since; build without --from")
        if not store.is_complete(name, key):
            raise KitError(f"{run}: the outputs of {name} ({', '.join(rec.get('outputs', {}))}) changed "
                           "since it finished; build without --from")
    return keys


def train(cfg: RunConfig, progress=None) -> Path:
    """Run the recipe's world stages in its run directory `cfg.out` (resuming what is complete): the testbed,
    the SFT policy, the policy pairs and the evaluator RM, without the grid."""
    from perm.pipeline import Pipeline
    from perm.stages.train_rm import run_evaluator
    from perm.store import RunLock, remove_temp_paths

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(root).acquire()
    try:
        remove_temp_paths(root)
        pipe = Pipeline(cfg, progress)
        pipe.run("policy-prefs")
        run_evaluator(pipe.ctx)
    finally:
        lock.release()
    return root


def _rewrite_json(path: Path, **fields) -> None:
    rec = json.loads(path.read_text())
    path.write_text(json.dumps(rec | fields, indent=2, sort_keys=True) + "\n")


def ship(run: Path, cfg: RunConfig, recipe: Path, keys: dict[str, str], out: Path) -> dict:
    """Copy the world of finished run `run` (checked by :func:`check_run`) into the kit folder `out`,
    atomically: policy/ (its policy.json naming the backbone it started from by spec, not by this machine's
    path), the pair files, evaluator/ (the RM with its tokenizer and rm.json, its backbone named by spec), and
    kit.json with every file's sha256 per part, the recipe, the testbed, the stage keys and a summary. Returns
    the record."""
    from perm.store import atomic_path

    run, out = Path(run), Path(out)
    manifest = RunStore(run).manifest()
    pair_files = [f for f, stage in zip(PAIR_FILES, ("policy-prefs", "policy-prefs", "evaluator-prefs"),
                                        strict=True)
                  if stage in keys]
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        shutil.copytree(run / SOURCES[POLICY], tmp / KIT_FOLDERS[POLICY])
        _rewrite_json(tmp / KIT_FOLDERS[POLICY] / layout.POLICY_RECORD, init=cfg.sft.init_from)
        shutil.copytree(run / SOURCES[EVALUATOR], tmp / KIT_FOLDERS[EVALUATOR])
        _rewrite_json(tmp / KIT_FOLDERS[EVALUATOR] / layout.RM_RECORD,
                      backbone=cfg.evaluator.checkpoint or layout.EVALUATOR_PRETRAIN)
        for f in pair_files:
            shutil.copyfile(run / f, tmp / f)
        artefacts = {}
        for part in (POLICY, PAIRS, EVALUATOR):
            files = kit_files(tmp, part)
            artefacts[part] = {"files": files, "sha256": hash_obj(files)}
        recipe_world = world(cfg)
        ev = json.loads((tmp / KIT_FOLDERS[EVALUATOR] / layout.RM_RECORD).read_text())
        pol = json.loads((tmp / KIT_FOLDERS[POLICY] / layout.POLICY_RECORD).read_text())
        stages = manifest["stages"]
        record = {
            "recipe_file": Path(recipe).name,
            "recipe": recipe_world,
            "recipe_hash": hash_obj(recipe_world),
            "testbed": recipe_world["testbed"],
            "artefacts": artefacts,
            "specs": {POLICY: "testbed:kit/policy", PAIRS: "testbed:kit", EVALUATOR: "testbed:kit/evaluator"},
            "stage_keys": keys,
            "built_from": {"run": run.name, "hardware": manifest.get("hardware"),
                           "wall_s": {n: stages[n].get("wall_s") for n in keys if n in stages}},
            "summary": {
                POLICY: {k: pol[k] for k in ("eval_loss_before", "eval_loss", "step", "init") if k in pol},
                PAIRS: {f: stages[s]["info"].get(k) for f, s, k in (
                    ("train_pairs", "policy-prefs", "train_pairs"),
                    ("eval_pairs", "policy-prefs", "eval_pairs"),
                    ("evaluator_pairs", "evaluator-prefs", "train_pairs")) if s in stages},
                EVALUATOR: {k: ev.get(k) for k in ("accuracy", "accuracy_se", "gold_accuracy",
                                                   "n_train_pairs", "eval_pairs", "other_evals", "steps")},
            },
        }
        (tmp / KIT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def build(recipe: Path | str = RECIPE, *, from_run: Path | str | None = None, out: Path | str | None = None,
          progress=None) -> dict:
    """Regenerate a kit from `recipe`: train its world in the recipe's run directory (or reuse the finished
    run `from_run`), check the run against the recipe (:func:`check_run`), ship it into `out` (default: the
    package's kit folder) and verify the result. Returns the kit's record."""
    from perm import shipped

    recipe = Path(recipe)
    cfg = load_config(recipe)
    check_recipe(cfg, recipe)
    run = Path(from_run) if from_run is not None else train(cfg, progress)
    keys = check_run(run, cfg, recipe)
    out = Path(out) if out is not None else shipped.KIT_ROOT
    ship(run, cfg, recipe, keys, out)
    return verify(out, recipe if out == shipped.KIT_ROOT else None)


def verify(root: Path | str | None = None, recipe: Path | str | None = None) -> dict:
    """Check kit `root` (default: the package's) against its record (perm.shipped.verify_kit) and, given
    `recipe`, that the recipe still describes it (a changed recipe or default means rebuilding). Returns the
    record; raises KitError naming the file or field and what differs."""
    from perm import shipped

    root = Path(root) if root is not None else shipped.KIT_ROOT
    rec = verify_kit(root)
    if recipe is not None:
        want = world(load_config(recipe))
        diff = world_diff(rec.get("recipe", {}), want)
        if diff or rec.get("recipe_hash") != hash_obj(want):
            raise KitError(f"{root / KIT_RECORD}: built with another recipe than {recipe} says now "
                           f"(kit -> recipe): {'; '.join(diff) or 'the recorded recipe hash'}; "
                           f"rebuild it (`perm kit build {recipe}`)")
    return rec


def describe(rec: dict, root: Path) -> str:
    """A few lines on a verified kit: its parts, their files and hashes, the recipe."""
    lines = [f"kit {root}: recipe {rec.get('recipe_file')} ({str(rec.get('recipe_hash', ''))[:12]}), testbed "
             + ", ".join(f"{k} {v}" for k, v in (rec.get("testbed") or {}).items())]
    for part, entry in rec["artefacts"].items():
        lines.append(f"  {part:<9} {rec.get('specs', {}).get(part, ''):<22} {len(entry['files'])} files, "
                     f"sha256 {entry['sha256'][:16]}...: verified")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m perm.kit build [RECIPE] [--from RUN] [--out DIR]`` | ``verify [DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m perm.kit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train (or reuse) the recipe's world, ship it into the kit, verify it")
    b.add_argument("recipe", nargs="?", default=str(RECIPE))
    b.add_argument("--from", dest="from_run", help="a finished run directory of the recipe to ship from")
    b.add_argument("--out", help="the kit folder to write (default: the package's)")
    v = sub.add_parser("verify", help="check a kit against its record (and the package's against the recipe)")
    v.add_argument("root", nargs="?", help="a kit folder (default: the package's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            rec = build(args.recipe, from_run=args.from_run, out=args.out)
            root = Path(args.out) if args.out else None
        else:
            root = Path(args.root) if args.root else None
            rec = verify(root, RECIPE if root is None else None)
    except (KitError, ConfigError) as e:
        print(f"error: {e}")
        return 2
    from perm import shipped

    print(describe(rec, root or shipped.KIT_ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["KitError", "build", "check_recipe", "check_run", "kit_record", "ship", "verify", "world"]
