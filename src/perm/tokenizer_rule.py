"""The rule a run applies to its checkpoints' tokenizers (the data stage, and `perm check` before it): every
model of a run reads text with the same ids, the pad token left out of the comparison (padding is masked
everywhere, RMs and the evaluator pad with the run's tokenizer, and the policy pads only its own prompts, so a
tokenizer that adds a pad token of its own, as TRL's TL;DR SFT policy does, or pads with EOS, is the same)."""

from __future__ import annotations

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token")


def check_run_tokenizers(named: dict) -> str:
    """perm.models.check_same_tokenizer over `named` (model name -> tokenizer), each :func:`without_pad`;
    returns the common fingerprint, raises ModelLoadError naming the first two that differ."""
    from perm.models import check_same_tokenizer

    return check_same_tokenizer({name: without_pad(t) for name, t in named.items()})


def without_pad(tok):
    """`tok` with its pad token taken out, for comparing: the pad attribute dropped, and the pad's added-token
    entry too when the pad is a token of its own (not a word of the base vocabulary nor another special
    token). A tokenizer without a fast backend is returned as it is (compared whole)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tok, "backend_tokenizer", None)
    if tok.pad_token is None or backend is None:
        return tok
    pad = str(tok.pad_token)
    specials = {a: str(getattr(tok, a)) for a in SPECIAL if getattr(tok, a, None) is not None}
    spec = json.loads(backend.to_str())
    if pad not in backend.get_vocab(with_added_tokens=False) and pad not in specials.values():
        spec["added_tokens"] = [t for t in spec.get("added_tokens") or [] if t.get("content") != pad]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **specials)
