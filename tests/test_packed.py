"""Packed prompt groups (perm.packed): a prompt and its completions as one sequence under a block-causal mask
give the full-sequence rewards, Bradley-Terry loss and gradients, for every read-out, chunked or not."""

import inspect

import numpy as np
import pytest
import torch

from conftest import toy_pairs
from perm.models import load_reward_backbone, use_attention
from perm.packed import (
    block_causal_mask,
    group_rewards,
    pack_rows,
    packs,
    pair_rewards_packed,
)
from perm.prefix import (
    score_ids,
    score_pairs,
    score_prompt_groups,
    sequence_rewards,
    set_readout,
    split_pairs,
)
from perm.reward import bradley_terry_loss, train_reward_model
from test_prefix import EOS, PAD, _groups, _join, _kwise_pairs, _pairs, _repeated_prompt_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def _rm(backbone_dir, tokenizer, readout="last", attention="sdpa"):
    model = load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    set_readout(model, readout)
    with torch.no_grad():  # rewards of a few units, as a trained RM gives
        model.score.weight.mul_(3.0)
    return use_attention(model, attention).eval()


def _full(model, seqs) -> torch.Tensor:
    """The reference: every sequence run on its own, unpadded, by the model's read-out (keeps the graph)."""
    return torch.cat([sequence_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                      for s in seqs])


# ------------------------------------------------------------------------------------------ the layout


def test_rows_positions_and_mask_by_hand():
    """Prompt [5, 6], completions [7, 8] and [9]; a second group: prompt [4], completion [3]."""
    b = pack_rows([[5, 6], [4]], [0, 0, 1], [[7, 8], [9], [3]], PAD)
    assert b.ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, PAD, PAD, PAD]]
    assert b.positions.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]  # restart after the prompt
    assert b.segment.tolist() == [[0, 0, 1, 1, 2], [0, 1, -1, -1, -1]]
    assert b.row.tolist() == [0, 0, 1] and b.start.tolist() == [2, 4, 1] and b.read.tolist() == [3, 4, 1]
    mask = block_causal_mask(b.segment, "bool", torch.float32)
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # completion 1 sees the prompt and itself
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # completion 2 sees the prompt and itself, never completion 1
    ]
    # padding sees the prompt and earlier padding only (no empty softmax row); real tokens never see it
    assert mask[1, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 1, 1, 0],
        [1, 0, 1, 1, 1],
    ]
    for dtype in (torch.float32, torch.bfloat16):  # eager attention adds it: 0 or the compute dtype's minimum
        add = block_causal_mask(b.segment, "additive", dtype)
        assert add.dtype == dtype
        assert torch.equal(add == 0, mask) and torch.all(add[~mask] == torch.finfo(dtype).min)


def test_long_groups_are_chunked_each_chunk_carrying_the_prompt():
    prompt = [5, 6, 7]
    comps = [[8, 9, EOS], [10, EOS], [11, 12, 13, EOS], [14, EOS]]
    b = pack_rows([prompt], [0] * 4, comps, PAD, pack_tokens=9)  # 3 + (3 + 2) fits 9 tokens, 3 + (4 + 2) too
    assert b.row.tolist() == [0, 0, 1, 1]
    assert b.ids[:, :3].tolist() == [prompt, prompt]
    assert b.ids.tolist() == [[5, 6, 7, 8, 9, EOS, 10, EOS, PAD], [5, 6, 7, 11, 12, 13, EOS, 14, EOS]]
    b = pack_rows([prompt], [0] * 4, comps, PAD, pack_tokens=1)  # at least one completion per row
    assert b.row.tolist() == [0, 1, 2, 3] and b.ids[:, :3].tolist() == [prompt] * 4
    long_prompt = list(range(3, 23))  # a 20-token prompt: rows of up to 40 tokens whatever the cap
    assert pack_rows([long_prompt], [0] * 4, comps, PAD, pack_tokens=8).row.tolist() == [0, 0, 0, 0]


def test_read_position_follows_full_sequence_scoring():
    """`last` reads the last non-pad token of prompt + completion: in the completion, else in the prompt."""
    b = pack_rows([[5, 6, PAD], []], [0, 0, 1], [[7, PAD], [PAD, PAD], [PAD]], PAD)
    assert b.ids[0].tolist() == [5, 6, PAD, 7, PAD, PAD, PAD]
    assert b.read.tolist() == [3, 1, 0]  # completion [7, PAD] at 3; [PAD, PAD]: the prompt's 6; none at all: 0


# --------------------------------------------------------------------------------------------- rewards


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("readout", ["last", "sum", "mean"])
def test_packed_rewards_equal_full_sequence_scoring(tiny_backbone_dir, tokenizer, readout, attention):
    rm = _rm(tiny_backbone_dir, tokenizer, readout, attention)
    assert packs(rm)
    prompts, cands = _groups(0)  # empty prompts, groups of 0-5 candidates, candidates of several lengths
    cands[2] = [[PAD], [PAD, PAD]] + cands[2]  # padding-only candidates: read in the prompt, as score_ids does
    cands[3] = cands[3][:1]  # a single-completion group
    owner = [g for g, cs in enumerate(cands) for _ in cs]
    flat = [c for cs in cands for c in cs]
    seqs = [prompts[g] + c for g, c in zip(owner, flat, strict=True)]
    full = score_ids(rm, seqs, PAD, "cpu")
    assert full == pytest.approx(_full(rm, seqs).detach().numpy(), rel=1e-6, abs=1e-5)
    for pack_tokens in (512, 8):  # one row per group (padded to the longest), or chunks of a few completions
        batch = pack_rows(prompts, owner, flat, PAD, pack_tokens)
        assert (len(batch.ids) > len(set(owner))) == (pack_tokens == 8)
        with torch.no_grad():
            got = group_rewards(rm, prompts, owner, flat, PAD, "cpu", pack_tokens=pack_tokens)
        assert got.numpy() == pytest.approx(full, rel=1e-6, abs=1e-5)
    for batch_size in (3, 64):
        got = score_prompt_groups(rm, prompts, cands, PAD, "cpu", batch_size=batch_size, pack=True)
        assert np.concatenate(got) == pytest.approx(full, rel=1e-6, abs=1e-5)
    got = score_prompt_groups(rm, prompts, cands, PAD, "cpu", batch_size=3, pack=True, pack_tokens=8)
    assert np.concatenate(got) == pytest.approx(full, rel=1e-6, abs=1e-5)


def test_a_pool_prompt_runs_once_per_chunk(tiny_backbone_dir, tokenizer):
    """64 candidates of 3 tokens after a 40-token prompt: one row of 232 tokens, or with a cap of 100 tokens
    four rows of 40 + 20 * 3 (the last 40 + 4 * 3), each carrying the prompt."""
    rm = _rm(tiny_backbone_dir, tokenizer)
    packs(rm)  # decided once, before counting
    prompt = list(range(3, 43))
    cands = [[3 + i % 30, 4, EOS] for i in range(64)]
    full = score_ids(rm, [prompt + c for c in cands], PAD, "cpu")
    shapes = []
    hook = rm.get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        one = score_prompt_groups(rm, [prompt], [cands], PAD, "cpu", batch_size=64, pack=True)
        chunked = score_prompt_groups(rm, [prompt], [cands], PAD, "cpu", batch_size=64, pack=True,
                                      pack_tokens=100)
    finally:
        hook.remove()
    assert shapes == [(1, 232), (4, 100)]
    assert one[0] == pytest.approx(full, abs=1e-5) and chunked[0] == pytest.approx(full, abs=1e-5)


# --------------------------------------------------------------------------------------------- training


def _loss_and_grads(model, rewards):
    model.zero_grad(set_to_none=True)
    rc, rr = rewards()
    loss = bradley_terry_loss(rc, rr, center_coef=0.01)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("readout", ["last", "sum", "mean"])
def test_packed_loss_and_gradients_equal_full_sequence(tiny_backbone_dir, tokenizer, readout):
    """K-wise groups (each completion in 3 pairs), several plain pairs per prompt, one pair per prompt; packed
    whole and chunked; against every full sequence of every pair run on its own."""
    rm = _rm(tiny_backbone_dir, tokenizer, readout)
    kwise = _kwise_pairs(seed=0)
    repeated, plain = _repeated_prompt_pairs(), _pairs()
    cases = [kwise, (_join(repeated[0], repeated[1]), _join(repeated[0], repeated[2])),
             (_join(plain[0], plain[1]), _join(plain[0], plain[2]))]
    for full_c, full_r in cases:
        rm.train()  # dropout is 0 in the tiny config; train mode as in the training loop
        ref_loss, ref = _loss_and_grads(rm, lambda: (_full(rm, full_c), _full(rm, full_r)))  # noqa: B023
        assert ref.keys() == {n for n, _ in rm.named_parameters()}
        for pack_tokens in (512, 8):
            split = split_pairs(full_c, full_r, PAD)
            loss, grads = _loss_and_grads(
                rm, lambda: pair_rewards_packed(rm, *split, PAD, "cpu", pack_tokens=pack_tokens)  # noqa: B023
            )
            assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-5)
            assert grads.keys() == ref.keys()
            for name, g in ref.items():
                # rounding only; pooled read-outs sum many tokens, hence relative to the gradient's size
                torch.testing.assert_close(grads[name], g, atol=1e-5 * max(1.0, g.abs().max().item()), rtol=0,
                                           msg=name)
        rm.eval()
        rc, rr = score_pairs(rm, full_c, full_r, PAD, "cpu", batch_size=4)
        assert rc == pytest.approx(score_ids(rm, full_c, PAD, "cpu"), rel=1e-6, abs=1e-5)
        assert rr == pytest.approx(score_ids(rm, full_r, PAD, "cpu"), rel=1e-6, abs=1e-5)


def test_kwise_batch_is_one_row_per_prompt(tiny_backbone_dir, tokenizer):
    """18 pairs over 3 prompts x 4 completions: one forward of 3 rows, each prompt + its 4 distinct
    completions (not 36 sequences)."""
    rm = _rm(tiny_backbone_dir, tokenizer)
    full_c, full_r = _kwise_pairs()
    packs(rm)
    shapes = []
    hook = rm.get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        pair_rewards_packed(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu")
    finally:
        hook.remove()
    prefixes, ct, rt = split_pairs(full_c, full_r, PAD)
    distinct = {tuple(s) for s in [*full_c, *full_r]}
    longest = max(len(p) + sum(len(s) - len(p) for s in distinct if s[: len(p)] == tuple(p))
                  for p in {tuple(p) for p in prefixes})
    assert shapes == [(3, longest)]


def test_bf16_autocast_packed_rewards_and_backward(tiny_backbone_dir, tokenizer):
    """Under bf16 autocast (CPU) with the fp32 head, both attention implementations take the packed mask
    (bool for sdpa, a bf16-safe additive one for eager): fp32 rewards near the full-sequence ones, a backward."""
    from perm.models import fp32_reward_head
    from perm.reward import pair_rewards

    full_c, full_r = _kwise_pairs(seed=2)
    for attention in ("sdpa", "eager"):
        rm = _rm(tiny_backbone_dir, tokenizer, "last", attention).train()
        with fp32_reward_head(rm), torch.autocast("cpu", dtype=torch.bfloat16):
            rc, rr = pair_rewards_packed(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu")
            fc, fr = pair_rewards(rm, full_c, full_r, PAD, "cpu")
            bradley_terry_loss(rc, rr, 0.01).backward()
        assert rc.dtype == torch.float32
        assert torch.cat([rc, rr]).detach() == pytest.approx(torch.cat([fc, fr]).detach(), abs=0.05)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rm.parameters())


def _train(backbone_dir, tokenizer, steps=4, **kw):
    """K-wise toy data (4 completions per prompt, all 6 pairs), grouped by prompt, batch 16, dropout 0."""
    p, c, r = toy_pairs(16, seed=0)
    _, c2, _ = toy_pairs(16, seed=1)
    enc = lambda a: tokenizer(a, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = [tokenizer.eos_token_id]
    prompts, chosen, rejected = [], [], []
    for i in range(16):
        comps = [x + eos for x in enc([c[i], r[i], c2[i], c2[i] + " w1"])]
        for a in range(4):
            for b in range(a + 1, 4):
                prompts.append(enc([p[i]])[0])
                chosen.append(comps[a])
                rejected.append(comps[b])
    model = load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0, dropout=0.0)
    n = 16 * steps
    return train_reward_model(
        model, prompts=prompts[:n], chosen=chosen[:n], rejected=rejected[:n], eval_prompts=prompts[:12],
        eval_chosen=chosen[:12], eval_rejected=rejected[:12], pad_id=tokenizer.pad_token_id, center_coef=0.01,
        epochs=1.0, batch_size=16, lr=1e-3, warmup_frac=0.0, weight_decay=0.0, max_grad_norm=1.0,
        eval_every=1000, data_seed=0, dropout_seed=0, group_by_prompt=True, **kw)


def test_training_packed_follows_the_unpacked_losses(tiny_backbone_dir, tokenizer):
    packed = _train(tiny_backbone_dir, tokenizer)
    cached = _train(tiny_backbone_dir, tokenizer, pack=False)
    whole = _train(tiny_backbone_dir, tokenizer, share_prompt=False)
    assert packed["packed"] and packed["share_prompt"]
    assert not cached["packed"] and cached["share_prompt"]
    assert not whole["packed"] and not whole["share_prompt"]
    assert len(packed["train_loss"]) == 4
    assert packed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    assert cached["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    assert packed["evals"][-1]["loss"] == pytest.approx(whole["evals"][-1]["loss"], abs=1e-5)


# --------------------------------------------------------------------------------------------- fallback


def test_a_model_that_ignores_the_mask_falls_back(tiny_backbone_dir, tokenizer):
    """The probe sees a model that drops the 4-D mask; scoring and training then take the prefill +
    continuation path, which stays exact."""
    from transformers import GPTNeoXForSequenceClassification

    class IgnoresMask(GPTNeoXForSequenceClassification):
        def forward(self, *a, attention_mask=None, **kw):
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = None
            return super().forward(*a, attention_mask=attention_mask, **kw)

        forward.__signature__ = inspect.signature(GPTNeoXForSequenceClassification.forward)  # positions, cache

    rm = _rm(tiny_backbone_dir, tokenizer)
    drops = IgnoresMask(rm.config)
    drops.load_state_dict(rm.state_dict())
    drops.eval()
    assert packs(rm) and not packs(drops)
    prompts, cands = _groups(1)
    full = score_ids(drops, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    assert np.concatenate(score_prompt_groups(drops, prompts, cands, PAD, "cpu")) == pytest.approx(full, abs=1e-5)
    with pytest.raises(ValueError, match="pack=True"):
        score_prompt_groups(drops, prompts, cands, PAD, "cpu", pack=True)
    p, c, r = _pairs(2)
    state = train_reward_model(drops, prompts=p, chosen=c, rejected=r, eval_prompts=p, eval_chosen=c,
                               eval_rejected=r, pad_id=PAD, center_coef=0.0, epochs=1.0, batch_size=4, lr=1e-3,
                               warmup_frac=0.0, weight_decay=0.0, max_grad_norm=0.0, eval_every=100, data_seed=0,
                               dropout_seed=0)
    assert state["share_prompt"] and not state["packed"] and len(state["train_loss"]) == 3


def test_sliding_windows_and_encoders_never_pack(tokenizer):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        MistralConfig,
        MistralForSequenceClassification,
    )

    torch.manual_seed(0)
    mistral = MistralForSequenceClassification(MistralConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, sliding_window=4, pad_token_id=PAD, num_labels=1)).eval()
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=1))
    assert not packs(mistral) and not packs(bert)
    with pytest.raises(ValueError, match="pack=True"):
        train_reward_model(bert, chosen=[[5, 1]], rejected=[[6, 1]], eval_chosen=[[5, 1]], eval_rejected=[[6, 1]],
                           pad_id=PAD, center_coef=0.0, epochs=1.0, batch_size=1, lr=1e-3, warmup_frac=0.0,
                           weight_decay=0.0, max_grad_norm=0.0, eval_every=10, data_seed=0, dropout_seed=0,
                           pack=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_other_decoders_pack_exactly(arch):
    """Learned absolute positions (GPT-2) and rotary + grouped-query attention (Llama) pack exactly too."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=EOS, eos_token_id=EOS,
            pad_token_id=PAD, num_labels=1))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, pad_token_id=PAD, num_labels=1))
    model.eval()
    assert packs(model)
    prompts, cands = _groups(3)
    got = score_prompt_groups(model, prompts, cands, PAD, "cpu", batch_size=5, pack=True, pack_tokens=10)
    full = score_ids(model, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    assert np.concatenate(got) == pytest.approx(full, abs=1e-5)


def test_the_decision_is_taken_once_per_model_and_attention(tiny_backbone_dir, tokenizer):
    rm = _rm(tiny_backbone_dir, tokenizer)
    calls = []
    hook = rm.get_input_embeddings().register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        assert packs(rm) and packs(rm)
        assert len(calls) == 2  # one probe: a packed forward and a full-sequence one
        use_attention(rm, "eager")
        assert packs(rm) and len(calls) == 4  # another attention implementation: probed again
    finally:
        hook.remove()
