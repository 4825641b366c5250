"""The stage graph: grid layouts, seeds, external data import."""

import json
import os

import pyarrow.parquet as pq
import pytest

from perm.config import ConfigError, config_from_overrides
from perm.pipeline import Pipeline
from perm.stages._grid import grid
from perm.stages.train_rm import rm_seeds


def test_paper_layout_is_one_rm_per_pretrain_plus_seeds_of_the_first():
    g = grid(["seed0", "seed1", "seed2"], (0, 1, 2), "paper")
    assert g == [("seed0", 0), ("seed0", 1), ("seed0", 2), ("seed1", 0), ("seed2", 0)]


def test_full_layout_is_the_product():
    assert grid(["a", "b"], (3, 4), "full") == [("a", 3), ("a", 4), ("b", 3), ("b", 4)]


def test_finetune_seeds_are_separate_streams():
    s = rm_seeds(1)
    assert len(set(s.values())) == 3
    assert rm_seeds(1) == s and rm_seeds(2) != s


def test_per_rm_scope_and_the_evaluator_share_no_finetuning_randomness():
    """shared: one finetune seed gives every backbone the same head init, data order and dropout; per_rm (and
    the evaluator, always) draws them from the pretrain id too, so no stream coincides with a grid RM's."""
    from perm.stages._grid import evaluator_ids

    per_rm = [rm_seeds(0, p) for p in ("seed0", "seed1")]
    streams = [set(s.values()) for s in (rm_seeds(0), *per_rm)]
    assert not (streams[0] & streams[1]) and not (streams[1] & streams[2])
    cfg = config_from_overrides(["evaluator.pretrain_seed=1000"])
    assert evaluator_ids(cfg) == ("evaluator-seed1000", 1000)
    ev = set(rm_seeds(*reversed(evaluator_ids(cfg))).values())
    assert not ev & set().union(*(set(rm_seeds(f).values()) for f in cfg.reward.finetune_seeds))
    assert evaluator_ids(config_from_overrides(["evaluator.finetune_seed=3"]))[1] == 3


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_import_external_pairs(tmp_path, tiny_backbone_dir):
    rows = [{"prompt": f"w{i} TL;DR:", "chosen": " good", "rejected": " bad"} for i in range(30)]
    _write_jsonl(tmp_path / "train.jsonl", rows[:20])
    _write_jsonl(tmp_path / "eval.jsonl", rows[20:] + rows[20:22])  # repeated prompts: eval prompts dedupe
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", f"data.prefs={tmp_path / 'train.jsonl'}",
                                 f"data.prefs_eval={tmp_path / 'eval.jsonl'}", "data.train_split=null",
                                 f"pretrain.checkpoints=[{tiny_backbone_dir}]",
                                 f"sft.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false"])
    pipe = Pipeline(cfg)
    marked = []  # "data" is marked running once the pairs are valid, before anything is written
    mark = pipe.store.mark_running
    pipe.store.mark_running = lambda name, key: (marked.append((name, (tmp_path / "run" / "data").exists())),
                                                 mark(name, key))
    pipe.run("testbed")
    run = tmp_path / "run"
    assert marked == [("data", False)]
    assert pq.read_table(run / "data" / "prefs_train.parquet").num_rows == 20
    prompts = pq.read_table(run / "data" / "eval_prompts.parquet").to_pandas()
    assert list(prompts.prompt) == [f"w{i} TL;DR:" for i in range(20, 30)]
    assert (run / "tokenizer" / "tokenizer.json").exists()
    assert pipe.store.is_complete("data", pipe.store.stage("data")["key"])


def test_import_bad_pairs_writes_nothing(tmp_path, tiny_backbone_dir):
    from perm.data import DataError

    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": 3}\n')
    cfg = config_from_overrides([f"out={tmp_path / 'run'}", f"data.prefs={tmp_path / 'train.jsonl'}",
                                 "data.train_split=null", f"pretrain.checkpoints=[{tiny_backbone_dir}]",
                                 f"sft.checkpoint={tiny_backbone_dir}", "evaluator.enabled=false"])
    pipe = Pipeline(cfg)
    with pytest.raises(DataError, match=r"train\.jsonl: line 2"):
        pipe.run("testbed")
    assert not (tmp_path / "run" / "data").exists() and pipe.store.stage("data") is None  # nor marked


def test_external_data_needs_checkpoints():
    from perm.config import ConfigError

    with pytest.raises(ConfigError, match="sft.checkpoint: required with data.prefs"):
        config_from_overrides(["data.prefs=x.jsonl", "pretrain.checkpoints=[a]"])


def test_evaluator_seed_must_not_be_a_grid_seed():
    from perm.config import ConfigError

    with pytest.raises(ConfigError, match="evaluator.pretrain_seed: must differ"):
        config_from_overrides(["pretrain.seeds=[0, 1]", "pretrain.data_seeds=[5, 1000]", "pretrain.checkpoints=[]",
                               "evaluator.checkpoint=null"])


def _scoring_run(tmp_path, tokenizer, samples: dict):
    import pyarrow as pa

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    tokenizer.save_pretrained(run / "tokenizer")
    pq.write_table(pa.table({"prompt_id": pa.array([0, 1], pa.int64()), "prompt": ["w1 TL;DR:", "w2 w3 TL;DR:"]}),
                   run / "data" / "eval_prompts.parquet")
    pq.write_table(pa.table(samples), run / "samples.parquet")
    return run


GOOD = {"prompt_id": [0, 0, 1, 1], "sample_id": [0, 1, 0, 1], "text": [" good", " bad", " w4", " good w5"],
        "is_reference": [False, False, False, True]}


@pytest.mark.parametrize("change, pattern", [
    ({"sample_id": [0, 0, 0, 1]}, r"samples\.parquet: row 1: duplicate \(prompt_id, sample_id\) = \(0, 0\)"),
    ({"text": None}, r"samples\.parquet: missing column 'text'"),
    ({"is_reference": [0, 0, 0, 1]}, r"column 'is_reference' must be bool"),
])
def test_bad_samples_file_is_refused(tmp_path, tokenizer, change, pattern):
    from perm.stages.score import SamplesError, validate_samples

    samples = {k: v for k, v in (GOOD | change).items() if v is not None}
    run = _scoring_run(tmp_path, tokenizer, samples)
    with pytest.raises(SamplesError, match=pattern):
        validate_samples(run / "samples.parquet")


def test_scoring_equals_the_model_on_one_row_and_refuses_nan(tmp_path, tokenizer, tiny_backbone_dir):
    import torch

    from perm.models import load_reward_backbone
    from perm.reward import NonFiniteRewardError
    from perm.stages.score import _ENCODED, job_score

    run = _scoring_run(tmp_path, tokenizer, GOOD)
    rm = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0).eval()
    rm.save_pretrained(tmp_path / "rm")
    job_score(str(run), "scores/rm.parquet", model_dir=str(tmp_path / "rm"), model_id="rm", max_length=32,
              batch_size=2, device="cpu", threads=1, show_progress=False)
    got = pq.read_table(run / "scores" / "rm.parquet").to_pandas()
    assert list(got.sample_id) == [0, 1, 0, 1]
    ids = tokenizer("w2 w3 TL;DR:", add_special_tokens=False)["input_ids"] + \
        tokenizer(" good w5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        direct = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert got.reward.iloc[3] == pytest.approx(direct, abs=1e-5)
    job_score(str(run), "scores/budget.parquet", model_dir=str(tmp_path / "rm"), model_id="rm", max_length=32,
              batch_size=2, device="cpu", threads=1, show_progress=False, memory_gb=1e-9)  # one row a batch
    budget = pq.read_table(run / "scores" / "budget.parquet").to_pandas()
    assert budget.reward.to_numpy() == pytest.approx(got.reward.to_numpy(), abs=1e-5)
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    rm.save_pretrained(tmp_path / "nan")
    _ENCODED.clear()
    with pytest.raises(NonFiniteRewardError, match="model nan: 4 non-finite rewards"):
        job_score(str(run), "scores/nan.parquet", model_dir=str(tmp_path / "nan"), model_id="nan", max_length=32,
                  batch_size=2, device="cpu", threads=1, show_progress=False)
    assert not (run / "scores" / "nan.parquet").exists()


def _square(x: int, fail: bool = False, sleep: float = 0.0) -> dict:
    import os
    import time

    time.sleep(sleep)
    if fail:
        raise RuntimeError(f"job {x} failed")
    return {"y": x * x, "pid": os.getpid()}


def test_pool_executor_runs_jobs_in_at_most_workers_processes_besides_the_driver():
    from perm.executors import PoolExecutor

    out = dict(PoolExecutor(2).map_as_completed(_square, [{"x": i} for i in range(4)]))
    assert sorted(out) == [0, 1, 2, 3]
    assert all(info["y"] == i * i and wall >= 0 for i, (info, wall) in out.items())
    pids = {info["pid"] for info, _ in out.values()}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # workers are reused across a stage's jobs


def test_pool_executor_yields_finished_jobs_then_raises_the_first_error():
    from perm.executors import PoolExecutor

    done = []
    jobs = [{"x": 0}, {"x": 1, "fail": True}] + [{"x": i, "sleep": 1.0} for i in range(2, 8)]
    with pytest.raises(RuntimeError, match="job 1 failed"):
        for i, _ in PoolExecutor(1).map_as_completed(_square, jobs):
            done.append(i)
    # job 0 finished before the failure and was yielded; with one worker most later jobs were still pending
    # and were cancelled (the pool may already have handed up to three to its worker, which finish)
    assert done[0] == 0 and 1 not in done and len(done) <= 4  # of 8: the rest were cancelled


def test_workers_and_threads_are_validated():
    with pytest.raises(ConfigError, match="workers"):
        config_from_overrides(["workers=0"])
    with pytest.raises(ConfigError, match="threads"):
        config_from_overrides(["threads=0"])


def test_an_in_process_job_that_fails_names_itself_as_a_worker_job_does():
    """workers: 1 (the GPU preset) runs jobs in the driver: an out-of-memory error there is a JobFailedError
    naming the job (one line and exit 1 from the CLI, resumable), bad input stays what it is (exit 2)."""
    from perm.executors import JobFailedError
    from perm.stages._context import in_process

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(JobFailedError, match=r"job rm/seed0-ft0 failed: raised RuntimeError: CUDA out of memory"
                       r".*rerun") as e:
        in_process("rm/seed0-ft0", oom)
    assert isinstance(e.value.__cause__, RuntimeError)

    def bad():
        raise ValueError("data/prefs_train.parquet: row 3: field 'prompt' is empty")

    with pytest.raises(ValueError, match="row 3"):
        in_process("policy-prefs", bad)
    assert in_process("x", lambda a: a + 1, a=1) == 2


@pytest.mark.parametrize("fails", [False, True])
def test_an_in_process_job_releases_what_it_held(fails):
    """A finished (or failed) in-process job's garbage is collected before the next: a model held in a
    reference cycle (as modules and optimizers are) does not outlive its job."""
    import gc
    import weakref

    from perm.executors import JobFailedError
    from perm.stages._context import in_process

    held = []

    class Model:
        pass

    def job():
        m = Model()
        m.itself = m  # a cycle: freed by the collector only
        held.append(weakref.ref(m))
        if fails:
            raise RuntimeError("CUDA out of memory")

    gc.disable()
    try:
        if fails:
            with pytest.raises(JobFailedError):
                in_process("rm/x", job)
        else:
            in_process("rm/x", job)
        assert held[0]() is None
    finally:
        gc.enable()
