"""Shared-prompt scoring and training equal the full-sequence computation, and really share the prompt."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from conftest import toy_pairs
from perm.models import load_reward_backbone, save_model, use_attention
from perm.packed import packs
from perm.prefix import (
    merge_prefixes,
    pair_rewards_shared,
    score_ids,
    score_pairs,
    score_prompt_groups,
    shares_prompt,
    split_pairs,
)
from perm.reward import bradley_terry_loss, encode, encode_groups, pair_rewards, train_reward_model

PAD, EOS = 0, 1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["sdpa", "eager"])
def rm(request, tiny_backbone_dir, tokenizer):
    """The tiny RM with each attention implementation perm uses (eager: bf16 on CPU, perm.models.attention_for)."""
    model = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    return use_attention(model, request.param).eval()


def _groups(seed=0):
    """Prompts of 0-13 tokens and 0-5 candidates each of 1-8 tokens (+ EOS): padding on both sides."""
    rng = np.random.default_rng(seed)
    prompts = [list(map(int, rng.integers(3, 40, rng.integers(0, 14)))) for _ in range(9)]
    cands = [
        [list(map(int, rng.integers(3, 40, rng.integers(0, 8)))) + [EOS] for _ in range(rng.integers(0, 6))]
        for _ in prompts
    ]
    return prompts, cands


def _count_tokens(model):
    """Number of input token positions the model's embedding sees, via a forward hook (after the model's one
    packing probe, perm.packed.packs, which runs a tiny forward the first time)."""
    packs(model)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, inp, out: seen.append(inp[0].numel()))
    return seen


@pytest.mark.parametrize("pack", [None, False])  # packed rows (the default), or prefill + continuations
def test_shared_scoring_equals_full_sequence_scoring(rm, pack):
    prompts, cands = _groups()
    assert len({len(p) for p in prompts}) > 3 and len({len(c) for cs in cands for c in cs}) > 3
    full = score_ids(rm, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    for batch_size in (3, 7, 64):  # several prompts per prefill / several chunks per prompt batch
        got = score_prompt_groups(rm, prompts, cands, PAD, "cpu", batch_size=batch_size, pack=pack)
        assert [len(g) for g in got] == [len(c) for c in cands]
        assert np.concatenate(got) == pytest.approx(full, abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_scoring_other_decoders(arch):
    """Learned absolute positions (GPT-2) and rotary + grouped-query attention (Llama) share exactly too."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=50,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=EOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            num_labels=1,
        )
        model = GPT2ForSequenceClassification(cfg).eval()
    else:
        cfg = LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            pad_token_id=PAD,
            num_labels=1,
        )
        model = LlamaForSequenceClassification(cfg).eval()
    assert shares_prompt(model)
    prompts, cands = _groups(3)
    got = score_prompt_groups(model, prompts, cands, PAD, "cpu", batch_size=5)
    full = score_ids(model, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    assert np.concatenate(got) == pytest.approx(full, abs=1e-5)


def test_sliding_window_cache_falls_back_to_full_sequences():
    """Mistral with a sliding window keeps a cache whose rows perm does not gather: scoring falls back to
    full sequences, and training (share_prompt=None) to the unshared loop."""
    from transformers import MistralConfig, MistralForSequenceClassification

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        sliding_window=4,
        pad_token_id=PAD,
        num_labels=1,
    )
    model = MistralForSequenceClassification(cfg).eval()
    prompts, cands = _groups(4)
    got = score_prompt_groups(model, prompts, cands, PAD, "cpu", batch_size=5)
    full = score_ids(model, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    assert np.concatenate(got) == pytest.approx(full, abs=1e-6)
    p, c, r = _pairs(4)
    state = train_reward_model(
        model,
        prompts=p,
        chosen=c,
        rejected=r,
        eval_prompts=p,
        eval_chosen=c,
        eval_rejected=r,
        pad_id=PAD,
        center_coef=0.0,
        epochs=1.0,
        batch_size=4,
        lr=1e-3,
        warmup_frac=0.0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        eval_every=100,
        data_seed=0,
        dropout_seed=0,
    )
    assert state["share_prompt"] is False and len(state["train_loss"]) == 3


@pytest.mark.parametrize("pack", [None, False])
def test_each_prompt_runs_once(rm, pack):
    """64 candidates of 3 tokens after a 40-token prompt: 40 + 64*3 token positions, not 64*43 (packed: one
    row of 232 tokens; prefill + continuations: 40, then 64 rows of 3)."""
    prompt = list(range(3, 43))
    cands = [[3 + i % 30, 4, EOS] for i in range(64)]
    seen = _count_tokens(rm)
    got = score_prompt_groups(rm, [prompt], [cands], PAD, "cpu", batch_size=64, pack=pack)
    assert sum(seen) == 40 + 64 * 3
    assert got[0] == pytest.approx(score_ids(rm, [prompt + c for c in cands], PAD, "cpu"), abs=1e-5)


def test_padding_only_candidate_is_read_in_the_prompt(rm):
    """A candidate of pad tokens has no read-out of its own; it is scored as a full sequence (at the prompt's
    last token), like score_ids does."""
    prompts, cands = [[5, 6, 7], [8, 9]], [[[PAD], [10, EOS]], [[PAD, PAD]]]
    got = np.concatenate(score_prompt_groups(rm, prompts, cands, PAD, "cpu"))
    full = score_ids(rm, [[5, 6, 7, PAD], [5, 6, 7, 10, EOS], [8, 9, PAD, PAD]], PAD, "cpu")
    assert got == pytest.approx(full, abs=1e-5)
    assert got[0] == pytest.approx(score_ids(rm, [[5, 6, 7]], PAD, "cpu")[0], abs=1e-5)


@pytest.fixture
def bert_rm(tmp_path, tokenizer):
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(tmp_path)
    return load_reward_backbone(tmp_path, pad_token_id=PAD, head_seed=0).eval()


def test_encoder_is_scored_whole(bert_rm, rm):
    assert shares_prompt(rm) and not shares_prompt(bert_rm)
    prompts, cands = _groups(1)
    got = score_prompt_groups(bert_rm, prompts, cands, PAD, "cpu", batch_size=4)
    full = score_ids(bert_rm, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    assert np.concatenate(got) == pytest.approx(full, abs=1e-6)


def test_split_pairs_at_common_prefix():
    # common prefix [5, 6, 7]; a pair equal to the end keeps its last token in each tail; trailing pads stay
    pre, ct, rt = split_pairs(
        [[5, 6, 7, 8, 1], [5, 6, 1], [4, 1, 0]], [[5, 6, 7, 9], [5, 6, 1], [4, 1, 0, 0]], PAD
    )
    assert pre == [[5, 6, 7], [5, 6], [4]]
    assert ct == [[8, 1], [1], [1, 0]]
    assert rt == [[9], [1], [1, 0, 0]]


def test_merge_prefixes_groups_pairs_of_one_prompt():
    prefixes = [[5, 6, 7, 8], [9, 9], [5, 6, 7, 8, 2], [5, 6, 3, 3, 3, 3, 3], [5, 6, 7], [], [9, 9]]
    common, owner, rest = merge_prefixes(prefixes)
    # [5,6,7,8], [5,6,7,8,2], [5,6,7] share [5,6,7] (>= half of the longest); [5,6,3,...] shares only 2 of 7
    assert common == [[5, 6, 7], [9, 9], [5, 6, 3, 3, 3, 3, 3], []]
    assert owner.tolist() == [0, 1, 0, 2, 0, 3, 1]
    assert rest == [[8], [], [8, 2], [], [], [], []]
    for p, g, r in zip(prefixes, owner, rest, strict=True):
        assert common[g] + r == p
    assert len(merge_prefixes([])[0]) == 0


def _repeated_prompt_pairs(seed=0, per_prompt=3):
    """Several pairs per prompt (as policy pairs are), prompts of 6-13 tokens, tails that may share tokens."""
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected = [], [], []
    for _ in range(5):
        prompt = list(map(int, rng.integers(3, 40, rng.integers(6, 14))))
        for _ in range(per_prompt):
            lead = list(map(int, rng.integers(3, 40, rng.integers(0, 3))))  # a start both completions share
            tail = lambda: list(map(int, rng.integers(3, 40, rng.integers(1, 6)))) + [EOS]  # noqa: E731
            prompts.append(prompt)
            chosen.append(lead + tail())
            rejected.append(lead + tail())
    return prompts, chosen, rejected


def test_pairs_of_one_prompt_share_its_forward_exactly(rm):
    prompts, chosen, rejected = _repeated_prompt_pairs()
    full_c, full_r = _join(prompts, chosen), _join(prompts, rejected)
    seen = _assert_shared_equals_full(rm, full_c, full_r)
    assert seen[0] == 5 * max(len(p) for p in prompts)  # one prefill row per prompt, not per pair
    rm.eval()
    rc, rr = score_pairs(rm, full_c, full_r, PAD, "cpu", batch_size=4)
    assert rc == pytest.approx(score_ids(rm, full_c, PAD, "cpu"), abs=1e-5)
    assert rr == pytest.approx(score_ids(rm, full_r, PAD, "cpu"), abs=1e-5)


def _pairs(seed=0):
    """Pairs with prompts of 1-13 tokens and chosen/rejected completions of different lengths."""
    prompts, _ = _groups(seed)
    rng = np.random.default_rng(seed + 1)
    prompts = [p or [3] for p in prompts]
    tail = lambda: list(map(int, rng.integers(3, 40, rng.integers(1, 7)))) + [EOS]  # noqa: E731
    return prompts, [tail() for _ in prompts], [tail() for _ in prompts]


def _join(prompts, completions):
    return [p + c for p, c in zip(prompts, completions, strict=True)]


def _loss_and_grads(model, rewards):
    model.zero_grad(set_to_none=True)
    rc, rr = rewards()
    loss = bradley_terry_loss(rc, rr, center_coef=0.01)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_shared_equals_full(rm, full_c, full_r) -> list[int]:
    """Same parameters, same batch: the shared forward/backward gives the unshared loss and every gradient.
    Returns the token counts the embedding saw in the shared pass."""
    rm.train()  # dropout is 0 in the tiny config; train mode as in the training loop
    loss_full, grads_full = _loss_and_grads(rm, lambda: pair_rewards(rm, full_c, full_r, PAD, "cpu"))
    seen = _count_tokens(rm)
    loss_shared, grads_shared = _loss_and_grads(
        rm, lambda: pair_rewards_shared(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu")
    )
    assert loss_shared == pytest.approx(loss_full, abs=1e-5)
    assert grads_shared.keys() == grads_full.keys() == {n for n, _ in rm.named_parameters()}
    for name, g in grads_full.items():
        torch.testing.assert_close(grads_shared[name], g, atol=1e-5, rtol=0, msg=name)
    return seen


def test_shared_prompt_loss_and_gradients_equal_unshared(rm):
    prompts, chosen, rejected = _pairs()
    full_c, full_r = _join(prompts, chosen), _join(prompts, rejected)
    seen = _assert_shared_equals_full(rm, full_c, full_r)
    # and the prompt really ran once: prefill (one row per distinct prompt, padded to the longest) and
    # continuations (18 rows, padded to the longest rest of prefix + tail)
    prefixes, ct, rt = split_pairs(full_c, full_r, PAD)
    common, owner, rest = merge_prefixes(prefixes)
    longest_tail = max(len(rest[i]) + len(t) for i, t in [*enumerate(ct), *enumerate(rt)])
    assert sum(seen) == len(common) * max(map(len, common)) + 18 * longest_tail


def _train(backbone_dir, tokenizer, repeat=1, **kw):
    p, c, r = toy_pairs(64, seed=0)
    if repeat > 1:  # `repeat` pairs per prompt (different tails), prompts in blocks as policy-prefs writes them
        more = [toy_pairs(64, seed=s) for s in range(1, repeat)]
        p = [x for i in range(64) for x in [p[i]] * repeat]
        c = [x for i in range(64) for x in [c[i]] + [m[1][i] for m in more]]
        r = [x for i in range(64) for x in [r[i]] + [m[2][i] for m in more]]
    model = load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    enc = lambda a: tokenizer(a, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = [tokenizer.eos_token_id]
    data = dict(prompts=enc(p), chosen=[x + eos for x in enc(c)], rejected=[x + eos for x in enc(r)])
    if kw.pop("full", False):
        data = dict(
            chosen=_join(data["prompts"], data["chosen"]), rejected=_join(data["prompts"], data["rejected"])
        )
    return train_reward_model(
        model,
        **data,
        eval_chosen=encode(tokenizer, p[:8], c[:8], 32),
        eval_rejected=encode(tokenizer, p[:8], r[:8], 32),
        pad_id=tokenizer.pad_token_id,
        center_coef=0.01,
        epochs=1.0,
        batch_size=16,
        lr=1e-3,
        warmup_frac=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_every=1000,
        data_seed=0,
        dropout_seed=0,
        **kw,
    )


def test_training_with_shared_prompt_follows_the_unshared_trajectory(tiny_backbone_dir, tokenizer):
    shared = _train(tiny_backbone_dir, tokenizer)
    plain = _train(tiny_backbone_dir, tokenizer, share_prompt=False)
    full_input = _train(tiny_backbone_dir, tokenizer, full=True)
    assert shared["share_prompt"] and not plain["share_prompt"] and full_input["share_prompt"]
    assert shared["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-4)
    assert full_input["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-4)
    assert shared["evals"][-1]["accuracy"] == plain["evals"][-1]["accuracy"]


def test_group_by_prompt_keeps_a_prompts_pairs_together_and_stays_exact(tiny_backbone_dir, tokenizer, monkeypatch):
    import perm.reward as reward

    batches = []
    real = reward._batch_rewards
    monkeypatch.setattr(reward, "_batch_rewards", lambda m, idx, *a: batches.append(list(idx)) or real(m, idx, *a))
    grouped = _train(tiny_backbone_dir, tokenizer, repeat=3, group_by_prompt=True)
    assert grouped["n_prompts"] == 64 and grouped["total_steps"] == 12  # 192 pairs, batches of 16
    order = [i for b in batches for i in b]
    assert sorted(order) == list(range(192))
    # a prompt's three pairs (3g, 3g+1, 3g+2) are consecutive in the data order
    assert all(order[k] // 3 == order[k + 1] // 3 == order[k + 2] // 3 for k in range(0, 192, 3))
    batches.clear()
    plain = _train(tiny_backbone_dir, tokenizer, repeat=3, group_by_prompt=True, share_prompt=False)
    assert [i for b in batches for i in b] == order  # the order does not depend on sharing
    assert grouped["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-4)
    ungrouped = _train(tiny_backbone_dir, tokenizer, repeat=3)
    assert ungrouped["train_loss"] != pytest.approx(grouped["train_loss"], abs=1e-4)


def test_group_by_prompt_with_one_pair_per_prompt_is_the_ungrouped_order(tiny_backbone_dir, tokenizer):
    grouped = _train(tiny_backbone_dir, tokenizer, group_by_prompt=True)
    plain = _train(tiny_backbone_dir, tokenizer)
    assert grouped["n_prompts"] == 64
    assert grouped["train_loss"] == plain["train_loss"]


def test_share_prompt_on_an_encoder_is_refused(bert_rm):
    with pytest.raises(ValueError, match="share_prompt=True"):
        train_reward_model(
            bert_rm,
            chosen=[[5, 1]],
            rejected=[[6, 1]],
            eval_chosen=[[5, 1]],
            eval_rejected=[[6, 1]],
            pad_id=PAD,
            center_coef=0.0,
            epochs=1.0,
            batch_size=1,
            lr=1e-3,
            warmup_frac=0.0,
            weight_decay=0.0,
            max_grad_norm=0.0,
            eval_every=10,
            data_seed=0,
            dropout_seed=0,
            share_prompt=True,
        )


def test_score_pairs_equals_score_ids(rm):
    prompts, chosen, rejected = _pairs(2)
    full_c, full_r = _join(prompts, chosen), _join(prompts, rejected)
    rc, rr = score_pairs(rm, full_c, full_r, PAD, "cpu", batch_size=4)
    assert rc == pytest.approx(score_ids(rm, full_c, PAD, "cpu"), abs=1e-5)
    assert rr == pytest.approx(score_ids(rm, full_r, PAD, "cpu"), abs=1e-5)


def test_encode_groups_reproduces_encode(tokenizer):
    """One prompt tokenisation per prompt; candidates long enough to cut the prompt form their own group."""
    prompts = ["w1 w2 w3 w4 w5 TL;DR:", "w6 TL;DR:"]
    cands = [[" good", " bad w1 w2 w3", " w7"], [" good w8"]]
    for max_length in (32, 7):
        p_ids, c_ids, src = encode_groups(tokenizer, prompts, cands, max_length)
        flat_prompts = [p for p, cs in zip(prompts, cands, strict=True) for _ in cs]
        expected = encode(tokenizer, flat_prompts, [c for cs in cands for c in cs], max_length)
        got = {
            int(k): p + c
            for p, cs, ks in zip(p_ids, c_ids, src, strict=True)
            for c, k in zip(cs, ks, strict=True)
        }
        assert got == dict(enumerate(expected))
    # max_length 7: " bad w1 w2 w3" + EOS leaves room for 2 prompt tokens, the other candidates 3 or more
    assert len(p_ids) == 3


def test_job_score_writes_the_full_sequence_rewards(tmp_path, rm, tokenizer):
    from perm.stages.score import job_score

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    prompts = ["w1 w2 TL;DR:", "w3 w4 w5 w6 TL;DR:"]
    pq.write_table(
        pa.table({"prompt_id": [10, 11], "prompt": prompts}), run / "data" / "eval_prompts.parquet"
    )
    texts = [" good", " bad w1", " w2 w3 w4", " good w9", " w5"]
    pids, sids = [11, 10, 11, 10, 11], [0, 0, 1, 1, 2]
    pq.write_table(pa.table({"prompt_id": pids, "sample_id": sids, "text": texts}), run / "samples.parquet")
    save_model(rm, tokenizer, run / "rm", None, "rm.json")
    job_score(
        str(run),
        "scores/rm.parquet",
        model_dir=str(run / "rm"),
        model_id="rm",
        max_length=32,
        batch_size=2,
        device="cpu",
        threads=1,
        show_progress=False,
    )
    out = pq.read_table(run / "scores" / "rm.parquet").to_pandas()
    assert list(out.columns) == ["prompt_id", "sample_id", "reward"]
    assert list(out.prompt_id) == pids and list(out.sample_id) == sids
    prompt_of = {10: prompts[0], 11: prompts[1]}
    full = score_ids(rm, encode(tokenizer, [prompt_of[p] for p in pids], texts, 32), PAD, "cpu")
    assert out.reward.to_numpy() == pytest.approx(full, abs=1e-5)


def _kwise_pairs(seed=0, k=4):
    """All C(k, 2) pairs of k completions per prompt (K-wise comparisons): each completion in k - 1 pairs."""
    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    for _ in range(3):
        prompt = list(map(int, rng.integers(3, 40, rng.integers(6, 14))))
        comps = [list(map(int, rng.integers(3, 40, rng.integers(1, 6)))) + [EOS] for _ in range(k)]
        for a in range(k):
            for b in range(a + 1, k):
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                chosen.append(prompt + comps[first])
                rejected.append(prompt + comps[second])
    return chosen, rejected


def _naive_rewards(model, full_c, full_r):
    """Every sequence of every pair run on its own: no sharing, no deduplication (the reference)."""
    def one(s):
        return model(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long)).logits[0, 0]
    return torch.stack([one(s) for s in full_c]), torch.stack([one(s) for s in full_r])


def test_kwise_completion_runs_once_with_the_naive_loss_and_gradients(rm):
    full_c, full_r = _kwise_pairs()
    rm.train()
    loss_ref, grads_ref = _loss_and_grads(rm, lambda: _naive_rewards(rm, full_c, full_r))
    for rewards in (lambda: pair_rewards(rm, full_c, full_r, PAD, "cpu"),
                    lambda: pair_rewards_shared(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu")):
        loss, grads = _loss_and_grads(rm, rewards)
        assert loss == pytest.approx(loss_ref, abs=1e-5)
        for name, g in grads_ref.items():
            torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=0, msg=name)
    # 18 pairs of 12 distinct completions: the unshared forward runs 12 rows, not 36
    rows = []
    hook = rm.get_input_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        pair_rewards(rm, full_c, full_r, PAD, "cpu")
        pair_rewards_shared(rm, *split_pairs(full_c, full_r, PAD), PAD, "cpu")
    finally:
        hook.remove()
    assert len(full_c) == 18
    assert rows == [12, 3, 12]  # full: 12 distinct sequences; shared: 3 prompts, then 12 continuations


def test_distinct_maps_back():
    from perm.batching import distinct

    items = [(1, 2), (3,), (1, 2), (), (3,)]
    out, where = distinct(items)
    assert out == [(1, 2), (3,), ()]
    assert [out[w] for w in where] == items


@pytest.mark.parametrize("pack", [True, None, False])
def test_score_pairs_scores_a_kwise_completion_once(rm, pack):
    full_c, full_r = _kwise_pairs(seed=1)
    rm.eval()
    packs(rm)
    rows = []
    hook = rm.get_input_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        rc, rr = score_pairs(rm, full_c, full_r, PAD, "cpu", batch_size=64, pack=pack)
    finally:
        hook.remove()
    assert rc == pytest.approx(score_ids(rm, full_c, PAD, "cpu"), abs=1e-5)
    assert rr == pytest.approx(score_ids(rm, full_r, PAD, "cpu"), abs=1e-5)
    # packed: one row per prompt holding its 4 distinct completions; else (the default) 3 prompts, then their
    # 12 distinct completions (not 36)
    assert rows == ([3] if pack else [3, 12])


def test_token_ids_tokenises_each_distinct_text_once_and_equals_the_tokenizer(tokenizer):
    """Repeated texts (a prompt in every pair of its post) are tokenised once; the ids are the tokenizer's."""
    from perm.reward import token_ids

    texts = ["w1 w2 TL;DR:", " good w3", "w1 w2 TL;DR:", "", " good w3", "w4"]
    calls = []

    class Counting:
        def __call__(self, batch, **kw):
            calls.append(list(batch))
            return tokenizer(batch, **kw)

    got = token_ids(Counting(), texts)
    assert got == tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert calls == [["w1 w2 TL;DR:", " good w3", "", "w4"]]
    assert token_ids(Counting(), []) == []
    # encode keeps its outputs independent lists even where the texts repeat
    seqs = encode(tokenizer, ["w1 TL;DR:"] * 2, [" good"] * 2, 32)
    assert seqs[0] == seqs[1] and seqs[0] is not seqs[1]
    # encode_pairs: chosen and rejected through one tokenizer call, equal to encoding each side alone
    from perm.reward import encode_pairs

    prompts, chosen, rejected = ["w1 w2 TL;DR:", "w3 TL;DR:"], [" good", " w4 w5"], [" bad w1", " good"]
    for max_length in (32, 4):
        assert encode_pairs(tokenizer, prompts, chosen, rejected, max_length) == (
            encode(tokenizer, prompts, chosen, max_length), encode(tokenizer, prompts, rejected, max_length))


def test_scoring_batches_from_a_memory_budget(rm):
    """rows_within sizes a scoring batch from the RM's shapes: more memory, more rows (at least one), fewer
    for longer sequences; the rewards of any budget equal full-sequence scoring (score.memory_gb)."""
    from perm.prefix import rows_within

    prompts, cands = _groups()
    lp, lc = max(map(len, prompts)), max(len(c) for cs in cands for c in cs)
    one_row = rows_within(rm, 10**12, lp, lc) / 10**12  # rows per byte
    assert rows_within(rm, 1, lp, lc) == 1 and rows_within(rm, int(3.5 / one_row), lp, lc) == 3
    assert rows_within(rm, 10**8, lp, lc) > rows_within(rm, 10**8, 4 * lp, 4 * lc) >= 1
    full = score_ids(rm, [p + c for p, cs in zip(prompts, cands, strict=True) for c in cs], PAD, "cpu")
    for budget in (1, int(3.5 / one_row), 10**12):
        got = score_prompt_groups(rm, prompts, cands, PAD, "cpu", batch_size=rows_within(rm, budget, lp, lc))
        assert np.concatenate(got) == pytest.approx(full, abs=1e-5)
