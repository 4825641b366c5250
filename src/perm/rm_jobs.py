"""One reward model's finetuning job (:func:`job_reward_model`), which the grid's RMs, the evaluator and the
ensemble members of perm.members share: load the pairs, build the model its kind needs, train with the
Bradley-Terry + centering loss (perm.reward.train_reward_model), evaluate on the held-out pairs and save it
with its rm.json, atomically. Not a stage: `train-rm` and `train-members` both run it."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from perm import run_layout as layout
from perm.config import RewardConfig, section_from_dict, to_dict
from perm.progress import job_bar
from perm.store import atomic_path, derive_seed, read_column


def rm_seeds(finetune_seed: int, pretrain_id: str | None = None) -> dict:
    """The three finetuning seeds, each its own stream. Derived from the finetune seed alone (scope `shared`:
    the same head init, data order and dropout on every backbone), or, given `pretrain_id` (scope `per_rm`,
    and always for the evaluator), from the pretrain id and finetune seed together."""
    parts = (finetune_seed,) if pretrain_id is None else (pretrain_id, finetune_seed)
    return {
        "head_seed": derive_seed("rm-head", *parts),
        "data_seed": derive_seed("rm-data-order", *parts),
        "dropout_seed": derive_seed("rm-dropout", *parts),
    }


def train_tokens(tokenizer, prompts, chosen, rejected, epochs: float) -> dict:
    """Tokens an RM's finetuning reads (before any cut to max_length), the measure the testbed compares with
    its backbones' pretraining tokens: ``train_tokens`` counts each distinct prompt once and each distinct
    completion of it once per epoch (what a prompt-sharing forward runs); ``train_sequence_tokens`` counts
    every distinct prompt + completion sequence whole."""
    from perm.reward import token_ids

    seqs = sorted({*zip(prompts, chosen, strict=True), *zip(prompts, rejected, strict=True)})
    distinct_prompts = sorted({p for p, _ in seqs})
    lp = dict(zip(distinct_prompts, map(len, token_ids(tokenizer, distinct_prompts)), strict=True))
    lc = list(map(len, token_ids(tokenizer, [c for _, c in seqs])))
    eos = 1 if tokenizer.eos_token_id is not None else 0
    read = sum(lp.values()) + sum(c + eos for c in lc)
    whole = sum(lp[p] + c + eos for (p, _), c in zip(seqs, lc, strict=True))
    return {"train_tokens": int(round(epochs * read)), "train_sequence_tokens": int(round(epochs * whole)),
            "n_train_completions": len(seqs)}


def encoded_eval_pairs(run: Path, rel: str, tok, max_length: int):
    """Held-out pairs `rel` of the run, encoded: (chosen ids, rejected ids, gold differences or None where the
    file has no gold columns)."""
    from perm.reward import encode_pairs

    ep, ec, er = read_column(run / rel, "prompt", "chosen", "rejected")
    gold_diff = None
    if "gold_chosen" in pq.read_schema(run / rel).names:
        gc, gr = read_column(run / rel, "gold_chosen", "gold_rejected")
        gold_diff = [a - b for a, b in zip(gc, gr, strict=True)]
    return *encode_pairs(tok, ep, ec, er, max_length), gold_diff


EVAL_FIELDS = ("accuracy", "accuracy_se", "gold_accuracy", "mean_reward")  # recorded per other eval file


def evaluate_files(model, run: Path, eval_files, tok, max_length: int, device) -> dict[str, dict]:
    """:data:`EVAL_FIELDS` and ``n_pairs`` of `model` on each held-out pair file of the run."""
    from perm.reward import evaluate_pairs

    out = {}
    for rel in eval_files:
        ec, er, gold_diff = encoded_eval_pairs(run, rel, tok, max_length)
        res = evaluate_pairs(model, ec, er, tok.pad_token_id, device, gold_diff=gold_diff)
        out[rel] = {k: res[k] for k in EVAL_FIELDS if k in res} | {"n_pairs": len(ec)}
    return out


def other_evals(evals: dict[str, dict], files) -> dict[str, dict]:
    """The ``other_evals`` of an rm.json: the :func:`evaluate_files` fields of `files` (the eval files after
    the first), without n_pairs."""
    return {rel: {k: v for k, v in evals[rel].items() if k != "n_pairs"} for rel in files}


def job_reward_model(run_dir: str, out_rel: str, *, backbone: str, pretrain_id: str, finetune_seed: int,
                     reward: RewardConfig | dict, n_pairs: int | None,
                     pair_files: tuple[str, ...] = (layout.PREFS_TRAIN,),
                     eval_files: tuple[str, ...] = (layout.PREFS_EVAL,), device: str, threads: int | None,
                     precision: str = "fp32", attention: str = "auto",
                     trust_remote_code: bool = False, role: str = "rm", seed_scope: str = "shared",
                     show_progress: bool = True, member: dict | None = None, seeds: dict | None = None
                     ) -> dict | None:
    """Finetune one RM from `backbone` (dir or hub id) on the pairs of `pair_files` (concatenated, first
    `n_pairs` kept); save it + rm.json atomically.

    Under several processes (``python -m perm.launch job_reward_model``, DDP) every rank trains on its slice
    of each global batch; the main process writes the RM and returns the info, the others return None once
    it is written.

    eval_files: held-out pairs; the first is in distribution (the learning curve and `accuracy`), the others
    are evaluated once at the end (`other_evals`). Gold accuracy wherever the file has gold columns.

    member: an ensemble member of perm.members instead of a plain RM, by ``member["kind"]``: ``multihead``
    (``heads`` scalar heads, each on its own bootstrap counts drawn from ``seeds["bootstrap_seed"]``),
    ``lora`` (a peft adapter of ``rank`` / ``alpha`` on the frozen backbone, A drawn from
    ``seeds["adapter_seed"]``; saved in peft's format), ``probe`` (the head alone trained: WARM's shared
    linear probe), ``warm`` (every weight trained from the probe's RM at ``backbone``, its head kept). seeds:
    the job's head, data-order and dropout seeds (+ the kind's) where the caller derives them (default:
    :func:`rm_seeds`)."""
    from perm import members
    from perm.models import (
        attention_for,
        load_reward_backbone,
        load_reward_model,
        load_tokenizer,
        make_accelerator,
        save_model,
        use_attention,
    )
    from perm.prefix import set_readout
    from perm.reward import encode_pairs, train_reward_model
    from perm.stages._context import torch_setup  # (perm.stages imports this module)

    if isinstance(reward, dict):  # from a launcher's JSON (job_reward_model_launched)
        reward = section_from_dict(RewardConfig, reward, "reward")

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    tok = load_tokenizer(backbone if not (run / layout.TOKENIZER).exists() else run / layout.TOKENIZER,
                         trust_remote_code=trust_remote_code)
    seeds = seeds or rm_seeds(finetune_seed, pretrain_id if seed_scope == "per_rm" else None)
    kind = (member or {}).get("kind")
    if kind == "multihead":
        model = members.multihead_model(backbone, member["heads"], head_seed=seeds["head_seed"],
                                        pad_token_id=tok.pad_token_id, dropout=reward.dropout,
                                        trust_remote_code=trust_remote_code)
    elif kind == "warm":  # the probe's RM: backbone and head as the probe left them
        model = load_reward_model(backbone, trust_remote_code=trust_remote_code).train()
    else:
        model = load_reward_backbone(backbone, pad_token_id=tok.pad_token_id, head_seed=seeds["head_seed"],
                                     dropout=reward.dropout, trust_remote_code=trust_remote_code)
    set_readout(model, reward.readout)
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    use_attention(model, attention_for(dev, precision, attention))
    peft = None
    if kind == "lora":
        peft = members.lora_model(model, rank=member["rank"], alpha=member["alpha"],
                                  seed=seeds["adapter_seed"])
        model = members.trainable(peft)
    elif kind == "probe":
        members.head_only(model)
    params = members.parameter_counts(model)
    ml = reward.max_length
    prompts, chosen, rejected = [], [], []
    for rel in pair_files:  # e.g. policy_prefs.parquet then data/prefs_train.parquet
        p, c, r = read_column(run / rel, "prompt", "chosen", "rejected")
        prompts, chosen, rejected = prompts + p, chosen + c, rejected + r
    if n_pairs is not None:
        prompts, chosen, rejected = prompts[:n_pairs], chosen[:n_pairs], rejected[:n_pairs]

    ec, er, gold_diff = encoded_eval_pairs(run, eval_files[0], tok, ml)
    acc = make_accelerator(dev, precision)
    # > 1 under `python -m perm.launch` (DDP): every rank trains, the main one saves
    world = acc.num_processes
    if world > 1:
        short = len(chosen) % reward.batch_size
        if 0 < short < world:
            raise ValueError(f"{out_rel}: {len(chosen)} pairs in batches of {reward.batch_size} leave a "
                             f"last batch of {short} pairs, fewer than the {world} processes that split each "
                             "batch")
        # the loop splits each global batch over the ranks: one LR-schedule step per update, as in one process
        # (accelerate's default steps a prepared scheduler once per process)
        acc.dataloader_config.split_batches = True
    train_chosen, train_rejected = encode_pairs(tok, prompts, chosen, rejected, ml)
    bar = job_bar(out_rel, 1, show_progress and acc.is_main_process, scale=(reward.batch_size, "pairs"))
    state = train_reward_model(
        model, chosen=train_chosen, rejected=train_rejected,
        eval_chosen=ec, eval_rejected=er, eval_gold_diff=gold_diff, pad_id=tok.pad_token_id,
        data_seed=seeds["data_seed"], dropout_seed=seeds["dropout_seed"], progress=bar,
        accelerator=acc, micro_batch_size=reward.micro_batch_size,
        pair_weights=(members.bootstrap_counts(len(chosen), member["heads"], seeds["bootstrap_seed"])
                      if kind == "multihead" else None),
        **{k: getattr(reward, k) for k in ("center_coef", "epochs", "batch_size", "lr", "warmup_frac",
                                           "weight_decay", "max_grad_norm", "eval_every", "group_by_prompt")})
    bar.close()
    model = state.pop("model")
    train_loss = state["train_loss"]
    if world > 1:  # each rank's loss is of its slice: the global batch's is their mean (equal slices)
        from accelerate.utils import gather_object

        train_loss = [sum(step) / world for step in zip(*gather_object([train_loss]), strict=True)]
        if not acc.is_main_process:
            acc.wait_for_everyone()  # until the main process has written the RM
            return None
    final = state["evals"][-1]  # the loop's last eval is of the final weights (every rank evaluates all)
    others = other_evals(evaluate_files(model, run, eval_files[1:], tok, ml, model.device), eval_files[1:])
    info = {
        "model_id": Path(out_rel).name,
        "role": role,
        "pretrain_id": pretrain_id,
        "finetune_seed": finetune_seed,
        "backbone": str(backbone),
        "seeds": seeds,
        "seed_scope": seed_scope,
        "config": to_dict(reward),
        "n_train_pairs": len(chosen),
        **train_tokens(tok, prompts, chosen, rejected, reward.epochs),
        "n_train_prompts": state["n_prompts"],
        "eval_pairs": eval_files[0],
        "n_eval_pairs": len(ec),
        "accuracy": final["accuracy"],
        "accuracy_se": final["accuracy_se"],
        "gold_accuracy": final.get("gold_accuracy"),
        "eval_mean_reward": final["mean_reward"],
        "other_evals": others,
        "eval_curve": state["evals"],
        "final_train_loss": float(sum(train_loss[-20:]) / len(train_loss[-20:])),
        "steps": state["step"],
        "wall_s": state["wall_s"],
        "pairs_per_s": state["pairs_per_s"],
        "attention": model.config._attn_implementation,
        "precision": precision,
        "params_trained": params["trainable"],
        "params_total": params["total"],
    }
    if member:
        info["member"] = member
    if kind == "multihead":
        info["heads"] = [{k: h[k] for k in ("accuracy", "accuracy_se", "gold_accuracy") if k in h}
                         for h in final["heads"]]
    if world > 1:
        info["processes"] = world
    with atomic_path(run / out_rel) as tmp:
        if peft is not None:  # the adapter and its head, in peft's format, beside the tokenizer and rm.json
            members.save_lora(peft, tmp)
            save_model(None, tok, tmp, info, layout.RM_RECORD)
        else:
            save_model(model, tok, tmp, info, layout.RM_RECORD)
    if world > 1:
        acc.wait_for_everyone()
    return info



def job_average(run_dir: str, out_rel: str, *, sources: tuple[str, ...], eval_files: tuple[str, ...],
                max_length: int, pretrain_id: str, device: str, threads: int | None, note: str = "",
                **_env) -> dict:
    """The weight average of the RMs in `sources` (folders of the run; the same architecture: WARM's
    finetunes, or the grid's finetune seeds of one pretrain) as one RM, evaluated on the held-out pairs as
    a finetuned RM is, saved with its rm.json (``averaged``: the sources) atomically."""

    from perm.members import average_state_dicts, parameter_counts
    from perm.models import load_reward_model, load_tokenizer, save_model
    from perm.stages._context import torch_setup  # (perm.stages imports this module)

    dev = torch_setup(device, threads)
    run = Path(run_dir)
    t0 = time.perf_counter()
    models = [load_reward_model(run / s) for s in sources]
    model = models[0]
    model.load_state_dict(average_state_dicts([m.state_dict() for m in models]))
    model = model.to(dev).eval()
    tok = load_tokenizer(run / layout.TOKENIZER if (run / layout.TOKENIZER).exists() else run / sources[0])
    evals = evaluate_files(model, run, eval_files, tok, max_length, dev)
    first = evals[eval_files[0]]
    info = {"model_id": Path(out_rel).name, "role": "member", "pretrain_id": pretrain_id,
            "finetune_seed": None, "averaged": list(sources), "note": note, "eval_pairs": eval_files[0],
            "accuracy": first["accuracy"], "accuracy_se": first["accuracy_se"],
            "gold_accuracy": first.get("gold_accuracy"), "eval_mean_reward": first["mean_reward"],
            "other_evals": other_evals(evals, eval_files[1:]),
            "params_trained": 0, "params_total": parameter_counts(model)["total"],
            "wall_s": time.perf_counter() - t0, "precision": "fp32"}
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, info, layout.RM_RECORD)
    return info


def job_reward_model_launched(processes: int, **kw) -> dict:
    """:func:`job_reward_model` on `processes` processes: ``accelerate launch --multi_gpu --num_processes N -m
    perm.launch job_reward_model <kw.json>`` (DDP; gloo on CPU, one GPU per process on CUDA), its keyword
    arguments written beside the run's scratch; returns the main process's info (with ``processes``). A failed
    launch raises RuntimeError with the end of its output."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    run = Path(kw["run_dir"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=run, prefix=".launch-", delete=False) as f:
        json.dump(kw | {"show_progress": False, "reward": to_dict(kw["reward"])}, f)
    try:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--multi_gpu",
               "--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "perm.launch", "job_reward_model", f.name]
        threads = str(kw.get("threads") or 1)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"accelerate launch of {kw['out_rel']} on {processes} processes exited "
                           f"{proc.returncode}: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])
