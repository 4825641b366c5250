"""`perm` command line: one command per stage (made from its declaration, perm.stages), and `perm run` for all
of them.

Every command takes an optional config file (default: the embedded configs/tiny.yaml) and dotted
overrides, e.g. `perm testbed out=runs/x testbed.seed=3`. Bad input exits with code 2 and a message
naming the file, line and field; nothing half-written is left behind. A command that writes a run directory
holds its lock (perm.store.RunLock): a second writer exits with code 2 naming the holder's pid. Ctrl-C exits
with 130 (SIGTERM too) and a failed job (a dead worker, a raising job) with 1, both after removing temp files;
completed stages and jobs are kept, and rerunning the same command resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from perm import run_layout as layout
from perm.config import ConfigError, RunConfig, load_config
from perm.progress import DEFAULT_EVERY, Progress
from perm.stages import MODULES

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reward-model underspecification and pretrain-ensemble reward models.")

Args = Annotated[list[str] | None, typer.Argument(help="[CONFIG.yaml] then key=value overrides")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")]
JsonLog = Annotated[bool, typer.Option("--json-log", help="One JSON object per progress event (stderr).")]
Rerun = Annotated[list[str] | None, typer.Option(
    "--rerun", metavar="STAGE",
    help="Run STAGE's jobs again even where complete for the same inputs (stage keys hash the config and "
         "inputs, not perm's code); repeatable. What they feed reruns where their outputs change.")]
ProgressEvery = Annotated[float, typer.Option(
    "--progress-every", min=0.001, metavar="SECONDS",
    help="Seconds of wall time between two progress lines of a long job (off a terminal; on one, bars).")]


def _user_errors() -> tuple[type[Exception], ...]:
    from perm.data import DataError
    from perm.models import ModelLoadError
    from perm.reward import NonFiniteRewardError
    from perm.shipped import ShippedPretrainError
    from perm.stages.score import SamplesError

    errors: list[type[Exception]] = [ConfigError, DataError, ModelLoadError, SamplesError,
                                     NonFiniteRewardError, ShippedPretrainError]
    try:
        from perm.analysis import RewardTensorError

        errors.append(RewardTensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _resolve(args: list[str] | None) -> RunConfig:
    args = list(args or [])
    path = None
    if args and "=" not in args[0]:
        path = args.pop(0)
    for a in args:
        if "=" not in a:
            raise ConfigError(f"{a}: expected key=value (only the first argument may be a config file)")
    return load_config(path, args)


def _progress(quiet: bool, json_log: bool, every: float = DEFAULT_EVERY) -> Progress:
    return Progress("quiet" if quiet else "json" if json_log else "normal", every=every)


INTERRUPTED = "interrupted: completed stages and jobs are kept; rerun the same command to resume"


def _run(stage: str, args, quiet: bool, json_log: bool, rewards: str | None = None, models: str | None = None,
         every: float = DEFAULT_EVERY, rerun: list[str] | None = None) -> None:
    """One writing command. Exit codes: 0 done; 2 bad input or the run directory locked by another process;
    130 interrupted (Ctrl-C); 1 a job failed (a worker died or a job raised; 2 if what it raised
    is bad input).

    The run lock is taken on `out` right after the config resolves, before anything is written there
    (the Pipeline writes config.yaml and the manifest when it is built). `analyze` / `report` with
    ``--rewards`` take it too: they write analysis/, report/, config.yaml and the manifest into their own
    `out` (the tensor's files are only read, and their run is not locked)."""
    from pathlib import Path

    from perm.executors import JobFailedError
    from perm.store import RunLockedError

    lock = None
    try:
        try:
            cfg = _resolve(args)
            if (rewards is None) != (models is None):
                raise ConfigError("--rewards and --models go together (a reward tensor is both files)")
            for p in (rewards, models) if rewards is not None else ():
                if not Path(p).exists():
                    raise ConfigError(f"{p}: file not found")
            lock = _lock_run(cfg.out)
            from perm.pipeline import Pipeline

            pipe = Pipeline(cfg, _progress(quiet, json_log, every), rerun=tuple(rerun or ()))
            if rewards is not None:
                fn = pipe.analyze if stage == "analyze" else pipe.report
                result = fn(Path(rewards), Path(models))
            else:
                result = pipe.run(stage)
        except (ConfigError, RunLockedError) as e:  # first: a locked run exits before torch is imported
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _after_stop(lock)
            typer.echo(INTERRUPTED, err=True)
            raise typer.Exit(130) from None
        except JobFailedError as e:
            _after_stop(lock)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2 if isinstance(e.__cause__, _user_errors()) else 1) from None
        except _user_errors() as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    finally:
        if lock is not None:
            lock.release()
    if result is not None and not quiet:
        typer.echo(str(result))


def _lock_run(out: str):
    """Take the run directory's writer lock (RunLockedError if another process holds it) and remove the
    temp files a killed earlier run left there (safe now: no other writer)."""
    from pathlib import Path

    from perm.store import RunLock, remove_temp_paths

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(root).acquire()
    try:
        remove_temp_paths(root)
    except BaseException:
        lock.release()
        raise
    return lock


def _after_stop(lock) -> None:
    """After an interrupt or a failed job: stop any pool workers still running (an interrupt outside the
    executor leaves its workers alive), then remove the temp files interrupted writes left, while the run
    is still locked. A second Ctrl-C (or SIGTERM) meanwhile is ignored, so the cleanup finishes."""
    import signal
    import threading

    from perm.executors import stop_workers
    from perm.store import remove_temp_paths

    main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in stops} if main else {}
    try:
        stop_workers()
        if lock is not None and lock.held:
            remove_temp_paths(lock.root)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command()
def run(args: Args = None, quiet: Quiet = False, json_log: JsonLog = False,
        progress_every: ProgressEvery = DEFAULT_EVERY, rerun: Rerun = None) -> None:
    """Run every stage (skipping those already complete) and print where the report is."""
    _run("run", args, quiet, json_log, every=progress_every, rerun=rerun)


Rewards = Annotated[str | None, typer.Option("--rewards",
                                             help=f"A reward tensor of your own: {layout.REWARDS}")]
Models = Annotated[str | None, typer.Option("--models", help=f"... and its {layout.MODELS}")]


def stage_command(stage) -> Callable[..., None]:
    """The command `perm <stage.NAME>`, from the stage's declaration (perm.stages): its SUMMARY is the help,
    TAKES_TENSOR adds `--rewards` / `--models`."""
    name = stage.NAME
    if stage.TAKES_TENSOR:
        def command(args: Args = None, rewards: Rewards = None, models: Models = None, quiet: Quiet = False,
                    json_log: JsonLog = False, progress_every: ProgressEvery = DEFAULT_EVERY,
                    rerun: Rerun = None) -> None:
            _run(name, args, quiet, json_log, rewards, models, every=progress_every, rerun=rerun)
    else:
        def command(args: Args = None, quiet: Quiet = False, json_log: JsonLog = False,
                    progress_every: ProgressEvery = DEFAULT_EVERY, rerun: Rerun = None) -> None:
            _run(name, args, quiet, json_log, every=progress_every, rerun=rerun)
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    command.__doc__ = stage.SUMMARY
    return command


for _stage in MODULES:  # one command per stage, in the stage graph's order
    app.command(_stage.NAME, help=_stage.SUMMARY)(stage_command(_stage))


Checkpoint = Annotated[str, typer.Argument(
    help="A checkpoint folder, or a hub id (org/name or org/name@revision)")]
ConvertOut = Annotated[str, typer.Argument(help="The safetensors folder to write")]
Revision = Annotated[str | None, typer.Option("--revision",
                                              help="Hub branch, tag or commit (e.g. step143000)")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Also copy the model's *.py files and load its config with them")]


@app.command()
def convert(checkpoint: Checkpoint, out: ConvertOut, revision: Revision = None,
            trust_remote_code: TrustRemoteCode = False, quiet: Quiet = False) -> None:
    """Convert a checkpoint with only pytorch_model.bin weights (PolyPythias' step branches) into a
    safetensors folder with its config and tokenizer, unpickling only plain tensors
    (torch.load(weights_only=True))."""
    import json

    from perm.convert import convert_checkpoint
    from perm.models import ModelLoadError

    try:
        path = convert_checkpoint(checkpoint, out, revision=revision, trust_remote_code=trust_remote_code)
    except ModelLoadError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not json.loads((path / "convert.json").read_text())["tokenizer"]:
        typer.echo(f"note: {checkpoint} has no tokenizer files; load its tokenizer from elsewhere (e.g. its "
                   "main branch)", err=True)
    if not quiet:
        typer.echo(str(path))


Gpu = Annotated[str | None, typer.Option("--gpu", help="Also estimate each stage's GPU-hours and peak memory "
                                          "on this card: h100, h200, a100, a100-40gb, l40s, a10, l4")]


@app.command()
def check(args: Args = None, gpu: Gpu = None) -> None:
    """Preflight before a long run: every hub id and revision in the config (safetensors weights, the
    dataset), local checkpoints, one tokenizer for the grid, evaluator and policy, and the disk the run
    needs; with --gpu, each stage's estimated GPU-hours and peak memory. Exits 2 naming each problem. Without
    network only local paths are checked (and it says so)."""
    from perm.check import check_config
    from perm.estimate import GPUS

    if gpu is not None and gpu not in GPUS:
        typer.echo(f"error: --gpu {gpu}: unknown card (known: {', '.join(GPUS)})", err=True)
        raise typer.Exit(2)
    try:
        cfg = _resolve(args)
        result = check_config(cfg, gpu=gpu)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.text(), nl=False)
    if result.problems:
        raise typer.Exit(2)


Runs = Annotated[list[str], typer.Argument(help="Two or more run directories with analysis/ (replicates)")]
Out = Annotated[str | None, typer.Option("--out",
                                         help="Write per_run.parquet, summary.parquet, summary.md here")]
AtN = Annotated[int | None, typer.Option("--n", help="The n of the printed table (default: the largest)")]


@app.command()
def compare(runs: Runs, out: Out = None, n: AtN = None, quiet: Quiet = False) -> None:
    """Compare replicate runs: each headline statistic's mean, between-run sd and within-run se, and in how
    many runs each of the paper's contrasts holds (same config, other seeds: see README)."""
    from perm.compare import CompareError, compare_runs, summary_markdown, write_comparison

    try:
        if out is not None:
            path = write_comparison(runs, out, n)
            text = path.read_text()
        else:
            text = summary_markdown(compare_runs(runs)[1], runs, n)
    except CompareError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not quiet:
        typer.echo(text, nl=False)


kit_app = typer.Typer(no_args_is_help=True, help="The testbed kit: the SFT policy, its preference pairs and "
                      "the trained evaluator, shipped in the package (perm.kit).")
app.add_typer(kit_app, name="kit")
Recipe = Annotated[str | None, typer.Argument(help="The kit's recipe (default: configs/testbed-kit.yaml)")]
FromRun = Annotated[str | None, typer.Option("--from", help="A finished run directory of the recipe to ship "
                                             "from (checked against the recipe) instead of training")]
KitOut = Annotated[str | None, typer.Option("--out", help="The kit folder to write (default: the package's)")]
KitDir = Annotated[str | None, typer.Argument(help="A kit folder (default: the package's)")]


@kit_app.command("build")
def kit_build(recipe: Recipe = None, from_run: FromRun = None, out: KitOut = None, quiet: Quiet = False,
              json_log: JsonLog = False, progress_every: ProgressEvery = DEFAULT_EVERY) -> None:
    """Regenerate the kit from its recipe: train the recipe's world (testbed, SFT policy, policy pairs, the
    evaluator alone; resuming in the recipe's run directory), or reuse a finished run of it (--from), then
    copy it into the kit with its hashes and verify it. Exits 2 naming what differs from the recipe."""
    from pathlib import Path

    from perm.executors import JobFailedError
    from perm.kit import RECIPE, build, describe
    from perm.store import RunLockedError

    try:
        rec = build(Path(recipe) if recipe else RECIPE, from_run=from_run, out=out,
                    progress=_progress(quiet, json_log, progress_every))
    except KeyboardInterrupt:
        _after_stop(None)
        typer.echo(INTERRUPTED, err=True)
        raise typer.Exit(130) from None
    except (ConfigError, RunLockedError, *_user_errors()) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except JobFailedError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2 if isinstance(e.__cause__, _user_errors()) else 1) from None
    if not quiet:
        from perm.shipped import KIT_ROOT

        typer.echo(describe(rec, Path(out) if out else KIT_ROOT))


@kit_app.command("verify")
def kit_verify(root: KitDir = None) -> None:
    """Check a kit's every file against the sha256 its kit.json records (the package's kit: also that
    configs/testbed-kit.yaml still describes it). Exits 2 naming the file and what differs."""
    from pathlib import Path

    from perm.kit import RECIPE, describe, verify
    from perm.shipped import KIT_ROOT

    try:
        rec = verify(Path(root) if root else None, None if root else RECIPE)
    except (ConfigError, *_user_errors()) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(describe(rec, Path(root) if root else KIT_ROOT))


import_app = typer.Typer(no_args_is_help=True, help="Config entries for seed-varied assets published on the "
                         "hub (perm.importers): print the override to pass to `perm run`.")
app.add_typer(import_app, name="import")
GridRepo = Annotated[str, typer.Argument(help="A repository whose branches are <stage>__<seed>__<timestamp>")]
GridStage = Annotated[str, typer.Option("--stage", help="The branches' stage name")]
GridPretrain = Annotated[str | None, typer.Option(
    "--pretrain-id", help="The one pretrain's id (default: the repository's name)")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, 0-24")]
Step = Annotated[str | None, typer.Option("--step",
                                          help="An intermediate checkpoint, e.g. 2000k (seeds 0-4)")]


@import_app.command("tldr-grid")
def import_tldr_grid(repo: GridRepo, stage: GridStage = "reward", pretrain_id: GridPretrain = None) -> None:
    """A finetune-level grid of trained RMs, one revision branch per seed: prints
    `reward.rm_checkpoints=[...]` (the latest branch of each seed). Exits 2 when the hub cannot say."""
    from perm.importers import override, tldr_grid

    try:
        entries = tldr_grid(repo, stage=stage, pretrain_id=pretrain_id)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no matching branch: one line, exit 2
        first = str(e).splitlines()[0] if str(e) else ""
        typer.echo(f"error: {repo}: {type(e).__name__}: {first}", err=True)
        raise typer.Exit(2) from None
    typer.echo(override("reward.rm_checkpoints", entries))


@import_app.command("multiberts")
def import_multiberts(seeds: Seeds = "0,1,2,3,4", step: Step = None) -> None:
    """MultiBERTs pretraining seeds (one repository each): prints `pretrain.checkpoints=[...]`."""
    from perm.importers import multiberts, override

    try:
        entries = multiberts([int(x) for x in seeds.split(",") if x.strip()], step)
    except ValueError as e:
        typer.echo(f"error: --seeds/--step: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(override("pretrain.checkpoints", entries))


def _sigterm_as_interrupt() -> None:
    """SIGTERM (what a cluster scheduler or `kill` sends) stops a command as Ctrl-C does: KeyboardInterrupt in
    the main thread, so the same cleanup runs (workers stopped, temp files removed, exit 130, resumable)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    _sigterm_as_interrupt()
    try:
        app()
    except KeyboardInterrupt:  # before a command's own handler (at start-up)
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
