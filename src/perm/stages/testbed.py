"""`perm testbed`: the run's data and tokenizer — the embedded testbed world (perm.testbed.build), or a
user's preference pairs (`data.prefs`, loaded and validated by perm.data) with the first checkpoint's
tokenizer. Manifest name `testbed` or `data`; outputs data/ and tokenizer/. Returns the data's output hash."""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from perm.config import RunConfig, to_dict
from perm.stages._context import Context, checkpoint_name
from perm.store import atomic_path, hash_obj

NAME = "testbed"
NEEDS: tuple[str, ...] = ()


def keys(cfg: RunConfig, upstream: Mapping[str, str]) -> dict[str, str]:
    if cfg.data.prefs is not None:
        return {"data": hash_obj({"data": to_dict(cfg.data),
                                  "tokenizer": upstream[checkpoint_name(cfg.pretrain.checkpoints[0])]})}
    from perm.testbed.build import TESTBED_VERSION

    return {"testbed": hash_obj({"testbed": to_dict(cfg.testbed), "version": TESTBED_VERSION})}


def run(ctx: Context) -> str:
    if ctx.cfg.data.prefs is not None:
        return _import_data(ctx)
    from perm.testbed.build import build_testbed

    c = ctx.cfg.testbed
    key = keys(ctx.cfg, {})["testbed"]

    def build() -> None:
        scratch = ctx.root / ".testbed.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        build_testbed(scratch, seed=c.seed, n_corpus_docs=c.n_corpus_docs, n_sft=c.n_sft,
                      n_prefs_train=c.n_prefs_train, n_prefs_eval=c.n_prefs_eval,
                      n_eval_prompts=c.n_eval_prompts, label_temperature=c.label_temperature,
                      vocab_size=c.vocab_size)
        with atomic_path(ctx.root / "tokenizer") as tmp:
            shutil.move(scratch / "tokenizer", tmp)
        with atomic_path(ctx.root / "data") as tmp:
            shutil.move(scratch, tmp)

    ctx.run_one("testbed", key, build, ["data", "tokenizer"], seeds={"testbed": c.seed})
    return ctx.store.output_hash("testbed")


def _with_int_ids(table):
    """Keep the source's pair id as `source_id`, number pairs 0..n-1 as `pair_id` (as the testbed does)."""
    import pyarrow as pa

    table = table.rename_columns(["source_id" if n == "pair_id" else n for n in table.column_names])
    return table.add_column(0, "pair_id", pa.array(range(table.num_rows), pa.int64()))


def _import_data(ctx: Context) -> str:
    """Load and validate external pairs into data/prefs_{train,eval}.parquet and data/eval_prompts.parquet;
    the tokenizer comes from the first pretrain checkpoint. Nothing is written if the data are invalid."""
    d, c = ctx.cfg.data, ctx.cfg.pretrain
    if not c.checkpoints:
        raise ValueError("data.prefs needs pretrain.checkpoints (the testbed tokenizer only fits testbed data)")
    key = keys(ctx.cfg, ctx.upstream())["data"]

    def load() -> dict:
        import pyarrow as pa

        from perm.data import load_preferences, preferences_to_table
        from perm.models import load_tokenizer
        from perm.store import atomic_write_parquet

        common = dict(schema=d.schema, name=d.name, revision=d.revision)
        train_stats, eval_stats = {}, {}
        train = load_preferences(d.prefs, split=d.train_split, limit=d.max_train_pairs, stats=train_stats,
                                 **common)
        if d.prefs_eval is not None:
            held = load_preferences(d.prefs_eval, limit=d.max_eval_pairs, schema=d.schema, stats=eval_stats)
        else:
            held = load_preferences(d.prefs, split=d.eval_split, limit=d.max_eval_pairs, stats=eval_stats,
                                    **common)
        prompts = list(dict.fromkeys(p.prompt for p in held))[: d.n_eval_prompts]
        tok = load_tokenizer(c.checkpoints[0], trust_remote_code=c.trust_remote_code)
        ctx.store.mark_running("data", key)  # only once the data are valid
        with atomic_path(ctx.root / "data") as tmp:  # the whole folder: no leftovers of another source
            tmp.mkdir()
            atomic_write_parquet(tmp / "prefs_train.parquet", _with_int_ids(preferences_to_table(train)))
            atomic_write_parquet(tmp / "prefs_eval.parquet", _with_int_ids(preferences_to_table(held)))
            atomic_write_parquet(tmp / "eval_prompts.parquet", pa.table({
                "prompt_id": pa.array(range(len(prompts)), pa.int64()), "prompt": prompts}))
        with atomic_path(ctx.root / "tokenizer") as tmp:
            tok.save_pretrained(str(tmp))
        skipped = {f"{part}_{k}": v for part, st in (("train", train_stats), ("eval", eval_stats))
                   for k, v in st.items() if v}
        return {"train_pairs": len(train), "eval_pairs": len(held)} | skipped

    ctx.run_one("data", key, load, ["data", "tokenizer"], mark=False, source=d.prefs)
    return ctx.store.output_hash("data")

