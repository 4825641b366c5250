"""Ensemble members on one backbone (perm.members): LoRA adapters, multi-head, WARM averages, MC dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import toy_pairs
from perm import members
from perm.models import load_reward_backbone, reward_head
from perm.prefix import score_ids, score_prompt_groups
from perm.reward import bradley_terry_loss, encode_pairs, train_reward_model

RECIPE = dict(center_coef=0.01, epochs=1, batch_size=8, lr=3e-3, warmup_frac=0.0, weight_decay=0.0,
              max_grad_norm=1.0, eval_every=100)


def _pairs(tokenizer, n=24, seed=0):
    p, c, r = toy_pairs(n, seed)
    return encode_pairs(tokenizer, p, c, r, 64)


def _train(model, tokenizer, data_seed=0, **kw):
    ch, rj = _pairs(tokenizer)
    ec, er = _pairs(tokenizer, 8, seed=1)
    return train_reward_model(model, chosen=ch, rejected=rj, eval_chosen=ec, eval_rejected=er,
                              pad_id=tokenizer.pad_token_id, data_seed=data_seed, dropout_seed=0,
                              **(RECIPE | kw))


def _backbone(path, tokenizer, seed=0, **kw):
    return load_reward_backbone(path, pad_token_id=tokenizer.pad_token_id, head_seed=seed, **kw)


def test_lora_members_share_the_frozen_backbone_bit_for_bit_and_differ(tiny_backbone_dir, tokenizer, one_thread):
    reference = {k: v.clone() for k, v in _backbone(tiny_backbone_dir, tokenizer).state_dict().items()}
    trained = []
    for seed in (1, 2):
        peft = members.lora_model(_backbone(tiny_backbone_dir, tokenizer, seed), rank=4, alpha=8, seed=seed)
        counts = members.parameter_counts(peft)
        assert 0 < counts["trainable"] < counts["total"] / 4
        _train(members.trainable(peft), tokenizer, data_seed=seed)
        trained.append(peft)
    for peft in trained:  # every backbone weight (the base layers under each adapter) is the backbone's, exactly
        base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in peft.state_dict().items() if "lora_" not in k and "modules_to_save" not in k
                and "original_module" not in k}
        for k, v in reference.items():
            if k.startswith("score."):
                continue
            assert torch.equal(base[k], v), k
    lora = [{k: v for k, v in p.state_dict().items() if "lora_" in k} for p in trained]
    assert lora[0].keys() == lora[1].keys() and lora[0]
    assert all(not torch.equal(lora[0][k], lora[1][k]) for k in lora[0])
    heads = [reward_head(members.trainable(p)).modules_to_save["default"].weight for p in trained]
    assert not torch.equal(heads[0], heads[1])


def test_lora_member_saved_by_peft_scores_as_trained_when_merged(tiny_backbone_dir, tokenizer, tmp_path, one_thread):
    peft = members.lora_model(_backbone(tiny_backbone_dir, tokenizer, 3), rank=4, alpha=8, seed=3)
    _train(members.trainable(peft), tokenizer)
    members.save_lora(peft, tmp_path / "a")
    assert (tmp_path / "a" / members.ADAPTER_CONFIG).is_file()
    merged = members.load_lora_merged(tiny_backbone_dir, tmp_path / "a", pad_token_id=tokenizer.pad_token_id)
    seqs = _pairs(tokenizer, 6, seed=5)[0]
    want = score_ids(members.trainable(peft).eval(), seqs, tokenizer.pad_token_id, "cpu")
    got = score_ids(merged, seqs, tokenizer.pad_token_id, "cpu")
    np.testing.assert_allclose(got, want, atol=1e-5)
    (tmp_path / "a" / members.ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ValueError, match="safetensors"):
        members.load_lora_merged(tiny_backbone_dir, tmp_path / "a", pad_token_id=tokenizer.pad_token_id)


def test_multihead_heads_start_different_and_each_loss_moves_only_its_head(tiny_backbone_dir, tokenizer):
    model = members.multihead_model(tiny_backbone_dir, 3, head_seed=0, pad_token_id=tokenizer.pad_token_id)
    w = reward_head(model).weight
    assert w.shape[0] == 3 and not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    ch, rj = _pairs(tokenizer, 6)
    from perm.reward import pair_rewards

    for h in range(3):
        model.zero_grad()
        rc, rr = pair_rewards(model, ch, rj, tokenizer.pad_token_id, "cpu")
        assert rc.shape == (6, 3)
        weights = torch.zeros(6, 3)
        weights[:, h] = 1.0
        bradley_terry_loss(rc, rr, 0.01, weights).backward()
        grad = w.grad
        assert grad[h].abs().sum() > 0
        assert torch.all(grad[[k for k in range(3) if k != h]] == 0)


def test_multihead_loss_is_the_mean_of_each_heads_weighted_loss():
    rc, rr = torch.randn(5, 2), torch.randn(5, 2)
    w = torch.tensor([[1, 0], [2, 1], [0, 1], [1, 3], [1, 1]], dtype=torch.float32)
    per_head = []
    for h in range(2):
        keep = torch.repeat_interleave(torch.arange(5), w[:, h].long())
        per_head.append(bradley_terry_loss(rc[keep, h], rr[keep, h], 0.01))
    assert torch.allclose(bradley_terry_loss(rc, rr, 0.01, w), torch.stack(per_head).mean(), atol=1e-6)


def test_multihead_trains_and_scores_every_head_in_one_forward(tiny_backbone_dir, tokenizer, one_thread):
    model = members.multihead_model(tiny_backbone_dir, 3, head_seed=0, pad_token_id=tokenizer.pad_token_id)
    counts = members.bootstrap_counts(24, 3, seed=0)
    assert counts.shape == (24, 3) and np.array_equal(counts, members.bootstrap_counts(24, 3, seed=0))
    state = _train(model, tokenizer, pair_weights=counts)
    assert len(state["evals"][-1]["heads"]) == 3
    prompts = [[5, 6, 7], [8, 9]]
    cands = [[[10, 11], [12]], [[13, 14, 15]]]
    grouped = score_prompt_groups(model, prompts, cands, tokenizer.pad_token_id, "cpu")
    assert [g.shape for g in grouped] == [(2, 3), (1, 3)]
    whole = score_ids(model, [[5, 6, 7, 10, 11], [5, 6, 7, 12], [8, 9, 13, 14, 15]], tokenizer.pad_token_id, "cpu")
    np.testing.assert_allclose(np.concatenate(grouped), whole, atol=1e-5)


def test_warm_average_is_the_mean_of_the_members_state_dicts(tiny_backbone_dir, tokenizer):
    models = [_backbone(tiny_backbone_dir, tokenizer, s) for s in (0, 1, 2)]
    with torch.no_grad():
        for i, m in enumerate(models):
            for p in m.parameters():
                p.add_(0.01 * (i + 1) * torch.randn_like(p))
    avg = members.average_state_dicts([m.state_dict() for m in models])
    for k, v in avg.items():
        want = sum(m.state_dict()[k].double() for m in models) / 3
        assert torch.allclose(v.double(), want, atol=1e-7), k
    with pytest.raises(ValueError, match="other keys"):
        members.average_state_dicts([{"a": torch.ones(1)}, {"b": torch.ones(1)}])


def test_mc_dropout_draws_repeat_for_a_seed_and_differ_across_seeds(tiny_backbone_dir, tokenizer):
    from perm.models import seeded

    model = _backbone(tiny_backbone_dir, tokenizer, 0).eval()
    prompts, cands = [[5, 6, 7], [8, 9]], [[[10, 11], [12]], [[13, 14, 15]]]
    plain = np.concatenate(score_prompt_groups(model, prompts, cands, tokenizer.pad_token_id, "cpu"))

    def draw(seed):
        with members.dropout_on(model, 0.2), seeded(seed):
            return np.concatenate(score_prompt_groups(model, prompts, cands, tokenizer.pad_token_id, "cpu",
                                                      mc_dropout=True))

    a, b, c = draw(1), draw(1), draw(2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)
    after = np.concatenate(score_prompt_groups(model, prompts, cands, tokenizer.pad_token_id, "cpu"))
    assert np.array_equal(after, plain) and not model.training
