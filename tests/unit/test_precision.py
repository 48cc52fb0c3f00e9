"""bf16 autocast only where the hardware computes bf16 natively; RLHF_CPU_BF16 overrides the detection."""

from __future__ import annotations

import torch

from components.models.precision import autocast, bf16_fast, cpu_flags_have_bf16


def test_cpu_flags_are_read_from_the_flags_line():
    assert cpu_flags_have_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags_have_bf16("Features : fp asimd bf16 i8mm\n")  # aarch64 spells it Features
    assert not cpu_flags_have_bf16("flags : fpu avx2 avx512f avx512bw\n")  # AVX512 alone would be emulated
    assert not cpu_flags_have_bf16("model name : something with bf16 in its name\n")


def test_autocast_follows_the_override_and_the_switch(monkeypatch):
    x = torch.randn(4, 8)
    w = torch.randn(8, 2)
    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    assert bf16_fast("cpu")
    with autocast("cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast("cpu", enabled=False):
        assert (x @ w).dtype == torch.float32
    monkeypatch.setenv("RLHF_CPU_BF16", "0")
    assert not bf16_fast("cpu")
    with autocast("cpu"):
        assert (x @ w).dtype == torch.float32


def test_frozen_weights_cast_once_gives_the_same_result_and_restores_the_flags(monkeypatch):
    import pytest

    from components.models.precision import cast_frozen_weights_once

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    net[0].requires_grad_(False)  # frozen, like a LoRA base
    x = torch.randn(3, 8)
    with torch.no_grad(), autocast("cpu"):
        plain = net(net[0](x) @ torch.eye(8))  # frozen layer used twice in one region
    with torch.no_grad(), autocast("cpu"), cast_frozen_weights_once(net):
        assert all(p.requires_grad for p in net.parameters())
        cached = net(net[0](x) @ torch.eye(8))
    assert torch.equal(plain, cached)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]
    with pytest.raises(RuntimeError, match="no-grad"), cast_frozen_weights_once(net):
        pass


def test_fixed_precision_holds_inside_a_callers_bf16_region(monkeypatch):
    from components.models.precision import fixed_precision, precision_name

    x = torch.randn(4, 8)
    w = torch.randn(8, 2)
    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    with autocast("cpu"):
        with fixed_precision("cpu", bf16=False):
            assert (x @ w).dtype == torch.float32  # off, although the caller runs bf16
        with fixed_precision("cpu", bf16=True):
            assert (x @ w).dtype == torch.bfloat16
    assert precision_name("cpu", True) == "bfloat16" and precision_name("cpu", False) == "float32"
    monkeypatch.setenv("RLHF_CPU_BF16", "0")
    with fixed_precision("cpu", bf16=True):
        assert (x @ w).dtype == torch.float32  # no native bf16: float32
    assert precision_name("cpu", True) == "float32"
