"""Shims over the parts of the transformers API that the KV-cache code depends on and that changed between
versions: what a model's forward accepts, the keyword its cache goes in, where an output keeps its cache,
and whether a cache is made of plain ``DynamicLayer`` s whose tensors can be copied row by row.

Shared-prompt RM scoring and training (:mod:`perm.prefix`) and policy sampling (:mod:`perm.policy`) both
prefill a prompt and continue from its cache; the shims live here so that each imports them from one place.
"""

from __future__ import annotations

import inspect

from transformers.cache_utils import DynamicLayer


def kv_dims(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a transformers model config (GPT-NeoX, Llama, GPT-2 names)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv_heads, head_dim


def forward_params(model) -> set[str]:
    """The names of the parameters of ``model.forward`` (``position_ids``, ``logits_to_keep``, ...)."""
    return set(inspect.signature(model.forward).parameters)


def cache_kwarg(model) -> str:
    """The keyword that passes a KV cache to ``model``'s forward.

    transformers >= 5.2x renamed ``past_key_values`` to ``cache`` (the old name is deprecated).
    """
    return "cache" if "cache" in forward_params(model) else "past_key_values"


def cache_of(out):
    """The KV cache of a forward's output: ``out.cache``, formerly ``out.past_key_values``; None
    if neither."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def plain_dynamic_layers(cache) -> bool:
    """True if ``cache`` has layers and every one is an initialised plain ``DynamicLayer`` (full keys and
    values ``(B, H, T, D)``); sliding-window, hybrid or linear-attention caches, or older ones, are not."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)
