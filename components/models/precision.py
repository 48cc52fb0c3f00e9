"""bf16 autocast where the hardware runs it fast: CUDA GPUs with bf16, and CPUs with native bf16 dot products.

Weights stay float32; only the matrix products run in bf16 (torch autocast). On a CPU without native bf16
instructions torch would emulate them (slower than float32), so there the context does nothing. The
measured speed-ups are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch

CPU_FLAGS_BF16 = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags that mean native bf16 arithmetic (x86 AVX512-BF16 or AMX; aarch64 BF16)."""


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 dot products natively (Linux: read from /proc/cpuinfo).

    ``RLHF_CPU_BF16=0`` or ``=1`` overrides the detection (e.g. to compare both on one machine)."""
    forced = os.environ.get("RLHF_CPU_BF16")
    if forced in {"0", "1"}:
        return forced == "1"
    return _cpuinfo_has_bf16()


def cpu_flags_have_bf16(cpuinfo: str) -> bool:
    """Whether the first ``flags`` (x86) or ``Features`` (aarch64) line of a /proc/cpuinfo text names native bf16."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            return bool(CPU_FLAGS_BF16 & set(value.split()))
    return False


@functools.cache
def _cpuinfo_has_bf16() -> bool:
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return False
    return cpu_flags_have_bf16(info.read_text(errors="replace"))


def bf16_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds up ``device`` (a CUDA GPU with bf16, or a CPU with native bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast(device: torch.device | str, enabled: bool = True) -> AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``enabled`` and the device runs bf16 fast; otherwise nothing."""
    device = torch.device(device)
    if enabled and bf16_fast(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fixed_precision(device: torch.device | str, bf16: bool) -> AbstractContextManager[object]:
    """Like :func:`autocast`, but also *off* when not enabled: float32 even inside a caller's bf16 region.

    For a model whose numbers must come out in one precision whoever calls it (a reward model's scores and the
    normalisation statistics stored with it)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16) and bf16_fast(device))


def precision_name(device: torch.device | str, bf16: bool) -> str:
    """``bfloat16`` when :func:`fixed_precision` runs bf16 autocast on ``device``, else ``float32``."""
    return "bfloat16" if bf16 and bf16_fast(device) else "float32"


@contextmanager
def cast_frozen_weights_once(model: torch.nn.Module) -> Iterator[None]:
    """Inside an autocast region and under ``torch.no_grad()``: frozen weights are cast to bf16 once, not per call.

    torch's autocast keeps the bf16 copy of a weight for the rest of the autocast region only when the weight
    is a leaf that requires grad; frozen weights (the base model under LoRA) are cast again at every forward,
    so token-by-token decoding re-reads and re-casts every frozen projection at every step. This marks the
    frozen parameters as requiring grad while the block runs (nothing is recorded under ``no_grad``) and
    restores them after; the copies live until the enclosing autocast region ends. Values are unchanged:
    the same weights are cast the same way, once.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("cast_frozen_weights_once is for no-grad passes (it flips requires_grad)")
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
