"""Estimated peak GPU memory and GPU time of a run's stages, from the models' parameter counts and the
config's shapes: what `perm check --gpu KIND` prints before anything is trained. Estimates, not measurements
(benchmarks/gpu_check.sh measures; no stage has yet run on a GPU):

* **stages**: pretrain (the grid's and the evaluator's backbones where the run pretrains them), train-rm
  (the grid and the evaluator; none for `reward.rm_checkpoints`), sample and score. SFT, the policy pairs and
  ensemble members are not estimated.
* **FLOPs**: a training step 6 N per token read (forward and backward), a forward 2 N per token (N = the
  model's parameters); tokens at most `reward.max_length` per sequence (the RMs' pairs: their prompt once, as
  perm shares it, and both completions, counted as one sequence of `max_length` and one extra completion of a
  quarter of it); sampling prefills each prompt once (at most `reward.max_length`) and decodes
  `sample.max_new_tokens` per sample; scoring runs a prompt once per group.
* **time** = FLOPs / (the card's dense bf16 peak × an assumed utilisation: :data:`MFU`), per job; the grid's
  jobs spread over `workers` GPUs.
* **peak memory** of one job: training holds fp32 weights, gradients and AdamW's two moments (16 bytes a
  parameter) plus activations of one (micro-)batch; sampling and scoring their weights plus a batch's
  key/value cache (activations left out). Activations per token and layer ~34 h bytes in bf16 (Korthikanti
  et al. 2022, no recomputation) with the layer count L and width h from the parameter count where the
  model's config is not read (N ≈ 12 L h² with h = 64 L, Pythia's proportions to ~25%).
"""

from __future__ import annotations

from dataclasses import dataclass

from perm.config import RunConfig

GPUS = {  # dense bf16 tensor-core peak (FLOP/s) and memory (GB) of common cards
    "h100": (989e12, 80), "h200": (989e12, 141), "a100": (312e12, 80), "a100-40gb": (312e12, 40),
    "l40s": (362e12, 48), "a10": (125e12, 24), "l4": (121e12, 24),
}
MFU = {"train": 0.35, "forward": 0.30, "decode": 0.05}
"""Assumed fraction of the card's peak each kind of work reaches (decoding is bound by memory bandwidth)."""
BYTES_TRAIN, BYTES_WEIGHTS = 16, 4  # fp32 weights + grads + AdamW moments; fp32 weights


@dataclass(frozen=True)
class Shape:
    """A model's parameter count, layers and width (the latter two estimated where `exact` is False)."""

    params: int
    layers: int
    hidden: int
    exact: bool = False

    @staticmethod
    def of(params: int, layers: int | None = None, hidden: int | None = None) -> Shape:
        if layers and hidden:
            return Shape(params, layers, hidden, True)
        layers = max(1, round((params / (12 * 64 * 64)) ** (1 / 3)))
        return Shape(params, layers, 64 * layers, False)

    def activation_bytes(self, tokens: float) -> float:
        """bf16 activations of a training forward over ``tokens`` tokens, kept for the backward."""
        return 34 * self.hidden * self.layers * tokens

    def kv_bytes(self, tokens: float, dtype_bytes: int = 4) -> float:
        return 2 * self.layers * self.hidden * tokens * dtype_bytes


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    jobs: int
    gpu_hours: float
    peak_gb: float
    note: str


def n_reward_models(cfg: RunConfig) -> int:
    """RMs of the grid the run scores (perm.stages._grid.grid_of: the layout's pretrain x finetune seeds, or
    the trained RMs of `reward.rm_checkpoints`)."""
    from perm.stages._grid import grid_of

    return len(grid_of(cfg))


def _hours(flops: float, gpu: str, kind: str) -> float:
    return flops / (GPUS[gpu][0] * MFU[kind]) / 3600


def estimate(cfg: RunConfig, shapes: dict[str, Shape], n_pairs: int | None, n_prompts: int,
             gpu: str = "h100", evaluator_pairs: int | None = None) -> list[StageEstimate]:
    """Per stage (pretrain, train-rm, sample, score) the estimated GPU-hours (all its jobs) and peak
    memory of one job. ``shapes``: ``grid`` (the grid's backbone), ``evaluator``, ``policy`` (absent where
    the run does not train or run it); ``n_pairs``: the grid's training pairs (None: unknown, the RM rows are
    left out), ``evaluator_pairs`` the evaluator's (default: the grid's); ``n_prompts``: the eval prompts."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU kind {gpu!r} (known: {', '.join(GPUS)})")
    r, s = cfg.reward, cfg.sample
    out = []
    c = cfg.pretrain
    pre = []  # (jobs, shape, steps) of what the run pretrains
    if not c.checkpoints and "grid" in shapes:
        pre.append((len(c.seeds), shapes["grid"], c.steps))
    e = cfg.evaluator
    if e.pretrains() and "evaluator" in shapes:
        pre.append((1, shapes["evaluator"], e.pretrain_steps))
    if pre:
        seq = c.batch_size * c.seq_len
        out.append(StageEstimate(
            "pretrain", sum(n for n, _, _ in pre),
            sum(n * _hours(6 * m.params * steps * seq, gpu, "train") for n, m, steps in pre),
            max(BYTES_TRAIN * m.params + m.activation_bytes(seq) for _, m, _ in pre) / 1e9,
            f"{c.steps:,} steps of {seq:,} tokens a backbone"))
    if n_pairs is not None:
        pairs = min(n_pairs, r.max_train_pairs or n_pairs)
        per_pair = r.max_length + r.max_length // 4  # a prompt + completion, and the other completion
        step = (r.micro_batch_size or r.batch_size) * per_pair
        rows = []
        if "grid" in shapes and not r.rm_checkpoints:  # trained RMs loaded as the grid train nothing
            rows.append((n_reward_models(cfg), shapes["grid"], pairs * r.epochs))
        if e.trains() and "evaluator" in shapes:
            ev_all = n_pairs if evaluator_pairs is None else evaluator_pairs
            ev_pairs = min(ev_all, e.train_pairs or ev_all)
            rows.append((1, shapes["evaluator"], ev_pairs * e.epochs))
        if rows:
            hours = sum(n * _hours(6 * m.params * p * per_pair, gpu, "train") for n, m, p in rows)
            peak = max(BYTES_TRAIN * m.params + m.activation_bytes(step) for _, m, _ in rows) / 1e9
            out.append(StageEstimate("train-rm", sum(n for n, _, _ in rows), hours, peak,
                                     f"{pairs:,} pairs, {r.epochs:g} epoch(s), sequences of <= "
                                     f"{r.max_length} tokens, {'micro-' if r.micro_batch_size else ''}"
                                     f"batches of {step // per_pair} pairs"))
    samples = n_prompts * (s.pool_size + s.n_reference)
    if "policy" in shapes:
        p = shapes["policy"]
        length = r.max_length + s.max_new_tokens
        flops = 2 * p.params * (n_prompts * r.max_length + samples * s.max_new_tokens)  # prompts: once
        per_prompt = p.kv_bytes((s.pool_size + s.n_reference) * length, 2)
        prompts = s.batch_prompts if not s.memory_gb else max(1, min(s.batch_prompts,
                                                                      int(s.memory_gb * 1e9 // per_prompt)))
        rows_per_batch = prompts * (s.pool_size + s.n_reference)  # as perm.policy.prompts_within sizes them
        kv = prompts * per_prompt
        out.append(StageEstimate("sample", 1, _hours(flops, gpu, "decode"),
                                 (BYTES_WEIGHTS * p.params + kv) / 1e9,
                                 f"{samples:,} samples of <= {s.max_new_tokens} tokens after prompts of <= "
                                 f"{r.max_length}; decode batches of {rows_per_batch} rows"))
    scorers = [m for k, m in shapes.items() if k in ("grid", "evaluator")]
    if scorers and "grid" in shapes:
        n_grid = n_reward_models(cfg)
        per_sample = s.max_new_tokens + r.max_length / (s.pool_size + s.n_reference)  # a prompt once a group
        hours = n_grid * _hours(2 * shapes["grid"].params * samples * per_sample, gpu, "forward")
        if "evaluator" in shapes and cfg.evaluator.enabled:
            hours += _hours(2 * shapes["evaluator"].params * samples * per_sample, gpu, "forward")
        rows = 64 if cfg.score.memory_gb is None else None
        peak = max(BYTES_WEIGHTS * m.params + (m.kv_bytes(64 * (r.max_length + s.max_new_tokens))
                                               if rows else cfg.score.memory_gb * 1e9) for m in scorers) / 1e9
        out.append(StageEstimate("score", n_grid + int(cfg.evaluator.enabled), hours, peak,
                                 f"{samples:,} samples x {n_grid + int(cfg.evaluator.enabled)} RMs, fp32"))
    return out


def table(estimates: list[StageEstimate], gpu: str, workers: int) -> list[str]:
    """Lines for `perm check`: each stage's GPU-hours, wall hours on ``workers`` GPUs, peak memory of one job
    against the card's."""
    mem = GPUS[gpu][1]
    lines = [f"estimated on {gpu} ({GPUS[gpu][0] / 1e12:.0f} TFLOP/s bf16 dense, {mem} GB; utilisation "
             f"assumed {MFU['train']:.0%} training, {MFU['forward']:.0%} scoring, {MFU['decode']:.0%} "
             "decoding; perm.estimate):"]
    for e in estimates:
        wall = e.gpu_hours / max(1, min(workers, e.jobs))
        flag = "  MORE THAN THE CARD HOLDS" if e.peak_gb > mem else ""
        lines.append(f"  {e.stage:<9} {e.jobs:>3} jobs  {e.gpu_hours:8.3g} GPU-h  ({wall:.3g} h on {workers} "
                     f"GPU{'s' if workers > 1 else ''})  peak ~{e.peak_gb:.3g} GB a job{flag}  [{e.note}]")
    total = sum(e.gpu_hours for e in estimates)
    lines.append(f"  total {total:.3g} GPU-h")
    return lines
