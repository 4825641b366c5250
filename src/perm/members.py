"""Ensemble members built on one backbone, the cheaper alternatives to a pretrain ensemble (issue 31): what
each kind *is*, as models; the `train-members` stage trains them and `score` scores them.

* **multi-head** (:func:`multihead_model`): one finetune of the backbone with H scalar heads (one row each of
  the head's weight, each from its own initialisation) trained jointly, each head on its own bootstrap
  weights of the pairs (:func:`bootstrap_counts`; one forward reads all H rewards);
* **LoRA** (:func:`lora_model`): H adapters on the frozen backbone, each with its own head and seed, built
  and saved by ``peft`` (adapter_model.safetensors + adapter_config.json); scored merged
  (:func:`load_lora_merged`), one forward per adapter;
* **WARM** (:func:`average_state_dicts`): the weight average of M finetunes that share their whole
  initialisation (the backbone and one linear-probed head) and differ in data order and learning rate — a
  single model at inference; averaging the grid's finetune seeds (different heads) is the same operation;
* **MC dropout** (:func:`dropout_on`): T dropout draws of one RM (finetuned with that dropout) at scoring
  time, each seeded and repeatable.

:func:`parameter_counts` gives what each costs in parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from perm.models import ModelLoadError, count_parameters, load_reward_backbone, reward_head, seeded

KINDS = ("multihead", "lora", "warm", "mcdropout")
"""Member kinds `ensembles.kinds` may name."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ------------------------------------------------------------------------------------------- multi-head


def multihead_model(backbone: str | Path, heads: int, *, head_seed: int, pad_token_id: int | None,
                    dropout: float | None = None, trust_remote_code: bool = False):
    """The backbone with ``heads`` scalar heads (``num_labels`` = H: row h of the head's weight is head h),
    initialised together from ``head_seed``: the rows are independent draws, so the heads start different."""
    if heads < 2:
        raise ValueError(f"a multi-head model needs >= 2 heads, got {heads}")
    return load_reward_backbone(backbone, pad_token_id=pad_token_id, head_seed=head_seed, dropout=dropout,
                                trust_remote_code=trust_remote_code, num_labels=heads)


def bootstrap_counts(n_pairs: int, heads: int, seed: int) -> np.ndarray:
    """(n_pairs, heads) float32 Poisson(1) counts: how often each pair counts in each head's loss (the online
    bootstrap; head h's data are its own resample of the pairs). Depends only on the seed and the shape."""
    rng = np.random.default_rng(seed)
    return rng.poisson(1.0, size=(n_pairs, heads)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- LoRA


def lora_target_modules(model) -> list[str]:
    """The linear layers an adapter is put on: every ``nn.Linear`` inside the backbone's blocks (attention and
    MLP), by their last name (peft's ``target_modules``), never the head."""
    head = reward_head(model)
    head_ids = {id(m) for m in head.modules()}
    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and id(m) not in head_ids})
    if not names:
        raise ModelLoadError(f"{type(model).__name__}: no linear layers to put LoRA adapters on")
    return names


def lora_model(model, *, rank: int, alpha: float, seed: int):
    """``model`` (a reward backbone with its head) wrapped by ``peft`` with one LoRA adapter of ``rank`` on
    every block's linear layers (:func:`lora_target_modules`); the backbone is frozen, the adapter's matrices
    (A drawn from ``seed``) and the head are trained. Returns the ``PeftModel``; train its
    :func:`trainable` model."""
    from peft import LoraConfig, TaskType, get_peft_model

    head_name = next(n for n, m in model.named_children() if m is reward_head(model))
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=lora_target_modules(model), modules_to_save=[head_name])
    with seeded(seed):
        return get_peft_model(model, config)


def trainable(peft_model):
    """The model inside a ``PeftModel`` with the adapters in place (a plain *ForSequenceClassification whose
    forward takes position ids and a cache, so the packed and shared-prompt paths train it as any RM)."""
    return peft_model.base_model.model


def save_lora(peft_model, out: Path) -> None:
    """The adapter and its head in peft's format (safetensors)."""
    peft_model.save_pretrained(str(out), safe_serialization=True)
    if not (out / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"{out}: peft wrote no {ADAPTER_WEIGHTS}")


def load_lora_merged(backbone: str | Path, adapter: str | Path, *, pad_token_id: int | None,
                     trust_remote_code: bool = False):
    """A LoRA member as a plain reward model: the backbone, its adapter (safetensors only) merged into the
    weights, and the adapter's head; in eval mode, fp32."""
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"{adapter}: no {ADAPTER_WEIGHTS} (LoRA members load safetensors only)")
    base = load_reward_backbone(backbone, pad_token_id=pad_token_id, head_seed=0,
                                trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter), use_safetensors=True).merge_and_unload()
    return merged.eval()


# ------------------------------------------------------------------------------------------------- WARM


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes (floating tensors; other tensors,
    e.g. integer buffers, must be equal and are kept)."""
    if not states:
        raise ValueError("average_state_dicts: no state dicts")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ValueError(f"average_state_dicts: state dict {i} has other keys than state dict 0")
    out = {}
    for k in keys:
        ts = [s[k] for s in states]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"average_state_dicts: {k}: shapes differ ({[tuple(t.shape) for t in ts]})")
        if ts[0].is_floating_point():
            out[k] = torch.stack([t.to(torch.float64) for t in ts]).mean(0).to(ts[0].dtype)
        else:
            if any(not torch.equal(t, ts[0]) for t in ts):
                raise ValueError(f"average_state_dicts: {k}: non-floating tensors differ")
            out[k] = ts[0].clone()
    return out


def head_only(model) -> None:
    """Freeze everything but the reward head (a linear probe)."""
    head = {id(p) for p in reward_head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)


# ------------------------------------------------------------------------------------------- MC dropout


@contextlib.contextmanager
def dropout_on(model, p: float) -> Iterator[None]:
    """Inside: ``model`` in train mode with every dropout at rate ``p`` (``nn.Dropout`` modules and the
    attention modules' ``attention_dropout``), so a forward is one MC-dropout draw (seed it with
    :func:`perm.models.seeded`); the rates and eval mode are restored after."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"MC dropout needs a rate in (0, 1), got {p}")
    saved: list[tuple[object, str, float]] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            saved.append((m, "p", m.p))
            m.p = p
        elif isinstance(getattr(m, "attention_dropout", None), float):
            saved.append((m, "attention_dropout", m.attention_dropout))
            m.attention_dropout = p
    was = model.training
    model.train()
    try:
        yield
    finally:
        for m, attr, v in saved:
            setattr(m, attr, v)
        model.train(was)


# ------------------------------------------------------------------------------------------------- cost


def parameter_counts(model) -> dict[str, int]:
    """``{"total": every parameter, "trainable": those with requires_grad}`` of ``model``."""
    return {"total": count_parameters(model),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
