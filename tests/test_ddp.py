"""One job on two CPU processes (``python -m perm.launch`` under ``accelerate launch --multi_gpu --num_processes
2``: torchrun underneath, the gloo backend) against the same job in one process.

Scoring is exact: the ranks run the single process's batches. RM finetuning (DDP) matches up to rounding:
the data order, steps and LR schedule are the same, but each step's gradient is the allreduce-average of two
half-batch gradients (each half padded to its own longest pair, a prompt's pairs split across ranks run the
prompt twice), so the float sums run in another order; 24 AdamW steps carry that into the weights (measured
2e-5) and rewards (1.3e-4 at rewards up to 4.2; one process with 2 threads instead of 1 differs by 4e-5).
Tolerances: weights 1e-4, rewards 2.5e-4 of the largest |reward|. A real difference is far larger: with
accelerate stepping the LR schedule once per process (the bug this caught) rewards differed by 5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch.distributed as dist

from conftest import toy_pairs

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available in this torch")

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(job: str, kwargs: dict, kw_path, processes: int, *, cpu_flag: bool = False):
    """Run perm.launch in one process, or under accelerate launch with `processes` (threads=1 each)."""
    kw_path.write_text(json.dumps(kwargs))
    cmd = [sys.executable, "-m", "perm.launch", job, str(kw_path)]
    if processes > 1:
        cmd = [*ACCELERATE, "--cpu" if cpu_flag else "--multi_gpu", "--num_processes", str(processes),
               "--main_process_port", str(_free_port()), "-m", "perm.launch", job, str(kw_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _info(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # the main process's one JSON line


def _run_dir(tmp_path, tokenizer):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    tokenizer.save_pretrained(run / "tokenizer")
    return run


def _pair_files(run):
    """48 training pairs on 24 prompts (two pairs per prompt: grouped batches, a prompt's pairs may straddle
    ranks) and 16 held-out pairs, as the run's data files; returns the held-out (prompts, chosen, rejected)."""
    prompts, chosen, rejected = toy_pairs(48, seed=0)
    prompts[24:] = prompts[:24]
    pq.write_table(pa.table({"prompt": prompts, "chosen": chosen, "rejected": rejected}),
                   run / "data" / "prefs_train.parquet")
    ep, ec, er = toy_pairs(16, seed=1)
    pq.write_table(pa.table({"prompt": ep, "chosen": ec, "rejected": er}), run / "data" / "prefs_eval.parquet")
    return ep, ec, er


@pytest.mark.slow  # ~45 s: four processes start (torch, transformers), two of them train
def test_ddp_reward_model_equals_one_process_within_rounding(tmp_path, tokenizer, tiny_backbone_dir):
    from perm.config import RewardConfig, to_dict
    from perm.models import load_reward_model
    from perm.prefix import score_pairs
    from perm.reward import encode

    run = _run_dir(tmp_path, tokenizer)
    ep, ec, er = _pair_files(run)
    # 48 pairs in batches of 8 (4 per rank) for 4 epochs: 24 steps, every batch split evenly
    reward = to_dict(RewardConfig()) | {"batch_size": 8, "epochs": 4.0, "eval_every": 8, "max_length": 32}
    kw = dict(run_dir=str(run), backbone=str(tiny_backbone_dir), pretrain_id="seed0", finetune_seed=0,
              reward=reward, n_pairs=None, device="cpu", threads=1, precision="fp32", show_progress=False)
    one = _info(_launch("job_reward_model", kw | {"out_rel": "rm/one"}, tmp_path / "one.json", 1))
    two = _info(_launch("job_reward_model", kw | {"out_rel": "rm/two"}, tmp_path / "two.json", 2))

    assert one["steps"] == two["steps"] == 24 and one["n_train_pairs"] == two["n_train_pairs"] == 48
    assert [e["step"] for e in one["eval_curve"]] == [e["step"] for e in two["eval_curve"]] == [8, 16, 24]
    assert json.loads((run / "rm/two/rm.json").read_text())["processes"] == 2 and "processes" not in one
    a, b = load_reward_model(run / "rm/one"), load_reward_model(run / "rm/two")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    weight_diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    enc = encode(tokenizer, ep, ec, 32), encode(tokenizer, ep, er, 32)
    ra, rb = (np.concatenate(score_pairs(m, *enc, tokenizer.pad_token_id, "cpu")) for m in (a, b))
    reward_diff = float(np.abs(ra - rb).max())
    curve_diff = max(abs(x["mean_reward"] - y["mean_reward"]) for x, y in
                     zip(one["eval_curve"], two["eval_curve"], strict=True))
    print(f"DDP vs one process: max |weight diff| {weight_diff:.2e}, max |reward diff| {reward_diff:.2e} "
          f"(rewards spread {np.ptp(ra):.3f}), eval mean-reward diff {curve_diff:.2e}, final train loss "
          f"{one['final_train_loss']:.6f} vs {two['final_train_loss']:.6f}")
    assert weight_diff < 1e-4 and reward_diff < 2.5e-4 * np.abs(ra).max() and curve_diff < 1e-4
    assert abs(one["final_train_loss"] - two["final_train_loss"]) < 1e-4  # the global batch's, not rank 0's
    assert one["accuracy"] == two["accuracy"]
    assert np.ptp(ra) > 1e-2  # the RM moved: the comparison is not of two untrained heads


@pytest.mark.slow  # ~35 s: three processes start, all train
def test_ddp_with_micro_batches_equals_one_process_within_rounding(tmp_path, tokenizer, tiny_backbone_dir):
    """Each rank's slice of 4 pairs in micro-batches of 3 and 1 (gradients synchronised once per step) against
    one process training each batch of 8 in one pass: the DDP tolerances of the test above."""
    from perm.config import RewardConfig, to_dict
    from perm.models import load_reward_model

    run = _run_dir(tmp_path, tokenizer)
    _pair_files(run)
    reward = to_dict(RewardConfig()) | {"batch_size": 8, "epochs": 2.0, "eval_every": 100, "max_length": 32}
    kw = dict(run_dir=str(run), backbone=str(tiny_backbone_dir), pretrain_id="seed0", finetune_seed=0,
              n_pairs=None, device="cpu", threads=1, precision="fp32", show_progress=False)
    one = _info(_launch("job_reward_model", kw | {"out_rel": "rm/one", "reward": reward}, tmp_path / "one.json", 1))
    two = _info(_launch("job_reward_model", kw | {"out_rel": "rm/two", "reward": reward | {"micro_batch_size": 3}},
                        tmp_path / "two.json", 2))
    assert one["steps"] == two["steps"] == 12
    sa, sb = load_reward_model(run / "rm/one").state_dict(), load_reward_model(run / "rm/two").state_dict()
    assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) < 1e-4
    assert abs(one["final_train_loss"] - two["final_train_loss"]) < 1e-4
    assert abs(one["eval_mean_reward"] - two["eval_mean_reward"]) < 1e-4


def _scoring_run(tmp_path, tokenizer, tiny_backbone_dir):
    from perm.models import load_reward_backbone

    run = _run_dir(tmp_path, tokenizer)
    rng = np.random.default_rng(0)
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, 40, size=n)) + " TL;DR:" for n in rng.integers(1, 12, 10)]
    pq.write_table(pa.table({"prompt_id": pa.array(range(100, 110), pa.int64()), "prompt": prompts}),
                   run / "data" / "eval_prompts.parquet")
    texts = [" ".join(f"w{i}" for i in rng.integers(0, 40, size=n)) for n in rng.integers(1, 8, 30)]
    order = rng.permutation(30)  # rows not grouped by prompt in the file
    pids, sids = (100 + np.arange(30) // 3)[order], (np.arange(30) % 3)[order]
    pq.write_table(pa.table({"prompt_id": pa.array(pids, pa.int64()), "sample_id": pa.array(sids, pa.int64()),
                             "text": [texts[i] for i in order]}), run / "samples.parquet")
    rm = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0).eval()
    rm.save_pretrained(run / "rm")
    return run


@pytest.mark.slow  # ~35 s: three processes start
def test_ddp_scoring_equals_one_process_exactly(tmp_path, tokenizer, tiny_backbone_dir):
    import pandas as pd

    run = _scoring_run(tmp_path, tokenizer, tiny_backbone_dir)
    # 10 prompts of 3 candidates in prompt batches of >= 4 candidates: 5 batches, 3 on rank 0 and 2 on rank 1.
    # Splitting the prompts any other way (r::2, halves) re-forms the batches and moves rewards by ~2e-7
    kw = dict(run_dir=str(run), model_dir=str(run / "rm"), model_id="rm", max_length=32, batch_size=4,
              device="cpu", threads=1, show_progress=False)
    one = _info(_launch("job_score", kw | {"out_rel": "scores/one.parquet"}, tmp_path / "one.json", 1))
    two = _info(_launch("job_score", kw | {"out_rel": "scores/two.parquet"}, tmp_path / "two.json", 2))
    assert one["rows"] == two["rows"] == 30 and "rows_per_process" not in one
    assert two["rows_per_process"] == [18, 12]  # each rank scored its batches only
    a = pq.read_table(run / "scores" / "one.parquet").to_pandas()
    b = pq.read_table(run / "scores" / "two.parquet").to_pandas()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.reward.notna().all() and a.reward.nunique() == 30


def test_accelerate_cpu_flag_starting_one_process_is_refused(tmp_path):
    """accelerate launch --cpu --num_processes 2 starts ONE process on CPU (more need mpirun): refused, not
    silently run alone."""
    proc = _launch("job_score", {}, tmp_path / "kw.json", 2, cpu_flag=True)
    # perm.launch exits 2 before loading anything; accelerate's launcher then exits 1 itself
    assert proc.returncode != 0 and "use `accelerate launch --multi_gpu" in proc.stderr, proc.stderr[-2000:]


def test_launch_refuses_other_jobs(tmp_path):
    from perm.launch import main

    (tmp_path / "kw.json").write_text("{}")
    assert main(["job_sft", str(tmp_path / "kw.json")]) == 2
    (tmp_path / "bad.json").write_text("[1]")
    assert main(["job_score", str(tmp_path / "bad.json")]) == 2


@pytest.mark.slow
def test_reward_processes_runs_each_rm_on_several_processes_as_an_ordinary_job(tmp_path):
    """`reward.processes: 2` trains each grid RM under accelerate launch (DDP, gloo on CPU) from `perm run`'s
    own loop: recorded in the manifest as any job, keyed apart from the one-process RM, close to it."""
    from perm.config import configs_dir, load_config
    from perm.pipeline import Pipeline
    from perm.progress import Progress

    over = [f"out={tmp_path / 'run'}", "threads=1", "evaluator.enabled=false", "reward.finetune_seeds=[0]"]
    one = Pipeline(load_config(configs_dir() / "quick.yaml", over), Progress("quiet"))
    one.run("train-rm")
    before = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    two = Pipeline(load_config(configs_dir() / "quick.yaml", [*over, "reward.processes=2"]), Progress("quiet"))
    two.run("train-rm")
    after = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    for name in ("rm/seed0-ft0", "rm/seed1-ft0"):
        assert after[name]["status"] == "done" and after[name]["key"] != before[name]["key"]
        assert after[name]["info"]["processes"] == 2
        assert after[name]["info"]["accuracy"] == pytest.approx(before[name]["info"]["accuracy"], abs=0.05)
    rm = json.loads((tmp_path / "run" / "rm" / "seed0-ft0" / "rm.json").read_text())
    assert rm["processes"] == 2 and not list((tmp_path / "run").glob(".launch-*.json"))
