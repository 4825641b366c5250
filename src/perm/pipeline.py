"""The stage graph: testbed -> pretrain -> RM grid + evaluator -> SFT -> sample -> score -> analyze -> report.

Each stage's *input key* hashes its config slice and its upstream stages' output hashes; a stage whose key
and outputs match the manifest is skipped, so a killed run resumes where it stopped and changing one RM
hyperparameter reruns only what depends on it. Independent jobs (pretrains, RMs, scoring per model) are
module-level functions with flat, picklable arguments so the Ray executor can run them as tasks; they
write their outputs atomically and return a small dict the driver records in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from perm.config import RunConfig, dump_config, to_dict
from perm.executors import LocalExecutor, PoolExecutor, RayExecutor, _usable_cpus
from perm.progress import Progress
from perm.store import RunStore, atomic_path, atomic_write_text, derive_seed, hash_obj

STAGES = ("testbed", "pretrain", "train-rm", "evaluator", "sft", "sample", "score", "analyze", "report")


# ----------------------------------------------------------------------------------------------- helpers


def _torch_setup(device: str, threads: int | None):
    import torch
    from transformers.utils import logging as hf_logging

    from perm.models import resolve_device
    from perm.store import seed_everything

    hf_logging.disable_progress_bar()  # perm draws its own bars; "Loading weights" x 20 is noise
    hf_logging.set_verbosity_error()  # a fresh reward head is *meant* to be missing from a backbone
    if threads:
        torch.set_num_threads(threads)
    # every draw perm makes uses an explicit, recorded seed; fixing the globals too makes any stray
    # library draw deterministic, independent of what ran before in this process
    seed_everything(0)
    return resolve_device(device)


def _autocast(dev, precision: str):
    """bf16 autocast for inference when asked (GPU presets); a no-op context in fp32."""
    import torch

    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _read_column(path: Path, *cols: str) -> list:
    t = pq.read_table(path, columns=list(cols))
    return [t.column(c).to_pylist() for c in cols]


def rm_id(pretrain_id: str, finetune_seed: int) -> str:
    return f"{pretrain_id}-ft{finetune_seed}"


def rm_seeds(finetune_seed: int) -> dict:
    """The three finetuning seeds, each its own stream, all derived from the finetune seed alone."""
    return {
        "head_seed": derive_seed("rm-head", finetune_seed),
        "data_seed": derive_seed("rm-data-order", finetune_seed),
        "dropout_seed": derive_seed("rm-dropout", finetune_seed),
    }


def grid(pretrain_ids: list[str], finetune_seeds: tuple[int, ...], layout: str) -> list[tuple[str, int]]:
    """(pretrain_id, finetune_seed) of every RM. paper: one RM per pretrain (first seed) + all seeds of the
    first pretrain; full: the whole product."""
    if layout == "full":
        return [(p, s) for p in pretrain_ids for s in finetune_seeds]
    first = [(pretrain_ids[0], s) for s in finetune_seeds]
    return first + [(p, finetune_seeds[0]) for p in pretrain_ids[1:]]


# ------------------------------------------------------------------------------------------------- jobs


def job_pretrain(run_dir: str, out_rel: str, *, init_seed: int, data_seed: int, backbone: dict, train: dict,
                 device: str, threads: int | None, precision: str = "fp32", attention: str = "auto",
                 show_progress: bool = True) -> dict:
    """Pretrain one backbone into run_dir/out_rel (atomically); returns its info."""
    from perm.models import attention_for, gpt_neox_config, load_tokenizer, save_model
    from perm.pretrain import pack_corpus, pretrain

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / "tokenizer")
    (texts,) = _read_column(run / "data" / "corpus.parquet", "text")
    train_blocks, held = pack_corpus(texts, tok, train["seq_len"])
    cfg = gpt_neox_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          **backbone)
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, train["steps"])
    model, info = pretrain(config=cfg, train_blocks=train_blocks, heldout_blocks=held, init_seed=init_seed,
                           data_seed=data_seed, device=dev, progress=bar, bf16=precision == "bf16",
                           attention=attention_for(dev, precision, attention),
                           **{k: train[k] for k in ("steps", "batch_size", "lr", "warmup_steps", "weight_decay")})
    bar.close()
    info.update(n_params=sum(p.numel() for p in model.parameters()), precision=precision,
                attention=model.config._attn_implementation)
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, {"config": {"backbone": backbone, **train}, **info}, "pretrain.json")
    return info


def job_reward_model(run_dir: str, out_rel: str, *, backbone: str, pretrain_id: str, finetune_seed: int,
                     reward: dict, n_pairs: int | None,
                     pair_files: tuple[str, ...] = ("data/prefs_train.parquet",),
                     eval_files: tuple[str, ...] = ("data/prefs_eval.parquet",), device: str, threads: int | None,
                     precision: str = "fp32", attention: str = "auto",
                     trust_remote_code: bool = False, role: str = "rm", show_progress: bool = True) -> dict:
    """Finetune one RM from `backbone` (dir or hub id) on the pairs of `pair_files` (concatenated, first
    `n_pairs` kept); save it + rm.json atomically.

    eval_files: held-out pairs; the first is in distribution (the learning curve and `accuracy`), the others
    are evaluated once at the end (`other_evals`). Gold accuracy wherever the file has gold columns."""
    from perm.models import (
        attention_for,
        load_reward_backbone,
        load_tokenizer,
        make_accelerator,
        save_model,
        use_attention,
    )
    from perm.reward import encode, evaluate_pairs, train_reward_model

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(backbone if not (run / "tokenizer").exists() else run / "tokenizer",
                         trust_remote_code=trust_remote_code)
    seeds = rm_seeds(finetune_seed)
    model = load_reward_backbone(backbone, pad_token_id=tok.pad_token_id, head_seed=seeds["head_seed"],
                                 dropout=reward["dropout"], trust_remote_code=trust_remote_code)
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    use_attention(model, attention_for(dev, precision, attention))
    ml = reward["max_length"]
    prompts, chosen, rejected = [], [], []
    for rel in pair_files:  # e.g. policy_prefs.parquet then data/prefs_train.parquet
        p, c, r = _read_column(run / rel, "prompt", "chosen", "rejected")
        prompts, chosen, rejected = prompts + p, chosen + c, rejected + r
    if n_pairs is not None:
        prompts, chosen, rejected = prompts[:n_pairs], chosen[:n_pairs], rejected[:n_pairs]

    def eval_set(rel: str):
        ep, ec, er = _read_column(run / rel, "prompt", "chosen", "rejected")
        gold_diff = None
        if "gold_chosen" in pq.read_schema(run / rel).names:
            gc, gr = _read_column(run / rel, "gold_chosen", "gold_rejected")
            gold_diff = [a - b for a, b in zip(gc, gr, strict=True)]
        return encode(tok, ep, ec, ml), encode(tok, ep, er, ml), gold_diff

    ec, er, gold_diff = eval_set(eval_files[0])
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, 1)
    state = train_reward_model(
        model, chosen=encode(tok, prompts, chosen, ml), rejected=encode(tok, prompts, rejected, ml),
        eval_chosen=ec, eval_rejected=er, eval_gold_diff=gold_diff, pad_id=tok.pad_token_id,
        data_seed=seeds["data_seed"], dropout_seed=seeds["dropout_seed"], progress=bar,
        accelerator=make_accelerator(dev, precision),
        **{k: reward[k] for k in ("center_coef", "epochs", "batch_size", "lr", "warmup_frac", "weight_decay",
                                  "max_grad_norm", "eval_every", "group_by_prompt")})
    bar.close()
    model = state.pop("model")
    final = state["evals"][-1]  # the loop's last eval is of the final weights
    keep = ("accuracy", "accuracy_se", "gold_accuracy", "mean_reward")
    others = {}
    for rel in eval_files[1:]:
        oc, orj, ogd = eval_set(rel)
        res = evaluate_pairs(model, oc, orj, tok.pad_token_id, model.device, gold_diff=ogd)
        others[rel] = {k: res[k] for k in keep if k in res}
    info = {
        "model_id": Path(out_rel).name,
        "role": role,
        "pretrain_id": pretrain_id,
        "finetune_seed": finetune_seed,
        "backbone": str(backbone),
        "seeds": seeds,
        "config": reward,
        "n_train_pairs": len(chosen),
        "n_train_prompts": state["n_prompts"],
        "eval_pairs": eval_files[0],
        "n_eval_pairs": len(ec),
        "accuracy": final["accuracy"],
        "accuracy_se": final["accuracy_se"],
        "gold_accuracy": final.get("gold_accuracy"),
        "eval_mean_reward": final["mean_reward"],
        "other_evals": others,
        "eval_curve": state["evals"],
        "final_train_loss": float(sum(state["train_loss"][-20:]) / len(state["train_loss"][-20:])),
        "steps": state["step"],
        "wall_s": state["wall_s"],
        "pairs_per_s": state["pairs_per_s"],
        "attention": model.config._attn_implementation,
        "precision": precision,
    }
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, info, "rm.json")
    return info


_ENCODED: dict = {}  # (tokenizer hash, max_length, samples hash) -> token ids; one tokenisation per tokenizer


def encoded_samples(run: Path, tok_dir: Path, max_length: int) -> tuple[tuple[list, list, list], object, object,
                                                                          object]:
    """samples.parquet as token ids grouped by prompt, cached per tokenizer within a process.

    Returns ``((prompt_ids, completion_ids, rows), prompt_id, sample_id, tokenizer)``: group g is one prompt
    tokenised once, ``prompt_ids[g]``, with its candidates ``completion_ids[g]`` (each + EOS), which are the
    sample rows ``rows[g]`` of ``prompt_id`` / ``sample_id`` (the file's row order); see ``encode_groups``.
    """
    import numpy as np

    from perm.models import load_tokenizer
    from perm.reward import encode_groups
    from perm.store import hash_path

    key = (hash_path(tok_dir / "tokenizer.json") if (tok_dir / "tokenizer.json").exists() else str(tok_dir),
           max_length, hash_path(run / "samples.parquet"))
    if key not in _ENCODED:
        tok = load_tokenizer(tok_dir)
        samples = validate_samples(run / "samples.parquet")
        prompts = pq.read_table(run / "data" / "eval_prompts.parquet", columns=["prompt_id", "prompt"]).to_pandas()
        prompt_of = dict(zip(prompts.prompt_id, prompts.prompt, strict=True))
        by_prompt = samples.groupby("prompt_id", sort=False).indices  # prompt_id -> row indices, in file order
        texts = samples.text.to_numpy()
        p_ids, c_ids, source = encode_groups(tok, [prompt_of[p] for p in by_prompt],
                                             [list(texts[r]) for r in by_prompt.values()], max_length)
        flat_rows = np.concatenate(list(by_prompt.values())) if by_prompt else np.empty(0, dtype=np.int64)
        _ENCODED.clear()
        _ENCODED[key] = ((p_ids, c_ids, [flat_rows[s] for s in source]), samples.prompt_id.to_numpy(),
                         samples.sample_id.to_numpy(), tok)
    return _ENCODED[key]


class SamplesError(ValueError):
    """A samples.parquet that cannot be scored; the message names the file and the column or rows."""


SAMPLES_COLUMNS = {"prompt_id": "integer", "sample_id": "integer", "text": "string"}
OPTIONAL_SAMPLES_COLUMNS = {"is_reference": "bool"}  # checked when present; the reward tensor needs it


def validate_samples(path: Path):
    """Read samples.parquet, refusing missing or mistyped columns and duplicate (prompt_id, sample_id)."""
    import pandas as pd

    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise SamplesError(f"{path}: cannot read as Parquet: {e}") from None
    for col, kind in (SAMPLES_COLUMNS | OPTIONAL_SAMPLES_COLUMNS).items():
        if col not in df.columns:
            if col in OPTIONAL_SAMPLES_COLUMNS:
                continue
            raise SamplesError(f"{path}: missing column '{col}' (expected columns: {', '.join(SAMPLES_COLUMNS)})")
        ok = {"integer": pd.api.types.is_integer_dtype, "bool": pd.api.types.is_bool_dtype,
              "string": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)}[kind]
        if not ok(df[col]):
            raise SamplesError(f"{path}: column '{col}' must be {kind}, found {df[col].dtype}")
    dup = df.duplicated(["prompt_id", "sample_id"], keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise SamplesError(f"{path}: row {i}: duplicate (prompt_id, sample_id) = "
                           f"({df.prompt_id.iloc[i]}, {df.sample_id.iloc[i]})")
    if df.text.isna().any():
        i = int(df.text.isna().to_numpy().nonzero()[0][0])
        raise SamplesError(f"{path}: row {i}: column 'text' is null")
    return df[["prompt_id", "sample_id", "text"]]


def job_score(run_dir: str, out_rel: str, *, model_dir: str, model_id: str, max_length: int, batch_size: int,
              device: str, threads: int | None, show_progress: bool = True) -> dict:
    """Score every sample with one RM into run_dir/out_rel (prompt_id, sample_id, reward).

    Decoder RMs run each prompt once and its candidates as continuations of its KV cache
    (``perm.prefix.score_prompt_groups``: the same rewards as full-sequence scoring); encoders score whole.
    """
    import numpy as np
    import pyarrow as pa

    from perm.models import load_reward_model
    from perm.prefix import score_prompt_groups
    from perm.reward import check_finite
    from perm.store import atomic_write_parquet

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok_dir = Path(model_dir) if (Path(model_dir) / "tokenizer.json").exists() else run / "tokenizer"
    (p_ids, c_ids, rows), prompt_ids, sample_ids, tok = encoded_samples(run, tok_dir, max_length)
    model = load_reward_model(model_dir).to(dev)
    t0 = time.perf_counter()
    bar = Progress("normal" if show_progress else "quiet").bar(f"score {model_id}", len(prompt_ids))
    rewards = np.full(len(prompt_ids), np.nan)
    # scoring stays in fp32 even in bf16 runs: a bf16 head rounds rewards into spurious ties (7-bit mantissa),
    # and ties go to the lower sample id for every RM alike, inflating agreement
    groups = score_prompt_groups(model, p_ids, c_ids, tok.pad_token_id, dev, batch_size=batch_size, progress=bar)
    for r, group in zip(rows, groups, strict=True):
        rewards[r] = group
    bar.close()
    check_finite(rewards, model_id)
    atomic_write_parquet(run / out_rel, pa.table({"prompt_id": pa.array(prompt_ids, pa.int64()),
                                                  "sample_id": pa.array(sample_ids, pa.int64()),
                                                  "reward": pa.array(rewards, pa.float64())}))
    wall = time.perf_counter() - t0
    return {"rows": len(prompt_ids), "wall_s": wall, "sequences_per_s": len(prompt_ids) / wall}


def sft_heldout(n_posts: int) -> int:
    """How many of sft_train's first posts the SFT policy holds out (its eval loss); policy-prefs puts its
    pairs on those posts into policy_prefs_eval.parquet, so no RM trains on them either."""
    return max(1, n_posts // 20)


def job_sft(run_dir: str, out_rel: str, *, init: str | None, backbone: dict, sft: dict, max_length: int,
            device: str, threads: int | None, precision: str = "fp32", attention: str = "auto",
            show_progress: bool = True) -> dict:
    """Train the SFT policy on sft_train (summary tokens only) from `init` (a backbone dir) or from scratch."""
    from perm.models import (
        attention_for,
        gpt_neox_config,
        load_causal_lm,
        load_tokenizer,
        make_accelerator,
        new_causal_lm,
        save_model,
        use_attention,
    )
    from perm.policy import train_sft

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / "tokenizer")
    data_seed = derive_seed("sft-data-order", 0)
    if init is not None:
        model = load_causal_lm(init)
    else:
        cfg = gpt_neox_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              **backbone)
        model = new_causal_lm(cfg, derive_seed("sft-init", 0))
    use_attention(model, attention_for(dev, precision, attention))
    prompts, completions = _read_column(run / "data" / "sft_train.parquet", "prompt", "completion")
    n_eval = sft_heldout(len(prompts))
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, 1)
    state = train_sft(model.to(dev), tok, prompts[n_eval:], completions[n_eval:], epochs=sft["sft_epochs"],
                      lr=sft["sft_lr"], batch_size=sft["sft_batch_size"], max_length=max_length, data_seed=data_seed,
                      eval_prompts=prompts[:n_eval], eval_completions=completions[:n_eval], progress=bar,
                      accelerator=make_accelerator(dev, precision))
    bar.close()
    model = state.pop("model")
    info = {k: v for k, v in state.items() if isinstance(v, int | float | str)}
    info.update(data_seed=data_seed, init=init or "scratch", precision=precision,
                attention=model.config._attn_implementation)
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, {"config": sft, **info}, "policy.json")
    return info


def job_sample(run_dir: str, out_rel: str, *, policy: str, sampling: dict, device: str, threads: int | None, precision: str = "fp32",
               attention: str = "auto", show_progress: bool = True, trust_remote_code: bool = False) -> dict:
    """Pool of N + K reference samples per eval prompt -> samples.parquet (with gold reward on the testbed)."""
    from perm.models import attention_for, load_causal_lm, load_tokenizer, use_attention
    from perm.policy import build_samples_table, sample_pool
    from perm.store import atomic_write_parquet

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(policy if (Path(policy) / "tokenizer.json").exists() else run / "tokenizer",
                         trust_remote_code=trust_remote_code)
    model = load_causal_lm(policy, trust_remote_code=trust_remote_code).to(dev).eval()
    use_attention(model, attention_for(dev, precision, attention))
    if tok.pad_token_id >= model.get_input_embeddings().num_embeddings:
        # perm added a pad token the policy has no embedding for; padding is masked, so EOS can stand in
        tok.pad_token = tok.eos_token
    t = pq.read_table(run / "data" / "eval_prompts.parquet").to_pandas()
    n, k = sampling["pool_size"], sampling["n_reference"]
    t0 = time.perf_counter()
    pools = []
    bar = Progress("normal" if show_progress else "quiet").bar("sample", len(t))
    step = sampling["batch_prompts"]
    for i in range(0, len(t), step):
        # one seed per chunk of `batch_prompts` prompts (batch_prompts is part of the stage key)
        with _autocast(dev, precision):
            pools += sample_pool(model, tok, list(t.prompt[i : i + step]), n_samples=n + k,
                                 temperature=sampling["temperature"], top_p=sampling["top_p"],
                                 max_new_tokens=sampling["max_new_tokens"],
                                 seed=derive_seed("sample", sampling["seed"], i), batch_prompts=step, device=dev)
        bar(min(i + step, len(t)), len(t))
    bar.close()
    gold_fn = None
    if "post" in t.columns:
        from perm.testbed.gold import gold_reward as gold_fn
    table = build_samples_table(list(t.prompt_id), [p[:n] for p in pools], [p[n:] for p in pools], tok,
                                gold_fn=gold_fn, posts=list(t.post) if gold_fn else None,
                                max_new_tokens=sampling["max_new_tokens"])
    atomic_write_parquet(run / out_rel, table)
    wall = time.perf_counter() - t0
    info = {"rows": table.num_rows, "wall_s": wall, "samples_per_s": table.num_rows / wall, "precision": precision,
            "attention": model.config._attn_implementation}
    if gold_fn:
        df = table.to_pandas()
        info["mean_gold"] = float(df[~df.is_reference].gold_reward.mean())
        info["mean_tokens"] = float(df.n_tokens.mean())
        info["frac_eos"] = float(df.ended_with_eos.mean())
    return info


def job_policy_prefs(run_dir: str, out_rel: str, *, policy: str, pairs_per_post: int, max_new_tokens: int,
                     seed: int, batch_prompts: int, device: str, threads: int | None, precision: str = "fp32",
                     attention: str = "auto", show_progress: bool = True,
                     eval_rel: str = "policy_prefs_eval.parquet") -> dict:
    """Preference pairs of the SFT policy's own samples on sft_train posts, labelled by the testbed's
    Bradley-Terry raters on the gold reward (ties dropped), as TL;DR comparisons were collected.

    Pairs on the posts the SFT policy held out go to `eval_rel` (in-distribution accuracy), the rest to
    `out_rel` (training)."""
    import numpy as np
    import pyarrow as pa

    from perm.models import attention_for, load_causal_lm, load_tokenizer, use_attention
    from perm.policy import decode_samples, sample_pool
    from perm.store import atomic_write_parquet
    from perm.testbed.candidates import bradley_terry_labels
    from perm.testbed.gold import gold_reward_batch

    dev = _torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(run / "tokenizer")
    model = use_attention(load_causal_lm(policy).to(dev).eval(), attention_for(dev, precision, attention))
    prompts, posts = _read_column(run / "data" / "sft_train.parquet", "prompt", "post")
    k = pairs_per_post
    t0 = time.perf_counter()
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, len(prompts))
    first, second = [], []
    for i in range(0, len(prompts), batch_prompts):
        with _autocast(dev, precision):
            pools = sample_pool(model, tok, prompts[i : i + batch_prompts], n_samples=2 * k, temperature=1.0,
                                top_p=1.0, max_new_tokens=max_new_tokens, seed=derive_seed("policy-prefs", seed, i),
                                batch_prompts=batch_prompts, device=dev)
        for pool in pools:  # pairs (0, 1), (2, 3), ... of each post
            texts = decode_samples(tok, pool)
            first += texts[0::2]
            second += texts[1::2]
        bar(min(i + batch_prompts, len(prompts)), len(prompts))
    bar.close()
    p_rep = [p for p in prompts for _ in range(k)]
    post_rep = [p for p in posts for _ in range(k)]
    ga, gb = gold_reward_batch(post_rep, first), gold_reward_batch(post_rep, second)
    keep = ga != gb
    a_wins = bradley_terry_labels(ga, gb, np.random.default_rng(derive_seed("policy-prefs-labels", seed)))
    sel = np.flatnonzero(keep)
    chosen = [first[i] if a_wins[i] else second[i] for i in sel]
    rejected = [second[i] if a_wins[i] else first[i] for i in sel]
    g_c = np.where(a_wins, ga, gb)[sel]
    g_r = np.where(a_wins, gb, ga)[sel]
    columns = {"prompt": [p_rep[i] for i in sel], "chosen": chosen, "rejected": rejected,
               "gold_chosen": pa.array(g_c, pa.float64()), "gold_rejected": pa.array(g_r, pa.float64()),
               "label_agrees_gold": pa.array(g_c > g_r)}
    table = pa.table(columns)
    held = sel // k < sft_heldout(len(prompts))  # pairs on the posts the SFT policy held out
    if not held.any() or held.all():
        raise ValueError(f"policy-prefs: {int(held.sum())} held-out and {int((~held).sum())} training pairs "
                         f"({sft_heldout(len(prompts))} held-out posts x {k} pairs, ties dropped); raise "
                         "testbed.n_sft or reward.policy_pairs_per_post")
    info = {"wall_s": time.perf_counter() - t0, "precision": precision, "attention": model.config._attn_implementation}
    for name, rel, rows in (("train", out_rel, ~held), ("eval", eval_rel, held)):
        part = table.filter(pa.array(rows))
        part = part.add_column(0, "pair_id", pa.array(range(part.num_rows), pa.int64()))
        atomic_write_parquet(run / rel, part)
        info[f"{name}_pairs"] = part.num_rows
        info[f"{name}_label_agreement"] = float(np.mean(part.column("label_agrees_gold").to_numpy()))
    return info


def assemble_reward_tensor(root: Path, records: list[dict]) -> dict:
    """Concatenate scores/*.parquet (+ the gold reward) into rewards.parquet and models.parquet."""
    import pandas as pd

    from perm.store import atomic_write_parquet

    samples = pq.read_table(root / "samples.parquet").to_pandas()
    base = samples[["prompt_id", "sample_id", "is_reference"]]
    parts, models = [], []
    for rec in records:
        mid = "evaluator" if rec["role"] == "evaluator" else rec["model_id"]
        scores = pq.read_table(root / "scores" / f"{mid}.parquet").to_pandas()
        df = base.merge(scores, on=["prompt_id", "sample_id"], how="left", validate="one_to_one")
        df["model_id"] = mid
        parts.append(df)
        models.append({"model_id": mid, "role": rec["role"], "pretrain_id": rec["pretrain_id"],
                       "finetune_seed": rec["finetune_seed"], "accuracy": rec["accuracy"],
                       "accuracy_se": rec["accuracy_se"], "gold_accuracy": rec.get("gold_accuracy")})
    if "gold_reward" in samples.columns:
        df = base.assign(model_id="gold", reward=samples.gold_reward.astype("float64"))
        parts.append(df)
        models.append({"model_id": "gold", "role": "gold", "pretrain_id": None, "finetune_seed": None,
                       "accuracy": None, "accuracy_se": None, "gold_accuracy": None})
    rewards = pd.concat(parts, ignore_index=True)[["prompt_id", "sample_id", "model_id", "reward", "is_reference"]]
    models_df = pd.DataFrame(models).astype({"finetune_seed": "Int64", "accuracy": "float64",
                                             "accuracy_se": "float64", "gold_accuracy": "float64"})
    atomic_write_parquet(root / "rewards.parquet", rewards)
    atomic_write_parquet(root / "models.parquet", models_df)
    return {"rows": len(rewards), "models": len(models)}


# ------------------------------------------------------------------------------------------- the pipeline


def _once(method):
    """A stage method runs (or checks its skip) once per Pipeline; later calls return the first result."""

    def wrapper(self, *args):
        key = (method.__name__, args)
        if key not in self._memo:
            self._memo[key] = method(self, *args)
        return self._memo[key]

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class Pipeline:
    """One run directory driven by one resolved config."""

    def __init__(self, cfg: RunConfig, progress: Progress | None = None):
        from perm.hardware import resolve_device, resolve_precision

        self.log = progress or Progress()
        # `precision: auto` is resolved once, here: every key, job and record below sees fp32 or bf16
        self.precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
        self.cfg = cfg = dataclasses.replace(cfg, precision=self.precision.value)
        self.store = RunStore(cfg.out)
        self.root = self.store.root
        self._memo: dict = {}
        self._checkpoint_keys: dict[str, str] = {}
        if cfg.executor == "ray":
            self.executor = RayExecutor(cfg.ray.address, cfg.ray.num_cpus_per_task, cfg.ray.num_gpus_per_task,
                                        cfg.ray.local_num_cpus)
        elif cfg.workers > 1:
            self.executor = PoolExecutor(cfg.workers)
        else:
            self.executor = LocalExecutor()
        self._save_config()

    def _save_config(self) -> None:
        atomic_write_text(self.root / "config.yaml", dump_config(self.cfg))
        self.store.record_run(hardware_record(self.precision, self.cfg.attention))
        self.log.note(f"device {self.precision.device_label}: precision {self.precision.value}"
                      + (" (auto)" if self.precision.requested == "auto" else ""))
        if self.precision.warning:
            self.log.warn(self.precision.warning)

    @property
    def show_bars(self) -> bool:
        return self.log.mode == "normal" and isinstance(self.executor, LocalExecutor)

    @property
    def job_threads(self) -> int | None:
        """torch threads of a training job: `threads`, else the cores shared among `workers`."""
        if self.cfg.threads or not isinstance(self.executor, PoolExecutor):
            return self.cfg.threads
        return max(1, _usable_cpus() // self.cfg.workers)

    def _key(self, obj: dict) -> str:
        """Input key of a stage; bf16 runs and a chosen `attention` get their own keys (fp32 keys with
        attention auto stay as they were). `amp: 3`: bf16 outputs made before autocast moved inside the
        pretraining loop (2), or before bf16 on CPU meant eager attention (3), must not be reused."""
        p, a = self.cfg.precision, self.cfg.attention
        extra = {"precision": p, "amp": 3} if p != "fp32" else {}
        if a != "auto" or p != "fp32":
            extra["attention"] = a
        return hash_obj(obj | extra)

    def _checkpoint_key(self, path: str) -> str:
        """:func:`_checkpoint_key` once per checkpoint and run: a local checkpoint is hashed by content, and
        the same one keys several stages (every RM of a pretrain, the evaluator's two jobs, the policy's)."""
        if path not in self._checkpoint_keys:
            self._checkpoint_keys[path] = _checkpoint_key(path)
        return self._checkpoint_keys[path]

    def _skip(self, name: str, key: str) -> bool:
        if self.store.is_complete(name, key):
            self.log.event(name, "skip", reason="complete for these inputs")
            return True
        return False

    def _done(self, name: str, key: str, outputs: list[str], t0: float, seeds=None, info=None) -> None:
        wall = time.perf_counter() - t0
        self.store.mark_done(name, key, outputs, seeds=seeds, wall_s=wall, info=info)
        self.log.event(name, "done", wall_s=round(wall, 1), **(_headline(info) if info else {}))

    # ------------------------------------------------------------------------------------------ stages

    @_once
    def testbed(self) -> str:
        """Writes data/*.parquet and tokenizer/; returns the stage's output hash.

        With `data.prefs` set, imports the user's preference pairs instead (stage `data`)."""
        if self.cfg.data.prefs is not None:
            return self.import_data()
        from perm.testbed.build import TESTBED_VERSION, build_testbed

        key = hash_obj({"testbed": to_dict(self.cfg.testbed), "version": TESTBED_VERSION})
        if not self._skip("testbed", key):
            self.store.mark_running("testbed", key)
            self.log.event("testbed", "start")
            t0 = time.perf_counter()
            scratch = self.root / ".testbed.tmp"
            shutil.rmtree(scratch, ignore_errors=True)
            c = self.cfg.testbed
            build_testbed(scratch, seed=c.seed, n_corpus_docs=c.n_corpus_docs, n_sft=c.n_sft,
                          n_prefs_train=c.n_prefs_train, n_prefs_eval=c.n_prefs_eval,
                          n_eval_prompts=c.n_eval_prompts, label_temperature=c.label_temperature,
                          vocab_size=c.vocab_size)
            with atomic_path(self.root / "tokenizer") as tmp:
                shutil.move(scratch / "tokenizer", tmp)
            with atomic_path(self.root / "data") as tmp:
                shutil.move(scratch, tmp)
            self._done("testbed", key, ["data", "tokenizer"], t0, seeds={"testbed": c.seed})
        return self.store.output_hash("testbed")

    @_once
    def import_data(self) -> str:
        """Load and validate external pairs into data/prefs_{train,eval}.parquet and data/eval_prompts.parquet;
        the tokenizer comes from the first pretrain checkpoint. Nothing is written if the data are invalid."""
        import pyarrow as pa

        from perm.data import load_preferences, preferences_to_table
        from perm.models import load_tokenizer
        from perm.store import atomic_write_parquet

        d, c = self.cfg.data, self.cfg.pretrain
        if not c.checkpoints:
            raise ValueError("data.prefs needs pretrain.checkpoints (the testbed tokenizer only fits testbed data)")
        key = hash_obj({"data": to_dict(d), "tokenizer": self._checkpoint_key(c.checkpoints[0])})
        if not self._skip("data", key):
            self.log.event("data", "start", source=d.prefs)
            t0 = time.perf_counter()
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
            self.store.mark_running("data", key)
            with atomic_path(self.root / "data") as tmp:  # the whole folder: no leftovers of another source
                tmp.mkdir()
                atomic_write_parquet(tmp / "prefs_train.parquet", _with_int_ids(preferences_to_table(train)))
                atomic_write_parquet(tmp / "prefs_eval.parquet", _with_int_ids(preferences_to_table(held)))
                atomic_write_parquet(tmp / "eval_prompts.parquet", pa.table({
                    "prompt_id": pa.array(range(len(prompts)), pa.int64()), "prompt": prompts}))
            with atomic_path(self.root / "tokenizer") as tmp:
                tok.save_pretrained(str(tmp))
            skipped = {f"{part}_{k}": v for part, st in (("train", train_stats), ("eval", eval_stats))
                       for k, v in st.items() if v}
            self._done("data", key, ["data", "tokenizer"], t0, info={"train_pairs": len(train),
                                                                    "eval_pairs": len(held)} | skipped)
        return self.store.output_hash("data")

    @_once
    def pretrain(self) -> dict[str, str]:
        """Pretrain (or register) every backbone; returns pretrain_id -> backbone path or hub id."""
        c = self.cfg.pretrain
        if c.checkpoints:
            return dict(zip(c.pretrain_ids(), c.checkpoints, strict=True))
        data_hash = self.testbed()
        common = {k: v for k, v in to_dict(c).items() if k not in ("seeds", "init_seeds", "data_seeds")}
        init_seeds = c.init_seeds or c.seeds
        data_seeds = c.data_seeds or c.seeds
        todo, keys, out = [], {}, {}
        for pid, init_s, data_s in zip(c.pretrain_ids(), init_seeds, data_seeds, strict=True):
            name = f"pretrain/{pid}"
            out[pid] = str(self.root / name)
            keys[name] = self._key({"common": common, "init": init_s, "data": data_s, "testbed": data_hash})
            if not self._skip(name, keys[name]):
                todo.append((name, dict(run_dir=str(self.root), out_rel=name, init_seed=init_s, data_seed=data_s,
                                        backbone=to_dict(c.backbone), train=_train_args(c), device=self.cfg.device,
                                        threads=self.job_threads, precision=self.cfg.precision, attention=self.cfg.attention, show_progress=self.show_bars)))
        job = self._evaluator_pretrain_job()
        if job is not None and not self._skip(job[0], job[2]):
            todo.insert(0, job[:2])  # the longest job first, so parallel workers finish together
            keys[job[0]] = job[2]
        self._run_jobs(job_pretrain, todo, keys, seeds_of=_pretrain_seeds)
        return out

    def _evaluator_pretrain_job(self) -> tuple[str, dict, str] | None:
        """(name, job kwargs, input key) of the evaluator's own pretrain; None if it is disabled or loaded."""
        e = self.cfg.evaluator
        if not e.enabled or e.checkpoint:
            return None
        name = "evaluator/pretrain"
        train = dict(_train_args(self.cfg.pretrain), steps=e.pretrain_steps)
        key = self._key({"backbone": to_dict(e.backbone), "train": train, "seed": e.pretrain_seed,
                         "testbed": self.testbed()})
        return name, dict(run_dir=str(self.root), out_rel=name, init_seed=e.pretrain_seed, data_seed=e.pretrain_seed,
                          backbone=to_dict(e.backbone), train=train, device=self.cfg.device, threads=self.job_threads,
                          precision=self.cfg.precision, attention=self.cfg.attention, show_progress=self.show_bars), key

    def _evaluator_rm_job(self) -> tuple[str, dict, str] | None:
        """(name, job kwargs, input key) of the evaluator RM (its backbone pretrained first); None if disabled."""
        e = self.cfg.evaluator
        if not e.enabled:
            return None
        data_hash = self.testbed()
        if e.checkpoint:
            backbone, upstream = e.checkpoint, self._checkpoint_key(e.checkpoint)
        else:
            name, kw, key = self._evaluator_pretrain_job()
            if not self.store.is_complete(name, key):  # not run with the grid's pretrains (checkpoint grid)
                self._run_jobs(job_pretrain, [(name, kw)], {name: key}, seeds_of=_pretrain_seeds)
            backbone, upstream = str(self.root / name), self.store.output_hash(name)
        reward = dict(to_dict(self.cfg.reward), epochs=e.epochs, lr=e.lr)
        grid_only = ("finetune_seeds", "layout", "max_train_pairs", "pairs", "policy_pairs_per_post")
        key = self._key({"reward": {k: v for k, v in reward.items() if k not in grid_only}, "pairs": e.train_pairs,
                         "backbone": upstream, "testbed": data_hash, **self._pairs_key()})
        return "evaluator/rm", dict(
            run_dir=str(self.root), out_rel="evaluator/rm", backbone=backbone,
            pretrain_id=f"evaluator-seed{e.pretrain_seed}", finetune_seed=0, reward=reward, n_pairs=e.train_pairs,
            pair_files=self.policy_prefs(), eval_files=self.eval_pair_files(), device=self.cfg.device,
            threads=self.job_threads, precision=self.cfg.precision, attention=self.cfg.attention, role="evaluator", show_progress=self.show_bars), key

    @_once
    def reward_grid(self) -> list[dict]:
        """Finetune every RM of the grid; returns their rm.json records."""
        c = self.cfg.reward
        backbones = self.pretrain()
        data_hash = self.testbed()
        # pair-source fields enter through _pairs_key (policy pairs key on the policy-prefs output)
        common = {k: v for k, v in to_dict(c).items()
                  if k not in ("finetune_seeds", "layout", "pairs", "policy_pairs_per_post")}
        pairs_key, pair_files, eval_files = self._pairs_key(), self.policy_prefs(), self.eval_pair_files()
        todo, keys, names = [], {}, []
        for pid, seed in grid(list(backbones), c.finetune_seeds, c.layout):
            name = f"rm/{rm_id(pid, seed)}"
            names.append(name)
            upstream = (self.store.output_hash(f"pretrain/{pid}") if not self.cfg.pretrain.checkpoints
                        else self._checkpoint_key(backbones[pid]))
            keys[name] = self._key({"common": common, "seed": seed, "backbone": upstream, "testbed": data_hash,
                                    **pairs_key})
            if not self._skip(name, keys[name]):
                todo.append((name, dict(run_dir=str(self.root), out_rel=name, backbone=backbones[pid], pretrain_id=pid,
                                        finetune_seed=seed, reward=to_dict(c), n_pairs=c.max_train_pairs,
                                        pair_files=pair_files, eval_files=eval_files,
                                        device=self.cfg.device, threads=self.job_threads, precision=self.cfg.precision, attention=self.cfg.attention,
                                        trust_remote_code=self.cfg.pretrain.trust_remote_code,
                                        show_progress=self.show_bars)))
        job = self._evaluator_rm_job()
        if job is not None and not self._skip(job[0], job[2]):
            todo.insert(0, job[:2])  # trained beside the grid: the longest job first
            keys[job[0]] = job[2]
        self._run_jobs(job_reward_model, todo, keys, seeds_of=lambda kw: rm_seeds(kw["finetune_seed"]))
        return [json.loads((self.root / n / "rm.json").read_text()) for n in names]

    @_once
    def evaluator(self) -> dict | None:
        """The stronger evaluator RM: its own bigger backbone (seed no grid member uses), more pairs. Its
        pretrain runs with the grid's pretrains and its RM with the grid's RMs (one batch of jobs each)."""
        self.reward_grid()
        job = self._evaluator_rm_job()
        if job is None:
            return None
        name, kw, key = job
        if not self.store.is_complete(name, key):
            self._run_jobs(job_reward_model, [(name, kw)], {name: key}, seeds_of=lambda kw: rm_seeds(kw["finetune_seed"]))
        return json.loads((self.root / name / "rm.json").read_text())

    @_once
    def sft(self) -> str:
        """Train the SFT policy (or register a checkpoint); returns its directory or hub id."""
        c = self.cfg.policy
        if c.checkpoint:
            return c.checkpoint
        data_hash = self.testbed()
        init = None
        if c.init_from == "pretrain":
            backbones = self.pretrain()
            pid = next(iter(backbones))
            init = backbones[pid]
            upstream = (self.store.output_hash(f"pretrain/{pid}") if not self.cfg.pretrain.checkpoints
                        else self._checkpoint_key(init))
        else:
            upstream = to_dict(self.cfg.pretrain.backbone)
        name = "policy"
        sft = {k: v for k, v in to_dict(c).items() if k.startswith("sft_")}
        key = self._key({"sft": sft, "init": upstream, "testbed": data_hash, "max_length": self.cfg.reward.max_length})
        if not self._skip(name, key):
            self.store.mark_running(name, key)
            self.log.event(name, "start", init=c.init_from)
            t0 = time.perf_counter()
            info = job_sft(str(self.root), name, init=init, backbone=to_dict(self.cfg.pretrain.backbone), sft=sft,
                           max_length=self.cfg.reward.max_length, device=self.cfg.device, threads=self.cfg.threads, precision=self.cfg.precision, attention=self.cfg.attention,
                           show_progress=self.show_bars)
            self._done(name, key, [name], t0, seeds={"data_seed": info["data_seed"]}, info=info)
        return str(self.root / name)

    @_once
    def policy_prefs(self) -> tuple[str, ...]:
        """Training pair files for `reward.pairs`: the testbed's, the policy's own (stage policy-prefs), or both."""
        c = self.cfg.reward
        files = ("data/prefs_train.parquet",)
        if c.pairs == "testbed":
            return files
        data_hash = self.testbed()
        policy = self.sft()
        name = "policy-prefs"
        p = self.cfg.policy
        key = self._key({"policy": self.store.output_hash("policy") if not p.checkpoint else self._checkpoint_key(policy),
                         "testbed": data_hash, "per_post": c.policy_pairs_per_post, "seed": p.seed,
                         "max_new_tokens": p.max_new_tokens, "batch_prompts": p.batch_prompts,
                         "heldout": "sft"})
        if not self._skip(name, key):
            self.store.mark_running(name, key)
            self.log.event(name, "start", pairs_per_post=c.policy_pairs_per_post)
            t0 = time.perf_counter()
            info = job_policy_prefs(str(self.root), "policy_prefs.parquet", policy=policy,
                                    pairs_per_post=c.policy_pairs_per_post, max_new_tokens=p.max_new_tokens,
                                    seed=p.seed, batch_prompts=p.batch_prompts, device=self.cfg.device,
                                    threads=self.cfg.threads, precision=self.cfg.precision, attention=self.cfg.attention,
                                    show_progress=self.show_bars)
            self._done(name, key, ["policy_prefs.parquet", "policy_prefs_eval.parquet"], t0, info=info)
        return ("policy_prefs.parquet",) + (files if c.pairs == "mix" else ())

    def eval_pair_files(self) -> tuple[str, ...]:
        """Held-out pairs for the RMs: in distribution first (policy pairs on the SFT's held-out posts when the
        RMs train on policy pairs), then the testbed's prefs_eval."""
        if self.cfg.reward.pairs == "testbed":
            return ("data/prefs_eval.parquet",)
        self.policy_prefs()
        return ("policy_prefs_eval.parquet", "data/prefs_eval.parquet")

    def _pairs_key(self) -> dict:
        """What the RMs' training pairs depend on beyond the testbed (empty for the testbed's own pairs)."""
        if self.cfg.reward.pairs == "testbed":
            return {}
        self.policy_prefs()
        return {"pairs": self.cfg.reward.pairs, "policy_prefs": self.store.output_hash("policy-prefs")}

    @_once
    def sample(self) -> Path:
        """Sample a pool of N candidates + K reference samples per eval prompt into samples.parquet."""
        c = self.cfg.policy
        policy = self.sft()
        data_hash = self.testbed()
        upstream = self.store.output_hash("policy") if not c.checkpoint else self._checkpoint_key(c.checkpoint)
        name = "sample"
        sampling = {k: v for k, v in to_dict(c).items() if not k.startswith("sft_") and k != "checkpoint"}
        key = self._key({"sampling": sampling, "policy": upstream, "testbed": data_hash})
        if not self._skip(name, key):
            self.store.mark_running(name, key)
            self.log.event(name, "start", pool=c.pool_size, references=c.n_reference)
            t0 = time.perf_counter()
            info = job_sample(str(self.root), "samples.parquet", policy=policy, sampling=sampling,
                              device=self.cfg.device, threads=self.cfg.threads, precision=self.cfg.precision, attention=self.cfg.attention, show_progress=self.show_bars,
                              trust_remote_code=self.cfg.pretrain.trust_remote_code)
            self._done(name, key, ["samples.parquet"], t0, seeds={"sampling_seed": c.seed}, info=info)
        return self.root / "samples.parquet"

    @_once
    def score(self) -> Path:
        """Score every sample with every RM + evaluator (+ gold) into rewards.parquet and models.parquet."""
        rms = self.reward_grid()
        ev = self.evaluator()
        self.sample()
        samples_hash = self.store.output_hash("sample")
        records = rms + ([ev] if ev else [])
        names = [f"rm/{r['model_id']}" for r in rms] + (["evaluator/rm"] if ev else [])
        todo, keys = [], {}
        for rec, model_name in zip(records, names, strict=True):
            mid = "evaluator" if rec["role"] == "evaluator" else rec["model_id"]
            name = f"score/{mid}"
            keys[name] = self._key({"model": self.store.output_hash(model_name), "samples": samples_hash,
                                   "max_length": self.cfg.reward.max_length})
            if not self._skip(name, keys[name]):
                todo.append((name, dict(run_dir=str(self.root), out_rel=f"scores/{mid}.parquet",
                                        model_dir=str(self.root / model_name), model_id=mid,
                                        max_length=self.cfg.reward.max_length, batch_size=64,
                                        device=self.cfg.device, threads=self.cfg.threads,
                                        show_progress=self.show_bars)))
        # scoring jobs are short and share this process's tokenised samples (one tokenisation for all models)
        self._run_jobs(job_score, todo, keys, seeds_of=lambda kw: {}, pool=False)
        name = "score"
        key = self._key({k: self.store.output_hash(k) for k in sorted(keys)} | {"samples": samples_hash})
        if not self._skip(name, key):
            t0 = time.perf_counter()
            info = assemble_reward_tensor(self.root, records)
            self._done(name, key, ["rewards.parquet", "models.parquet"], t0, info=info)
        return self.root / "rewards.parquet"

    @_once
    def analyze(self, rewards: Path | None = None, models: Path | None = None) -> Path:
        """Figures' and table's numbers into analysis/ (from this run's tensor, or a user's)."""
        from perm.analysis import load_reward_tensor, run_analysis, save_analysis
        from perm.store import hash_path

        external = rewards is not None
        if not external:
            rewards, models = self.score(), self.root / "models.parquet"
            upstream = {"score": self.store.output_hash("score"), "samples": self.store.output_hash("sample")}
        else:  # a user's tensor: nothing of this run's samples or data may leak into its analysis
            upstream = {"rewards": hash_path(rewards), "models": hash_path(models)}
        name = "analyze"
        key = hash_obj({"analysis": to_dict(self.cfg.analysis), "tensor": upstream})
        if not self._skip(name, key):
            self.store.mark_running(name, key)
            t0 = time.perf_counter()
            tensor = load_reward_tensor(rewards, models)
            samples, posts = (None, None) if external else _samples_and_posts(self.root)
            a = self.cfg.analysis
            results = run_analysis(tensor, ns=list(a.ns) if a.ns else None, anova_draws=a.anova_draws, seed=a.seed,
                                   samples=samples, posts=posts, scale=a.scale)
            with atomic_path(self.root / "analysis") as tmp:
                save_analysis(results, tmp)
            self._done(name, key, ["analysis"], t0, info={"prompts": tensor.n_prompts, "pool": tensor.pool_size})
        return self.root / "analysis"

    @_once
    def report(self, rewards: Path | None = None, models: Path | None = None) -> Path:
        """report/index.html, figures and table1.md."""
        from perm.report import load_analysis, write_report

        analysis_dir = self.analyze(rewards, models)
        name = "report"
        key = hash_obj({"analysis": self.store.output_hash("analyze"), "config": to_dict(self.cfg)})
        if not self._skip(name, key):
            self.store.mark_running(name, key)
            t0 = time.perf_counter()
            results = load_analysis(analysis_dir)
            if rewards is None:
                records = _rm_records(self.root)
                extras = {"examples": _examples(self.root), "learnability": learnability(self.root, records),
                          "config_yaml": dump_config(self.cfg)}
            else:  # a user's tensor: its own models table, no examples or checks from this run's files
                records = _records_from_models_table(models)
                extras = {}
            with atomic_path(self.root / "report") as tmp:
                write_report(results, tmp, rm_records=records, **extras)
            self._done(name, key, ["report"], t0)
        return self.root / "report" / "index.html"

    def run(self, stage: str = "run"):
        """Run `stage` and everything it needs; returns a short human-readable result."""
        if stage == "testbed":
            self.testbed()
            return self.root / "data"
        if stage == "pretrain":
            return "\n".join(f"{k}: {v}" for k, v in self.pretrain().items())
        if stage == "train-rm":
            rms, ev = self.reward_grid(), self.evaluator()
            lines = [f"{r['model_id']}: accuracy {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}" for r in rms]
            if ev:
                lines.append(f"evaluator: accuracy {ev['accuracy']:.3f} ± {ev['accuracy_se']:.3f}")
            return "\n".join(lines)
        if stage == "sft":
            return self.sft()
        if stage == "sample":
            return self.sample()
        if stage == "score":
            return self.score()
        if stage == "analyze":
            return self.analyze()
        if stage in ("report", "run"):
            out = self.report()
            self.log.event("run", "done", report=str(out))
            return f"report: {out}"
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")

    def _run_jobs(self, fn, todo: list[tuple[str, dict]], keys: dict, seeds_of, pool: bool = True) -> None:
        """Run the jobs of `todo` ((name, kwargs) each) and record each in the manifest as it finishes.

        pool=False keeps them in this process even with `workers` > 1 (short jobs that share a cache here)."""
        if not todo:
            return
        if isinstance(self.executor, LocalExecutor) or (isinstance(self.executor, PoolExecutor) and not pool):
            # one at a time, so that each finished job is recorded before the next starts (resume granularity)
            for name, kw in todo:
                self.store.mark_running(name, keys[name])
                self.log.event(name, "start")
                t0 = time.perf_counter()
                info = fn(**kw)
                self._done(name, keys[name], [kw["out_rel"]], t0, seeds=seeds_of(kw),
                           info=info | {"threads": kw.get("threads")})
            return
        executor = "ray" if isinstance(self.executor, RayExecutor) else f"{self.cfg.workers} workers"
        for name, _ in todo:
            self.store.mark_running(name, keys[name])
            self.log.event(name, "start", executor=executor)
        for i, (info, wall) in self.executor.map_as_completed(fn, [kw for _, kw in todo]):
            name, kw = todo[i]
            self._done(name, keys[name], [kw["out_rel"]], time.perf_counter() - wall, seeds=seeds_of(kw),
                       info=info | {"threads": kw.get("threads")})


def hardware_record(precision, attention: str) -> dict:
    """The manifest's `hardware` entry: the device, the CPU, and the precision and attention jobs use."""
    from perm.hardware import cpu_info
    from perm.models import attention_for

    return {"device": precision.device_label, "cpu": cpu_info(), "precision": precision.value,
            "precision_requested": precision.requested, "native_bf16": precision.native_bf16,
            "attention": attention_for(precision.device, precision.value, attention) or "model default"}


def _with_int_ids(table):
    """Keep the source's pair id as `source_id`, number pairs 0..n-1 as `pair_id` (as the testbed does)."""
    import pyarrow as pa

    table = table.rename_columns(["source_id" if n == "pair_id" else n for n in table.column_names])
    return table.add_column(0, "pair_id", pa.array(range(table.num_rows), pa.int64()))


def _checkpoint_key(path: str) -> str:
    """A local checkpoint directory is keyed by its content (changed weights rerun); a hub id by its name."""
    from perm.store import hash_path

    p = Path(path)
    return hash_path(p) if p.is_dir() else f"hub:{path}"


def _pretrain_seeds(kw: dict) -> dict:
    """The seeds a pretrain job records in the manifest."""
    return {"init_seed": kw["init_seed"], "data_seed": kw["data_seed"]}


def _train_args(c) -> dict:
    return {k: getattr(c, k) for k in ("steps", "batch_size", "seq_len", "lr", "warmup_steps", "weight_decay")}


def _headline(info: dict) -> dict:
    keys = ("heldout_perplexity", "accuracy", "tokens_per_s", "pairs_per_s", "rows", "mean_gold")
    return {k: round(info[k], 4) if isinstance(info[k], float) else info[k] for k in keys if k in info}



# ----------------------------------------------------------------------------------- report inputs


def _samples_and_posts(root: Path):
    """samples.parquet texts and the eval prompts' posts, for the reward-hacking diagnostics (if present)."""
    sp, ep = root / "samples.parquet", root / "data" / "eval_prompts.parquet"
    if not sp.exists() or not ep.exists():
        return None, None
    samples = pq.read_table(sp, columns=["prompt_id", "sample_id", "text", "n_tokens"]).to_pandas()
    prompts = pq.read_table(ep).to_pandas()
    if "post" not in prompts.columns:
        return samples, None
    return samples, dict(zip(prompts.prompt_id, prompts.post, strict=True))


def _rm_records(root: Path) -> list[dict]:
    recs = []
    for p in sorted(root.glob("rm/*/rm.json")) + sorted(root.glob("evaluator/rm/rm.json")):
        r = json.loads(p.read_text())
        recs.append({k: r.get(k) for k in ("model_id", "role", "pretrain_id", "finetune_seed", "accuracy",
                                           "accuracy_se", "gold_accuracy", "n_train_pairs", "wall_s", "eval_pairs",
                                           "n_eval_pairs")})
        recs[-1]["other_evals"] = r.get("other_evals") or {}
        if r.get("role") == "evaluator":
            recs[-1]["model_id"] = "evaluator"
    return recs


def _records_from_models_table(models: Path) -> list[dict]:
    """rm_records for the report from a user's models.parquet (accuracy columns used when present)."""
    df = pq.read_table(models).to_pandas()
    df = df[df.role != "gold"]
    cols = ["model_id", "role", "pretrain_id", "finetune_seed", "accuracy", "accuracy_se", "gold_accuracy"]
    return [{c: (r[c] if c in df.columns and r[c] == r[c] else None) for c in cols} for _, r in df.iterrows()]


def _examples(root: Path, k: int = 3) -> list[dict]:
    """A few prompts with the SFT sample, and the best-of-N picks of one RM and of the pretrain ensemble."""
    import numpy as np

    from perm.analysis import ensemble_members, load_reward_tensor
    from perm.bon import aggregate, standardize

    if not (root / "rewards.parquet").exists():
        return []
    t = load_reward_tensor(root / "rewards.parquet", root / "models.parquet")
    samples = pq.read_table(root / "samples.parquet").to_pandas().set_index(["prompt_id", "sample_id"])
    prompts = pq.read_table(root / "data" / "eval_prompts.parquet").to_pandas().set_index("prompt_id")
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
            out[name] = {"value": float(value), "description": description} | ({"se": float(se)} if se else {})

    rms = [r for r in records if r["role"] == "rm"]
    ev_rel = (rms[0].get("eval_pairs") if rms else None) or "data/prefs_eval.parquet"  # older rm.json: none
    ev_path = root / ev_rel
    if ev_path.exists() and "label_agrees_gold" in pq.read_schema(ev_path).names:
        (agree,) = _read_column(ev_path, "label_agrees_gold")
        put("label-noise ceiling", np.mean(agree), f"fraction of held-out labels ({ev_rel}) that agree with the "
            "gold reward: the accuracy a perfect RM would get against these noisy labels")
    if rms:
        acc = np.array([r["accuracy"] for r in rms])
        put("RM accuracy, mean", acc.mean(), f"in-distribution pairwise accuracy on {ev_rel} "
            f"({rms[0].get('n_eval_pairs') or 'all'} pairs) over {len(rms)} RMs (range {acc.min():.3f}-{acc.max():.3f}); "
            "chance is 0.5")
        gold = [r.get("gold_accuracy") for r in rms]
        if all(g is not None for g in gold):
            put("RM agreement with gold order, mean", np.mean(gold), "fraction of held-out pairs the RM orders "
                "as the gold reward does (no label noise: a perfect RM gets 1)")
        for rel in rms[0].get("other_evals", {}):
            other = [r["other_evals"][rel] for r in rms if rel in r.get("other_evals", {})]
            put(f"RM accuracy on {rel}, mean", np.mean([o["accuracy"] for o in other]),
                "out-of-distribution pairwise accuracy against these pairs' labels")
            if all("gold_accuracy" in o for o in other):
                put(f"RM agreement with gold order on {rel}, mean", np.mean([o["gold_accuracy"] for o in other]),
                    "fraction of these pairs the RM orders as the gold reward does")
    if (root / "rewards.parquet").exists() and (root / "samples.parquet").exists():
        rw = pq.read_table(root / "rewards.parquet").to_pandas()
        pool = rw[~rw.is_reference].pivot_table(index=["prompt_id", "sample_id"], columns="model_id", values="reward")
        if "gold" in pool.columns:
            for mid in [m for m in pool.columns if m != "gold"]:
                # prompts whose pool is constant under either score have no rank correlation: skipped
                rho = [spearmanr(g[mid], g["gold"]).statistic for _, g in pool.groupby(level=0)
                       if g[mid].nunique() > 1 and g["gold"].nunique() > 1]
                rho = np.asarray(rho, dtype=float)
                if len(rho) < 2:
                    continue
                put(f"Spearman with gold on the pool: {mid}", rho.mean(), "rank correlation with the gold reward "
                    "over each prompt's pool of policy samples, averaged over prompts", rho.std(ddof=1) / np.sqrt(len(rho)))
            samples = pq.read_table(root / "samples.parquet").to_pandas()
            pool_gold = samples[~samples.is_reference]
            put("SFT sample, mean gold", pool_gold.gold_reward.mean(), "gold reward of a random policy sample (n = 1)")
            put("gold best-of-pool, mean gold", pool_gold.groupby("prompt_id").gold_reward.max().mean(),
                "gold reward of the gold-ranked best of the whole pool: the headroom best-of-n can reach")
            prompts = pq.read_table(root / "data" / "eval_prompts.parquet").to_pandas()
            if "post" in prompts.columns:
                from perm.testbed.gold import gold_reward_batch

                put("reference summary, mean gold", gold_reward_batch(list(prompts.post), list(prompts.reference)).mean(),
                    "gold reward of the testbed's reference summaries of the eval posts")
    return out
