"""The stage graph: testbed -> pretrain -> RM grid + evaluator -> SFT -> sample -> score -> analyze -> report.

Each stage's *input key* hashes its config slice and its upstream stages' output hashes; a stage whose key
and outputs match the manifest is skipped, so a killed run resumes where it stopped and changing one RM
hyperparameter reruns only what depends on it. Independent jobs (pretrains, RMs, scoring per model) are
module-level functions with flat, picklable arguments so the Ray executor can run them as tasks; they
write their outputs atomically and return a small dict the driver records in the manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from perm.config import RunConfig, dump_config, to_dict
from perm.progress import Progress
from perm.store import RunStore, atomic_path, atomic_write_text, derive_seed, hash_obj

STAGES = ("testbed", "pretrain", "train-rm", "evaluator", "sft", "sample", "score", "analyze", "report")


# ----------------------------------------------------------------------------------------------- helpers


def _torch_setup(device: str, threads: int | None):
    import torch

    from perm.models import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)


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
                 device: str, threads: int | None, show_progress: bool = True) -> dict:
    """Pretrain one backbone into run_dir/out_rel (atomically); returns its info."""
    from perm.models import gpt_neox_config, load_tokenizer, save_model
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
                           data_seed=data_seed, device=dev, progress=bar, **{k: train[k] for k in (
                               "steps", "batch_size", "lr", "warmup_steps", "weight_decay")})
    bar.close()
    info["n_params"] = sum(p.numel() for p in model.parameters())
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, {"config": {"backbone": backbone, **train}, **info}, "pretrain.json")
    return info


def job_reward_model(run_dir: str, out_rel: str, *, backbone: str, pretrain_id: str, finetune_seed: int,
                     reward: dict, n_pairs: int | None, device: str, threads: int | None,
                     trust_remote_code: bool = False, role: str = "rm", show_progress: bool = True) -> dict:
    """Finetune one RM from `backbone` (dir or hub id) on prefs_train; save it + rm.json atomically."""
    from perm.models import load_reward_backbone, load_tokenizer, save_model
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
    ml = reward["max_length"]
    prompts, chosen, rejected = _read_column(run / "data" / "prefs_train.parquet", "prompt", "chosen", "rejected")
    if n_pairs is not None:
        prompts, chosen, rejected = prompts[:n_pairs], chosen[:n_pairs], rejected[:n_pairs]
    ep, ec, er = _read_column(run / "data" / "prefs_eval.parquet", "prompt", "chosen", "rejected")
    bar = Progress("normal" if show_progress else "quiet").bar(out_rel, 1)
    state = train_reward_model(
        model, chosen=encode(tok, prompts, chosen, ml), rejected=encode(tok, prompts, rejected, ml),
        eval_chosen=encode(tok, ep, ec, ml), eval_rejected=encode(tok, ep, er, ml), pad_id=tok.pad_token_id,
        data_seed=seeds["data_seed"], dropout_seed=seeds["dropout_seed"], progress=bar,
        **{k: reward[k] for k in ("center_coef", "epochs", "batch_size", "lr", "warmup_frac", "weight_decay",
                                  "max_grad_norm", "eval_every")})
    bar.close()
    model = state.pop("model")
    final = evaluate_pairs(model, encode(tok, ep, ec, ml), encode(tok, ep, er, ml), tok.pad_token_id, model.device)
    info = {
        "model_id": Path(out_rel).name,
        "role": role,
        "pretrain_id": pretrain_id,
        "finetune_seed": finetune_seed,
        "backbone": str(backbone),
        "seeds": seeds,
        "config": reward,
        "n_train_pairs": len(chosen),
        "accuracy": final["accuracy"],
        "accuracy_se": final["accuracy_se"],
        "eval_mean_reward": final["mean_reward"],
        "eval_curve": state["evals"],
        "final_train_loss": float(sum(state["train_loss"][-20:]) / len(state["train_loss"][-20:])),
        "steps": state["step"],
        "wall_s": state["wall_s"],
        "pairs_per_s": state["pairs_per_s"],
    }
    with atomic_path(run / out_rel) as tmp:
        save_model(model, tok, tmp, info, "rm.json")
    return info


# ------------------------------------------------------------------------------------------- executors


class LocalExecutor:
    """Runs jobs one after another in this process."""

    def map(self, fn, kwargs_list: list[dict]) -> list:
        return [fn(**kw) for kw in kwargs_list]


class RayExecutor:
    """Runs jobs as Ray tasks with declared CPU/GPU needs, on an existing cluster or a local instance."""

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("executor: ray needs the optional extra: pip install 'perm-rm[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self.opts = {"num_cpus": num_cpus, "num_gpus": num_gpus}

    def map(self, fn, kwargs_list: list[dict]) -> list:
        remote = self.ray.remote(**self.opts)(_call)
        return self.ray.get([remote.remote(fn, kw) for kw in kwargs_list])


def _call(fn, kw):
    return fn(**kw)


# ------------------------------------------------------------------------------------------- the pipeline


class Pipeline:
    """One run directory driven by one resolved config."""

    def __init__(self, cfg: RunConfig, progress: Progress | None = None):
        self.cfg = cfg
        self.log = progress or Progress()
        self.store = RunStore(cfg.out)
        self.root = self.store.root
        if cfg.executor == "ray":
            self.executor = RayExecutor(cfg.ray.address, cfg.ray.num_cpus_per_task, cfg.ray.num_gpus_per_task)
        else:
            self.executor = LocalExecutor()
        self._save_config()

    def _save_config(self) -> None:
        atomic_write_text(self.root / "config.yaml", dump_config(self.cfg))

    @property
    def show_bars(self) -> bool:
        return self.log.mode == "normal" and self.cfg.executor == "local"

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

    def testbed(self) -> str:
        """Writes data/*.parquet and tokenizer/; returns the stage's output hash."""
        from perm.testbed.build import build_testbed

        key = hash_obj({"testbed": to_dict(self.cfg.testbed)})
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
            keys[name] = hash_obj({"common": common, "init": init_s, "data": data_s, "testbed": data_hash})
            if not self._skip(name, keys[name]):
                todo.append((name, dict(run_dir=str(self.root), out_rel=name, init_seed=init_s, data_seed=data_s,
                                        backbone=to_dict(c.backbone), train=_train_args(c), device=self.cfg.device,
                                        threads=self.cfg.threads, show_progress=self.show_bars)))
        self._run_jobs(job_pretrain, todo, keys, seeds_of=lambda kw: {"init_seed": kw["init_seed"],
                                                                       "data_seed": kw["data_seed"]})
        return out

    def reward_grid(self) -> list[dict]:
        """Finetune every RM of the grid; returns their rm.json records."""
        c = self.cfg.reward
        backbones = self.pretrain()
        data_hash = self.store.output_hash("testbed") if not self.cfg.pretrain.checkpoints else self.testbed()
        common = {k: v for k, v in to_dict(c).items() if k not in ("finetune_seeds", "layout")}
        todo, keys, names = [], {}, []
        for pid, seed in grid(list(backbones), c.finetune_seeds, c.layout):
            name = f"rm/{rm_id(pid, seed)}"
            names.append(name)
            upstream = self.store.output_hash(f"pretrain/{pid}") if not self.cfg.pretrain.checkpoints else backbones[pid]
            keys[name] = hash_obj({"common": common, "seed": seed, "backbone": upstream, "testbed": data_hash})
            if not self._skip(name, keys[name]):
                todo.append((name, dict(run_dir=str(self.root), out_rel=name, backbone=backbones[pid], pretrain_id=pid,
                                        finetune_seed=seed, reward=to_dict(c), n_pairs=c.max_train_pairs,
                                        device=self.cfg.device, threads=self.cfg.threads,
                                        trust_remote_code=self.cfg.pretrain.trust_remote_code,
                                        show_progress=self.show_bars)))
        self._run_jobs(job_reward_model, todo, keys, seeds_of=lambda kw: rm_seeds(kw["finetune_seed"]))
        return [json.loads((self.root / n / "rm.json").read_text()) for n in names]

    def evaluator(self) -> dict | None:
        """The stronger evaluator RM: its own bigger backbone (seed no grid member uses), more pairs."""
        e = self.cfg.evaluator
        if not e.enabled:
            return None
        data_hash = self.testbed()
        if e.checkpoint:
            backbone, upstream = e.checkpoint, e.checkpoint
        else:
            used = set(self.cfg.pretrain.init_seeds or self.cfg.pretrain.seeds)
            if e.pretrain_seed in used:
                raise ValueError(f"evaluator.pretrain_seed {e.pretrain_seed} is used by a grid pretrain")
            name = "evaluator/pretrain"
            train = dict(_train_args(self.cfg.pretrain), steps=e.pretrain_steps)
            key = hash_obj({"backbone": to_dict(e.backbone), "train": train, "seed": e.pretrain_seed,
                            "testbed": data_hash})
            if not self._skip(name, key):
                self._run_jobs(job_pretrain, [(name, dict(
                    run_dir=str(self.root), out_rel=name, init_seed=e.pretrain_seed, data_seed=e.pretrain_seed,
                    backbone=to_dict(e.backbone), train=train, device=self.cfg.device, threads=self.cfg.threads,
                    show_progress=self.show_bars))], {name: key},
                    seeds_of=lambda kw: {"init_seed": kw["init_seed"], "data_seed": kw["data_seed"]})
            backbone, upstream = str(self.root / name), self.store.output_hash(name)
        reward = dict(to_dict(self.cfg.reward), epochs=e.epochs, lr=e.lr)
        name = "evaluator/rm"
        key = hash_obj({"reward": reward, "pairs": e.train_pairs, "backbone": upstream, "testbed": data_hash})
        if not self._skip(name, key):
            self._run_jobs(job_reward_model, [(name, dict(
                run_dir=str(self.root), out_rel=name, backbone=backbone, pretrain_id=f"evaluator-seed{e.pretrain_seed}",
                finetune_seed=0, reward=reward, n_pairs=e.train_pairs, device=self.cfg.device,
                threads=self.cfg.threads, role="evaluator", show_progress=self.show_bars))], {name: key},
                seeds_of=lambda kw: rm_seeds(kw["finetune_seed"]))
        return json.loads((self.root / name / "rm.json").read_text())

    def _run_jobs(self, fn, todo: list[tuple[str, dict]], keys: dict, seeds_of) -> None:
        if not todo:
            return
        for name, _ in todo:
            self.store.mark_running(name, keys[name])
            self.log.event(name, "start")
        t0 = time.perf_counter()
        if isinstance(self.executor, LocalExecutor):
            # one at a time, so that each finished job is recorded before the next starts (resume granularity)
            for name, kw in todo:
                t1 = time.perf_counter()
                info = fn(**kw)
                self._done(name, keys[name], [kw["out_rel"]], t1, seeds=seeds_of(kw), info=info)
        else:
            infos = self.executor.map(fn, [kw for _, kw in todo])
            for (name, kw), info in zip(todo, infos, strict=True):
                self._done(name, keys[name], [kw["out_rel"]], t0, seeds=seeds_of(kw), info=info)


def _train_args(c) -> dict:
    return {k: getattr(c, k) for k in ("steps", "batch_size", "seq_len", "lr", "warmup_steps", "weight_decay")}


def _headline(info: dict) -> dict:
    keys = ("heldout_perplexity", "accuracy", "tokens_per_s", "pairs_per_s", "rows", "mean_gold")
    return {k: round(info[k], 4) if isinstance(info[k], float) else info[k] for k in keys if k in info}


def _run_stage(self: Pipeline, stage: str):
    """Run `stage` (and whatever it needs); returns a short human-readable result."""
    if stage == "testbed":
        self.testbed()
        return self.root / "data"
    if stage == "pretrain":
        return "\n".join(f"{k}: {v}" for k, v in self.pretrain().items())
    if stage == "train-rm":
        rms = self.reward_grid()
        ev = self.evaluator()
        lines = [f"{r['model_id']}: accuracy {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}" for r in rms]
        if ev:
            lines.append(f"evaluator: accuracy {ev['accuracy']:.3f} ± {ev['accuracy_se']:.3f}")
        return "\n".join(lines)
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")


Pipeline.run = _run_stage
