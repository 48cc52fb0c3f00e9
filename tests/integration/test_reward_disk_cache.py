"""The reward model's frozen-block output kept on disk between runs: a retrain on texts seen before reads the
bytes the first run computed, and trains and evaluates to the same result as recomputing them."""

from __future__ import annotations

import os
from dataclasses import replace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from components.models.precision import autocast
from components.models.reward.disk_cache import DiskActivationCache, model_key
from components.models.reward.frozen_cache import FrozenBlockCache
from components.models.reward.model import build_reward_model
from components.models.reward.trainer import select_trainable, train_reward
from tests.integration.test_reward_frozen_cache import CFG, _pairs
from tests.integration.test_reward_tiny import toy_rows


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    pairs = _pairs(n, seed=seed)
    return [*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected]


def _cache() -> FrozenBlockCache:
    model, tok = build_reward_model("tiny", seed=0)
    select_trainable(model, CFG)
    return FrozenBlockCache(model, tok, CFG.max_length, top_layers=1)


def test_a_second_build_reads_the_first_builds_bytes(tmp_path):
    prompts, responses = _texts(10, seed=1)
    first = _cache()
    store = DiskActivationCache(tmp_path / "store", max_bytes=2**30)
    first.build(prompts, responses, batch_size=7, store=store)
    assert store.writes == 20 and store.hits == 0

    again = _cache()  # a new process in practice: a freshly built model with the same weights
    store2 = DiskActivationCache(tmp_path / "store", max_bytes=2**30)
    again.build(prompts, responses, batch_size=7, store=store2)
    assert store2.hits == 20 and store2.writes == 0
    for key, features in first.features.items():
        assert torch.equal(again.features[key], features)
        assert again.truncated[key] == first.truncated[key]

    plain = _cache()  # and those bytes are what the lower blocks compute (up to batch-shape rounding)
    plain.build(prompts, responses, batch_size=3)
    for key, features in plain.features.items():
        torch.testing.assert_close(again.features[key], features, atol=1e-5, rtol=1e-5)


def test_only_new_texts_are_computed(tmp_path):
    prompts, responses = _texts(6, seed=2)
    more_p, more_r = _texts(4, seed=3)
    store = DiskActivationCache(tmp_path, max_bytes=2**30)
    _cache().build(prompts, responses, store=store)
    second = DiskActivationCache(tmp_path, max_bytes=2**30)
    _cache().build([*prompts, *more_p], [*responses, *more_r], store=second)
    assert second.hits == 12 and second.writes == 8


def test_the_key_changes_with_frozen_weights_frozen_depth_and_arithmetic():
    cache = _cache()
    model, cpu = cache.model, torch.device("cpu")
    base = model_key(model, 1, cpu)
    assert model_key(model, 1, cpu) == base
    assert model_key(model, 0, cpu) != base
    with autocast(cpu, True):
        if torch.is_autocast_enabled("cpu"):  # only where this CPU computes bf16 natively
            assert model_key(model, 1, cpu) != base
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(1.0)  # the trained top block: not part of the key
    assert model_key(model, 1, cpu) == base
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1e-3)  # a frozen block: a different key
    assert model_key(model, 1, cpu) != base


def test_prune_drops_the_least_recently_used_files(tmp_path):
    store = DiskActivationCache(tmp_path, max_bytes=10**9)
    for i in range(4):
        store.put(f"{i:02d}" * 32, torch.zeros(100, 8))
    size = next(tmp_path.glob("*/*.pt")).stat().st_size
    for i in range(4):  # oldest first: 0, 1, 2, 3; then 0 is read, so 1 is the least recently used
        os.utime(store._path(f"{i:02d}" * 32), (1000 + i, 1000 + i))
    assert store.get("00" * 32) is not None
    store.max_bytes = 3 * size
    assert store.prune() == 1
    assert store.get("01" * 32) is None
    assert all(store.get(f"{i:02d}" * 32) is not None for i in (0, 2, 3))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_retrain_with_the_store_equals_one_without(tmp_path):
    """Round 1 on some pairs fills the store; round 2 on those pairs plus new ones reads them back and ends
    with the same metrics and weights as a round 2 that recomputes everything."""
    cfg = replace(CFG, epochs=2, lr=1e-2, eval_fraction=0.25)
    rows = toy_rows(40, seed=5)
    r1, r2 = tmp_path / "r1.parquet", tmp_path / "r2.parquet"
    pd.DataFrame(rows[:30]).to_parquet(r1)
    pd.DataFrame(rows).to_parquet(r2)
    store = tmp_path / "store"
    train_reward(r1, cfg, tmp_path / "m1", tmp_path / "x1", project_root=tmp_path, disk_cache=store)
    with_store = train_reward(r2, cfg, tmp_path / "m2", tmp_path / "x2", project_root=tmp_path, disk_cache=store)
    without = train_reward(r2, cfg, tmp_path / "m3", tmp_path / "x3", project_root=tmp_path)
    assert with_store.metrics["train"]["disk_cache_hits"] == 60  # round 1's 30 pairs, train and held-out
    assert "disk_cache_hits" not in without.metrics["train"]
    a, b = with_store.metrics, without.metrics
    assert a["eval"]["accuracy"] == b["eval"]["accuracy"]
    for group in ("eval", "normalization"):
        for name, value in b[group].items():
            assert a[group][name] == pytest.approx(value, abs=1e-4), (group, name)
    assert a["train"]["last_epoch_loss"] == pytest.approx(b["train"]["last_epoch_loss"], abs=1e-4)
    wa, wb = load_file(with_store.model_dir / "model.safetensors"), load_file(without.model_dir / "model.safetensors")
    for name, tensor in wb.items():
        torch.testing.assert_close(wa[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
