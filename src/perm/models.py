"""Backbones, tokenizer, reward heads; loading and saving in Hugging Face format (safetensors only).

Every model comes up in fp32 master weights (`MASTER_DTYPE`) whatever dtype its checkpoint stores (Pythia's
are fp16, the TL;DR SFT policy's bf16; transformers >= 5 would keep the stored dtype): precision is then the
run's choice alone (bf16 autocast over fp32 weights, or plain fp32), and a freshly initialised head is fp32.

Two families are supported as reward-model backbones:
- decoder-only causal LMs (GPT-NeoX/Pythia, GPT-2, Llama, ...): the reward is read at the last
  non-padding token (transformers' *ForSequenceClassification do exactly this given `pad_token_id`);
- encoder-only models (BERT/MultiBERTs, RoBERTa, ...): the reward is read at the first ([CLS]) token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from perm.hardware import resolve_device, use_device  # noqa: F401  (resolve_device: re-exported for jobs)

HEAD_NAMES = ("score", "classifier")
MASTER_DTYPE = torch.float32
"""The dtype every loaded model's parameters have (`from_pretrained(dtype=...)`)."""


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded safely or at all; the message names the path and the problem."""


def make_accelerator(device: torch.device | str | None = None, precision: str = "fp32"):
    """An `accelerate.Accelerator` on `device` (None: CUDA if available) with bf16 mixed precision or none.

    An explicit ``cuda:N`` puts the process on GPU N first (:func:`perm.hardware.use_device`): accelerate's
    device in one process is the current CUDA device (``cuda``, no index), so the model, batches and optimizer
    state land on GPU N; ``cuda``, ``auto`` and a distributed launch keep accelerate's choice.

    accelerate keeps one process-wide AcceleratorState and refuses an Accelerator whose `cpu` or
    `mixed_precision` differs from the first one made, so a run whose SFT and RM jobs share a process (the
    local executor), or a test suite, could not mix settings. A different setting resets that state (the
    distributed PartialState of `accelerate launch` is kept); the same setting reuses it.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    cpu = (torch.device(device).type == "cpu") if device is not None else not torch.cuda.is_available()
    if not cpu:
        use_device(device)
    mixed = "bf16" if precision == "bf16" else "no"
    partial = PartialState._shared_state
    if partial and partial.get("num_processes", 1) == 1 and (partial["device"].type == "cpu") != cpu:
        AcceleratorState._reset_state(reset_partial_state=True)  # one process: nothing distributed to keep
    state = AcceleratorState._shared_state
    if state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed)


def attention_for(device: torch.device | str, precision: str, choice: str = "auto") -> str | None:
    """The attention implementation of a training or sampling job; None keeps the model's default.

    auto: ``eager`` for bf16 on CPU, where the kernel of bf16 scaled-dot-product attention has a slow
    backward and eager attention (bf16 matmuls, softmax in fp32) is the faster of the two (measured in
    benchmarks/README.md, "Claims moved out of code docstrings")."""
    if choice not in ("auto", "sdpa", "eager"):
        raise ValueError(f"attention must be auto, sdpa or eager, got {choice!r}")
    if choice != "auto":
        return choice
    return "eager" if precision == "bf16" and torch.device(device).type == "cpu" else None


def use_attention(model, implementation: str | None):
    """Switch `model` to an attention implementation (transformers' ``set_attn_implementation``); None:
    keep."""
    if implementation is not None and model.config._attn_implementation != implementation:
        model.set_attn_implementation(implementation)
    return model


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed without disturbing the global generator outside it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def gpt_neox_config(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    pad_token_id: int,
    eos_token_id: int,
    dropout: float = 0.0,
) -> GPTNeoXConfig:
    """A tiny Pythia-architecture config (rotary on a quarter of head dims, parallel residual, as Pythia)."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_dropout=dropout,
        attention_dropout=dropout,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


def new_causal_lm(config: GPTNeoXConfig, init_seed: int) -> GPTNeoXForCausalLM:
    """A freshly initialised causal LM whose weights depend only on `config` and `init_seed`."""
    with seeded(init_seed):
        model = GPTNeoXForCausalLM(config)
    return model


def split_revision(spec: str | Path, revision: str | None = None) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``: a hub id may name a branch, tag or commit after ``@``
    (PolyPythias keep their checkpoints on branches such as ``step143000``). An existing local path is
    returned whole (its name may contain ``@``); `revision`, if given, must not contradict the spec's."""
    s = str(spec)
    if Path(s).exists() or "@" not in s:
        return s, revision
    name, rev = s.rsplit("@", 1)
    if not name or not rev:
        raise ModelLoadError(f"{s}: expected a hub id as 'org/name' or 'org/name@revision'")
    if revision is not None and revision != rev:
        raise ModelLoadError(f"{s}: revision {rev!r} in the id but {revision!r} passed")
    return name, rev


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer (local dir, hub id or ``id@revision``) and make sure it has a pad token distinct from
    real text (needed for reward read-out)."""
    name, revision = split_revision(path)
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:
        # Pythia has no pad token; reusing EOS would make the read-out skip a real trailing EOS.
        tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                       "mask_token")


def _tokenizer_parts(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """What decides the ids a tokenizer gives a text, as canonical JSON per part (vocabulary, the fast
    backend's model, merges, normaliser, pre-tokeniser, post-processor and added tokens, special tokens)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    special = {}
    for attribute in _SPECIAL_ATTRIBUTES:
        token = getattr(tokenizer, attribute, None)
        if token is not None:
            special[attribute] = [str(token), tokenizer.convert_tokens_to_ids(str(token))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for runtime in ("truncation", "padding"):  # settings of a call, not of the tokenizer
            spec.pop(runtime, None)
        if isinstance(spec.get("model"), dict):
            spec["model"].pop("vocab", None)  # hashed as the vocabulary (a part of its own, for the message)
        pipeline = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    else:  # a slow tokenizer: its class, and its BPE merges or sentencepiece model where it has them
        parts: dict = {"class": type(tokenizer).__name__}
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if ranks:
            parts["merges"] = [list(pair) for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
        sp = getattr(tokenizer, "sp_model", None)
        if sp is not None and hasattr(sp, "serialized_model_proto"):
            parts["sentencepiece"] = hashlib.sha256(sp.serialized_model_proto()).hexdigest()
        pipeline = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return {
        "vocabulary": json.dumps(vocab, ensure_ascii=False),
        "pipeline": pipeline,
        "special tokens": json.dumps(special, sort_keys=True, ensure_ascii=False),
    }


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 hex digest of what decides a tokenizer's ids: the vocabulary (token -> id), the fast backend's
    full definition (``backend_tokenizer.to_str()``: model and merges, normaliser, pre-tokeniser,
    post-processor, added tokens; runtime truncation/padding left out) and the special tokens with their ids.
    Two tokenizers with equal fingerprints turn every text into the same ids."""
    parts = _tokenizer_parts(tokenizer)
    digest = hashlib.sha256()
    for name in sorted(parts):
        digest.update(f"{name}\0{parts[name]}\0".encode())
    return digest.hexdigest()


def check_same_tokenizer(named: dict[str, PreTrainedTokenizerBase]) -> str:
    """Check that every tokenizer in `named` (model name -> its tokenizer) has the same fingerprint; return
    it. A mismatch is a ModelLoadError naming the first model and the first one that differs from it, and
    what differs (vocabulary size, pipeline, special tokens)."""
    if not named:
        raise ValueError("check_same_tokenizer: no tokenizers given")
    items = list(named.items())
    first_name, first = items[0]
    reference = tokenizer_fingerprint(first)
    for name, tok in items[1:]:
        if tokenizer_fingerprint(tok) == reference:
            continue
        a, b = _tokenizer_parts(first), _tokenizer_parts(tok)
        differs = [part for part in a if a[part] != b[part]]
        detail = ", ".join(
            f"vocabulary ({len(first.get_vocab())} vs {len(tok.get_vocab())} tokens)" if part == "vocabulary"
            else f"special tokens ({a[part]} vs {b[part]})" if part == "special tokens"
            else "merges/normaliser/pre-tokeniser/post-processor"
            for part in differs
        )
        raise ModelLoadError(
            f"tokenizers differ: {first_name} and {name} ({detail}); every model of a run must share one "
            "tokenizer, or rewards and samples are read with the wrong ids"
        )
    return reference


def _check_safetensors(path: str | Path) -> None:
    p = Path(path)
    if p.is_dir():
        if not any(p.glob("*.safetensors")):
            bins = sorted(q.name for q in p.glob("*.bin")) + sorted(q.name for q in p.glob("*.pt"))
            extra = (
                f" (found {', '.join(bins)}: pickled weights are refused; convert them with "
                f"`perm convert {p} OUT`, or set pretrain.convert_bin: true)"
                if bins
                else ""
            )
            raise ModelLoadError(f"{p}: no *.safetensors weights{extra}")
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{p}: no config.json")


def is_encoder_only(config) -> bool:
    """True for encoder-only families (reward read at the first token)."""
    return not getattr(config, "is_decoder", False) and config.model_type in {
        "bert",
        "roberta",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "xlm-roberta",
        "albert",
        "modernbert",
    }


def load_reward_backbone(
    path: str | Path,
    *,
    pad_token_id: int | None,
    head_seed: int,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    num_labels: int = 1,
) -> PreTrainedModel:
    """A backbone (local dir, hub id or ``id@revision``) with a fresh scalar head initialised from `head_seed`
    (``num_labels`` > 1: H scalar heads, one row of the head's weight each, as a multi-head ensemble has).

    Only safetensors weights are accepted (`use_safetensors=True`); remote code only on request. Backbone and
    head are fp32 (`MASTER_DTYPE`) whatever the checkpoint stores.
    """
    path, revision = split_revision(path, revision)
    _check_safetensors(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    config.num_labels = num_labels
    config.problem_type = "regression"
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    if dropout is not None:
        for name in ("hidden_dropout", "attention_dropout", "hidden_dropout_prob",
                     "attention_probs_dropout_prob"):
            if hasattr(config, name):
                setattr(config, name, dropout)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            config=config,
            dtype=MASTER_DTYPE,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot load as a reward backbone: {e}") from None
    init_reward_head(model, head_seed)
    return model


def _reward_head_name(model: PreTrainedModel) -> str:
    for name in HEAD_NAMES:
        if hasattr(model, name):
            return name
    raise ModelLoadError(f"{type(model).__name__}: no scalar head ({' or '.join(HEAD_NAMES)})")


def reward_head(model: PreTrainedModel) -> torch.nn.Module:
    return getattr(model, _reward_head_name(model))


class _Fp32Head(torch.nn.Module):
    """Runs the wrapped reward head in fp32 even inside a bf16 autocast region."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


@contextlib.contextmanager
def fp32_reward_head(model: PreTrainedModel) -> Iterator[None]:
    """Inside: the scalar head computes in fp32 under autocast, so bf16 training keeps rewards (and the
    Bradley-Terry differences between them) at full precision instead of bf16's 8 bits; the backbone's matmuls
    stay bf16. The head's parameters are the same objects (the optimizer and checkpoint see no change)."""
    name = _reward_head_name(model)
    head = getattr(model, name)
    setattr(model, name, _Fp32Head(head))
    try:
        yield
    finally:
        setattr(model, name, head)


def init_reward_head(model: PreTrainedModel, head_seed: int) -> None:
    """Re-initialise the head's final linear layer(s) from `head_seed` (std 1/sqrt(hidden), bias 0)."""
    head = reward_head(model)
    hidden = model.config.hidden_size
    with seeded(head_seed), torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 1.0 / (hidden**0.5 + 1.0))
                if m.bias is not None:
                    m.bias.zero_()


def load_reward_model(path: str | Path, *, trust_remote_code: bool = False,
                      heads: bool = False) -> PreTrainedModel:
    """A saved RM (from perm or any *ForSequenceClassification with one label; a local dir, hub id or
    ``id@revision``, safetensors only), in eval mode, in fp32. ``heads``: also a multi-head RM (several
    labels, one reward each; perm.members)."""
    path, revision = split_revision(path)
    _check_safetensors(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=MASTER_DTYPE, use_safetensors=True, trust_remote_code=trust_remote_code,
            revision=revision,
        )
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot load reward model: {e}") from None
    if model.config.num_labels != 1 and not heads:
        raise ModelLoadError(f"{path}: num_labels is {model.config.num_labels}, a reward model has 1")
    return model.eval()


def load_causal_lm(path: str | Path, *, trust_remote_code: bool = False, revision: str | None = None):
    """A causal LM from a local dir, hub id or ``id@revision`` (safetensors only), in fp32 master weights."""
    path, revision = split_revision(path, revision)
    _check_safetensors(path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=MASTER_DTYPE,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot load causal LM: {e}") from None


def save_model(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase | None, out: Path,
               meta: dict | None, meta_name: str) -> None:
    """save_pretrained (safetensors) + tokenizer + a JSON of provenance into `out` (caller makes it atomic);
    ``model`` None: the tokenizer and the JSON alone (beside weights saved otherwise, e.g. a peft adapter)."""
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if meta is not None:
        (out / meta_name).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
