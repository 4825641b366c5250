"""Pooled reward read-outs (`reward.readout: sum | mean`): defined on the whole sequence, exact under a shared
prompt, in training as in scoring, and kept by a saved RM."""

import numpy as np
import pytest
import torch

from perm.models import load_reward_backbone, load_reward_model, save_model, use_attention
from perm.prefix import (
    READOUT_KEY,
    pair_rewards_shared,
    readout_of,
    score_ids,
    score_pairs,
    score_prompt_groups,
    sequence_rewards,
    set_readout,
    split_pairs,
)
from perm.reward import bradley_terry_loss, pair_rewards
from test_prefix import EOS, PAD, _groups, _join, _pairs, _repeated_prompt_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def _rm(backbone_dir, tokenizer, readout, attention="sdpa"):
    model = load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    set_readout(model, readout)
    with torch.no_grad():  # rewards of a few units, as a trained RM gives
        model.score.weight.mul_(3.0)
    return use_attention(model, attention).eval()


def _by_hand(model, seqs, readout):
    """The definition, one sequence at a time and without padding: the head on every token's final hidden
    state (the backbone's own forward), summed or averaged; the last token's for `last`."""
    out = []
    for s in seqs:
        ids = torch.tensor([s])
        h = model.gpt_neox(input_ids=ids).last_hidden_state
        per_token = model.score(h)[0, :, 0]
        out.append({"last": per_token[-1], "sum": per_token.sum(), "mean": per_token.mean()}[readout].item())
    return np.array(out)


@pytest.mark.parametrize("readout", ["last", "sum", "mean"])
def test_full_sequence_rewards_follow_the_definition(tiny_backbone_dir, tokenizer, readout):
    rm = _rm(tiny_backbone_dir, tokenizer, readout)
    prompts, cands = _groups(0)
    seqs = [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs]
    got = score_ids(rm, seqs, PAD, "cpu", batch_size=5)  # padded batches of several lengths
    assert got == pytest.approx(_by_hand(rm, seqs, readout), rel=1e-6, abs=1e-5)
    if readout == "last":  # the plain *ForSequenceClassification read-out, unchanged
        ids = torch.tensor([seqs[0]])
        assert got[0] == pytest.approx(rm(input_ids=ids).logits[0, 0].item(), abs=1e-6)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("readout", ["sum", "mean"])
def test_shared_prompt_scoring_is_exact_for_pooled_readouts(tiny_backbone_dir, tokenizer, readout, attention):
    rm = _rm(tiny_backbone_dir, tokenizer, readout, attention)
    prompts, cands = _groups(0)  # empty prompts and candidates of several lengths
    cands[2] = [[PAD], [PAD, PAD]] + cands[2]  # padding-only candidates are scored whole
    full = score_ids(rm, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    for batch_size in (3, 64):
        got = score_prompt_groups(rm, prompts, cands, PAD, "cpu", batch_size=batch_size)
        assert np.concatenate(got) == pytest.approx(full, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("readout", ["sum", "mean"])
def test_shared_prompt_training_loss_and_gradients_are_exact(tiny_backbone_dir, tokenizer, readout):
    rm = _rm(tiny_backbone_dir, tokenizer, readout)
    for prompts, chosen, rejected in (_pairs(), _repeated_prompt_pairs()):
        full_c, full_r = _join(prompts, chosen), _join(prompts, rejected)
        rm.train()
        grads = []
        for shared in (False, True):
            rm.zero_grad(set_to_none=True)
            rewards = (pair_rewards_shared(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu") if shared
                       else pair_rewards(rm, full_c, full_r, PAD, "cpu"))
            loss = bradley_terry_loss(*rewards, center_coef=0.01)
            loss.backward()
            grads.append((loss.item(), {n: p.grad.clone() for n, p in rm.named_parameters()}))
        (lf, gf), (ls, gs) = grads
        assert ls == pytest.approx(lf, rel=1e-6, abs=1e-5)
        for name, g in gf.items():
            # float rounding only: sums over every token make large rewards, so relative to the gradient's size
            torch.testing.assert_close(gs[name], g, atol=5e-5 * max(1.0, g.abs().max().item()), rtol=0, msg=name)
        rm.eval()
        rc, rr = score_pairs(rm, full_c, full_r, PAD, "cpu", batch_size=4)
        assert rc == pytest.approx(score_ids(rm, full_c, PAD, "cpu"), rel=1e-6, abs=1e-5)
        assert rr == pytest.approx(score_ids(rm, full_r, PAD, "cpu"), rel=1e-6, abs=1e-5)


def test_readouts_differ_and_bf16_head_stays_fp32(tiny_backbone_dir, tokenizer):
    from perm.models import fp32_reward_head

    seqs = [[3, 4, 5, EOS], [6, 7, EOS]]
    ids = torch.tensor([seqs[0], seqs[1] + [PAD]])
    mask = (torch.arange(4)[None] < torch.tensor([[4], [3]])).long()
    r = {ro: sequence_rewards(_rm(tiny_backbone_dir, tokenizer, ro), ids, mask).detach() for ro in ("last", "sum", "mean")}
    assert not torch.allclose(r["sum"], r["mean"]) and not torch.allclose(r["sum"], r["last"])
    assert r["mean"] == pytest.approx(r["sum"] / torch.tensor([4.0, 3.0]), abs=1e-6)
    rm = _rm(tiny_backbone_dir, tokenizer, "sum")
    with fp32_reward_head(rm), torch.autocast("cpu", dtype=torch.bfloat16):
        assert sequence_rewards(rm, ids, mask).dtype == torch.float32


def test_a_saved_rm_keeps_its_readout(tiny_backbone_dir, tokenizer, tmp_path):
    rm = _rm(tiny_backbone_dir, tokenizer, "mean")
    prompts, cands = _groups(1)
    seqs = [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs]
    before = score_ids(rm, seqs, PAD, "cpu")
    save_model(rm, tokenizer, tmp_path / "rm", None, "rm.json")
    loaded = load_reward_model(tmp_path / "rm")
    assert readout_of(loaded) == "mean"
    assert score_ids(loaded, seqs, PAD, "cpu") == pytest.approx(before, abs=1e-6)
    # a plain RM's config.json does not gain the attribute; a backbone that carries one is overridden
    plain = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    set_readout(plain, "last")
    assert not hasattr(plain.config, READOUT_KEY) and readout_of(plain) == "last"
    again = load_reward_backbone(tmp_path / "rm", pad_token_id=tokenizer.pad_token_id, head_seed=0)
    assert readout_of(again) == "mean"
    set_readout(again, "last")
    assert readout_of(again) == "last"


def test_bad_readouts_are_refused(tiny_backbone_dir, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    rm = _rm(tiny_backbone_dir, tokenizer, "last")
    with pytest.raises(ValueError, match="expected one of"):
        set_readout(rm, "max")
    setattr(rm.config, READOUT_KEY, "max")
    with pytest.raises(ValueError, match="perm_reward_readout='max'"):
        readout_of(rm)
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=1))
    with pytest.raises(ValueError, match="decoder-only"):
        set_readout(bert, "sum")


def test_config_takes_a_readout_and_refuses_others():
    from perm.config import ConfigError, config_from_overrides

    assert config_from_overrides(["reward.readout=mean"]).reward.readout == "mean"
    assert config_from_overrides([]).reward.readout == "last"
    with pytest.raises(ConfigError, match="reward.readout"):
        config_from_overrides(["reward.readout=max"])
