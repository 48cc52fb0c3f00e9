"""The frozen-block cache of the reward model (``trainable: top``): the same scores, gradients and trained
weights as the full forward pass, for a fraction of the compute."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from components.models.reward.frozen_cache import FrozenBlockCache
from components.models.reward.model import build_reward_model, pair_scores
from components.models.reward.pairs import Pairs
from components.models.reward.trainer import fit_reward_model, select_trainable
from tests.integration.test_reward_tiny import TOY_CFG, toy_rows

CFG = replace(TOY_CFG, trainable="top", train_layers=1, bf16=False)


def _pairs(n: int, seed: int) -> Pairs:
    rows = toy_rows(n, seed=seed)
    # texts of different lengths in one batch, so padding is exercised
    chosen = [r["chosen"] + " extra words" * (i % 3) for i, r in enumerate(rows)]
    return Pairs([r["prompt"] for r in rows], chosen, [r["rejected"] for r in rows], [0.0] * n)


def test_cached_scores_and_gradients_equal_the_full_forward():
    model, tok = build_reward_model("tiny", seed=0)
    select_trainable(model, CFG)
    pairs = _pairs(12, seed=1)
    cache = FrozenBlockCache(model, tok, CFG.max_length, top_layers=1)
    cache.build([*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected], batch_size=5)
    assert len(cache.features) == 24
    assert all(key in cache for key in zip(pairs.prompts, pairs.chosen))

    full_c, full_r, _ = pair_scores(model, tok, pairs.prompts, pairs.chosen, pairs.rejected, CFG.max_length)
    (full_c - full_r).sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    fast_c, fast_r, truncated = cache.pair_scores(pairs.prompts, pairs.chosen, pairs.rejected)
    (fast_c - fast_r).sum().backward()
    assert truncated == 0
    torch.testing.assert_close(fast_c, full_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_r, full_r, atol=1e-5, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    # the frozen blocks got no gradient, and the model still has all its blocks afterwards
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert len(model.model.layers) == 2


def test_training_with_the_cache_gives_the_same_weights(tmp_path):
    pairs = _pairs(32, seed=2)
    cfg = replace(CFG, epochs=2, lr=1e-2)
    with_cache, _, m_cache = fit_reward_model(pairs, cfg, tmp_path / "a.jsonl", device="cpu")
    no_cache = replace(cfg, feature_cache_gib=0.0)
    without, _, m_full = fit_reward_model(pairs, no_cache, tmp_path / "b.jsonl", device="cpu")
    assert m_cache["frozen_block_cache"] and not m_full["frozen_block_cache"]
    assert m_cache["last_epoch_loss"] == pytest.approx(m_full["last_epoch_loss"], abs=1e-4)
    for (name, a), (_, b) in zip(with_cache.named_parameters(), without.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
    before, _ = build_reward_model("tiny", seed=0)
    assert not torch.allclose(with_cache.score.weight, before.score.weight)  # it did train


def test_cache_is_skipped_when_it_would_not_fit_or_nothing_is_frozen(tmp_path):
    pairs = _pairs(8, seed=3)
    for cfg in (replace(CFG, feature_cache_gib=1e-9), replace(CFG, trainable="all"), replace(CFG, train_layers=2)):
        _, _, metrics = fit_reward_model(pairs, replace(cfg, epochs=1), tmp_path / "c.jsonl", device="cpu")
        assert metrics["frozen_block_cache"] is False
