"""``micro_batch_size: auto`` / ``forward_batch_size: auto``: the sizing rule by hand, and the CPU fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from components.config import load_section
from components.config.loading import ConfigError
from components.config.policy import PolicyConfig
from components.models.policy import batch_sizing as bs
from components.models.policy.loop import PolicyTrainer

GIB = 1 << 30


def test_bytes_per_reply_by_hand():
    # 96 tokens x 30 layers x 576 hidden x 34 bytes + 33 reply positions x 49152 vocab x 16 bytes
    assert bs.update_bytes_per_reply(96, 32, 30, 576, 49152) == 96 * 30 * 576 * 34 + 33 * 49152 * 16
    assert bs.forward_bytes_per_reply(96, 32, 576, 49152) == 96 * 576 * 34 + 33 * 49152 * 2


def test_micro_batch_is_the_largest_divisor_of_the_minibatch_that_fits_half_the_free_memory():
    per = GIB // 10  # 0.1 GiB a reply
    assert bs.auto_micro_batch(80 * GIB, per, 64) == 64  # 64 x 0.1 = 6.4 GiB <= 40 GiB
    assert bs.auto_micro_batch(2 * GIB, per, 64) == 8  # budget 1 GiB: 10 would fit, 8 is the divisor
    assert bs.auto_micro_batch(2 * GIB, per, 48) == 8  # divisors of 48 up to 10: 8
    assert bs.auto_micro_batch(2 * GIB, per, 48, group=2) == 8
    assert bs.auto_micro_batch(2 * GIB, per, 12, group=4) == 4  # 4 fits, 12 does not; 6 is no multiple of 4
    assert bs.auto_micro_batch(0, per, 16, group=2) == 2  # nothing fits: the smallest the algorithm allows
    with pytest.raises(ValueError, match=">= 1"):
        bs.auto_micro_batch(GIB, 0, 16)


def test_forward_batch_is_the_most_replies_that_fit():
    per = GIB // 10
    assert bs.auto_forward_batch(80 * GIB, per, 256) == 256
    assert bs.auto_forward_batch(2 * GIB, per, 256) == 10
    assert bs.auto_forward_batch(0, per, 256) == 1
    with pytest.raises(ValueError, match=">= 1"):
        bs.auto_forward_batch(GIB, per, 0)


def test_auto_is_a_valid_value_and_resolves_to_todays_defaults_on_the_cpu():
    cfg = load_section(PolicyConfig, "policy", {"policy": {"micro_batch_size": "auto", "forward_batch_size": "auto"}})
    assert cfg.micro_batch_size == cfg.forward_batch_size == "auto" and cfg.grad_accumulation is None
    with pytest.raises(ConfigError, match="micro_batch_size"):
        load_section(PolicyConfig, "policy", {"policy": {"micro_batch_size": "big"}})
    trainer = SimpleNamespace(cfg=cfg, acc=SimpleNamespace(device=torch.device("cpu")), algo=SimpleNamespace(group=1))
    batch = SimpleNamespace(prompts=["p"] * 16)
    assert PolicyTrainer.micro_batch_size(trainer, batch, 8) == bs.CPU_MICRO_BATCH == PolicyConfig().micro_batch_size
    assert PolicyTrainer.forward_batch_size(trainer, batch) == 16  # the whole batch, as with null
    trainer.cfg = PolicyConfig(micro_batch_size=4, forward_batch_size=None)
    assert PolicyTrainer.micro_batch_size(trainer, batch, 8) == 4
    assert PolicyTrainer.forward_batch_size(trainer, batch) == 16
