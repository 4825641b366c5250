"""`perm testbed`: the run's data and tokenizer — the embedded testbed world (perm.testbed.build), or a
user's preference pairs (`data.prefs`, loaded and validated by perm.data) with the first checkpoint's
tokenizer. Manifest name `testbed` or `data`; outputs data/ and tokenizer/. Returns the data's output hash.

With `data.prefs`, the data stage also checks that the grid's backbones, the evaluator and the policy share
one tokenizer (:func:`check_tokenizers`, on every invocation, before anything is read), and loads a hub
dataset at the commit it is pinned to (perm.hub), keyed on it."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from perm import run_layout as layout
from perm.config import DataConfig, RunConfig, TestbedConfig
from perm.stages._context import Context, checkpoint_name, dataset_name
from perm.stages._plan import Checkpoint, Job, planned_keys
from perm.store import atomic_path, hash_obj

NAME = "testbed"
NEEDS: tuple[str, ...] = ()
WRITES = {"testbed": (layout.DATA, layout.TOKENIZER),
          "data": (layout.DATA, layout.TOKENIZER)}  # data: a user's pairs (data.prefs)
SUMMARY = "Write the embedded testbed (corpus, SFT data, preference pairs, eval prompts, tokenizer)."
TAKES_TENSOR = False


def plan(cfg: RunConfig, upstream: Mapping[str, str]) -> list[Job]:
    """One job: build the embedded testbed, or import a user's pairs (`data.prefs`)."""
    outputs = (layout.DATA, layout.TOKENIZER)
    if cfg.data.prefs is not None:
        if not cfg.pretrain.checkpoints:
            raise ValueError("data.prefs needs pretrain.checkpoints "
                             "(the testbed tokenizer only fits testbed data)")
        tokenizer = cfg.pretrain.checkpoints[0]
        obj = {"data": cfg.data, "tokenizer": upstream[checkpoint_name(tokenizer)]}
        # a hub dataset pinned to a commit is keyed on it (a rewritten branch reruns the import); unpinned
        # (offline) or local data keep the key they had before pinning existed
        hub = {f: upstream[dataset_name(f)] for f in ("prefs", "prefs_eval") if dataset_name(f) in upstream}
        revisions = {f: pinned.rsplit("@", 1)[1] for f, pinned in hub.items()}
        args = dict(data=cfg.data, tokenizer=Checkpoint(tokenizer), revisions=revisions,
                    trust_remote_code=cfg.pretrain.trust_remote_code)
        # marked running by the job once the pairs are valid (run: on_valid), not before
        return [Job("data", hash_obj(obj | ({"hub": hub} if hub else {})), job_import_data, args, outputs,
                    mark=False, start={"source": cfg.data.prefs})]
    from perm.testbed.build import TESTBED_VERSION

    c = cfg.testbed
    return [Job("testbed", hash_obj({"testbed": c, "version": TESTBED_VERSION}), job_build_testbed,
                {"testbed": c}, outputs, seeds={"testbed": c.seed})]


keys = planned_keys(plan)


def run(ctx: Context) -> str:
    if ctx.cfg.data.prefs is not None:
        # every invocation, before anything is read: a changed sft.checkpoint is checked too
        _, checked = check_tokenizers(ctx)

        def valid(job: Job):  # marked running once the pairs are valid: bad input leaves the manifest be
            return lambda: ctx.store.mark_running(job.name, job.key)

        ctx.run_planned(lambda cfg, up: [job.with_args(checked=checked, on_valid=valid(job))
                                         for job in plan(cfg, up)])
        return ctx.store.output_hash("data")
    ctx.run_planned(plan, upstream=dict)  # the embedded testbed reads nothing: no identities to resolve
    return ctx.store.output_hash("testbed")


def job_build_testbed(run_dir: str, *, testbed: TestbedConfig) -> None:
    """Build the embedded testbed world into run_dir's data/ and tokenizer/ (perm.testbed.build), through a
    scratch folder that an interrupted build does not leave behind."""
    from perm.testbed.build import build_testbed

    c, root = testbed, Path(run_dir)
    scratch = root / layout.TESTBED_SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        build_testbed(scratch, seed=c.seed, n_corpus_docs=c.n_corpus_docs, n_sft=c.n_sft,
                      n_prefs_train=c.n_prefs_train, n_prefs_eval=c.n_prefs_eval,
                      n_eval_prompts=c.n_eval_prompts, label_temperature=c.label_temperature,
                      vocab_size=c.vocab_size)
        with atomic_path(root / layout.TOKENIZER) as tmp:
            shutil.move(scratch / layout.TOKENIZER, tmp)
        with atomic_path(root / layout.DATA) as tmp:
            shutil.move(scratch, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_int_ids(table):
    """Keep the source's pair id as `source_id`, number pairs 0..n-1 as `pair_id` (as the testbed does)."""
    import pyarrow as pa

    table = table.rename_columns(["source_id" if n == "pair_id" else n for n in table.column_names])
    return table.add_column(0, "pair_id", pa.array(range(table.num_rows), pa.int64()))


def job_import_data(run_dir: str, *, data: DataConfig, tokenizer: str, revisions: Mapping[str, str],
                    checked: Mapping, trust_remote_code: bool = False, on_valid=None) -> dict:
    """Load and validate a user's pairs (`data`) into data/prefs_{train,eval}.parquet and
    data/eval_prompts.parquet, each hub dataset at the commit of `revisions`; the tokenizer is the first
    checkpoint's (`tokenizer`, resolved), and `checked` what :func:`check_tokenizers` found, recorded with
    the pairs' counts. Nothing is written if the data are invalid; `on_valid()` is called once they are,
    before anything is written."""
    import pyarrow as pa

    from perm.data import load_preferences, preferences_to_table
    from perm.models import load_tokenizer
    from perm.store import atomic_write_parquet

    d, root = data, Path(run_dir)
    common = dict(schema=d.schema, name=d.name, revision=revisions.get("prefs", d.revision),
                  bad_rows=d.bad_rows, max_bad_fraction=d.max_bad_fraction)
    train_stats, eval_stats = {}, {}
    train = load_preferences(d.prefs, split=d.train_split, limit=d.max_train_pairs, stats=train_stats,
                             **common)
    if d.prefs_eval is not None:
        held = load_preferences(d.prefs_eval, limit=d.max_eval_pairs, schema=d.schema, stats=eval_stats,
                                revision=revisions.get("prefs_eval"), bad_rows=d.bad_rows,
                                max_bad_fraction=d.max_bad_fraction)
    else:
        held = load_preferences(d.prefs, split=d.eval_split, limit=d.max_eval_pairs, stats=eval_stats,
                                **common)
    prompts = list(dict.fromkeys(p.prompt for p in held))[: d.n_eval_prompts]
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    if on_valid is not None:
        on_valid()
    with atomic_path(root / layout.DATA) as tmp:  # the whole folder: no leftovers of another source
        tmp.mkdir()
        for name, pairs in (("prefs_train", train), ("prefs_eval", held)):
            table = _with_int_ids(preferences_to_table(pairs))
            atomic_write_parquet(tmp / layout.DATA_FILES[name], table)
        atomic_write_parquet(tmp / layout.DATA_FILES["eval_prompts"], pa.table({
            "prompt_id": pa.array(range(len(prompts)), pa.int64()), "prompt": prompts}))
    with atomic_path(root / layout.TOKENIZER) as tmp:
        tok.save_pretrained(str(tmp))
    skipped = {f"{part}_{k}": v for part, st in (("train", train_stats), ("eval", eval_stats))
               for k, v in st.items() if v}
    return {"train_pairs": len(train), "eval_pairs": len(held)} | skipped | dict(checked)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "vocab.txt")
def check_tokenizers(ctx: Context):
    """Load the tokenizer of every grid backbone, the evaluator and the policy (their resolved checkpoints,
    through perm.models.load_tokenizer) and check that they agree (perm.models.check_same_tokenizer); a
    mismatch is a ModelLoadError naming both models. Returns the run's tokenizer (the first checkpoint's)
    and what the data stage records: its ``tokenizer_fingerprint``, and ``tokenizer_unchecked`` (models
    whose tokenizer could not be loaded: a hub id offline, or a checkpoint folder without tokenizer files,
    such as a converted step branch that has none) and ``tokenizer_pad_ignored`` (models whose own pad
    token differs from the run's) where there are any.

    The pad token is left out of the comparison (:func:`perm.tokenizer_rule.without_pad`): padding is masked
    everywhere, RMs and the evaluator pad with the run's tokenizer, and the policy pads only its own prompts,
    so a model whose tokenizer adds a pad token of its own (TRL's TL;DR SFT policy may), or uses EOS as pad,
    gives every text the same ids as the grid's. Any other difference (vocabulary, merges, normaliser,
    pre-tokeniser, post-processor, other special tokens or added tokens) is an error."""
    from perm.hub import model_ref, offline
    from perm.models import load_tokenizer, tokenizer_fingerprint
    from perm.tokenizer_rule import check_run_tokenizers

    cfg = ctx.cfg
    c = cfg.pretrain
    named = [(f"pretrain.checkpoints[{i}] ({s})", s) for i, s in enumerate(c.checkpoints)]
    named += [(f"reward.rm_checkpoints[{i}] ({s})", s.split("=", 1)[1])
              for i, s in enumerate(cfg.reward.rm_checkpoints)]
    e = cfg.evaluator
    if e.enabled and (e.rm_checkpoint or e.checkpoint):
        field = "evaluator.rm_checkpoint" if e.rm_checkpoint else "evaluator.checkpoint"
        named.append((f"{field} ({e.rm_checkpoint or e.checkpoint})", e.rm_checkpoint or e.checkpoint))
    if cfg.sft.checkpoint:
        named.append((f"sft.checkpoint ({cfg.sft.checkpoint})", cfg.sft.checkpoint))
    loaded: dict[str, object] = {}
    toks, unchecked = {}, []
    pins, cache_only = ctx.hub_pins(), offline()
    for i, (name, spec) in enumerate(named):
        path = ctx.resolve_checkpoint(spec)
        if path not in loaded:
            local, ref = Path(path).expanduser(), model_ref(spec)
            if i and local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
                loaded[path] = None  # no tokenizer files (a converted branch without them): the run's is used
            elif i and ref is not None and not local.exists():
                # a hub id: fetched when the hub answered (it is pinned) or from the cache when offline; not
                # when the hub was unreachable (transformers would retry for a minute per model)
                loaded[path] = None
                if pins.get(ref.reference) or cache_only:
                    try:
                        loaded[path] = load_tokenizer(path, trust_remote_code=c.trust_remote_code)
                    except Exception:  # not in the cache, offline: checked where it can be
                        pass
            else:
                loaded[path] = load_tokenizer(path, trust_remote_code=c.trust_remote_code)
        if loaded[path] is None:
            unchecked.append(name)
        else:
            toks[name] = loaded[path]
    run_tok = toks[named[0][0]]
    check_run_tokenizers(toks)
    info: dict = {"tokenizer_fingerprint": tokenizer_fingerprint(run_tok)}
    pads = {name: str(t.pad_token) for name, t in toks.items() if t.pad_token != run_tok.pad_token}
    if pads:
        info["tokenizer_pad_ignored"] = pads
    if unchecked:
        info["tokenizer_unchecked"] = unchecked
        ctx.log.warn(f"tokenizer: not checked for {', '.join(unchecked)} (no tokenizer to load there); the "
                     f"run uses {named[0][0]}'s")
    return run_tok, info
