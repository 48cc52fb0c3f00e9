"""A disk cache of the frozen lower blocks' activations, so a retrain on texts seen before skips their frozen pass.

Every later round of the demo retrains the reward model on the seed pairs plus the served feedback, from the
same backbone with the same frozen blocks: the seed texts' frozen-block output is the one the first round
computed. :class:`DiskActivationCache` keeps each text's output (T_i x H, float32, no padding) in a file named
by a content hash of

- the *model key* (:func:`model_key`): the bytes of every frozen weight and buffer (embeddings, the lower
  blocks, the rotary tables), the backbone's config, how many blocks are frozen, the autocast state of
  the pass (bf16 or float32 on this device type) and the torch / transformers versions;
- the text's token ids after truncation to ``max_length`` (so the tokenizer and the chat template are in
  the key too).

A file is therefore only ever read back for the same input through the same arithmetic; what it holds is
bit for bit what that pass produced. Files are written atomically (temporary name, then rename); the cache
is bounded (least recently used files go first, see :meth:`DiskActivationCache.prune`).

Letters: T_i tokens of text i, H hidden size.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def model_key(model: nn.Module, n_frozen: int, device: torch.device) -> str:
    """A hash of everything the frozen lower ``n_frozen`` blocks' output depends on besides the token ids."""
    import transformers

    backbone = getattr(model, model.base_model_prefix)
    h = hashlib.sha256()
    parts: list[tuple[str, torch.Tensor]] = []

    def tensors(prefix: str, module: nn.Module) -> list[tuple[str, torch.Tensor]]:
        # buffers too: the rotary tables are buffers that state_dict() leaves out
        return [(f"{prefix}.{n}", t) for n, t in [*module.named_parameters(), *module.named_buffers()]]

    for name, module in backbone.named_children():
        if name == "layers":
            for i, block in enumerate(list(module)[:n_frozen]):
                parts += tensors(f"layers.{i}", block)
        elif name != "norm":  # the final norm comes after the top blocks
            parts += tensors(name, module)
    for name, tensor in parts:
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    auto = torch.is_autocast_enabled(device.type)
    amp = str(torch.get_autocast_dtype(device.type)) if auto else "off"
    meta = {
        "config": model.config.to_diff_dict(),
        "attention": getattr(model.config, "_attn_implementation", None),
        "n_frozen": n_frozen,
        "pass": "shared opening once",  # how FrozenBlockCache computes it (components/models/shared_prefix.py)
        "device": device.type,
        "autocast": amp,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def text_key(model: str, ids: Sequence[int]) -> str:
    """The file name of one text's features: a hash of the model key and its token ids."""
    h = hashlib.sha256(model.encode())
    h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class DiskActivationCache:
    """Per-text frozen-block features under ``root``, one ``<hash>.pt`` file each, at most ``max_bytes``."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.writes = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored features (T_i, H), or None; a hit marks the file as recently used."""
        path = self._path(key)
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError, OSError):
            return None
        os.utime(path)
        self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        """Write one text's features atomically (a concurrent reader sees the old file or the whole new one)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(features.contiguous().clone(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1

    def prune(self) -> int:
        """Delete the least recently used files until the cache fits in ``max_bytes``; returns how many."""
        files = (
            [(p.stat().st_mtime, p.stat().st_size, p) for p in self.root.glob("*/*.pt")] if self.root.is_dir() else []
        )
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed
