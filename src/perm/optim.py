"""The optimiser, learning-rate schedule and update step of perm's finetuning loops.

Reward-model training (:mod:`perm.reward`) and SFT (:mod:`perm.policy`) use the same recipe: AdamW, linear
warmup then linear decay to 0, one update under accelerate with optional gradient-norm clipping. It lives
here so that both import it from one place, and the policy does not import the RM module for it.
"""

from __future__ import annotations

import torch


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Multiplier: linear warmup, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def adamw_linear(
    model, *, lr: float, weight_decay: float, total: int, warmup_frac: float
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s trainable parameters (a LoRA model's adapters and head; every parameter of a
    plain one) and its :func:`lr_schedule` over ``total`` steps, the first ``int(warmup_frac * total)`` of
    them warmup."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    warmup = int(warmup_frac * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, total, warmup))
    return opt, sched


def optimizer_step(acc, model, opt, sched, loss: torch.Tensor, max_grad_norm: float) -> None:
    """One update under accelerate: backward, optional gradient-norm clipping, optimizer and schedule step."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    apply_update(acc, model, opt, sched, max_grad_norm)


def apply_update(acc, model, opt, sched, max_grad_norm: float) -> None:
    """The update from the gradients the parameters hold (one backward, or several accumulated): optional
    gradient-norm clipping, then the optimizer and schedule step."""
    if max_grad_norm > 0:
        acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()
