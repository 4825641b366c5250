"""Frozen, typed run configuration: YAML in, dotted CLI overrides, resolved YAML saved into the run.

Every stage has its own dataclass; `RunConfig` nests them. Only entry points (cli, pipeline) unpack a
config; components take flat arguments. Unknown keys and wrong types are errors that name the key.

The dataclass defaults below are the one source of defaults: `RunConfig()` is the embedded default experiment
(configs/tiny.yaml only names its run directory), and a YAML file or override sets only what differs. Every
field is documented where it is declared.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and what was expected."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class TestbedConfig:
    """The embedded synthetic summarisation world (perm.testbed). Ignored with `data.prefs`. Any change
    rebuilds the testbed (stage `testbed`) and so reruns every stage after it."""

    __test__ = False  # not a pytest test class

    seed: int = 0
    """Seed of the world: posts, candidates, preference labels, corpus order. Any int."""
    n_corpus_docs: int = 20000
    """Documents in the pretraining corpus (posts followed by their TL;DR, plain posts, sentences); > 0. The
    pretrains (and the evaluator's) cycle through its blocks for `pretrain.steps`; the tokenizer is trained on
    it."""
    n_sft: int = 4000
    """(post, reference summary) examples in sft_train; > 0. The SFT policy trains on them (holding out the
    first n_sft // 20 for its eval loss), and `reward.pairs: policy | mix` samples its pairs on these posts
    (`policy_pairs.per_post` per post; the held-out posts' pairs are the RMs' in-distribution eval
    set)."""
    n_prefs_train: int = 16000
    """Perturbation preference pairs in prefs_train (a candidate summary vs a degraded one, labelled by the
    Bradley-Terry raters on the gold reward); > 0. The RMs train on them only with `reward.pairs: testbed |
    mix` (within `reward.max_train_pairs` / `evaluator.train_pairs`); with `policy` they are built but
    unused."""
    n_prefs_eval: int = 1000
    """Held-out perturbation pairs in prefs_eval; > 0. Every RM's accuracy on them is reported (the
    in-distribution accuracy for `reward.pairs: testbed`, an extra eval for policy | mix)."""
    n_eval_prompts: int = 200
    """Eval posts (prompts) the policy samples pools for; > 0. Every analysis averages over them; sampling and
    scoring time grow linearly with it."""
    label_temperature: float | None = None
    """Bradley-Terry temperature of the synthetic raters (> 0; lower = labels agree with gold more often);
    null = the calibrated default (~70-75% agreement with gold, as human raters of TL;DR). Labels prefs_train,
    prefs_eval and the policy pairs (stage policy-prefs keys on it); reruns everything downstream of them."""
    vocab_size: int = 2048
    """BPE vocabulary size of the tokenizer trained on the corpus; >= 300 (the byte-level base alphabet).
    Models built from scratch get one embedding per token of it."""

    def __post_init__(self) -> None:
        for name in ("n_corpus_docs", "n_sft", "n_prefs_train", "n_prefs_eval", "n_eval_prompts"):
            _check(getattr(self, name) > 0, f"testbed.{name}", "must be > 0")
        _check(self.vocab_size >= 300, "testbed.vocab_size", "must be >= 300 (byte-level BPE base alphabet)")
        if self.label_temperature is not None:
            _check(self.label_temperature > 0, "testbed.label_temperature", "must be > 0")


@dataclass(frozen=True)
class DataConfig:
    """Where the preference data comes from: the embedded testbed, or your own pairs. With `prefs` set, any
    field here reruns the import (stage `data`) and so every stage after it."""

    prefs: str | None = None
    """null = the embedded testbed. Otherwise a JSONL/Parquet file, a local `datasets` directory, or a hub id
    (e.g. openai/summarize_from_feedback), in the generic {prompt, chosen, rejected} or TL;DR schema. Needs
    `pretrain.checkpoints`, `sft.checkpoint` and `evaluator.checkpoint` (or `evaluator.enabled: false`):
    there is no corpus to pretrain on and no SFT data; `reward.pairs` (auto) then trains on these pairs."""
    schema: Literal["auto", "generic", "tldr"] = "auto"
    """Record format of `prefs` and `prefs_eval`. auto: detected from the fields of the first record; generic:
    {prompt, chosen, rejected} strings; tldr: summarize_from_feedback comparisons (info, summaries, choice),
    turned into the TL;DR prompt (perm.data.TLDR_PROMPT) and its two summaries."""
    name: str | None = None
    """Dataset config name for hub ids (summarize_from_feedback: comparisons). On the hub's Parquet conversion
    (refs/convert/parquet, or a commit sha of it) the config is its folder; on a mirror whose only config is
    `default` (vwxyzjn/summarize_from_feedback_oai_preprocessing_*), comparisons or null reads that one; any
    other unknown name is an error listing the configs there are."""
    revision: str | None = None
    """Hub revision of `prefs`: a branch, tag or (reproducible) commit sha; null = main, or for
    openai/summarize_from_feedback its Parquet conversion (refs/convert/parquet)."""
    train_split: str | None = "train"
    """Split of `prefs` (a dataset directory or hub id) that holds the training pairs. A single JSONL/Parquet
    file has no splits: set null."""
    eval_split: str | None = "validation"
    """Split of `prefs` that holds the held-out pairs (RM accuracy, and the eval prompts); unused when
    `prefs_eval` is set (the usual choice for a single file)."""
    prefs_eval: str | None = None
    """A separate file for held-out pairs (instead of `eval_split` of `prefs`)."""
    max_train_pairs: int | None = None
    """Import only the first k training pairs of `prefs` (>= 1; null = all). This limits what is read; the
    RMs may use fewer still (`reward.max_train_pairs`, `evaluator.train_pairs`)."""
    max_eval_pairs: int | None = 2000
    """Import only the first k held-out pairs (>= 1; null = all): the RMs' accuracy is measured on them and
    the eval prompts are taken from them."""
    n_eval_prompts: int = 200
    """Eval prompts for best-of-n (> 0): the first k distinct prompts of the held-out pairs (fewer if there
    are fewer). The counterpart of `testbed.n_eval_prompts`."""
    bad_rows: Literal["error", "skip"] = "error"
    """error: the first bad row stops the import, naming its file, row and field. skip: rows with an empty
    (null or blank) prompt, chosen or rejected, or with chosen equal to rejected, are dropped and counted by
    reason (recorded in the manifest with the data stage); any other problem is still an error."""
    max_bad_fraction: float = 0.001
    """With bad_rows: skip, the import fails (naming the file, the counts and the first bad row) if more than
    this fraction of a split's rows is dropped (0.001 = 0.1 %); in [0, 1]."""

    def __post_init__(self) -> None:
        _check(self.n_eval_prompts > 0, "data.n_eval_prompts", "must be > 0")
        _check(self.bad_rows in ("error", "skip"), "data.bad_rows", "must be 'error' or 'skip'")
        _check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a GPT-NeoX (Pythia) backbone pretrained from scratch (perm.models.gpt_neox_config:
    rotary on a quarter of each head, parallel residual, untied embeddings). Unused for checkpoints."""

    hidden_size: int = 128
    """Width of the residual stream (d_model); > 0 and a multiple of num_heads."""
    num_layers: int = 2
    """Transformer layers; > 0."""
    num_heads: int = 4
    """Attention heads per layer; must divide hidden_size (head size = hidden_size / num_heads)."""
    intermediate_size: int = 512
    """Hidden width of each layer's MLP (usually 4 x hidden_size); > 0."""
    max_position_embeddings: int = 256
    """Context length in tokens the model is built for: `pretrain.seq_len`, `reward.max_length` and a sampled
    prompt plus `sample.max_new_tokens` should fit in it (sampling cuts longer prompts from the left)."""

    def shape(self) -> dict:
        """The fields as perm.models.gpt_neox_config's keyword arguments (what a backbone's record keeps)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        _check(self.hidden_size > 0 and self.num_layers > 0, "backbone", "sizes must be > 0")
        _check(self.hidden_size % self.num_heads == 0, "backbone.num_heads", "must divide hidden_size")


SHIPPED = "testbed:"  # prefix of a shipped testbed backbone's checkpoint spec (perm.shipped)
# the testbed kit shipped in the package (perm.kit): KIT/policy, KIT/evaluator, KIT's pairs
KIT = f"{SHIPPED}kit"
KIT_POLICY, KIT_EVALUATOR = f"{KIT}/policy", f"{KIT}/evaluator"

DEFAULT_KIT: str | None = KIT
"""Where `auto` (the default of `sft.checkpoint`, `reward.pairs_from` and `evaluator.rm_checkpoint`) loads
what the experiment holds fixed from: the SFT policy (<kit>/policy), its policy preference pairs (<kit>) and
the trained evaluator RM (<kit>/evaluator), each where the config's world is the kit's (RunConfig resolves
auto). KIT ("testbed:kit", the default): the testbed kit shipped in the package (perm.kit; built by `perm kit
build` from configs/testbed-kit.yaml), so that the embedded default trains only the grid; None: every run
trains its world itself."""
AUTO = "auto"  # the kit fields' default: resolved by RunConfig (see DEFAULT_KIT), never seen by a stage
POLICY_KIT_FIELDS = ("init_from", "epochs", "lr", "batch_size")  # what the kit's policy fixes (sft)
PAIRS_KIT_FIELDS = ("per_post", "kwise", "max_new_tokens", "seed")  # ... its pairs (policy_pairs)
EVALUATOR_KIT_FIELDS = ("epochs", "lr", "train_pairs", "finetune_seed")  # ... its evaluator (finetuning)
EVALUATOR_BACKBONE_FIELDS = ("checkpoint", "pretrain_seed", "backbone", "pretrain_steps", "extra_posts")


def kit_part(kit: str | None, part: str | None = None) -> str | None:
    """The spec of a kit's `part` (policy, evaluator; None: the kit itself, for its pairs), or None."""
    return None if kit is None else f"{kit}/{part}" if part else kit


def is_kit(spec: str | None) -> bool:
    """A spec naming the shipped testbed kit or one of its parts (testbed:kit, testbed:kit/policy, ...)."""
    return bool(spec) and (spec == KIT or str(spec).startswith(f"{KIT}/"))


def _default(cls: type, name: str) -> Any:
    """The declared default of field `name` of dataclass `cls` (no instance is built)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _keep_defaults(obj: Any, names: tuple[str, ...], section: str, why: str) -> None:
    """Each field of `names` must hold its declared default while `why` (what loads instead of training)."""
    for name in names:
        _check(getattr(obj, name) == _default(type(obj), name), f"{section}.{name}",
               f"has no effect while {why}")
# a pretrain job's
PRETRAIN_TRAIN_FIELDS = ("steps", "batch_size", "seq_len", "lr", "warmup_steps", "weight_decay")


@dataclass(frozen=True)
class PretrainConfig:
    """Seed-varied causal-LM pretraining (perm.pretrain) of the grid's backbones, or existing checkpoints to
    load instead. The training fields (batch_size, seq_len, lr, warmup_steps, weight_decay) are also the
    evaluator backbone's recipe, with `evaluator.pretrain_steps` for `steps`: changing one reruns every
    pretrain from scratch, the evaluator's too, and everything after them."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """One backbone per seed (at least one, distinct); pretrain_id is `seed<k>`. Each seed sets both the
    initialisation and the data order, unless `init_seeds` / `data_seeds` say otherwise."""
    init_seeds: tuple[int, ...] | None = None
    """Initialisation seed per pretrain (PolyPythias' weight-seed); null = follow `seeds`."""
    data_seeds: tuple[int, ...] | None = None
    """Data-order seed per pretrain (PolyPythias' data-seed); null = follow `seeds`."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Architecture of the grid's backbones (and of the SFT policy with `sft.init_from: scratch`)."""
    steps: int = 1200
    """Optimizer steps per pretrain (> 0), each on `batch_size` blocks of `seq_len` tokens; the corpus is
    reshuffled (same data-order stream) when it runs out."""
    batch_size: int = 32
    """Token blocks per pretraining step (> 0)."""
    seq_len: int = 128
    """Tokens per block: the corpus is concatenated (EOS after each document) and cut into blocks of this
    length; > 0 and at most `backbone.max_position_embeddings`."""
    lr: float = 3e-3
    """Peak AdamW learning rate (> 0; betas 0.9, 0.95, gradients clipped at norm 1): linear warmup over
    `warmup_steps`, then cosine decay to 10 % of the peak at `steps`."""
    warmup_steps: int = 50
    """Steps of linear warmup to `lr` (>= 0; 0 = none)."""
    weight_decay: float = 0.01
    """AdamW weight decay (>= 0)."""
    checkpoints: tuple[str, ...] = tuple(f"testbed:seed{i}" for i in range(5))
    """Instead of pretraining: local directories or hub ids (e.g. EleutherAI/pythia-160m-seed1), one per
    pretrain; a hub id may pin a revision after `@` (EleutherAI/pythia-160m-seed4@step143000); or the
    testbed's shipped backbones `testbed:seed0` ... `testbed:seed4` (the default: pretrained once with this
    section's recipe, configs/testbed-pretrains.yaml, and checked against their recorded hashes on load;
    perm.shipped). Non-empty overrides `seeds`; `[]` pretrains `seeds` in the run
    (configs/tiny-scratch.yaml)."""
    trust_remote_code: bool = False
    """Passed to transformers as trust_remote_code where perm loads the configured checkpoints (their
    tokenizers, the grid RMs' backbones, the policy for sampling): lets a checkpoint run its own modelling
    code. Only for checkpoints whose code you trust; GPT-NeoX / Pythia need none."""
    convert_bin: bool = True
    """A checkpoint (hub id at its revision, or local folder) whose weights exist only as pickled
    pytorch_model.bin (PolyPythias' step branches) is converted to safetensors into the run directory before
    use (perm.convert.ensure_safetensors: unpickled with torch.load(weights_only=True), plain tensor state
    dicts only), and the conversion is loaded instead; checkpoints with safetensors are used as they are.
    False: such a checkpoint is refused at pinning, before any training (convert it yourself with `perm
    convert CHECKPOINT OUT`). Reruns nothing by itself (a conversion is keyed by its content)."""
    checkpoint_every: int = 100
    """Steps between resumable training checkpoints of a pretrain from scratch (weights, optimiser, data
    position, RNG; <run>/.checkpoints/pretrain/<id>/, removed once the backbone is saved): a killed pretrain
    continues from its last checkpoint to exactly the weights of an uninterrupted run. 0 = none. Not in any
    stage key."""

    def __post_init__(self) -> None:
        _check(len(self.seeds) > 0 or len(self.checkpoints) > 0, "pretrain.seeds", "need at least one")
        _check(self.checkpoint_every >= 0, "pretrain.checkpoint_every", "must be >= 0")
        _check(len(set(self.seeds)) == len(self.seeds), "pretrain.seeds", "must be distinct")
        for name in ("init_seeds", "data_seeds"):
            v = getattr(self, name)
            if v is not None:
                _check(len(v) == len(self.seeds), f"pretrain.{name}", "must have one entry per seed")
        for name in ("steps", "batch_size", "seq_len"):
            _check(getattr(self, name) > 0, f"pretrain.{name}", "must be > 0")
        _check(self.lr > 0, "pretrain.lr", "must be > 0")
        kit = [c for c in self.checkpoints if is_kit(c)]
        _check(not kit, "pretrain.checkpoints", f"{kit[0] if kit else ''} is part of the testbed kit, not a "
               "pretrained backbone (the shipped backbones are testbed:seed0 ... testbed:seed5)")
        shipped = [c for c in self.checkpoints if c.startswith(f"{SHIPPED}seed")]
        # the shipped testbed backbones: the recipe is theirs
        if shipped and len(shipped) == len(self.checkpoints):
            ship_seeds = tuple(int(c.split("seed", 1)[1]) for c in shipped if c.split("seed", 1)[1].isdigit())
            _check(self.seeds == ship_seeds or self.seeds == PretrainConfig.seeds, "pretrain.seeds",
                   f"{list(self.seeds)} is not what pretrain.checkpoints loads ({', '.join(shipped)}); to "
                   "pretrain these seeds in the run set pretrain.checkpoints: [] (as "
                   "configs/tiny-scratch.yaml does), or name shipped ones (testbed:seed0 ... testbed:seed5)")
            for name in (*PRETRAIN_TRAIN_FIELDS, "backbone"):
                _check(getattr(self, name) == getattr(_RECIPE_PRETRAIN, name), f"pretrain.{name}",
                       "has no effect while pretrain.checkpoints loads the shipped testbed backbones "
                       "(pretrained with this section's defaults, configs/testbed-pretrains.yaml); set "
                       "pretrain.checkpoints: [] to pretrain in the run with it")

    def pretrain_ids(self) -> list[str]:
        if self.checkpoints:  # a shipped testbed backbone keeps its name (testbed:seed3 -> seed3)
            ids = [c[len(SHIPPED):] if c.startswith(SHIPPED) else f"ckpt{i}"
                   for i, c in enumerate(self.checkpoints)]
            return ids if len(set(ids)) == len(ids) else [f"ckpt{i}" for i in range(len(self.checkpoints))]
        return [f"seed{s}" for s in self.seeds]

    def train_args(self) -> dict:
        """The training arguments of a pretrain job (the evaluator's take its own `steps`)."""
        return {k: getattr(self, k) for k in PRETRAIN_TRAIN_FIELDS}

    def recipe_key(self) -> dict:
        """What a grid pretrain's stage key holds of this section: every field but the seeds (keyed per
        pretrain), `convert_bin` (how a checkpoint is read) and `checkpoint_every` (when state is saved)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("seeds", "init_seeds", "data_seeds", "convert_bin", "checkpoint_every")}


_RECIPE_PRETRAIN = PretrainConfig(checkpoints=())  # the shipped backbones' recipe: this section's defaults


@dataclass(frozen=True)
class RewardConfig:
    """Reward-model finetuning (perm.reward.train_reward_model: Bradley-Terry + centering loss, AdamW, linear
    warmup and decay) and the pretrain x finetune-seed grid. The evaluator RM uses the same recipe with its
    own `evaluator.epochs`, `evaluator.lr` and `evaluator.train_pairs`. A field reruns the grid RMs, the
    scoring and the analysis; all but finetune_seeds, layout, finetune_seed_scope, max_train_pairs, epochs and
    lr rerun the evaluator RM too."""

    finetune_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Finetune seeds (at least one, distinct): each fixes an RM's head initialisation, data order and dropout
    masks (see `finetune_seed_scope`); `layout` picks which (pretrain, seed) RMs are trained."""
    layout: Literal["paper", "full"] = "paper"
    """paper: one RM per pretrain (first finetune seed) plus all finetune seeds of the first pretrain;
    full: every pretrain x every finetune seed."""
    center_coef: float = 0.01
    """alpha of the centering term alpha * mean((r+ + r-)^2); >= 0 (0 = plain Bradley-Terry)."""
    epochs: float = 2.0
    """Passes over the training pairs (> 0, fractions allowed): round(epochs * ceil(pairs / batch_size))
    optimizer steps; reruns the grid RMs. Why 2: learnability alone (docs/history/results.md, "two RM
    epochs")."""
    batch_size: int = 64
    """Preference pairs per optimizer step (> 0; the global batch when several processes train one RM). With
    K-wise pairs (`policy_pairs.kwise: 6`, 15 pairs per post) 64 pairs hold about four posts."""
    rm_checkpoints: tuple[str, ...] = ()
    """Trained reward models to use as the grid instead of finetuning it, each
    ``<pretrain_id>:<finetune_seed>=<checkpoint>`` (a folder or a hub id with ``@revision``; e.g. a
    finetune-level grid published as revision branches of one repository); they are evaluated on the run's
    held-out pairs and scored, and `layout` and `finetune_seeds` are not used. () = finetune the grid. Reruns
    train-rm (each RM keyed by its checkpoint's identity), score and analyze."""
    processes: int = 1
    """Processes (GPUs) each grid RM's and the evaluator's finetuning runs on: > 1 runs the job under
    `accelerate launch --multi_gpu` (DDP through perm.launch: each process a contiguous slice of every batch,
    gradients averaged; gloo on CPU), one job at a time, recorded in the manifest as any job; >= 1. The
    same data order, steps and schedule, the result equal up to float rounding; set above 1 it keys and
    reruns those RMs (1: keys as before)."""
    micro_batch_size: int | None = None
    """Gradient accumulation: at most this many preference pairs per forward and backward pass (>= 1; null =
    each step's `batch_size` pairs in one pass). The same data order, steps and learning-rate schedule; each
    step's gradient is the whole batch's up to float rounding, with one micro-batch's activations in memory.
    Set, it keys and reruns the grid RMs, the evaluator RM and the ensemble members (null: keys as before). A
    step's pairs (under several processes, each one's slice) run in contiguous micro-batches, a prompt's pairs
    together where they fit, each micro-batch's loss weighted by its share of the step's pairs (a multi-head
    member's: by each head's share of its bootstrap weight). With `dropout`, masks are drawn per
    micro-batch."""
    lr: float = 7e-4
    """Peak AdamW learning rate (> 0): linear warmup over `warmup_frac` of the steps, then linear decay to 0.
    Reruns the grid RMs. Why 7e-4: learnability alone (docs/history/results.md, "a lower RM learning
    rate")."""
    warmup_frac: float = 0.06
    """Fraction of the steps spent warming up to `lr`; in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW weight decay (>= 0)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm before each step; <= 0 = no clipping."""
    dropout: float = 0.0
    """Hidden and attention dropout of the backbone while finetuning, in [0, 1) (0 = none; masks drawn from
    the RM's dropout seed)."""
    readout: Literal["last", "sum", "mean"] = "last"
    """Where the reward is read. last: the scalar head on the sequence's last token (the paper's and TRL's
    RMs; any *ForSequenceClassification). sum / mean: the head on every token's final hidden state, summed or
    averaged over prompt + completion (decoder backbones only; a prompt's part is the same for all its
    candidates). Recorded in the saved RM's config.json as `perm_reward_readout`, which perm's scoring reads;
    other tools that load the RM read the last token whatever it says. Reruns the RMs. Why last:
    docs/history/results.md ("where the reward is read")."""
    eval_every: int = 200
    """Optimizer steps between evaluations on the held-out pairs (the learning curve `eval_curve` in rm.json);
    >= 1. The final weights are always evaluated. Changes no weights, but is part of the RMs' keys."""
    max_length: int = 192
    """Tokens of prompt + completion + EOS an RM sees, in training and in scoring (a longer prompt is cut from
    its left, keeping the completion); also the SFT policy's training length. > 0, at most the backbone's
    `max_position_embeddings`. Reruns the RMs, the evaluator RM, the SFT policy (and so everything after it)
    and the scoring."""
    max_train_pairs: int | None = None
    """The grid RMs train on only the first k training pairs (>= 1; null = all); policy pairs come first under
    `pairs: mix`, and K-wise pairs are in post order, so k keeps the first posts whole. The evaluator ignores
    it (`evaluator.train_pairs`). On the testbed, `pairs: policy` with `policy_pairs.kwise: 6` yields ~46k
    pairs
    (the 3,800 training posts x 15, less ties)."""
    pairs: Literal["auto", "testbed", "policy", "mix"] = "auto"
    """Training pairs (grid and evaluator). testbed: the data's own pairs: the testbed's perturbation pairs
    (prefs_train), or with `data.prefs` your pairs. policy: pairs of the SFT policy's own samples on sft_train
    posts, labelled by the testbed's Bradley-Terry raters on the gold reward (stage policy-prefs; testbed
    only). mix: both (policy pairs first; testbed only). auto: policy on the embedded testbed (with the
    perturbation pairs the RMs did not track gold, README), testbed with `data.prefs` (no gold reward to label
    policy samples); resolved when the config is built, so the saved config, the manifest and the stage keys
    only ever hold testbed, policy or mix. In-distribution accuracy is measured on held-out pairs of the same
    kind: prefs_eval for testbed pairs, policy_prefs_eval (policy pairs on the sft_train posts the SFT policy
    held out, which no RM trains on) for policy and mix, where prefs_eval is reported as well."""
    finetune_seed_scope: Literal["shared", "per_rm"] = "shared"
    """What a finetune seed fixes. shared: head init, data order and dropout are derived from the finetune
    seed alone, so RMs of different pretrains with one finetune seed differ only in the backbone (the pair
    relation `same_finetune`, which lets the analysis separate the pretraining seed's share of the
    disagreement from the finetuning seed's). per_rm: each RM draws them from its pretrain id and finetune
    seed together (no two RMs share finetuning randomness; no `same_finetune` pairs)."""
    group_by_prompt: bool = True
    """Shuffle whole prompts rather than pairs, so a prompt's pairs are neighbours in the data order and
    decoder RMs run that prompt once for all of them (policy pairs have `policy_pairs.per_post` per post).
    Batches still hold `batch_size` pairs; with one pair per prompt the order is the ungrouped one."""
    pairs_from: str | None = AUTO
    """Where the policy pairs of `pairs: policy | mix` come from (unused with `testbed` pairs). auto (the
    default): the testbed kit's where the embedded default loads the kit (perm.config.DEFAULT_KIT) and they
    are this config's (the kit's policy loaded, `policy_pairs.per_post` and `policy_pairs.kwise` at their
    defaults),
    else null; resolved when the config is built. null: drawn in the run (stage policy-prefs, from the SFT
    policy's samples). `testbed:kit`: the testbed kit's (perm.kit: policy_prefs.parquet,
    policy_prefs_eval.parquet and evaluator_prefs.parquet, drawn once by configs/testbed-kit.yaml, shipped in
    the package and checked against their recorded sha256 and testbed). Or a folder holding those files (a kit
    folder written by `perm kit build --out`, a finished run directory). They are copied into the run as the
    outputs of stage policy-prefs (keyed on the kit's recorded hash, or the files' content), and the grid
    trains on them as on pairs drawn in the run. With the kit, `policy_pairs.per_post` and
    `policy_pairs.kwise` keep their defaults (the kit's recipe); `evaluator.extra_posts` is null (the
    source's evaluator_prefs.parquet, for an evaluator finetuned in the run) or 0."""

    def recipe(self, skip: tuple[str, ...] = ()) -> dict:
        """{field: value} of this section but the fields of `skip`: the slice of the recipe a stage key holds
        (perm.stages._grid.recipe_key) and what an RM's rm.json records."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def __post_init__(self) -> None:
        _check(len(self.finetune_seeds) > 0, "reward.finetune_seeds", "need at least one")
        _check(len(set(self.finetune_seeds)) == len(self.finetune_seeds), "reward.finetune_seeds",
               "must be distinct")
        _check(self.layout in ("paper", "full"), "reward.layout", "must be 'paper' or 'full'")
        _check(self.center_coef >= 0, "reward.center_coef", "must be >= 0")
        _check(self.epochs > 0 and self.batch_size > 0 and self.lr > 0, "reward",
               "epochs, batch_size, lr > 0")
        _check(0 <= self.warmup_frac < 1, "reward.warmup_frac", "must be in [0, 1)")
        _check(self.processes >= 1, "reward.processes", "must be >= 1")
        for spec in self.rm_checkpoints:
            _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+:-?\d+=\S+", spec)), "reward.rm_checkpoints",
                   f"{spec!r}: expected <pretrain_id>:<finetune_seed>=<checkpoint>")
        ids = [s.split("=", 1)[0] for s in self.rm_checkpoints]
        _check(len(set(ids)) == len(ids), "reward.rm_checkpoints", "each <pretrain_id>:<finetune_seed> once")
        _check(self.micro_batch_size is None or self.micro_batch_size >= 1, "reward.micro_batch_size",
               "must be >= 1 (or null)")
        _check(0 <= self.dropout < 1, "reward.dropout", "must be in [0, 1)")
        _check(self.pairs in ("auto", "testbed", "policy", "mix"), "reward.pairs",
               "must be auto|testbed|policy|mix")
        _check(self.finetune_seed_scope in ("shared", "per_rm"), "reward.finetune_seed_scope",
               "must be shared|per_rm")
        if is_kit(self.pairs_from) and self.pairs_from != KIT:
            raise ConfigError(f"reward.pairs_from: {self.pairs_from} is not the kit's pairs (name {KIT}, or "
                              "a folder)")


@dataclass(frozen=True)
class EvaluatorConfig:
    """The stronger evaluator RM: bigger backbone, a pretrain seed no grid member uses, possibly more data. It
    judges the grid's best-of-n picks (Figure 4, Table 1) beside the gold reward."""

    enabled: bool = True
    """false: no evaluator (no evaluator pretrain, RM or scores); the analyses judge by the gold reward alone,
    which exists only on the testbed."""
    pretrain_seed: int = 1000
    """Initialisation and data-order seed of the evaluator's backbone (pretrain id `evaluator-seed<k>`); must
    differ from every grid pretrain's init and data seed. Unused with `checkpoint`."""
    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(hidden_size=192, num_layers=3, num_heads=6,
                                               intermediate_size=768)
    )
    """Architecture of the evaluator's backbone, pretrained from scratch with the grid's recipe
    (`pretrain.*`); unused with `checkpoint`."""
    pretrain_steps: int = 1500
    """Pretraining steps of the evaluator's backbone (> 0); the other pretraining fields are `pretrain`'s."""
    train_pairs: int | None = None
    """Preference pairs it is finetuned on: the first k (>= 1) of the training pairs `reward.pairs` selects
    then its `extra_posts` pairs (null = all, which may be more than the grid's `reward.max_train_pairs`)."""
    extra_posts: int | None = None
    """More pairs than the grid: policy pairs on further testbed posts (the first of prefs_train's posts,
    which neither the SFT policy nor, with `reward.pairs: policy`, any grid RM sees; under `mix` the grid
    trains on those posts' perturbation pairs), drawn and labelled as the grid's (stage policy-prefs, manifest
    name `evaluator-prefs`, file evaluator_prefs.parquet: `policy_pairs.kwise` samples per post and all their
    pairs) from a random stream of their own, and appended to the evaluator's training pairs after the grid's.
    null = as many posts as the grid's pairs come from (sft_train's training posts: `testbed.n_sft` less the
    SFT policy's held-out twentieth; 3,800 on the testbed), at most prefs_train's; 0 = the grid's pairs only;
    k = k posts (at most `testbed.n_prefs_train`). Used with `reward.pairs: policy | mix` (unused with
    `testbed` pairs, and so with `data.prefs`). Reruns the evaluator RM (and its scoring) only. Why null:
    learnability alone (docs/history/results.md, "the evaluator on more posts")."""
    epochs: float = 1.5
    """The evaluator RM's passes over its training pairs (> 0), instead of `reward.epochs`; reruns the
    evaluator RM. 1.5 over twice the grid's posts are the steps of 3 over the grid's (take 3 with
    `extra_posts: 0`); why: docs/history/results.md ("the evaluator on more posts")."""
    lr: float = 5e-4
    """The evaluator RM's peak learning rate (> 0), instead of `reward.lr`; every other finetuning field is
    `reward`'s."""
    finetune_seed: int | None = None
    """Seed of the evaluator's finetuning randomness (head init, data order, dropout), drawn with its own
    pretrain id, never shared with a grid RM; null = its pretrain_seed."""
    checkpoint: str | None = "testbed:evaluator-seed1000"
    """Load this backbone (local dir, hub id or `id@revision`, or a shipped testbed backbone) instead of
    pretraining one; the default is the shipped evaluator backbone (seed 1000, this section's backbone and
    pretrain_steps). null = pretrain it in the run. Unused with `rm_checkpoint`."""
    rm_checkpoint: str | None = AUTO
    """A trained evaluator RM to load instead of finetuning one: a local folder, or a hub id (`id@revision`),
    of an AutoModelForSequenceClassification with one label (safetensors only; its own modelling code only
    with `pretrain.trust_remote_code`), e.g. an existing TL;DR reward model as the judge at real scale; or the
    testbed kit's `testbed:kit/evaluator` (perm.kit: finetuned once by configs/testbed-kit.yaml, shipped in
    the package and checked against its recorded sha256 and testbed). The run evaluates it on its held-out
    pairs (evaluator/rm/rm.json; no weights are copied) and scores the pools with it, reading with the run's
    tokenizer (which it must share). `checkpoint`, `pretrain_seed`, `backbone` and `pretrain_steps` are then
    unused, and the fields that finetune it (epochs, lr, train_pairs, extra_posts, finetune_seed) keep their
    defaults. null = finetune it in the run. auto (the default): the testbed kit's where the embedded default
    loads the kit (perm.config.DEFAULT_KIT) and it is this config's evaluator (on the embedded testbed at its
    defaults, every field of this section at its default), else null; resolved when the config is built."""

    def trains(self) -> bool:
        """Whether the run finetunes the evaluator RM (enabled, and no trained `rm_checkpoint` loaded)."""
        return self.enabled and self.rm_checkpoint is None

    def pretrains(self) -> bool:
        """Whether the run pretrains the evaluator's backbone (it finetunes the evaluator, from no
        checkpoint)."""
        return self.trains() and not self.checkpoint

    def __post_init__(self) -> None:
        _check(self.pretrain_steps > 0, "evaluator.pretrain_steps", "must be > 0")
        if self.rm_checkpoint not in (None, AUTO) and self.enabled:
            r = self.rm_checkpoint
            _check(bool(r), "evaluator.rm_checkpoint",
                   "must be a folder, hub id or testbed:kit/evaluator (or null)")
            _check(not str(r).startswith(SHIPPED) or r == KIT_EVALUATOR, "evaluator.rm_checkpoint",
                   f"{r} is not a trained evaluator RM (the testbed kit's is {KIT_EVALUATOR}; a shipped "
                   "backbone such as testbed:evaluator-seed1000 is finetuned from evaluator.checkpoint)")
            _keep_defaults(self, EVALUATOR_KIT_FIELDS, "evaluator",
                           f"evaluator.rm_checkpoint loads a trained evaluator ({r}); set "
                           "evaluator.rm_checkpoint: null to finetune one in the run")
            _check(self.extra_posts in (None, 0), "evaluator.extra_posts",
                   f"has no effect while evaluator.rm_checkpoint loads a trained evaluator ({r})")
        _check(not is_kit(self.checkpoint), "evaluator.checkpoint",
               f"{self.checkpoint} is part of the testbed kit, not a backbone (a trained evaluator RM goes "
               "in evaluator.rm_checkpoint)")
        if self.checkpoint and self.checkpoint.startswith(SHIPPED):  # shipped: pretrained with the defaults
            for name in ("pretrain_seed", "backbone", "pretrain_steps"):
                _check(getattr(self, name) == getattr(_RECIPE_EVALUATOR, name), f"evaluator.{name}",
                       f"has no effect while evaluator.checkpoint loads the shipped {self.checkpoint}; set "
                       "evaluator.checkpoint: null to pretrain the evaluator's backbone in the run with it")
        if self.train_pairs is not None:
            _check(self.train_pairs > 0, "evaluator.train_pairs", "must be > 0")
        _check(self.extra_posts is None or self.extra_posts >= 0, "evaluator.extra_posts",
               "must be >= 0 (or null)")


_RECIPE_EVALUATOR = EvaluatorConfig(checkpoint=None, rm_checkpoint=None)


@dataclass(frozen=True)
class SftConfig:
    """The SFT policy (perm.policy.train_sft: summary tokens only, AdamW, 5 % warmup then linear decay), or a
    trained one loaded instead. Every field reruns the policy and everything after it."""

    checkpoint: str | None = AUTO
    """Load an existing causal LM (local dir, hub id or `id@revision`) as the policy instead of training one,
    or the testbed kit's SFT policy `testbed:kit/policy` (perm.kit: trained once by configs/testbed-kit.yaml,
    shipped in the package and checked against its recorded sha256 and testbed; `init_from`, `epochs`, `lr`
    and `batch_size` then keep their defaults, its recipe). null = SFT in the run (see `init_from`). auto (the
    default): the kit's where the embedded default loads the kit (perm.config.DEFAULT_KIT) and it is this
    config's policy (on the embedded testbed, the other fields of this section at their defaults), else null;
    resolved when the config is built."""
    init_from: str = "testbed:seed5"
    """What SFT starts from: a checkpoint of its own (local dir, hub id or `id@revision`, or a shipped testbed
    backbone `testbed:<name>`), `pretrain` (the grid's first backbone, which the finetune ensemble and every
    same-pretrain pair also share) or `scratch`. Reruns the policy and everything after it."""
    epochs: float = 0.5
    """Passes over sft_train (less its held-out 5 %); > 0, fractions allowed.
    Reruns the policy and everything after it. Why 0.5: the RMs' learnability alone (docs/history/results.md,
    "a policy on its own backbone")."""
    lr: float = 1e-3
    """Peak AdamW learning rate of SFT (> 0). Reruns the policy and everything after it."""
    batch_size: int = 32
    """(prompt, summary) examples per SFT step (> 0). Reruns the policy and everything after it."""

    def init_checkpoint(self) -> str | None:
        """The checkpoint SFT starts from, when `init_from` names one (not `scratch` or `pretrain`)."""
        return None if self.init_from in ("scratch", "pretrain") else self.init_from

    def __post_init__(self) -> None:
        _check(bool(self.init_from), "sft.init_from", "must be scratch, pretrain or a checkpoint")
        if self.checkpoint == KIT_POLICY:
            _keep_defaults(self, POLICY_KIT_FIELDS, "sft",
                           "sft.checkpoint loads the testbed kit's policy (trained with the defaults, "
                           "configs/testbed-kit.yaml); set sft.checkpoint: null to train it in the run")
        _check(not is_kit(self.checkpoint) or self.checkpoint == KIT_POLICY, "sft.checkpoint",
               f"{self.checkpoint} is not a policy (the testbed kit's is {KIT_POLICY})")
        _check(not is_kit(self.init_from), "sft.init_from",
               f"{self.init_from} is part of the testbed kit (load the kit's policy with sft.checkpoint: "
               f"{KIT_POLICY})")
        _check(self.epochs > 0, "sft.epochs", "must be > 0")
        _check(self.lr > 0, "sft.lr", "must be > 0")
        _check(self.batch_size > 0, "sft.batch_size", "must be > 0")


@dataclass(frozen=True)
class PolicyPairsConfig:
    """The policy preference pairs of `reward.pairs: policy | mix` (stage policy-prefs): the SFT policy's own
    samples on sft_train posts, labelled by the testbed's Bradley-Terry raters on the gold reward. Every field
    reruns policy-prefs (and evaluator-prefs) and everything after them; unused with `reward.pairs_from`
    (loaded pairs) or testbed pairs."""

    per_post: int = 3
    """Disjoint pairs sampled per sft_train post when `kwise` is null (>= 1; two fresh samples each, ties
    dropped). Reruns policy-prefs and everything after it."""
    kwise: int | None = 6
    """K-wise comparisons, as InstructGPT collected them: K (>= 3) policy samples per sft_train post and every
    one of their C(K, 2) pairs, each labelled by its own rater draw (ties dropped), so each completion sits in
    K - 1 pairs and, with `reward.group_by_prompt`, is scored once per training step for all of them:
    (K - 1) / 2 pairs per completion scored, against 1/2 for disjoint pairs. null = `per_post` disjoint pairs
    (two fresh samples each). On the testbed, K = 6 yields ~46k pairs (the 3,800 training posts x 15, less
    ties). Reruns policy-prefs and everything after it."""
    max_new_tokens: int = 32
    """Most tokens per sampled completion (> 0; it also ends at EOS). Reruns policy-prefs and everything after
    it."""
    seed: int = 0
    """Seed of the pairs' sampling and of their labels. Reruns policy-prefs and everything after it."""

    def __post_init__(self) -> None:
        _check(self.per_post >= 1, "policy_pairs.per_post", "must be >= 1")
        _check(self.kwise is None or self.kwise >= 3, "policy_pairs.kwise", "must be >= 3 or null")
        _check(self.max_new_tokens > 0, "policy_pairs.max_new_tokens", "must be > 0")


@dataclass(frozen=True)
class SampleConfig:
    """The candidate pools the SFT policy samples for the eval prompts (perm.policy.sample_pool): what every
    RM scores and best-of-n picks from. Every field but `memory_gb` reruns `sample`, scoring and analysis."""

    pool_size: int = 64
    """Candidates sampled per eval prompt (N >= 1): the pool every RM scores and best-of-n picks from; n runs
    up to it (`analysis.ns`). Sampling and scoring time grow linearly with it. Reruns sample and everything
    after it."""
    n_reference: int = 8
    """Extra samples per eval prompt (K >= 0) drawn beside the pool but never picked: the targets of the win
    rates (picked vs reference); 0 = no win rates. Reruns sample and everything after it."""
    temperature: float = 1.0
    """Sampling temperature of the pool and the references (> 0; 1 = the policy's distribution). Reruns sample
    and everything after it."""
    top_p: float = 1.0
    """Nucleus sampling of the pool and the references: sample from the smallest set of tokens whose
    probability reaches top_p; in (0, 1], 1 = no truncation. Reruns sample and everything after it."""
    max_new_tokens: int = 32
    """Most tokens per sample (> 0; a sample also ends at EOS). Reruns sample and everything after it."""
    seed: int = 0
    """Sampling seed of the pool and the references. Reruns sample and everything after it."""
    batch_prompts: int = 8
    """Prompts sampled together (>= 1): memory and speed, and each chunk of this many prompts gets its own
    seed, so it changes the samples. Reruns sample and everything after it."""
    memory_gb: float | None = None
    """Key/value cache (GB) one decode batch may hold: fewer than `batch_prompts` prompts decode together
    where their rows would not fit (sized from the policy's shapes, perm.policy.prompts_within); null =
    `batch_prompts` at once. The samples do not depend on it (each prompt draws from its own seeded
    generator), so it reruns nothing; > 0."""

    def __post_init__(self) -> None:
        _check(self.pool_size >= 1, "sample.pool_size", "must be >= 1")
        _check(self.n_reference >= 0, "sample.n_reference", "must be >= 0")
        _check(self.temperature > 0, "sample.temperature", "must be > 0")
        _check(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")
        _check(self.max_new_tokens > 0, "sample.max_new_tokens", "must be > 0")
        _check(self.batch_prompts >= 1, "sample.batch_prompts", "must be >= 1")
        _check(self.memory_gb is None or self.memory_gb > 0, "sample.memory_gb", "must be > 0 (or null)")


@dataclass(frozen=True)
class ScoreConfig:
    """Scoring every sample with every RM (stage score; perm.prefix.score_prompt_groups, in fp32)."""

    memory_gb: float | None = None
    """Memory (GB) one scoring batch may hold: its rows (a candidate each, with its prompt's key/value cache
    gathered) are as many as fit, sized from each RM's shapes and the longest prompt and candidate
    (perm.prefix.rows_within); null = 64 rows. The rewards equal those of any other batching up to float
    rounding, so it reruns nothing; > 0."""

    def __post_init__(self) -> None:
        _check(self.memory_gb is None or self.memory_gb > 0, "score.memory_gb", "must be > 0 (or null)")


# Keys moved to sections of their own: old dotted key -> new keys (an old key still loads, with one line on
# stderr naming the new key, for one release).
MOVED_KEYS = {
    "policy.checkpoint": ("sft.checkpoint",),
    "policy.init_from": ("sft.init_from",),
    "policy.sft_epochs": ("sft.epochs",),
    "policy.sft_lr": ("sft.lr",),
    "policy.sft_batch_size": ("sft.batch_size",),
    "policy.pool_size": ("sample.pool_size",),
    "policy.n_reference": ("sample.n_reference",),
    "policy.temperature": ("sample.temperature",),
    "policy.top_p": ("sample.top_p",),
    "policy.max_new_tokens": ("sample.max_new_tokens", "policy_pairs.max_new_tokens"),
    "policy.seed": ("sample.seed", "policy_pairs.seed"),
    "policy.batch_prompts": ("sample.batch_prompts",),
    "policy.sample_memory_gb": ("sample.memory_gb",),
    "reward.policy_pairs_per_post": ("policy_pairs.per_post",),
    "reward.policy_kwise": ("policy_pairs.kwise",),
}


def migrate_moved_keys(data: dict, say=None) -> dict:
    """`data` (a config mapping) with every key of :data:`MOVED_KEYS` moved to its new place(s), saying so in
    one line for all of them (``say``: a callable taking the line; default: print to stderr). A key given both
    ways is an error, and so is a `policy` that is not a mapping or holds another key; an emptied old section
    goes."""
    import sys

    say = say or (lambda line: print(line, file=sys.stderr))
    if data.get("policy") is not None and not isinstance(data["policy"], dict):
        raise ConfigError("policy: must be a mapping (its keys moved to sft, sample and policy_pairs)")
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    moved = []
    for old, new in MOVED_KEYS.items():
        section, name = old.split(".")
        if not isinstance(out.get(section), dict) or name not in out[section]:
            continue
        value = out[section].pop(name)
        for key in new:
            sec, field_name = key.split(".")
            target = out.setdefault(sec, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{sec}: must be a mapping")
            if field_name in target:
                raise ConfigError(f"{old}: given beside its new key {key}; keep only {key}")
            target[field_name] = value
        moved.append(f"{old} -> {' and '.join(new)}")
        if not out[section]:
            del out[section]
    for k in out.get("policy", None) or ():
        raise ConfigError(f"policy.{k}: unknown key (the policy section's keys moved to sft, sample and "
                          "policy_pairs)")
    out.pop("policy", None)
    if moved:
        say(f"perm: config keys moved (the old keys load for one release): {'; '.join(moved)}")
    return out


def loaded_grid(reward: RewardConfig) -> list[tuple[str, int, str]]:
    """(pretrain_id, finetune_seed, checkpoint) of every trained RM of `reward.rm_checkpoints`, in order."""
    out = []
    for spec in reward.rm_checkpoints:
        head, ckpt = spec.split("=", 1)
        pid, seed = head.rsplit(":", 1)
        out.append((pid, int(seed), ckpt))
    return out


MEMBER_KINDS = ("multihead", "lora", "warm", "mcdropout")


@dataclass(frozen=True)
class EnsemblesConfig:
    """Ensembles built on one backbone beside the grid's finetune and pretrain ensembles (perm.members, the
    `train-members` stage), each with its cost: how much of the pretrain ensemble's gain a cheaper ensemble
    recovers. Members train with `reward`'s recipe on the grid's pairs. Each field reruns train-members (the
    kinds it concerns), then score and analyze."""

    kinds: tuple[str, ...] = ()
    """Kinds to build, any of multihead (one finetune with `size` heads, each on its own bootstrap of the
    pairs), lora (`size` peft adapters on the frozen backbone), warm (the weight average of `size` finetunes
    from one linear-probed head, differing in data order and learning rate; plus the average of the grid's
    finetune ensemble) and mcdropout (`size` dropout draws of one RM finetuned with dropout `mc_dropout`);
    () = none."""
    size: int = 5
    """Members of each kind (heads, adapters, finetunes averaged, dropout draws); >= 2."""
    backbone: str | None = None
    """The pretrain id the members are built on (one of the grid's); null = the finetune ensemble's pretrain
    (the first)."""
    lora_rank: int = 8
    """Rank of each LoRA adapter; >= 1."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is alpha / rank x B A); > 0."""
    lora_lr: float = 3e-3
    """Peak learning rate of the LoRA members (adapters and head; the schedule is `reward`'s); > 0. Chosen by
    held-out accuracy among 1e-3, 3e-3, 1e-2 (docs/results.md, "Cheaper ensembles")."""
    warm_lr_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    """WARM member m trains at `reward.lr` x warm_lr_scales[m mod len]; each > 0."""
    warm_probe_epochs: float = 0.5
    """Epochs of the linear probe (the head alone, on the frozen backbone) every WARM member starts from; >
    0."""
    warm_probe_lr: float = 1e-2
    """Peak learning rate of that linear probe; > 0."""
    mc_dropout: float = 0.1
    """Dropout rate the MC-dropout RM is finetuned and scored with; in (0, 1)."""
    named: tuple[str, ...] = ()
    """Your own named ensembles over the run's scored models, each ``name=model_id+model_id+...`` (e.g.
    ``top2=seed0-ft0+seed1-ft0``); reruns score and analyze only."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.kinds) - set(MEMBER_KINDS))
        _check(not bad, "ensembles.kinds", f"unknown {bad}; allowed: {', '.join(MEMBER_KINDS)}")
        _check(len(set(self.kinds)) == len(self.kinds), "ensembles.kinds", "each kind at most once")
        _check(self.size >= 2, "ensembles.size", "must be >= 2")
        _check(self.lora_rank >= 1, "ensembles.lora_rank", "must be >= 1")
        _check(self.lora_alpha > 0 and self.lora_lr > 0, "ensembles.lora_alpha",
               "lora_alpha and lora_lr must be > 0")
        _check(bool(self.warm_lr_scales) and all(x > 0 for x in self.warm_lr_scales),
               "ensembles.warm_lr_scales", "must be non-empty, each > 0")
        _check(self.warm_probe_epochs > 0, "ensembles.warm_probe_epochs", "must be > 0")
        _check(self.warm_probe_lr > 0, "ensembles.warm_probe_lr", "must be > 0")
        _check(0 < self.mc_dropout < 1, "ensembles.mc_dropout", "must be in (0, 1)")
        for spec in self.named:
            name, _, ids = spec.partition("=")
            _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and bool(ids) and all(ids.split("+")),
                   "ensembles.named",
                   f"{spec!r}: expected name=model_id+model_id+... (name of letters, digits, _.-)")
            _check(name not in RESERVED_ENSEMBLES, "ensembles.named", f"{name!r} is reserved")

    def named_members(self) -> dict[str, tuple[str, ...]]:
        """name -> model ids of `named`."""
        return {n: tuple(ids.split("+")) for n, _, ids in (s.partition("=") for s in self.named)}


RESERVED_ENSEMBLES = ("single", "finetune", "pretrain", "evaluator", "gold", "none", *MEMBER_KINDS,
                      "warm-members", "grid-soup")


@dataclass(frozen=True)
class AnalysisConfig:
    """Best-of-n analyses over the reward tensor (perm.analysis); each field reruns only `analyze` (and the
    report)."""

    ns: tuple[int, ...] | None = None
    """n values (each >= 1); null = 1, 2, 4, ... up to the pool size."""
    anova_draws: int = 20
    """R random n-subsets per prompt for Figure 3; > 0."""
    scale: bool = False
    """Standardise ensemble members to unit variance per prompt (not only centre) before aggregating."""
    seed: int = 0
    """Seed of Figure 3's random subsets and of the bootstrap."""
    bootstrap: int = 500
    """Multi-bootstrap replicates behind every interval over pretrain seeds and prompts; >= 2."""
    level: float = 0.9
    """Coverage of the intervals (lo, hi); in (0, 1)."""
    figure3: str = "mom"
    """Figure 3's statistic: ``mom`` (share of variance due to the scoring RM, method of moments on per-prompt
    standardised scores: free of reward scale, ~0 under exchangeable RMs) or ``paper`` (the paper's SS_RM /
    SS_total on rewards centred per prompt, which unequal reward scales inflate; docs/results.md, "reward
    scale")."""
    coverage_sims: int = 100
    """Simulated grids per scenario behind the report's coverage of its intervals on this run's seed design
    (perm.coverage: planted seed effects, 4 scenarios, at the run's pool size up to 64); >= 0, 0 = skip.
    Reruns analyze; its cost: docs/results.md ("Coverage on the default's designs")."""
    pick_ranker: str = "auto"
    """Whose best-of-n picks weight the pick-level seed decomposition: ``auto`` (the evaluator, else gold),
    ``evaluator``, ``gold``, or ``grid`` (the other RMs of each pair: biased in the paper layout, where they
    relate differently to each relation; docs/results.md, "the pick-level decomposition")."""

    def __post_init__(self) -> None:
        _check(self.anova_draws > 0, "analysis.anova_draws", "must be > 0")
        _check(self.figure3 in ("mom", "paper"), "analysis.figure3", "must be mom or paper")
        _check(self.coverage_sims >= 0, "analysis.coverage_sims", "must be >= 0")
        _check(self.pick_ranker in ("auto", "evaluator", "gold", "grid"), "analysis.pick_ranker",
               "must be auto, evaluator, gold or grid")
        _check(self.bootstrap >= 2, "analysis.bootstrap", "must be >= 2")
        _check(0 < self.level < 1, "analysis.level", "must be in (0, 1)")
        if self.ns is not None:
            _check(all(n >= 1 for n in self.ns), "analysis.ns", "every n must be >= 1")


@dataclass(frozen=True)
class RayConfig:
    """The Ray executor (`executor: ray`): pretrain, RM and scoring jobs run as Ray tasks; SFT, policy pairs
    and sampling stay in the driver. No stage key but the report's holds these fields."""

    address: str | None = None
    """Existing cluster address (e.g. ray://head:10001 or auto); null = start a local instance."""
    num_cpus_per_task: float = 1.0
    """CPUs Ray reserves for each task (its `num_cpus`; fractions allowed)."""
    num_gpus_per_task: float = 0.0
    """GPUs Ray reserves for each task (its `num_gpus`; >= 0, 0.5 = two tasks share a GPU). 0: none where
    `device` resolves to cpu in the driver, but 1 where it resolves to cuda (auto on a driver with a GPU,
    cuda): the stage keys and precision are then a GPU's, and a task that resolves its device to another kind
    (no GPU visible to it) refuses to run, naming both, rather than run on the CPU."""
    local_num_cpus: int | None = None
    """CPUs of the local instance started when `address` is null (null = all)."""


@dataclass(frozen=True)
class RunConfig:
    """One experiment, end to end. Its defaults are the embedded default (configs/tiny.yaml names only `out`):
    5 pretrains, the paper layout's 9 RMs on policy pairs, an evaluator, an SFT policy, pools of 64 + 8 on 200
    prompts, on 2 CPU cores."""

    out: str = "runs/tiny"
    """Run directory (created if missing): every output, the resolved config.yaml and the manifest go there;
    an existing run there resumes."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:<index> (every job on that GPU; with auto or cuda the local
    `workers` spread over the GPUs)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where the device multiplies it natively (CUDA with bf16 support; a CPU with AVX512-BF16, AMX
    or ARM BF16), fp32 elsewhere (an AVX2-only CPU emulates bf16, far slower than fp32: benchmarks/README.md),
    decided from the
    features the hardware reports (perm.hardware). bf16: mixed precision for training and sampling (fp32
    weights, bf16 autocast); scoring stays fp32. The resolved value keys the stages and is recorded in the
    manifest and every job record, so a run resumed on a machine that resolves differently reruns them."""
    attention: Literal["auto", "sdpa", "eager"] = "auto"
    """Attention of training and sampling jobs. auto: eager for bf16 on CPU (bf16 matmuls with an fp32
    softmax; the CPU's bf16 scaled-dot-product attention has a slow backward: benchmarks/README.md), the
    model's default (sdpa) otherwise."""
    executor: Literal["local", "ray"] = "local"
    """local: jobs run on this machine (in this process, or in `workers` processes); ray: pretrain, RM,
    sampling and scoring jobs run as Ray tasks (see `ray`; needs the ray extra)."""
    threads: int | None = None
    """torch intra-op threads; null = torch's default (with `workers` > 1: the machine's cores / workers)."""
    workers: int | Literal["auto"] = 2
    """Local executor: the long jobs of a stage (pretrains, RM finetunes, the evaluator's, sampling, scoring)
    run in this many worker processes at once (each runs several jobs in turn), and a worker a stage leaves
    idle takes the jobs of later stages whose inputs are final (the pool of samples once the policy is there,
    each RM's scoring once it and the samples are); 1 = one after another in this process; auto = one per
    GPU (1 with `device` cuda:N), 2 on CPU. With `device` auto or cuda and GPUs present, worker i runs all its
    jobs on GPU i % GPUs. On a few CPU cores two single-threaded jobs outrun one two-threaded job (small
    matmuls do not use two threads fully). Results depend on the threads per job, so resume a run with the
    same `workers` (the run's config.yaml records the number auto became)."""
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    """The embedded testbed world (unused with `data.prefs`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Your own preference pairs instead of the testbed (`data.prefs`)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """The grid's backbones: pretrained per seed, or checkpoints."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The RM grid and the finetuning recipe."""
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    """The stronger evaluator RM."""
    sft: SftConfig = field(default_factory=SftConfig)
    """The SFT policy: trained in the run, or loaded."""
    policy_pairs: PolicyPairsConfig = field(default_factory=PolicyPairsConfig)
    """The SFT policy's own preference pairs (`reward.pairs: policy | mix`)."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """The candidate pools of the eval prompts."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Scoring the pools with every RM."""
    ensembles: EnsemblesConfig = field(default_factory=EnsemblesConfig)
    """Cheaper ensembles on one backbone (multi-head, LoRA, WARM, MC dropout) and your own named ones."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """The best-of-n analyses."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray executor's cluster and task resources."""

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
               "auto|cpu|cuda")
        _check(self.precision in ("auto", "fp32", "bf16"), "precision", "auto|fp32|bf16")
        _check(self.attention in ("auto", "sdpa", "eager"), "attention", "auto|sdpa|eager")
        _check(self.executor in ("local", "ray"), "executor", "local|ray")
        _check(self.workers == "auto" or self.workers >= 1, "workers", "must be >= 1 or auto")
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1 (or null)")
        # resolved here: to_dict, dump_config and the stage keys never see auto
        if self.reward.pairs == "auto":
            pairs = "policy" if self.data.prefs is None else "testbed"
            object.__setattr__(self, "reward", dataclasses.replace(self.reward, pairs=pairs))
        self._resolve_kit_fields()
        if self.data.prefs is not None:
            # outside the testbed there is no corpus to pretrain on and no SFT data: checkpoints are needed
            _check(bool(self.pretrain.checkpoints), "pretrain.checkpoints", "required with data.prefs")
            _check(self.reward.pairs == "testbed", "reward.pairs",
                   "policy pairs need the testbed's gold reward: set reward.pairs=testbed to train on your "
                   "data.prefs pairs")
            _check(self.sft.checkpoint is not None, "sft.checkpoint", "required with data.prefs")
            _check(not self.evaluator.enabled or self.evaluator.checkpoint is not None
                   or self.evaluator.rm_checkpoint is not None, "evaluator.checkpoint",
                   "required with data.prefs (or evaluator.rm_checkpoint, or evaluator.enabled: false)")
            for key, spec in (("sft.checkpoint", self.sft.checkpoint),
                              ("evaluator.rm_checkpoint",
                               self.evaluator.rm_checkpoint if self.evaluator.enabled else None)):
                _check(not is_kit(spec), key, f"{spec} is the testbed's, trained on its world: with "
                       "data.prefs name a model for your data"
                       + (" (or null: finetune one in the run)" if key.startswith("eval") else ""))
        elif self.reward.pairs != "testbed":
            _check((self.evaluator.extra_posts or 0) <= self.testbed.n_prefs_train, "evaluator.extra_posts",
                   f"must be at most testbed.n_prefs_train ({self.testbed.n_prefs_train}): its posts are "
                   "prefs_train's")
            _check(self.reward.pairs_from is None or self.evaluator.extra_posts in (None, 0),
                   "evaluator.extra_posts",
                   f"must be null (the evaluator's pairs of {self.reward.pairs_from}) or 0 while "
                   "reward.pairs_from loads the policy pairs")
        seeds = (set(self.pretrain.init_seeds or self.pretrain.seeds)
                 | set(self.pretrain.data_seeds or self.pretrain.seeds))
        _check(not self.evaluator.pretrains() or self.pretrain.checkpoints
               or self.evaluator.pretrain_seed not in seeds, "evaluator.pretrain_seed",
               "must differ from every grid pretrain's init and data seed (the evaluator shares no pretrain)")
        ids = self.pretrain.pretrain_ids()
        _check(self.ensembles.backbone is None or self.ensembles.backbone in ids, "ensembles.backbone",
               f"must be one of the grid's pretrains {ids} (or null)")

    def _resolve_kit_fields(self) -> None:
        """Resolve `auto` in sft.checkpoint, evaluator.rm_checkpoint and reward.pairs_from: the part of
        DEFAULT_KIT where it is this config's (on the embedded testbed at its defaults, the fields that part
        fixes at theirs; the pairs only with the kit's policy), else null (trained in the run). None while
        DEFAULT_KIT is None."""
        kit = DEFAULT_KIT if self.data.prefs is None and self.testbed == TestbedConfig() else None
        p, r, e, pp = self.sft, self.reward, self.evaluator, self.policy_pairs

        def kept(obj, names) -> bool:
            return all(getattr(obj, n) == _default(type(obj), n) for n in names)

        if p.checkpoint == AUTO:
            p = dataclasses.replace(p, checkpoint=kit_part(kit, "policy") if kept(p, POLICY_KIT_FIELDS)
                                    else None)
        if e.rm_checkpoint == AUTO:
            ours = e.enabled and kept(e, EVALUATOR_KIT_FIELDS + EVALUATOR_BACKBONE_FIELDS)
            e = dataclasses.replace(e, rm_checkpoint=kit_part(kit, "evaluator") if ours else None)
        if r.pairs_from == AUTO:
            ours = (kit is not None and p.checkpoint == kit_part(kit, "policy") and r.pairs != "testbed"
                    and kept(pp, PAIRS_KIT_FIELDS)
                    and (e.rm_checkpoint is not None or e.extra_posts in (None, 0)))
            r = dataclasses.replace(r, pairs_from=kit_part(kit) if ours else None)
        if r.pairs_from == KIT:
            _keep_defaults(pp, PAIRS_KIT_FIELDS, "policy_pairs",
                           "reward.pairs_from loads the testbed kit's pairs (drawn with the defaults, "
                           "configs/testbed-kit.yaml); set reward.pairs_from: null to draw them in the run")
        for name, value in (("sft", p), ("evaluator", e), ("reward", r)):
            object.__setattr__(self, name, value)


# ---------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` (after YAML parsing) and convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({tp.__name__}), got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    if cls is RunConfig:
        data = migrate_moved_keys(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}.{e}") from None
        raise


def section_from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """A config section (or RunConfig) from its plain dict form (:func:`to_dict`), type-checked: what a job
    launched in another process reads back from JSON."""
    return _from_dict(cls, data, prefix)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list form (tuples become lists) for YAML and hashing."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    return cfg


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a mapping")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=3` strings into a nested dict; values are parsed as YAML scalars (3 → int, [1,2] → list)."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: override must look like key=value (e.g. reward.lr=3e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{item}: empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
        if isinstance(value, str) and _looks_float(value):
            value = float(value)
        _set_dotted(data, key, value)
    return data


def _looks_float(s: str) -> bool:
    # YAML 1.1 reads "3e-4" as a string; researchers mean a float.
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s for c in "eE.")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _fix_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    if isinstance(obj, str) and _looks_float(obj):
        return float(obj)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (None: the embedded default, configs/tiny.yaml, which is `RunConfig()`) and apply
    dotted overrides; fields the file does not set keep their dataclass defaults."""
    if path is None:
        path = default_config_path()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    extra = migrate_moved_keys(parse_overrides(overrides or []))
    try:  # each side in its own keys first, so that new-style overrides of an old file (or the reverse) merge
        return _from_dict(RunConfig, _merge(migrate_moved_keys(_fix_floats(data)), extra))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_from_overrides(overrides: list[str]) -> RunConfig:
    """Defaults + overrides, no file."""
    return _from_dict(RunConfig, parse_overrides(overrides))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def configs_dir() -> Path:
    return Path(__file__).parent / "configs"


def default_config_path() -> Path:
    return configs_dir() / "tiny.yaml"
