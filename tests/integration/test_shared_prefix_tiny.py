"""Encoding the common opening once gives the full pass's numbers (tiny model, float32): the PPO reference's
and the evaluation's reply logits, the reward model's scores, its frozen-block features, and the top blocks'
scores and gradients during training."""

from __future__ import annotations

import pytest
import torch

from components.models.generation import generate, reply_logits
from components.models.reward.frozen_cache import FrozenBlockCache
from components.models.reward.model import (
    RewardModel,
    build_reward_model,
    encode,
    pad_id,
    pair_scores,
    sequence_scores,
    token_ids,
)
from components.models.reward.trainer import select_trainable
from components.models.shared_prefix import MIN_SHARED, common_prefix_length, reply_logits_shared, shared_real_prefix
from tests.integration.test_reward_frozen_cache import CFG, _pairs

PROMPTS = ["where is my order", "reset my password please", "hi", "I was billed twice for one month, why?"]


def test_reply_logits_with_the_system_prompt_once_equal_the_full_pass(tiny, monkeypatch):
    import components.models.shared_prefix as sp

    calls = []
    real_cache = sp.prefix_cache
    monkeypatch.setattr(sp, "prefix_cache", lambda *a, **k: calls.append(a[1]) or real_cache(*a, **k))
    model, tok = tiny
    gen = generate(model, tok, PROMPTS, system="You are a support agent.", max_new_tokens=6, generator_seed=3)
    ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)
    mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)
    assert (gen.query_mask == 0).any() and (gen.response_mask == 0).any()  # left and right padding both
    assert len(shared_real_prefix(ids, mask)) >= MIN_SHARED
    r = gen.response_ids.shape[1]
    with torch.no_grad():
        full = reply_logits(model, ids, mask, r)
    fast = reply_logits_shared(model, ids, mask, r)
    real = gen.response_mask.bool()
    torch.testing.assert_close(fast[real], full[real], atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and len(calls[0]) >= MIN_SHARED  # the opening did run once, on its own


def test_reply_logits_shared_falls_back_without_a_common_opening(tiny):
    model, tok = tiny
    gen = generate(model, tok, PROMPTS[:2], system=None, max_new_tokens=4, generator_seed=1)
    ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)
    mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)
    ids[0, mask[0].argmax()] += 1  # the first real token differs: nothing shared
    with torch.no_grad():
        full = reply_logits(model, ids, mask, gen.response_ids.shape[1])
    torch.testing.assert_close(reply_logits_shared(model, ids, mask, gen.response_ids.shape[1]), full)


def test_reward_scores_with_the_opening_once_equal_the_full_pass():
    model, tok = build_reward_model("tiny", seed=0)
    pairs = _pairs(10, seed=4)
    rm = RewardModel(model, tok, max_length=CFG.max_length)
    ids, _ = token_ids(tok, pairs.prompts, pairs.chosen, CFG.max_length)
    assert common_prefix_length(ids) >= MIN_SHARED
    batch = encode(tok, pairs.prompts, pairs.chosen, CFG.max_length)
    with torch.no_grad():
        full = sequence_scores(model, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(rm.raw_scores(pairs.prompts, pairs.chosen, batch_size=4), full, atol=1e-5, rtol=1e-5)
    assert pad_id(tok) is not None


def test_frozen_features_with_the_opening_once_equal_the_full_pass():
    model, tok = build_reward_model("tiny", seed=0)
    select_trainable(model, CFG)
    pairs = _pairs(6, seed=5)
    cache = FrozenBlockCache(model, tok, CFG.max_length, top_layers=1)
    cache.build(pairs.prompts, pairs.chosen)
    batch = encode(tok, pairs.prompts, pairs.chosen, CFG.max_length)
    with torch.no_grad():
        out = model.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True, use_cache=False
        )
    lower = out.hidden_states[1]  # input of the (only) trained block, shape: (N, T, H)
    for i, key in enumerate(zip(pairs.prompts, pairs.chosen)):
        n = int(batch.attention_mask[i].sum())
        torch.testing.assert_close(cache.features[key], lower[i, :n], atol=1e-5, rtol=1e-5)


def test_training_scores_and_gradients_with_the_opening_once_equal_the_full_pass():
    model, tok = build_reward_model("tiny", seed=0)
    select_trainable(model, CFG)
    pairs = _pairs(8, seed=6)
    cache = FrozenBlockCache(model, tok, CFG.max_length, top_layers=1)
    cache.build([*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected], batch_size=16)
    assert common_prefix_length(list(cache.ids.values())) >= MIN_SHARED
    full_c, full_r, _ = pair_scores(model, tok, pairs.prompts, pairs.chosen, pairs.rejected, CFG.max_length)
    (full_c - 2 * full_r).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    fast_c, fast_r, _ = cache.pair_scores(pairs.prompts, pairs.chosen, pairs.rejected)
    (fast_c - 2 * fast_r).sum().backward()
    torch.testing.assert_close(fast_c, full_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_r, full_r, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4, msg=name)
    # the blocks got their own layer numbers back
    assert [b.self_attn.layer_idx for b in model.model.layers] == list(range(len(model.model.layers)))


def test_ppo_update_forward_with_the_opening_once_equals_the_full_pass(monkeypatch):
    """The policy (LoRA) and value head in PPO's update: the same logits, values and LoRA/head gradients."""
    import copy

    import components.models.policy.model as ppo_trainer
    from components.config.policy import PolicyConfig
    from components.models.base_model import build_tiny

    base, tok = build_tiny(seed=0)
    ac, reference = ppo_trainer.build_actor_critic(PolicyConfig(lora=True, lora_r=4, lora_alpha=8), copy.deepcopy(base))
    assert reference is None
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters matter
        for name, p in ac.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    gen = generate(ac.policy, tok, PROMPTS, system="You are a support agent.", max_new_tokens=6, generator_seed=2)
    ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)
    mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)
    ctx = gen.query_ids.shape[1]
    real = gen.response_mask.bool()
    weights = torch.randn(gen.response_ids.shape)

    def run() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        ac.zero_grad(set_to_none=True)
        logits, values = ac(ids, mask, ctx)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, gen.response_ids.unsqueeze(-1)).squeeze(-1)
        ((logp + values) * weights * gen.response_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in ac.named_parameters() if p.grad is not None}
        return logits.detach(), values.detach(), grads

    fast_logits, fast_values, fast_grads = run()
    monkeypatch.setattr(ppo_trainer, "causal_lm_after_opening", lambda *a, **k: None)
    full_logits, full_values, full_grads = run()
    torch.testing.assert_close(fast_logits[real], full_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_values[real], full_values[real], atol=1e-5, rtol=1e-5)
    assert set(fast_grads) == set(full_grads) and any("lora_A" in n for n in full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_evaluations_kl_from_the_sampling_logits_equals_a_second_policy_pass(tiny):
    from components.decide.evaluation import sequence_kl
    from components.models.base_model import build_tiny

    model, tok = tiny
    reference = build_tiny(seed=1)[0]  # another random model: a KL well away from 0
    gen = generate(model, tok, PROMPTS, system="You are a support agent.", max_new_tokens=6, generator_seed=3,
                   samples_per_prompt=3, return_internals=True)  # fmt: skip
    args = (gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask, 0.7)
    from_sampling = sequence_kl(model, reference, *args, policy_logits=gen.logits)
    second_pass = sequence_kl(model, reference, *args)
    assert second_pass.abs().mean() > 0.1
    torch.testing.assert_close(from_sampling, second_pass, atol=1e-4, rtol=1e-4)
    assert torch.equal(sequence_kl(model, model, *args), torch.zeros(len(PROMPTS) * 3))  # itself: 0
    # the sampled token's log-ratio (k1) per reply: the same from the sampling logits as from a second pass, and
    # spread around the exact KL (its mean over the sampled token), which is never negative
    k1 = sequence_kl(model, reference, *args, policy_logits=gen.logits, estimator="k1")
    torch.testing.assert_close(k1, sequence_kl(model, reference, *args, estimator="k1"), atol=1e-4, rtol=1e-4)
    assert (second_pass >= 0).all() and not torch.allclose(k1, second_pass, atol=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        sequence_kl(model, reference, *args, estimator="k2")
