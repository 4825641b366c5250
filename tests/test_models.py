"""Backbone loading (decoder and encoder, local paths, safetensors only) and seeded heads."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from perm.models import (
    ModelLoadError,
    attention_for,
    gpt_neox_config,
    load_causal_lm,
    load_reward_backbone,
    new_causal_lm,
    split_revision,
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


def test_attention_for_picks_eager_only_for_bf16_on_cpu():
    assert attention_for("cpu", "bf16") == "eager"
    assert attention_for("cpu", "fp32") is None  # the model's default (sdpa)
    assert attention_for("cuda", "bf16") is None
    assert attention_for(torch.device("cpu"), "bf16", "sdpa") == "sdpa"
    assert attention_for("cuda", "fp32", "eager") == "eager"
    with pytest.raises(ValueError, match="auto, sdpa or eager"):
        attention_for("cpu", "bf16", "flash")
