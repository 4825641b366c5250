"""SFT loss masking and training, shared-prefill sampling, and the samples table, on a 2-layer GPT-NeoX."""

import copy
import math
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from perm.models import gpt_neox_config, new_causal_lm, seeded
from perm.policy import (
    IGNORE,
    Completion,
    PreallocatedLayer,
    build_samples_table,
    decode_samples,
    encode_sft,
    expand_cache,
    sample_pool,
    sample_pool_plain,
    sample_tokens,
    sft_batch,
    sft_forward_loss,
    sft_loss,
    train_sft,
)

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "my landlord raised the rent again this year",
    "we moved to a new city for my job last spring",
    "i am not sure whether to tell my friend the truth",
    "TL;DR: cat sat on mat",
    "TL;DR: rent went up again",
]
POSTS = [
    "the cat sat on the mat",
    "my landlord raised the rent again this year and i do not know what to do",
    "a dog ran",
    "we moved to a new city for my job last spring and i miss my friends",
    "i am not sure whether to tell my friend",
]
SUMMARIES = ["cat on mat", "rent went up", "dog ran", "moved city miss friends", "tell friend truth"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """This module's tests on one torch thread, restored afterwards (see "Torch threads in the tests" in
    benchmarks/README.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    """Byte-level BPE (leading spaces survive decoding, as with Pythia), ~150 tokens, EOS and a distinct pad."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(
        SENTENCES, trainers.BpeTrainer(vocab_size=150, special_tokens=["<|endoftext|>", "<|pad|>"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_lm(tok, seed=0, hidden=32):
    cfg = gpt_neox_config(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_layers=2,
        num_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return new_causal_lm(cfg, seed).eval()


def tiny_gpt2(tok, seed=0, hidden=64):
    """Absolute learned positions: a wrong position id changes the output (GPT-NeoX's rotary attention is
    blind to a per-row shift of all positions, so padding bugs would hide there)."""
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=hidden,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    with seeded(seed):
        return GPT2LMHeadModel(cfg).eval()


FAMILIES = {"gpt_neox": tiny_lm, "gpt2": tiny_gpt2}


def prompts_of(posts):
    return [f"{p}\nTL;DR:" for p in posts]


def fixed_logits_lm(tok, bias: dict[int, float], default=-1e4):
    """A model whose next-token logits are `bias` at every position, whatever the context."""
    model = tiny_lm(tok)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(default)
        for t, b in bias.items():
            head.bias[t] = b
    model.lm_head = head
    return model


# --------------------------------------------------------------------------------------------- SFT


def test_sft_batch_left_pads_and_labels_only_the_completion():
    """ids [5 6 7 | 8 9] (3 prompt tokens) and [5 | 6 7] (1 prompt token), pad 0, T = 5:
    row 0: labels [-100 -100 -100 8 9]; row 1 left-padded by 2: labels [-100 -100 -100 6 7];
    keep = max completion length (2) + 1 = 3; positions restart at 0 on the first real token."""
    b = sft_batch([([5, 6, 7, 8, 9], 3), ([5, 6, 7], 1)], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [0, 0, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert b["labels"].tolist() == [[IGNORE] * 3 + [8, 9], [IGNORE] * 3 + [6, 7]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    assert b["keep"] == 3


def test_encode_sft_cuts_prompt_from_left_and_appends_eos(tok):
    prompt, completion = "the cat sat on the mat\nTL;DR:", " cat on mat"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    [(ids, n_prompt)] = encode_sft(tok, [prompt], [completion], max_length=100)
    assert ids == p + c + [tok.eos_token_id] and n_prompt == len(p)
    [(ids, n_prompt)] = encode_sft(tok, [prompt], [completion], max_length=len(c) + 3)
    assert ids == p[-2:] + c + [tok.eos_token_id] and n_prompt == 2


def test_sft_loss_is_cross_entropy_over_completion_positions_only():
    """Reference: sum over labelled t of -log softmax(logits[b, t-1])[labels[b, t]], divided by their count."""
    torch.manual_seed(0)
    batch = sft_batch([([5, 6, 7, 8, 9], 3), ([5, 6, 7], 1), ([1, 2, 3, 4, 5, 6, 7], 6)], pad_id=0)
    labels = batch["labels"]
    logits = torch.randn(3, labels.shape[1], 11)
    total, count = 0.0, 0
    for b in range(3):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                total -= torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]].item()
                count += 1
    assert count == 2 + 2 + 1
    assert sft_loss(logits, labels).item() == pytest.approx(total / count, rel=1e-6)
    # logits for the last `keep` positions only give the same loss
    assert sft_loss(logits[:, -batch["keep"] :], labels).item() == pytest.approx(total / count, rel=1e-6)


def test_sft_loss_gradient_is_zero_on_predictions_at_prompt_and_padding_positions():
    """The logit at t predicts token t + 1: only t with a labelled t + 1 may get gradient."""
    batch = sft_batch([([5, 6, 7, 8, 9], 3), ([5, 6, 7], 1)], pad_id=0)
    labels = batch["labels"]
    logits = torch.randn(2, labels.shape[1], 11, requires_grad=True)
    sft_loss(logits, labels).backward()
    has_grad = logits.grad.abs().sum(-1) > 0  # (B, T)
    predicts_target = torch.zeros_like(has_grad)
    predicts_target[:, :-1] = labels[:, 1:] != IGNORE
    assert predicts_target.tolist() == [[False, False, True, True, False], [False, False, True, True, False]]
    assert torch.equal(has_grad, predicts_target)


def test_model_loss_does_not_depend_on_predictions_at_prompt_positions(tok):
    """Perturb the lm_head output, through a hook, at every position that predicts a prompt or pad token:
    the SFT loss is unchanged; perturbing a position that predicts a completion token changes it."""
    model = tiny_lm(tok)
    batch = sft_batch(
        encode_sft(tok, prompts_of(POSTS[:3]), [" " + s for s in SUMMARIES[:3]], 64), tok.pad_token_id
    )
    keep, labels = batch["keep"], batch["labels"]
    no_target = torch.ones(
        labels.shape[0], keep, dtype=torch.bool
    )  # (B, keep): slice of positions T-keep..T-1
    no_target[:, :-1] = labels[:, labels.shape[1] - keep + 1 :] == IGNORE

    def perturb(where):
        def hook(_module, _inputs, output):
            assert output.shape[1] == keep  # the model computed logits only for the last `keep` positions
            return output + 50.0 * torch.randn_like(output) * where[..., None]

        return hook

    base = sft_forward_loss(model, batch, "cpu").item()
    handle = model.lm_head.register_forward_hook(perturb(no_target))
    assert sft_forward_loss(model, batch, "cpu").item() == pytest.approx(base, rel=1e-6)
    handle.remove()
    handle = model.lm_head.register_forward_hook(perturb(~no_target))
    assert abs(sft_forward_loss(model, batch, "cpu").item() - base) > 1e-2
    handle.remove()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_left_padded_batch_loss_equals_unpadded_per_example_losses(tok, family):
    """Padding and position ids are right: the batch loss is the token-weighted mean of each example alone."""
    model = FAMILIES[family](tok)
    examples = encode_sft(tok, prompts_of(POSTS), [" " + s for s in SUMMARIES], 64)
    lens = {len(ids) for ids, _ in examples}
    assert len(lens) > 2  # real padding
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            n = len(ex[0]) - ex[1]
            total += sft_forward_loss(model, sft_batch([ex], tok.pad_token_id), "cpu").item() * n
            count += n
        batched = sft_forward_loss(model, sft_batch(examples, tok.pad_token_id), "cpu").item()
    assert batched == pytest.approx(total / count, rel=1e-5)


def test_train_sft_learns_and_data_order_depends_only_on_data_seed(tok):
    prompts, completions = prompts_of(POSTS), [" " + s for s in SUMMARIES]

    def run(data_seed):
        return train_sft(
            tiny_lm(tok),
            tok,
            prompts,
            completions,
            epochs=8,
            lr=3e-3,
            batch_size=2,
            max_length=64,
            data_seed=data_seed,
            eval_prompts=prompts,
            eval_completions=completions,
        )

    a, b, c = run(0), run(0), run(1)
    assert a["total_steps"] == 8 * 3 and len(a["train_loss"]) == 24
    assert a["eval_loss"] < a["eval_loss_before"] - 0.5
    assert a["train_loss"] == b["train_loss"]
    assert a["train_loss"] != c["train_loss"]
    assert not a["model"].training and a["wall_s"] > 0


# --------------------------------------------------------------------------------------------- sampling


def test_sample_tokens_is_the_inverse_cdf_with_top_p_truncation():
    """logits log([.5, .3, .2]) at T = 1 and M evenly spaced u: counts are exactly [.5, .3, .2] * M.
    top_p = .7: mass before token 2 is .8 >= .7, so the nucleus is {0, 1}, renormalised to [5/8, 3/8]."""
    m = 1000
    u = (torch.arange(m) + 0.5) / m
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(m, 3)
    assert torch.bincount(sample_tokens(logits, u, 1.0, 1.0), minlength=3).tolist() == [500, 300, 200]
    assert torch.bincount(sample_tokens(logits, u, 1.0, 0.7), minlength=3).tolist() == [625, 375, 0]
    # the nucleus is over *sorted* probabilities: put the big token last
    perm = logits[:, [2, 1, 0]]
    assert torch.bincount(sample_tokens(perm, u, 1.0, 0.7), minlength=3).tolist() == [0, 375, 625]


def test_sampled_first_token_frequencies_match_softmax_over_temperature(tok):
    """Logits b = [2, 1, .5, -.5] on four tokens (all others -1e4), T = .7: p = softmax(b / T) =
    [.722, .173, .085, .020]. Empirical frequencies over 4000 draws within 4 standard errors; with
    top_p = .8 the nucleus is the first two tokens (mass before the third is .895), renormalised."""
    ids = [10, 11, 12, 13]
    b = torch.tensor([2.0, 1.0, 0.5, -0.5])
    model = fixed_logits_lm(tok, dict(zip(ids, b.tolist(), strict=True)))
    p = torch.softmax(b / 0.7, -1).numpy()
    assert p == pytest.approx([0.722, 0.173, 0.085, 0.020], abs=1e-3)
    for top_p, expect in [(1.0, p), (0.8, np.r_[p[:2] / p[:2].sum(), 0.0, 0.0])]:
        pools = sample_pool(
            model,
            tok,
            prompts_of(POSTS[:2]),
            n_samples=2000,
            temperature=0.7,
            top_p=top_p,
            max_new_tokens=1,
            seed=3,
        )
        first = np.array([c[0] for pool in pools for c in pool])
        freq = np.array([(first == t).mean() for t in ids])
        assert np.isin(first, ids).all()
        se = np.sqrt(expect * (1 - expect) / len(first))
        assert np.all(np.abs(freq - expect) <= 4 * se + 1e-12), (top_p, freq, expect)


def test_sampling_is_reproducible_and_independent_of_batching(tok):
    model = tiny_lm(tok)
    prompts = prompts_of(POSTS)
    kw = {"n_samples": 4, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 8}
    a = sample_pool(model, tok, prompts, seed=0, batch_prompts=2, **kw)
    assert [len(pool) for pool in a] == [4] * len(prompts)
    assert a == sample_pool(model, tok, prompts, seed=0, batch_prompts=2, **kw)
    assert a != sample_pool(model, tok, prompts, seed=1, batch_prompts=2, **kw)
    assert a == sample_pool(model, tok, prompts, seed=0, batch_prompts=5, **kw)
    assert len({tuple(c) for pool in a for c in pool}) > len(prompts)  # samples of a prompt differ


def test_sampling_is_identical_across_memory_budgets(tok, monkeypatch):
    """A memory budget only sizes the decode batches (perm.policy.prompts_within): 1 prompt, 2, or all at once."""
    import perm.policy
    from perm.policy import kv_bytes_per_token, prompts_within

    sizes = []
    real = perm.policy.length_batches
    monkeypatch.setattr(perm.policy, "length_batches", lambda lengths, size: sizes.append(size) or real(lengths, size))

    model = tiny_lm(tok)
    prompts = prompts_of(POSTS)
    kw = {"n_samples": 4, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 8, "seed": 0, "batch_prompts": 8}
    per_prompt = 4 * (max(len(tok(p)["input_ids"]) for p in prompts) + 8) * kv_bytes_per_token(model)
    assert prompts_within(model, 2 * per_prompt + 1, max(len(tok(p)["input_ids"]) for p in prompts), 4, 8) == 2
    assert prompts_within(model, 1, 10, 4, 8) == 1
    whole = sample_pool(model, tok, prompts, **kw)
    for budget in (1, 2 * per_prompt + 1, 10**12):
        assert sample_pool(model, tok, prompts, memory_bytes=budget, **kw) == whole, budget
    assert sizes == [8, 1, 2, 8]  # batch_prompts alone, then what each budget holds


@pytest.mark.parametrize("p_eos", [0.3, 0.05])
def test_candidates_end_at_eos_or_at_the_length_limit(tok, p_eos):
    """Every step emits EOS with p_eos (99 other tokens share the rest; pad is never drawn), so the number
    of tokens is geometric, cut at 6: P(ended by EOS) = 1 - (1 - p)^6 = .882 (p = .3) or .265 (p = .05).
    At p = .05 finished rows stay in the batch for a while (they leave once they are a quarter of it)."""
    others = [t for t in range(len(tok)) if t not in (tok.eos_token_id, tok.pad_token_id)][:99]
    eos_bias = math.log(p_eos / (1 - p_eos) * len(others))
    model = fixed_logits_lm(tok, {**{t: 0.0 for t in others}, tok.eos_token_id: eos_bias})
    pools = sample_pool(model, tok, prompts_of(POSTS[:2]), n_samples=128, max_new_tokens=6, seed=0)
    flat = [c for pool in pools for c in pool]
    assert all(isinstance(c, Completion) for c in flat)
    assert all(tok.eos_token_id not in c and tok.pad_token_id not in c for c in flat)
    assert all(c.ended_with_eos == (len(c) < 6) for c in flat)
    p_end = 1 - (1 - p_eos) ** 6
    frac = np.mean([c.ended_with_eos for c in flat])
    assert abs(frac - p_end) < 4 * math.sqrt(p_end * (1 - p_end) / len(flat))
    # P(k tokens) = (1 - p)^k p for k < 6
    for k in range(3):
        expect = (1 - p_eos) ** k * p_eos
        got = np.mean([len(c) == k and c.ended_with_eos for c in flat])
        assert abs(got - expect) < 4 * math.sqrt(expect * (1 - expect) / len(flat)) + 1e-9


def test_shared_buffers_give_the_same_samples_as_concatenating_cache(tok, monkeypatch):
    """expand_cache's preallocated layers against transformers' own DynamicCache.batch_repeat_interleave."""
    import perm.policy as policy
    from perm.kv_cache import cache_of

    model = tiny_lm(tok)
    kw = {"n_samples": 8, "max_new_tokens": 8, "seed": 0, "batch_prompts": 3}
    fast = sample_pool(model, tok, prompts_of(POSTS), **kw)
    out = model(**tok(prompts_of(POSTS[:1]), return_tensors="pt"), use_cache=True)
    cache = cache_of(out)
    assert all(type(layer) is PreallocatedLayer for layer in expand_cache(cache, 3, 64).layers)
    assert cache.layers[0].keys.shape[0] == 3 and cache.get_seq_length() == out.logits.shape[1]

    def concatenating(cache, repeats, capacity):
        cache.batch_repeat_interleave(repeats)
        return cache

    monkeypatch.setattr(policy, "expand_cache", concatenating)
    assert sample_pool(model, tok, prompts_of(POSTS), **kw) == fast


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_generate_for_prompts_of_different_lengths(tok, family):
    """Left padding, cache expansion and dropping finished rows do not change the argmax path. EOS is set
    to a token the model emits mid-way for some prompt and never for another, so some rows stop early
    and others run to the limit."""
    model = FAMILIES[family](tok, seed=1, hidden=64)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(
            20.0
        )  # peaked logits: no near-ties for padding rounding to flip
    prompts = prompts_of(POSTS)
    enc = [tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"] for p in prompts]
    assert len({e.shape[1] for e in enc}) == len(prompts)

    def generate(eos_id):
        return [
            model.generate(
                e,
                attention_mask=torch.ones_like(e),
                do_sample=False,
                max_new_tokens=10,
                eos_token_id=eos_id,
                pad_token_id=tok.pad_token_id,
            )[0, e.shape[1] :].tolist()
            for e in enc
        ]

    free = generate(tok.eos_token_id)
    stop = next(t for g in free for t in g[1:] if t != g[0] and any(t not in h for h in free))
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok.convert_ids_to_tokens(stop)
    assert tok2.eos_token_id == stop
    want = [g[: g.index(stop)] if stop in g else g for g in generate(stop)]
    assert any(len(w) < 10 for w in want) and any(len(w) == 10 for w in want)
    for kw in ({"greedy": True}, {"temperature": 0.0}):
        pools = sample_pool(
            model, tok2, prompts, n_samples=2, max_new_tokens=10, seed=0, batch_prompts=3, **kw
        )
        assert [[list(c) for c in pool] for pool in pools] == [[w, w] for w in want]
        assert [pool[0].ended_with_eos for pool in pools] == [len(w) < 10 for w in want]


def test_sample_pool_plain_has_the_same_format(tok):
    model = tiny_lm(tok)
    pools = sample_pool_plain(
        model, tok, prompts_of(POSTS[:3]), n_samples=3, max_new_tokens=5, seed=0, batch_prompts=2
    )
    assert [len(p) for p in pools] == [3, 3, 3]
    assert all(
        isinstance(c, Completion) and len(c) <= 5 and tok.eos_token_id not in c for p in pools for c in p
    )
    assert pools == sample_pool_plain(
        model, tok, prompts_of(POSTS[:3]), n_samples=3, max_new_tokens=5, seed=0, batch_prompts=2
    )


# --------------------------------------------------------------------------------------------- output


def test_decode_keeps_the_leading_space(tok):
    ids = tok(" cat on mat", add_special_tokens=False)["input_ids"]
    assert decode_samples(tok, [ids, []]) == [" cat on mat", ""]


def test_completion_is_a_list_that_pickles_with_its_flag():
    c = Completion([3, 4], True)
    assert c == [3, 4] and isinstance(c, list)
    d = pickle.loads(pickle.dumps(c))
    assert d == [3, 4] and d.ended_with_eos is True


def test_samples_table_schema_and_ids(tok):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pools = [
        [Completion(enc(" cat on mat"), True), Completion(enc(" the dog"), False)],
        [Completion(enc(" rent"), True), Completion([], True)],
    ]
    refs = [[enc(" cat sat")], [enc(" rent went up")]]
    table = build_samples_table(
        [7, 9],
        pools,
        refs,
        tok,
        gold_fn=lambda post, text: len(post) + len(text),
        posts=["ab", "abc"],
        max_new_tokens=3,
    )
    assert table.schema == pa.schema(
        [
            ("prompt_id", pa.int64()),
            ("sample_id", pa.int64()),
            ("text", pa.string()),
            ("n_tokens", pa.int64()),
            ("is_reference", pa.bool_()),
            ("ended_with_eos", pa.bool_()),
            ("gold_reward", pa.float64()),
        ]
    )
    d = table.to_pydict()
    assert d["prompt_id"] == [7, 7, 7, 9, 9, 9]
    assert d["sample_id"] == [0, 1, 2, 0, 1, 2]
    assert d["is_reference"] == [False, False, True, False, False, True]
    assert d["text"] == [" cat on mat", " the dog", " cat sat", " rent", "", " rent went up"]
    assert d["n_tokens"] == [len(enc(t)) for t in d["text"]]
    # flags from Completion; plain reference lists fall back to n_tokens < max_new_tokens
    assert d["ended_with_eos"][:2] == [True, False] and d["ended_with_eos"][2] == (len(enc(" cat sat")) < 3)
    assert d["gold_reward"] == [2 + len(t) if i < 3 else 3 + len(t) for i, t in enumerate(d["text"])]
    no_gold = build_samples_table([7, 9], pools, None, tok)
    assert "gold_reward" not in no_gold.column_names and no_gold.num_rows == 4
    with pytest.raises(ValueError, match="gold_fn needs posts"):
        build_samples_table([7, 9], pools, None, tok, gold_fn=lambda p, t: 0.0)


def test_the_sampling_cache_holds_keys_in_the_compute_dtype(tok):
    """Under bf16 autocast GPT-NeoX's rotary embeddings return fp32 keys beside bf16 values; the preallocated
    cache holds both in bf16, so its bytes per token are what kv_bytes_per_token plans for (not 1.5 times)."""
    from perm.kv_cache import cache_of
    from perm.policy import kv_bytes_per_token

    model = tiny_lm(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**tok(prompts_of(POSTS[:1]), return_tensors="pt"), use_cache=True)
        planned = kv_bytes_per_token(model)
    cache = cache_of(out)
    assert cache.layers[0].keys.dtype == torch.float32 and cache.layers[0].values.dtype == torch.bfloat16
    expand_cache(cache, 3, 40)
    held = sum(la._k.element_size() * la._k[0, :, 0].numel() + la._v.element_size() * la._v[0, :, 0].numel()
               for la in cache.layers)
    assert {la._k.dtype for la in cache.layers} == {torch.bfloat16} and held == planned
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and sampling in bf16 runs, reproducibly
        kw = {"n_samples": 4, "max_new_tokens": 6, "seed": 0, "batch_prompts": 2}
        assert sample_pool(model, tok, prompts_of(POSTS), **kw) == sample_pool(model, tok, prompts_of(POSTS), **kw)
