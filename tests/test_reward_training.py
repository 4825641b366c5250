"""Reward-model finetuning: it learns, seeds decide the weights, the centering term has its effect."""

import numpy as np
import pytest
import torch

from conftest import toy_pairs
from perm.models import load_reward_backbone, make_accelerator, use_attention
from perm.prefix import score_ids
from perm.reward import encode, train_reward_model


def _train(backbone_dir, tokenizer, *, head_seed=0, data_seed=0, dropout_seed=0, center_coef=0.0, offset=0.0,
           epochs=2.0, dropout=0.0, n=192, accelerator=None, attention=None):
    torch.set_num_threads(1)
    p, c, r = toy_pairs(n, seed=0)
    ep, ec, er = toy_pairs(64, seed=1)
    model = load_reward_backbone(backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=head_seed,
                                 dropout=dropout)
    use_attention(model, attention)
    if offset:
        # shift every reward by `offset`: the final layer norm's bias along the head direction
        w = model.score.weight[0]
        with torch.no_grad():
            model.gpt_neox.final_layer_norm.bias += offset * w / (w @ w)
    enc = lambda a, b: encode(tokenizer, a, b, 32)  # noqa: E731
    return train_reward_model(
        model, chosen=enc(p, c), rejected=enc(p, r), eval_chosen=enc(ep, ec), eval_rejected=enc(ep, er),
        pad_id=tokenizer.pad_token_id, center_coef=center_coef, epochs=epochs, batch_size=16, lr=3e-3,
        warmup_frac=0.1, weight_decay=0.0, max_grad_norm=1.0, eval_every=1000, data_seed=data_seed,
        dropout_seed=dropout_seed, accelerator=accelerator,
    )


def test_rm_learns_the_toy_preference(tiny_backbone_dir, tokenizer):
    state = _train(tiny_backbone_dir, tokenizer)
    assert state["evals"][-1]["accuracy"] > 0.95
    assert state["train_loss"][-1] < state["train_loss"][0]


@pytest.mark.parametrize("attention", [None, "eager"])
def test_rm_learns_under_bf16_mixed_precision(tiny_backbone_dir, tokenizer, attention):
    state = _train(tiny_backbone_dir, tokenizer, accelerator=make_accelerator("cpu", "bf16"), attention=attention)
    assert state["evals"][-1]["accuracy"] > 0.95
    assert state["model"].config._attn_implementation == (attention or "sdpa")
    fp32 = _train(tiny_backbone_dir, tokenizer, accelerator=make_accelerator("cpu", "fp32"))
    assert state["train_loss"] != fp32["train_loss"]  # bf16 really ran
    # and the process can go back to fp32 (accelerate's state is process-wide; the local executor runs SFT
    # and every RM in one process)
    assert make_accelerator("cpu", "fp32").mixed_precision == "no"
    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"


def test_identical_seeds_identical_weights_and_each_seed_matters(tiny_backbone_dir, tokenizer):
    def weights(**kw):
        m = _train(tiny_backbone_dir, tokenizer, epochs=0.5, dropout=0.1, **kw)["model"]
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    base = weights()
    assert torch.equal(base, weights())
    for kw in ({"head_seed": 1}, {"data_seed": 1}, {"dropout_seed": 1}):
        assert not torch.equal(base, weights(**kw)), kw


def test_centering_term_pulls_mean_reward_to_zero(tiny_backbone_dir, tokenizer):
    """BT alone is shift-invariant, so a reward offset of +4 survives training with alpha = 0; with
    alpha = 0.1 the centering gradient 2*alpha*(r+ + r-) pulls the mean reward toward 0."""
    plain = _train(tiny_backbone_dir, tokenizer, offset=4.0, center_coef=0.0)["evals"][-1]["mean_reward"]
    centred = _train(tiny_backbone_dir, tokenizer, offset=4.0, center_coef=0.1)["evals"][-1]["mean_reward"]
    assert abs(plain) > 2.0
    assert abs(centred) < 0.5 * abs(plain)


def test_score_ids_matches_direct_call(tiny_backbone_dir, tokenizer):
    m = _train(tiny_backbone_dir, tokenizer, epochs=0.25)["model"]
    seqs = encode(tokenizer, ["w1 TL;DR:", "w2 w3 w4 TL;DR:"], [" good", " bad w5"], 32)
    got = score_ids(m, seqs, tokenizer.pad_token_id, "cpu", batch_size=2)
    with torch.no_grad():
        direct = [m(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    assert got == pytest.approx(np.array(direct), abs=1e-5)


def test_bf16_training_reads_rewards_from_an_fp32_head(tiny_backbone_dir, tokenizer):
    """Under bf16 autocast the scalar head runs in fp32 (bf16 rewards have 8 bits: ties and coarse BT
    differences); afterwards the model is the plain *ForSequenceClassification again."""
    from perm.models import fp32_reward_head

    model = load_reward_backbone(tiny_backbone_dir, pad_token_id=tokenizer.pad_token_id, head_seed=0)
    ids = torch.tensor([encode(tokenizer, ["w1 w2 TL;DR:"], [" good w3"], 32)[0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
        with fp32_reward_head(model):
            assert model(input_ids=ids).logits.dtype == torch.float32
            assert "score.head.weight" in dict(model.named_parameters())
    assert isinstance(model.score, torch.nn.Linear)
    state = _train(tiny_backbone_dir, tokenizer, accelerator=make_accelerator("cpu", "bf16"), epochs=0.2)
    assert isinstance(state["model"].score, torch.nn.Linear) and "score.weight" in state["model"].state_dict()


def test_train_tokens_count_each_distinct_prompt_and_completion_once(tokenizer):
    """K-wise pairs of one prompt (3 words) over completions a, b, c (1, 2, 3 words) + a second prompt with one
    pair: read = prompts once + each distinct completion (+ EOS) once; whole = every distinct sequence whole."""
    from perm.stages.train_rm import train_tokens

    p1, p2 = "w1 w2 TL;DR:", "w3 TL;DR:"
    a, b, c = " good", " w4 w5", " bad w6 w7"
    prompts = [p1, p1, p1, p2]
    chosen, rejected = [a, c, a, a], [b, b, c, b]
    out = train_tokens(tokenizer, prompts, chosen, rejected, epochs=2.0)
    read = (3 + 2) + (2 + 3 + 4) + (2 + 3)  # prompts; p1's a, b, c with EOS; p2's a, b with EOS
    whole = (3 + 2) + (3 + 3) + (3 + 4) + (2 + 2) + (2 + 3)
    assert out == {"train_tokens": 2 * read, "train_sequence_tokens": 2 * whole, "n_train_completions": 5}
