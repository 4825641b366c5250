"""Backbone loading (decoder and encoder, local paths, safetensors only) and seeded heads."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from perm.models import (
    ModelLoadError,
    attention_for,
    check_same_tokenizer,
    gpt_neox_config,
    load_causal_lm,
    load_reward_backbone,
    load_reward_model,
    load_tokenizer,
    new_causal_lm,
    split_revision,
    tokenizer_fingerprint,
)
from perm.reward import encode, pad_batch, score_ids


def test_same_init_seed_same_weights_different_seed_different(tokenizer):
    cfg = gpt_neox_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    a, b, c = new_causal_lm(cfg, 1), new_causal_lm(cfg, 1), new_causal_lm(cfg, 2)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_decoder_reward_read_at_last_real_token(tiny_backbone_dir, tokenizer):
    """Right padding must not change a sequence's reward: it is read at the last non-pad token."""
    rm = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0).eval()
    seqs = encode(tokenizer, ["w1 w2 TL;DR:", "w3 TL;DR:"], [" good w4 w5 w6", " bad"], max_length=32)
    batched = score_ids(rm, seqs, tokenizer.pad_token_id, "cpu")
    alone = [score_ids(rm, [s], tokenizer.pad_token_id, "cpu")[0] for s in seqs]
    assert batched == pytest.approx(alone, abs=1e-6)
    # and the read-out really is the last token: changing an earlier token changes it, appending pads does not
    ids, mask = pad_batch([seqs[1]], tokenizer.pad_token_id)
    padded = torch.cat([ids, torch.zeros((1, 5), dtype=torch.long)], dim=1)
    with torch.no_grad():
        r1 = rm(input_ids=ids).logits[0, 0].item()
        r2 = rm(input_ids=padded, attention_mask=(padded != 0).long()).logits[0, 0].item()
    assert r1 == pytest.approx(r2, abs=1e-6)


def test_head_seed_controls_head_only(tiny_backbone_dir, tokenizer):
    a = load_reward_backbone(tiny_backbone_dir, pad_token_id=0, head_seed=1)
    b = load_reward_backbone(tiny_backbone_dir, pad_token_id=0, head_seed=1)
    c = load_reward_backbone(tiny_backbone_dir, pad_token_id=0, head_seed=2)
    assert torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.score.weight, c.score.weight)
    assert torch.equal(a.gpt_neox.embed_in.weight, c.gpt_neox.embed_in.weight)


def test_encoder_backbone_from_local_path_reads_first_token(tmp_path, tokenizer):
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(tmp_path)
    rm = load_reward_backbone(tmp_path, pad_token_id=0, head_seed=0).eval()
    assert type(rm).__name__ == "BertForSequenceClassification"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        r = rm(input_ids=ids).logits[0, 0]
        # BERT's pooler reads position 0: the reward equals the head applied to pooled first-token state
        h = rm.bert(input_ids=ids).last_hidden_state[:, 0]
        pooled = torch.tanh(rm.bert.pooler.dense(h))
        assert r.item() == pytest.approx(rm.classifier(pooled)[0, 0].item(), abs=1e-6)


def test_pickled_weights_are_refused(tmp_path, tiny_backbone_dir):
    (tmp_path / "config.json").write_text((tiny_backbone_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights \(found pytorch_model\.bin"):
        load_reward_backbone(tmp_path, pad_token_id=0, head_seed=0)
    with pytest.raises(ModelLoadError, match=r"convert them with `perm convert .* OUT`, or set pretrain\.convert_bin"):
        load_causal_lm(tmp_path)


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_reward_backbone(tmp_path, pad_token_id=0, head_seed=0)


def test_auto_class_loads_saved_rm(tmp_path, tiny_backbone_dir, tokenizer):
    rm = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=3).eval()
    rm.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    seqs = encode(tokenizer, ["w1 w2 TL;DR:"] * 3, [" good", " bad w3", " w9 w9 w9"], max_length=32)
    assert score_ids(again, seqs, 0, "cpu") == pytest.approx(score_ids(rm, seqs, 0, "cpu"), abs=0)


def test_split_revision(tmp_path):
    assert split_revision("EleutherAI/pythia-160m-seed4@step143000") == ("EleutherAI/pythia-160m-seed4", "step143000")
    assert split_revision("EleutherAI/pythia-160m") == ("EleutherAI/pythia-160m", None)
    assert split_revision("org/m@refs/pr/2") == ("org/m", "refs/pr/2")
    assert split_revision("org/m", "main") == ("org/m", "main")
    local = tmp_path / "ckpt@v2"
    local.mkdir()
    assert split_revision(local) == (str(local), None)  # an existing path is never split
    with pytest.raises(ModelLoadError, match="expected a hub id"):
        split_revision("org/m@")
    with pytest.raises(ModelLoadError, match="revision 'a' in the id but 'b' passed"):
        split_revision("org/m@a", "b")


def test_hub_ids_with_a_revision_reach_from_pretrained(monkeypatch):
    """`id@revision` (configs pin PolyPythias branches this way) is passed on as revision=, safetensors only."""
    from transformers import AutoModelForCausalLM

    seen = {}

    def fake(name, **kwargs):
        seen.update(name=name, **kwargs)
        return "model"

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    assert load_causal_lm("EleutherAI/pythia-160m-seed4@step143000") == "model"
    assert seen["name"] == "EleutherAI/pythia-160m-seed4" and seen["revision"] == "step143000"
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert seen["dtype"] is torch.float32  # fp32 master weights whatever the hub checkpoint stores


def test_attention_for_picks_eager_only_for_bf16_on_cpu():
    assert attention_for("cpu", "bf16") == "eager"
    assert attention_for("cpu", "fp32") is None  # the model's default (sdpa)
    assert attention_for("cuda", "bf16") is None
    assert attention_for(torch.device("cpu"), "bf16", "sdpa") == "sdpa"
    assert attention_for("cuda", "fp32", "eager") == "eager"
    with pytest.raises(ValueError, match="auto, sdpa or eager"):
        attention_for("cpu", "bf16", "flash")


# ----------------------------------------------------------------------------------------------------
# fp32 master weights whatever the checkpoint stores: Pythia's hub weights are fp16 safetensors, the
# TL;DR SFT policy's bf16


def _saved_in(dtype, tokenizer, out):
    """A tiny GPT-NeoX causal LM saved with save_pretrained in `dtype` (config.json records it, as Pythia's)."""
    cfg = gpt_neox_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    new_causal_lm(cfg, init_seed=0).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fp16_backbone_dir(tmp_path_factory, tokenizer):
    out = _saved_in(torch.float16, tokenizer, tmp_path_factory.mktemp("fp16-pythia"))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # really fp16 on disk
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    return out


def test_fp16_checkpoint_loads_as_an_fp32_reward_backbone(fp16_backbone_dir, tokenizer):
    rm = load_reward_backbone(fp16_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    assert {n: p.dtype for n, p in rm.named_parameters() if p.dtype != torch.float32} == {}
    assert rm.score.weight.dtype == torch.float32  # the freshly initialised head too


def test_fp16_checkpoint_trains_under_bf16_autocast(fp16_backbone_dir, tokenizer):
    """The fp32 head under bf16 autocast failed on an fp16 backbone's first batch (mixed dtypes)."""
    from conftest import toy_pairs
    from perm.models import make_accelerator
    from perm.reward import train_reward_model

    torch.set_num_threads(1)
    rm = load_reward_backbone(fp16_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    p, c, r = toy_pairs(16, seed=0)
    enc = lambda a, b: encode(tokenizer, a, b, 32)  # noqa: E731
    before = rm.score.weight.detach().clone()
    state = train_reward_model(
        rm, chosen=enc(p, c), rejected=enc(p, r), eval_chosen=enc(p[:4], c[:4]), eval_rejected=enc(p[:4], r[:4]),
        pad_id=tokenizer.pad_token_id, center_coef=0.0, epochs=1.0, batch_size=8, lr=1e-3, warmup_frac=0.0,
        weight_decay=0.0, max_grad_norm=1.0, eval_every=1000, data_seed=0, dropout_seed=0,
        accelerator=make_accelerator("cpu", "bf16"),
    )
    assert state["step"] == 2 and all(np.isfinite(state["train_loss"]))
    model = state["model"]
    assert not torch.equal(model.score.weight, before)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights and optimiser state


def test_saved_fp16_reward_model_scores_in_fp32(tmp_path, tokenizer):
    rm = load_reward_backbone(_saved_in(torch.float32, tokenizer, tmp_path / "b"), pad_token_id=0, head_seed=1)
    rm.half().save_pretrained(tmp_path / "rm16")
    again = load_reward_model(tmp_path / "rm16")
    assert {p.dtype for p in again.parameters()} == {torch.float32}
    seqs = encode(tokenizer, ["w1 w2 TL;DR:"], [" good"], max_length=32)
    assert isinstance(score_ids(again, seqs, 0, "cpu")[0], float)


def test_bf16_policy_loads_as_fp32_and_samples(tmp_path, tokenizer):
    from perm.policy import sample_pool

    policy = load_causal_lm(_saved_in(torch.bfloat16, tokenizer, tmp_path / "sft-bf16"))
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    pools = sample_pool(policy.eval(), tokenizer, ["w1 w2 TL;DR:", "w3 TL;DR:"], n_samples=3, max_new_tokens=4,
                        seed=0)
    assert [len(pool) for pool in pools] == [3, 3]
    assert all(len(c) <= 4 and (len(c) == 4 or c.ended_with_eos) for pool in pools for c in pool)


# ----------------------------------------------------------------------------------------------------
# Tokenizer fingerprints: the grid, the evaluator and the policy must share one tokenizer


def test_identical_tokenizers_have_one_fingerprint(tmp_path, tokenizer):
    from conftest import make_tokenizer

    tokenizer.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    fingerprint = tokenizer_fingerprint(tokenizer)
    assert len(fingerprint) == 64 and tokenizer_fingerprint(make_tokenizer()) == fingerprint
    assert tokenizer_fingerprint(again) == fingerprint  # saved and loaded back
    again.backend_tokenizer.enable_truncation(8)  # a runtime setting, not the tokenizer
    assert tokenizer_fingerprint(again) == fingerprint
    assert check_same_tokenizer({"ckpt0": tokenizer, "ckpt1": make_tokenizer(), "policy": again}) == fingerprint


def test_a_different_vocabulary_fails_naming_both_models(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from conftest import make_tokenizer

    vocab = dict(make_tokenizer().get_vocab())
    vocab["extra"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                    unk_token="<|unk|>")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    with pytest.raises(ModelLoadError, match=r"tokenizers differ: ckpt0 and evaluator \(vocabulary \(48 vs 49 tokens\)\); every model"):
        check_same_tokenizer({"ckpt0": tokenizer, "ckpt1": make_tokenizer(), "evaluator": other})
    # the same vocabulary with another special token is another tokenizer too
    swapped = make_tokenizer()
    swapped.eos_token = "<|unk|>"
    with pytest.raises(ModelLoadError, match=r"ckpt0 and policy \(special tokens"):
        check_same_tokenizer({"ckpt0": tokenizer, "policy": swapped})
