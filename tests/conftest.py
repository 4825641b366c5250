"""Shared tiny fixtures: a word-level tokenizer and 2-layer models built from configs (no hub)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(40)] + ["good", "bad", "TL;DR:", "post", "summary"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<|pad|>": 0, "<|endoftext|>": 1, "<|unk|>": 2}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>", unk_token="<|unk|>"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def toy_pairs(n: int, seed: int = 0):
    """Prompts of random words; the chosen completion says 'good', the rejected one 'bad'."""
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected = [], [], []
    for _ in range(n):
        prompt = " ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(3, 9))) + " TL;DR:"
        tail = " ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(1, 4)))
        prompts.append(prompt)
        chosen.append(f" good {tail}")
        rejected.append(f" bad {tail}")
    return prompts, chosen, rejected


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, tokenizer):
    """A 2-layer GPT-NeoX causal LM saved with save_pretrained (safetensors), like a pretrain/<id>/ dir."""
    from perm.models import gpt_neox_config, new_causal_lm

    cfg = gpt_neox_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position_embeddings=64,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = new_causal_lm(cfg, init_seed=0)
    out = tmp_path_factory.mktemp("backbone")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def added_fields(now: dict, then: dict, prefix: str = "") -> list[str]:
    """Config fields (dotted) in `now` that the recorded config `then` lacks; every other value must be equal
    (the stage-key fixtures record a config: a field added since may only hold its default)."""
    added = []
    for k, v in now.items():
        if k not in then:
            added.append(prefix + k)
        elif isinstance(v, dict):
            added += added_fields(v, then[k], f"{prefix}{k}.")
        else:
            assert v == then[k], prefix + k
    return added


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (rounding as in a one-thread worker), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
