"""Gradient accumulation in RM finetuning (`reward.micro_batch_size`): a step run in micro-batches has the whole
batch's loss and gradients (fp32, up to rounding), plain or multi-head with bootstrap weights, and a few steps of
training end at the same weights; a set value keys the RMs, null leaves every key as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import toy_pairs
from perm import members
from perm.models import load_reward_backbone, make_accelerator
from perm.reward import backward_pairs, encode, micro_batches, pair_rewards, train_reward_model


def test_micro_batches_are_contiguous_slices_that_keep_prompt_groups_where_they_fit():
    idx = np.arange(10)
    assert [list(p) for p in micro_batches(idx, None)] == [list(range(10))]
    assert [list(p) for p in micro_batches(idx, 10)] == [list(range(10))]
    assert [list(p) for p in micro_batches(idx, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    owner = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    assert [list(p) for p in micro_batches(idx, 4, owner)] == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    # a prompt with more pairs than a micro-batch holds is cut at the size
    assert [list(p) for p in micro_batches(idx, 3, np.zeros(10, int))] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # indices are the step's (a shuffled order), owner is indexed by pair
    step = np.array([7, 8, 2, 3, 4])
    assert [list(p) for p in micro_batches(step, 3, owner)] == [[7, 8, 2], [3, 4]]  # groups 2, 2, 0 | 1, 1
    with pytest.raises(ValueError, match=">= 1"):
        micro_batches(idx, 0)


def _model(kind, backbone_dir, tokenizer):
    if kind == "plain":
        return load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    return members.multihead_model(backbone_dir, 3, head_seed=0, pad_token_id=tokenizer.pad_token_id)


def _weights(kind, n):
    return members.bootstrap_counts(n, 3, seed=1) if kind == "weighted" else None


@pytest.mark.parametrize("kind", ["plain", "multihead", "weighted"])
def test_one_step_in_micro_batches_has_the_whole_batchs_loss_and_gradients(kind, tiny_backbone_dir, tokenizer,
                                                                           one_thread):
    model = _model(kind, tiny_backbone_dir, tokenizer)
    p, c, r = toy_pairs(11, seed=2)
    chosen, rejected = encode(tokenizer, p, c, 32), encode(tokenizer, p, r, 32)
    weights = _weights(kind, 11)
    if weights is not None:
        weights[[0, 1, 2], 0] = 0.0  # head 0 has no weight in the first micro-batch: its share there is 0
    acc = make_accelerator("cpu")
    idx = np.array([3, 9, 0, 1, 2, 10, 4, 7, 5])  # a shuffled step of 9 of the 11 pairs

    def rewards(part):
        return pair_rewards(model, [chosen[i] for i in part], [rejected[i] for i in part], tokenizer.pad_token_id,
                            "cpu")

    def step(micro):
        model.zero_grad(set_to_none=True)
        loss = backward_pairs(acc, model, idx, rewards, center_coef=0.01, pair_weights=weights,
                              micro_batch_size=micro)
        return loss.item(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    full_loss, full = step(None)
    assert len(micro_batches(idx, 4)) == 3  # 4 + 4 + 1 pairs
    for micro in (4, 1):
        loss, grads = step(micro)
        assert loss == pytest.approx(full_loss, abs=1e-5)
        assert grads.keys() == full.keys() and len(full) > 10
        for name, g in full.items():
            torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=0, msg=name)
    assert sum(float(g.abs().sum()) for g in full.values()) > 1e-3  # gradients that could differ


def _train(model, tokenizer, pairs, *, micro=None, weights=None):
    p, c, r = pairs
    ep, ec, er = toy_pairs(16, seed=1)

    def enc(a, b):
        return encode(tokenizer, a, b, 32)

    return train_reward_model(
        model, chosen=enc(p, c), rejected=enc(p, r), eval_chosen=enc(ep, ec), eval_rejected=enc(ep, er),
        pad_id=tokenizer.pad_token_id, center_coef=0.01, epochs=1.0, batch_size=12, lr=3e-3, warmup_frac=0.0,
        weight_decay=0.0, max_grad_norm=1.0, eval_every=1000, data_seed=0, dropout_seed=0, group_by_prompt=True,
        pair_weights=weights, micro_batch_size=micro)


@pytest.mark.parametrize("kind", ["plain", "weighted"])
def test_training_in_micro_batches_ends_at_the_same_weights(kind, tiny_backbone_dir, tokenizer, one_thread):
    p, c, r = toy_pairs(24, seed=0)
    p[12:] = p[:12]  # two pairs per prompt: grouped batches whose prompt groups the micro-batches keep
    weights = _weights(kind, 24)
    whole = _train(_model(kind, tiny_backbone_dir, tokenizer), tokenizer, (p, c, r), weights=weights)
    micro = _train(_model(kind, tiny_backbone_dir, tokenizer), tokenizer, (p, c, r), micro=5, weights=weights)
    assert whole["step"] == micro["step"] == 2 and whole["packed"] == micro["packed"]
    np.testing.assert_allclose(micro["train_loss"], whole["train_loss"], atol=1e-5)
    a, b = whole["model"].state_dict(), micro["model"].state_dict()
    moved = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
    assert any(not torch.equal(a[n], moved[n]) for n in a if n in moved and a[n].shape == moved[n].shape)


# ------------------------------------------------------------------------------------------------- keys


def test_micro_batch_size_is_checked():
    from perm.config import ConfigError, config_from_overrides

    assert config_from_overrides([]).reward.micro_batch_size is None
    assert config_from_overrides(["reward.micro_batch_size=8"]).reward.micro_batch_size == 8
    with pytest.raises(ConfigError, match="reward.micro_batch_size"):
        config_from_overrides(["reward.micro_batch_size=0"])


def test_a_set_micro_batch_size_keys_the_rms_and_members_and_null_leaves_them_and_the_kit_as_they_were():
    from perm import kit
    from perm.config import config_from_overrides
    from perm.stages import train_members, train_rm

    base = ["precision=fp32", "reward.pairs=policy", "pretrain.checkpoints=[]", "sft.checkpoint=null",
            "reward.pairs_from=null", "evaluator.rm_checkpoint=null", "evaluator.checkpoint=null",
            "ensembles.kinds=[multihead, lora]"]
    null, set8 = (config_from_overrides(base + extra) for extra in ([], ["reward.micro_batch_size=8"]))
    up = {n: f"hash-of-{n}" for n in ["testbed", "policy-prefs", "evaluator-prefs", "evaluator/pretrain",
                                       *(f"pretrain/{p}" for p in null.pretrain.pretrain_ids())]}

    def keys(cfg):
        return train_rm.keys(cfg, up) | train_members.keys(cfg, up)

    a, b = keys(null), keys(set8)
    assert a.keys() == b.keys() and len(a) > 5
    assert all(a[n] != b[n] for n in a)  # every RM, the evaluator and every member
    # null is left out: the key objects are those of a config without the field
    assert "micro_batch_size" not in train_rm.recipe_key(null) and train_rm.recipe_key(set8)["micro_batch_size"] == 8
    assert "micro_batch_size" not in kit.world(null)["reward"] and kit.world(set8)["reward"]["micro_batch_size"] == 8
