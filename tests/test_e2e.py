"""End to end on configs/quick.yaml: the files written, skip on rerun, resume after SIGKILL, partial reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from perm.config import configs_dir, load_config
from perm.pipeline import Pipeline
from perm.progress import Progress
from perm.store import hash_path

pytestmark = pytest.mark.slow
QUICK = configs_dir() / "quick.yaml"


def _run(out: Path, *overrides: str) -> Pipeline:
    cfg = load_config(QUICK, [f"out={out}", "threads=1", *overrides])
    pipe = Pipeline(cfg, Progress("quiet"))
    pipe.run("run")
    return pipe


def _finished(out: Path) -> dict[str, str]:
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    return {k: v.get("finished") for k, v in stages.items()}


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "perm.cli", "run", str(QUICK), f"out={out}", "threads=1", "--quiet", *extra]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """An uninterrupted `perm run` in a fresh process, as a user would start it."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    subprocess.run(_cli(out), check=True)
    return out


def test_run_writes_every_artefact(baseline):
    for rel in ["config.yaml", "manifest.json", "data/corpus.parquet", "data/prefs_train.parquet",
                "data/prefs_eval.parquet", "data/sft_train.parquet", "data/eval_prompts.parquet",
                "tokenizer/tokenizer.json", "pretrain/seed0/model.safetensors", "pretrain/seed1/model.safetensors",
                "rm/seed0-ft0/rm.json", "rm/seed0-ft1/rm.json", "rm/seed1-ft0/rm.json",
                "rm/seed0-ft0/model.safetensors", "evaluator/rm/rm.json", "policy/model.safetensors",
                "samples.parquet", "rewards.parquet", "models.parquet", "analysis/figure1.parquet",
                "analysis/summary.json", "report/index.html", "report/table1.md"]:
        assert (baseline / rel).exists(), rel
    assert not (baseline / "rm" / "seed1-ft1").exists()  # paper layout: extra seeds only for the first pretrain
    stages = json.loads((baseline / "manifest.json").read_text())["stages"]
    assert all(v["status"] == "done" for v in stages.values())
    rm = json.loads((baseline / "rm/seed0-ft1/rm.json").read_text())
    assert rm["pretrain_id"] == "seed0" and rm["finetune_seed"] == 1
    assert set(rm["seeds"]) == {"head_seed", "data_seed", "dropout_seed"}
    # the reward tensor: prompts x (pool + references) x models rows
    import pyarrow.parquet as pq

    cfg = load_config(QUICK)
    n_models = 3 + 1 + 1  # grid RMs, evaluator, gold
    rows = cfg.testbed.n_eval_prompts * (cfg.sample.pool_size + cfg.sample.n_reference) * n_models
    assert pq.read_table(baseline / "rewards.parquet").num_rows == rows


def test_rerun_skips_everything(baseline):
    before, digest = _finished(baseline), hash_path(baseline / "rewards.parquet")
    _run(baseline)
    assert _finished(baseline) == before
    assert hash_path(baseline / "rewards.parquet") == digest


def test_changing_one_rm_hyperparameter_reruns_only_its_dependents(tmp_path, baseline):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    before = _finished(out)
    _run(out, "reward.center_coef=0.05")
    after = _finished(out)
    unchanged = [k for k in after if after[k] == before.get(k)]
    redone = [k for k in after if after[k] != before.get(k)]
    assert {"testbed", "pretrain/seed0", "pretrain/seed1", "evaluator/pretrain", "policy", "sample"} <= set(unchanged)
    assert {"rm/seed0-ft0", "rm/seed1-ft0", "score", "analyze", "report"} <= set(redone)


def test_sigkill_mid_grid_resumes_to_identical_results(tmp_path, baseline):
    out = tmp_path / "run"
    cmd = _cli(out)
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 300
    manifest = out / "manifest.json"
    while time.time() < deadline:  # wait until the first RM is done, then kill while the grid goes on
        if manifest.exists():
            try:
                stages = json.loads(manifest.read_text())["stages"]
            except json.JSONDecodeError:
                stages = {}
            if stages.get("rm/seed0-ft0", {}).get("status") == "done":
                break
        assert proc.poll() is None, "run ended before the grid started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_rm = _finished(out)["rm/seed0-ft0"]
    assert not (out / "rewards.parquet").exists()
    subprocess.run(cmd, check=True)
    assert _finished(out)["rm/seed0-ft0"] == first_rm  # a completed RM is not trained again
    assert hash_path(out / "rewards.parquet") == hash_path(baseline / "rewards.parquet")
    for name in ("figure1", "figure2", "figure4"):
        assert hash_path(out / "analysis" / f"{name}.parquet") == hash_path(baseline / "analysis" / f"{name}.parquet")


def test_ray_executor_gives_the_local_results(tmp_path, baseline):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    subprocess.run(_cli(out, "executor=ray", "ray.local_num_cpus=2"), check=True)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {"pretrain/seed0", "rm/seed0-ft1", "score/seed1-ft0"} <= set(stages)
    assert hash_path(out / "rewards.parquet") == hash_path(baseline / "rewards.parquet")


def test_policy_pairs_train_the_grid_on_the_policys_own_samples(tmp_path, baseline):
    """reward.pairs=mix: a policy-prefs stage labels pairs of SFT samples by the gold BT raters; the RMs
    train on them first, then on the testbed's pairs; pretrains and the policy are reused."""
    import shutil

    import pyarrow.parquet as pq

    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    before = _finished(out)
    _run(out, "reward.pairs=mix", "policy_pairs.per_post=1")
    after = _finished(out)
    pairs = pq.read_table(out / "policy_prefs.parquet").to_pandas()
    cfg = load_config(QUICK)
    assert 0 < len(pairs) <= cfg.testbed.n_sft
    assert (pairs.chosen != pairs.rejected).all() and (pairs.gold_chosen != pairs.gold_rejected).all()
    assert set(pairs.prompt) <= set(pq.read_table(out / "data" / "sft_train.parquet").to_pandas().prompt)
    rm = json.loads((out / "rm" / "seed0-ft0" / "rm.json").read_text())
    assert rm["n_train_pairs"] == len(pairs) + cfg.testbed.n_prefs_train
    # pairs on the posts the SFT policy held out are the RMs' in-distribution eval set; nobody trains on them
    held = pq.read_table(out / "policy_prefs_eval.parquet").to_pandas()
    sft_posts = pq.read_table(out / "data" / "sft_train.parquet").to_pandas().prompt
    n_held = max(1, cfg.testbed.n_sft // 20)
    assert len(held) > 0 and set(held.prompt) <= set(sft_posts[:n_held])
    assert not set(held.prompt) & set(pairs.prompt)
    assert rm["eval_pairs"] == "policy_prefs_eval.parquet" and rm["n_eval_pairs"] == len(held)
    assert set(rm["other_evals"]) == {"data/prefs_eval.parquet"}
    assert 0 <= rm["gold_accuracy"] <= 1 and rm["eval_curve"][-1]["accuracy"] == rm["accuracy"]
    assert after["policy"] == before["policy"] and after["pretrain/seed0"] == before["pretrain/seed0"]
    assert after["rm/seed0-ft0"] != before["rm/seed0-ft0"] and after["evaluator/rm"] != before["evaluator/rm"]
    # by default (evaluator.extra_posts: null) the evaluator gets pairs on as many further posts as the grid's
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["evaluator-prefs"]["info"]["posts"] == cfg.testbed.n_sft - n_held
    ev0 = json.loads((out / "evaluator" / "rm" / "rm.json").read_text())
    assert ev0["n_train_pairs"] == rm["n_train_pairs"] + stages["evaluator-prefs"]["info"]["train_pairs"]

    # evaluator.extra_posts: the evaluator alone also trains on policy pairs of further posts (prefs_train's
    # first k, which no SFT example uses), drawn from a stream of their own
    _run(out, "reward.pairs=mix", "policy_pairs.per_post=1", "evaluator.extra_posts=50")
    extra = _finished(out)
    ev_pairs = pq.read_table(out / "evaluator_prefs.parquet").to_pandas()
    posts = list(dict.fromkeys(pq.read_table(out / "data" / "prefs_train.parquet").to_pandas().prompt))
    assert 0 < len(ev_pairs) <= 50 and set(ev_pairs.prompt) <= set(posts[:50])
    assert not set(ev_pairs.prompt) & set(sft_posts) and (ev_pairs.gold_chosen != ev_pairs.gold_rejected).all()
    ev = json.loads((out / "evaluator" / "rm" / "rm.json").read_text())
    assert ev["n_train_pairs"] == len(pairs) + cfg.testbed.n_prefs_train + len(ev_pairs)
    assert ev["eval_pairs"] == "policy_prefs_eval.parquet"
    assert json.loads((out / "rm" / "seed0-ft0" / "rm.json").read_text())["n_train_pairs"] == rm["n_train_pairs"]
    assert {k for k in extra if extra[k] != after.get(k)} == {"evaluator-prefs", "evaluator/rm", "score/evaluator",
                                                               "score", "analyze", "report"}
    assert not (out / "evaluator_prefs_eval.parquet").exists()


def test_kwise_policy_pairs_label_every_pair_of_k_samples(tmp_path, baseline):
    """policy_pairs.kwise=K: K samples per post and all C(K, 2) pairs among them (ties dropped), each sample
    named by its index, so one sample is the same text in every pair it sits in."""
    import shutil

    import pyarrow.parquet as pq

    from perm.stages.policy_prefs import job_policy_prefs

    out = tmp_path / "run"
    for part in ("data", "tokenizer", "policy"):
        shutil.copytree(baseline / part, out / part)
    info = job_policy_prefs(str(out), "kw.parquet", policy=str(out / "policy"), pairs_per_post=1, kwise=4,
                            max_new_tokens=8, seed=0, batch_prompts=64, device="cpu", threads=1,
                            show_progress=False, eval_rel="kw_eval.parquet")
    train = pq.read_table(out / "kw.parquet").to_pandas()
    held = pq.read_table(out / "kw_eval.parquet").to_pandas()
    both = pd.concat([train, held])
    n_sft = load_config(QUICK).testbed.n_sft
    assert info["samples"] == 4 * n_sft and len(both) <= 6 * n_sft
    assert info["train_pairs"] == len(train) and info["eval_pairs"] == len(held)
    text = {}
    for _, row in both.iterrows():  # a sample id is one text wherever it appears
        for sid, t in ((row.sample_chosen, row.chosen), (row.sample_rejected, row.rejected)):
            assert text.setdefault(sid, t) == t
    post = both.sample_chosen // 4
    assert (post == both.sample_rejected // 4).all()  # both samples of a pair are of one post
    unordered = {tuple(sorted(p)) for p in zip(both.sample_chosen, both.sample_rejected, strict=True)}
    assert len(unordered) == len(both)  # each pair at most once
    assert (both.gold_chosen != both.gold_rejected).all()
    assert post[: len(train)].min() >= max(1, n_sft // 20)  # training pairs are not on held-out posts
    assert 2.5 < len(both) / post.nunique() <= 6  # most posts keep most of their 6 pairs

    # the posts of another testbed file, all pairs for training, and another random stream: other samples
    info2 = job_policy_prefs(str(out), "kw2.parquet", policy=str(out / "policy"), pairs_per_post=1, kwise=4,
                             max_new_tokens=8, seed=0, batch_prompts=64, device="cpu", threads=1,
                             show_progress=False, posts_rel="data/prefs_train.parquet", n_posts=30, heldout=False,
                             stream="evaluator-prefs")
    other = pq.read_table(out / "kw2.parquet").to_pandas()
    prefs_posts = list(dict.fromkeys(pq.read_table(out / "data" / "prefs_train.parquet").to_pandas().prompt))
    assert info2["samples"] == 4 * 30 and info2["train_pairs"] == len(other) and "eval_pairs" not in info2
    assert set(other.prompt) <= set(prefs_posts[:30]) and (other.sample_chosen // 4).max() < 30
    assert 2.5 < len(other) / other.prompt.nunique() <= 6
    with pytest.raises(ValueError, match=r"401 posts asked of data/prefs_train\.parquet, which has 400"):
        job_policy_prefs(str(out), "kw3.parquet", policy=str(out / "policy"), pairs_per_post=1, kwise=4,
                         max_new_tokens=8, seed=0, batch_prompts=64, device="cpu", threads=1, show_progress=False,
                         posts_rel="data/prefs_train.parquet", n_posts=401, heldout=False)
    assert not (out / "kw3.parquet").exists()


def test_bf16_run_completes_and_pretrains_like_fp32(tmp_path, baseline):
    """precision=bf16 on CPU: SFT and the RMs share one process-wide accelerate state with the same mixed
    precision, and bf16 pretraining learns (autocast per forward, not one cached context for the loop)."""
    out = tmp_path / "run"
    _run(out, "precision=bf16")
    assert (out / "report" / "index.html").exists()
    for pid in ("seed0", "seed1"):
        fp32 = json.loads((baseline / "pretrain" / pid / "pretrain.json").read_text())["heldout_perplexity"]
        bf16 = json.loads((out / "pretrain" / pid / "pretrain.json").read_text())["heldout_perplexity"]
        assert bf16 == pytest.approx(fp32, rel=0.1)
        assert json.loads((out / "pretrain" / pid / "pretrain.json").read_text())["attention"] == "eager"
    rm = json.loads((out / "rm" / "seed0-ft0" / "rm.json").read_text())
    assert rm["accuracy"] > 0.5 and rm["attention"] == "eager" and rm["precision"] == "bf16"


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            try:
                cmd = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmd and b"resource_tracker" not in cmd:  # pool workers, not the tracker
                out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_give_the_sequential_results_and_die_with_a_killed_driver(tmp_path, baseline):
    """workers=2 (one thread per job, as the baseline): two worker processes, each running several training
    jobs of a stage in turn, give the sequential run's results byte for byte.
    SIGKILL of the driver alone takes its workers with it; the rerun finishes with the baseline's rewards."""
    out = tmp_path / "run"
    cmd = _cli(out, "workers=2")
    proc = subprocess.Popen(cmd)
    deadline, workers = time.time() + 300, set()
    while time.time() < deadline:  # kill once an RM is done and the next two are being trained
        stages = {}
        if (out / "manifest.json").exists():
            try:
                stages = json.loads((out / "manifest.json").read_text())["stages"]
            except json.JSONDecodeError:
                pass
        if any(k.startswith("rm/") and v.get("status") == "done" for k, v in stages.items()):
            workers = _children(proc.pid)
            if workers:
                break
        assert proc.poll() is None, "run ended before the grid started"
        time.sleep(0.05)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        if not any(_alive(w) for w in workers):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"workers {workers} outlived the killed driver")
    subprocess.run(cmd, check=True)
    assert hash_path(out / "rewards.parquet") == hash_path(baseline / "rewards.parquet")
