"""Devices on a machine with several GPUs, stood in for by patched torch.cuda (no GPU here): each local worker runs
its jobs on its own GPU, `workers: auto` is one per GPU, an explicit cuda:N reaches the jobs and the accelerator
as cuda:N; under Ray a cuda-keyed run asks for a GPU per task, and a task that would run it elsewhere refuses."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from perm import hardware
from perm.config import ConfigError, config_from_overrides
from perm.executors import (
    DeviceChecked,
    DeviceMismatchError,
    JobFailedError,
    LocalExecutor,
    PoolExecutor,
    RayExecutor,
    on_worker_device,
)


def _gpus(monkeypatch, n: int) -> list[int]:
    """torch.cuda as on a machine with `n` GPUs; returns the list set_device records its calls in."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Stand-in GPU")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


# ------------------------------------------------------------------------------------- the decisions


def test_worker_i_gets_gpu_i_mod_the_gpus_where_the_device_names_none(monkeypatch):
    _gpus(monkeypatch, 2)
    assert hardware.worker_devices("auto", 2) == ("cuda:0", "cuda:1")
    assert hardware.worker_devices("cuda", 3) == ("cuda:0", "cuda:1", "cuda:0")
    assert hardware.worker_devices("cuda:1", 2) is None  # every job on GPU 1
    assert hardware.worker_devices("cpu", 2) is None
    _gpus(monkeypatch, 0)
    assert hardware.worker_devices("auto", 2) is None


def test_workers_auto_is_one_per_gpu_else_two(monkeypatch):
    _gpus(monkeypatch, 4)
    assert hardware.resolve_workers("auto", "auto") == hardware.resolve_workers("auto", "cuda") == 4
    assert hardware.resolve_workers("auto", "cuda:1") == 1
    assert hardware.resolve_workers("auto", "cpu") == 2
    assert hardware.resolve_workers(3, "auto") == 3
    _gpus(monkeypatch, 0)
    assert hardware.resolve_workers("auto", "auto") == 2
    assert config_from_overrides(["workers=auto"]).workers == "auto"
    assert config_from_overrides([]).workers == 2  # the default stays 2
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="workers"):
            config_from_overrides([f"workers={bad}"])


def test_use_device_makes_an_explicit_index_the_current_gpu_and_refuses_what_it_cannot_honour(monkeypatch):
    calls = _gpus(monkeypatch, 2)
    assert hardware.use_device("cuda:1") == 1 and calls == [1]
    assert hardware.use_device(torch.device("cuda", 0)) == 0 and calls == [1, 0]
    for device in ("cuda", "auto", "cpu", None):
        assert hardware.use_device(device) is None
    assert calls == [1, 0]
    with pytest.raises(ValueError, match="has 2 CUDA devices"):
        hardware.use_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")  # one rank of a DDP launch: its local rank picks its GPU
    with pytest.raises(ValueError, match="one of 2 launched processes"):
        hardware.use_device("cuda:1")
    assert calls == [1, 0]


def test_make_accelerator_puts_the_process_on_the_named_gpu_first(monkeypatch):
    import accelerate

    from perm.models import make_accelerator

    calls = _gpus(monkeypatch, 2)
    made = []

    class StandIn:  # accelerate's Accelerator on CUDA cannot be built without a GPU
        def __init__(self, cpu, mixed_precision):
            made.append((cpu, mixed_precision, list(calls)))

    monkeypatch.setattr(accelerate, "Accelerator", StandIn)
    make_accelerator("cuda:1", "bf16")
    assert made == [(False, "bf16", [1])]  # GPU 1 was current before the accelerator chose its device
    make_accelerator("cuda")
    assert made[-1] == (False, "no", [1]) and calls == [1]  # cuda: accelerate's choice, nothing set


def test_torch_setup_puts_a_job_on_its_gpu(monkeypatch):
    from perm.stages._context import torch_setup

    calls = _gpus(monkeypatch, 2)
    threads = torch.get_num_threads()
    assert torch_setup("cuda:1", None) == torch.device("cuda", 1) and calls == [1]
    assert torch_setup("cpu", threads) == torch.device("cpu") and calls == [1]


# -------------------------------------------------------------------------------- the local pool


def test_on_worker_device_replaces_only_auto_and_cuda():
    assert on_worker_device({"device": "auto"}, "cuda:1") == {"device": "cuda:1"}
    assert on_worker_device({"device": "cuda"}, "cuda:1") == {"device": "cuda:1"}
    assert on_worker_device({"device": "cuda:0"}, "cuda:1") == {"device": "cuda:0"}
    assert on_worker_device({"device": "cpu"}, "cuda:1") == {"device": "cpu"}
    assert on_worker_device({"device": "auto"}, None) == {"device": "auto"}
    assert on_worker_device({"x": 1}, "cuda:1") == {"x": 1}


def _rendezvous(out_rel: str, device: str, meet: str, n: int = 2) -> dict:
    """A job that waits until `n` jobs have started (files in `meet`), so the first `n` run in `n` workers at once;
    returns the device it was given and its worker's pid."""
    Path(meet, f"{os.getpid()}-{out_rel.replace('/', '_')}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(meet).iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"device": device, "pid": os.getpid()}


def test_two_pool_workers_run_their_jobs_on_two_different_gpus(tmp_path):
    jobs = [{"out_rel": f"rm/seed{i}-ft0", "device": d, "meet": str(tmp_path)}
            for i, d in enumerate(["auto", "cuda", "auto", "cuda", "cuda:1", "cpu"])]
    out = {i: info for i, (info, _) in PoolExecutor(2, ("cuda:0", "cuda:1")).map_as_completed(_rendezvous, jobs)}
    by_pid: dict[int, set[str]] = {}
    for i in range(4):
        by_pid.setdefault(out[i]["pid"], set()).add(out[i]["device"])
    assert len(by_pid) == 2  # both workers ran jobs
    assert sorted(d for ds in by_pid.values() for d in ds) == ["cuda:0", "cuda:1"]  # one GPU each, kept
    assert out[4]["device"] == "cuda:1" and out[5]["device"] == "cpu"  # named devices reach the jobs as named


def test_a_run_on_a_two_gpu_machine_gives_each_worker_its_gpu_and_cuda_1_reaches_the_jobs(tmp_path, monkeypatch):
    from perm.pipeline import Pipeline
    from perm.progress import Progress

    _gpus(monkeypatch, 2)
    run = Pipeline(config_from_overrides([f"out={tmp_path / 'a'}", "workers=auto"]), Progress("quiet"))
    assert run.cfg.workers == 2 and run.precision.value == "bf16"
    ex = run.ctx.executor
    assert isinstance(ex, PoolExecutor) and ex.workers == 2 and ex.devices == ("cuda:0", "cuda:1")
    assert run.ctx.job_env()["device"] == "auto"  # rewritten per worker, in the worker
    run = Pipeline(config_from_overrides([f"out={tmp_path / 'b'}", "device=cuda:1", "workers=2"]), Progress("quiet"))
    assert isinstance(run.ctx.executor, PoolExecutor) and run.ctx.executor.devices is None
    assert run.ctx.job_env()["device"] == run.ctx.job_env(pooled=False)["device"] == "cuda:1"
    run = Pipeline(config_from_overrides([f"out={tmp_path / 'c'}", "device=cuda:1", "workers=auto"]),
                   Progress("quiet"))
    assert run.cfg.workers == 1 and isinstance(run.ctx.executor, LocalExecutor)
    _gpus(monkeypatch, 0)
    run = Pipeline(config_from_overrides([f"out={tmp_path / 'd'}", "workers=auto", "precision=fp32"]),
                   Progress("quiet"))
    assert run.cfg.workers == 2 and run.ctx.executor.devices is None


# -------------------------------------------------------------------------------------------- Ray


def _job(out_rel: str, device: str) -> dict:
    return {"job": out_rel, "device": device}


def test_a_task_that_resolves_cpu_for_a_cuda_keyed_job_refuses_to_run(monkeypatch):
    _gpus(monkeypatch, 0)  # the task sees no GPU
    for device in ("auto", "cuda"):
        with pytest.raises(DeviceMismatchError) as err:
            DeviceChecked(_job, "cuda")(out_rel="rm/seed0-ft0", device=device)
        msg = str(err.value)
        assert "\n" not in msg and "rm/seed0-ft0" in msg and "to cuda in the driver" in msg and "to cpu in" in msg
    assert DeviceChecked(_job, "cpu")(out_rel="rm/x", device="auto") == {"job": "rm/x", "device": "auto"}
    _gpus(monkeypatch, 1)  # and the other way round: keyed for the CPU, the task has a GPU
    with pytest.raises(DeviceMismatchError, match="to cpu in the driver .* to cuda in this Ray task"):
        DeviceChecked(_job, "cpu")(out_rel="rm/x", device="auto")
    assert DeviceChecked(_job, "cuda")(out_rel="rm/x", device="auto")["job"] == "rm/x"


def test_the_ray_executor_fails_a_job_whose_task_resolves_another_device(monkeypatch):
    from test_executors import _FakeRay

    _gpus(monkeypatch, 0)
    ex = RayExecutor.__new__(RayExecutor)
    ex.ray, ex.opts, ex.device_kind = _FakeRay({}), {}, "cuda"
    with pytest.raises(JobFailedError) as err:
        list(ex.map_as_completed(_job, [{"out_rel": "rm/seed0-ft0", "device": "auto"}]))
    assert err.value.job == "rm/seed0-ft0" and "raised DeviceMismatchError" in err.value.how


@pytest.mark.parametrize(("gpus", "overrides", "num_gpus", "kind"), [
    (2, [], 1.0, "cuda"),  # auto on a driver with GPUs, num_gpus_per_task 0: one GPU per task
    (0, ["device=cuda"], 1.0, "cuda"),
    (2, ["ray.num_gpus_per_task=0.5"], 0.5, "cuda"),
    (2, ["device=cpu"], 0.0, "cpu"),
    (0, [], 0.0, "cpu"),
])
def test_ray_tasks_ask_for_a_gpu_where_the_driver_resolves_cuda(monkeypatch, gpus, overrides, num_gpus, kind):
    import ray

    from perm.pipeline import make_executor, ray_task_gpus

    _gpus(monkeypatch, gpus)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray instance started
    cfg = config_from_overrides(["executor=ray", *overrides])
    assert ray_task_gpus(cfg) == num_gpus
    ex = make_executor(cfg)
    assert ex.opts == {"num_cpus": 1.0, "num_gpus": num_gpus} and ex.device_kind == kind
