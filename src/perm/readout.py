"""How a reward model turns hidden states into one reward (its read-out), and whether its forward can share a
prompt's keys and values across continuations. Kept apart from :mod:`perm.prefix` and :mod:`perm.packed`,
which both build on it."""

from __future__ import annotations

from perm.kv_cache import forward_params
from perm.models import is_encoder_only

READOUTS = ("last", "sum", "mean")
READOUT_KEY = "perm_reward_readout"  # config.json attribute of a saved RM; absent = "last"


def readout_of(model) -> str:
    """How ``model`` turns hidden states into one reward: ``last`` (absent attribute), ``sum`` or ``mean``."""
    cfg = getattr(model, "module", model).config
    r = getattr(cfg, READOUT_KEY, None) or "last"
    if r not in READOUTS:
        raise ValueError(f"{type(model).__name__}: config {READOUT_KEY}={r!r}; expected one of {READOUTS}")
    return r


def set_readout(model, readout: str) -> None:
    """Record the read-out in the model's config (saved with it); ``sum`` / ``mean`` need a decoder model."""
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: expected one of {READOUTS}")
    if readout != "last" and not shares_prompt(model):
        raise ValueError(f"readout {readout!r} needs a decoder-only model; {type(model).__name__} reads its "
                         "reward at one token (use readout: last)")
    cfg = getattr(model, "module", model).config
    if readout != "last" or hasattr(cfg, READOUT_KEY):  # a plain RM's config.json stays as before
        setattr(cfg, READOUT_KEY, readout)


def n_heads(model) -> int:
    """Rewards ``model`` reads per sequence: 1 for a reward model, H for a multi-head one (``num_labels`` = H,
    perm.members); every scoring and training path returns (n,) for 1 and (n, H) for H."""
    return int(getattr(getattr(model, "module", model).config, "num_labels", 1) or 1)


def reward_shape(model) -> tuple[int, ...]:
    """The trailing shape of one sequence's rewards: () for one head, (H,) for H."""
    h = n_heads(model)
    return () if h == 1 else (h,)


def shares_prompt(model) -> bool:
    """True if ``model`` is a decoder-only reward model whose forward takes a KV cache and position ids."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    cfg = model.config
    if (
        is_encoder_only(cfg)
        or getattr(cfg, "is_encoder_decoder", False)
        or not getattr(cfg, "is_causal", True)
    ):
        return False
    params = forward_params(model)
    return "position_ids" in params and bool({"cache", "past_key_values"} & params)
