"""Cache the frozen lower blocks' output once, so each training step runs only the blocks that train.

With ``reward.trainable: top`` the embeddings and the lower L - k transformer blocks never change, so their
output for a given text is the same in every epoch. :class:`FrozenBlockCache` computes it once per training
text (no grad), keeps it per text without padding, and scores a batch by running only the top k blocks,
the final norm and the head on it. The scores equal the full forward pass's up to float rounding (tested):
texts are right padded, so a real token never attends to padding, and position ids come from the mask.

Letters: N sequences, T tokens (right padded), H hidden size.

Cost on the demo (30 blocks, 4 train): a step of the full model is about 30 block forwards + 4 block
backwards; with the cache, 4 + 4, after a one-off 26-block pass over the training texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from components.models.generation import position_ids_from_mask
from components.models.reward.disk_cache import DiskActivationCache, model_key, text_key
from components.models.reward.model import pad_id, pad_right, score_at_last_token, token_ids, transformer_layers
from components.models.shared_prefix import MIN_SHARED, common_prefix_length, suffix_inputs


class _Stop(Exception):
    """Raised by the hook on the first trained block: the lower blocks' output is captured, stop there."""


def _pad_features(feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text features (T_i, H) right padded with zeros to (N, T, H), with their mask (N, T)."""
    width = max(f.shape[0] for f in feats)
    hidden = torch.zeros((len(feats), width, feats[0].shape[1]), dtype=feats[0].dtype)  # shape: (N, T, H)
    mask = torch.zeros((len(feats), width), dtype=torch.long)  # shape: (N, T)
    for i, f in enumerate(feats):
        hidden[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return hidden, mask


class FrozenBlockCache:
    """The lower blocks' output (N_texts x (T_i, H)) for a fixed set of (prompt, response) texts."""

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, max_length: int, top_layers: int) -> None:
        layers = transformer_layers(model)
        if not 0 < top_layers < len(layers):
            raise ValueError(f"top_layers must be in 1..{len(layers) - 1}, got {top_layers}")
        self.model, self.tok, self.max_length, self.k = model, tok, max_length, top_layers
        self.features: dict[tuple[str, str], torch.Tensor] = {}  # (prompt, response) -> (T_i, H)
        self.truncated: dict[tuple[str, str], bool] = {}
        self.ids: dict[tuple[str, str], list[int]] = {}  # (prompt, response) -> its token ids

    @staticmethod
    def nbytes_estimate(n_texts: int, mean_tokens: float, hidden: int) -> float:
        """Bytes the cache of ``n_texts`` texts of ``mean_tokens`` tokens takes (float32)."""
        return n_texts * mean_tokens * hidden * 4

    @torch.no_grad()
    def build(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
        store: DiskActivationCache | None = None,
    ) -> None:
        """Run the lower blocks once over every distinct (prompt, response) not cached yet.

        With ``store``, texts whose output a previous build (same frozen weights, same arithmetic, same token
        ids: :mod:`components.models.reward.disk_cache`) left there are read from it instead, and the rest are
        written to it."""
        todo = [key for key in dict.fromkeys(zip(prompts, responses)) if key not in self.features]
        if not todo:
            return
        ids, truncated = token_ids(self.tok, [p for p, _ in todo], [r for _, r in todo], self.max_length)
        device = next(self.model.parameters()).device
        names: list[str | None] = [None] * len(todo)
        if store is not None:
            mkey = model_key(self.model, len(transformer_layers(self.model)) - self.k, device)
            names = [text_key(mkey, x) for x in ids]
        compute: list[int] = []
        for i, key in enumerate(todo):
            stored = store.get(names[i]) if store is not None else None
            if stored is not None and stored.shape[0] == len(ids[i]):
                self.features[key], self.truncated[key], self.ids[key] = stored, truncated[i], ids[i]
            else:
                compute.append(i)
        done = len(todo) - len(compute)
        for start in range(0, len(compute), batch_size):
            chunk = compute[start : start + batch_size]
            for i, features in zip(chunk, self._lower_blocks([ids[i] for i in chunk], device)):
                self.features[todo[i]], self.truncated[todo[i]], self.ids[todo[i]] = features, truncated[i], ids[i]
                if store is not None:
                    store.put(names[i], features)
            if progress is not None:
                progress(done + start + len(chunk), len(todo))

    def _lower_blocks(self, ids: list[list[int]], device: torch.device) -> list[torch.Tensor]:
        """The frozen blocks' output of each text, (T_i, H) float32 each: one right-padded pass that stops at
        the first trained block. The opening all the texts share (the chat template's system turn) runs once,
        for one row, and the batch runs the rest after its KV cache (:mod:`components.models.shared_prefix`)."""
        layers = transformer_layers(self.model)
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        backbone = getattr(self.model, self.model.base_model_prefix)
        shared = common_prefix_length(ids)
        past = DynamicCache(config=self.model.config) if shared >= MIN_SHARED else None

        def run(rows: list[list[int]], offset: int) -> torch.Tensor:
            input_ids, mask = pad_right(rows, pad_id(self.tok))
            input_ids, mask = input_ids.to(device), mask.to(device)
            full_mask, positions = suffix_inputs(mask, offset)
            captured.clear()
            with contextlib.suppress(_Stop):
                backbone(input_ids=input_ids, attention_mask=full_mask, position_ids=positions,
                         past_key_values=past, use_cache=past is not None)  # fmt: skip
            return captured[0].detach()  # shape: (n, T, H)

        handle = layers[len(layers) - self.k].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            if past is None:
                hidden = run(ids, 0)  # shape: (n, T, H)
                return [hidden[i, : len(x)].float().cpu().clone() for i, x in enumerate(ids)]
            opening = run([ids[0][:shared]], 0)[0].float().cpu()  # shape: (P, H)
            past.batch_repeat_interleave(len(ids))
            rest = run([x[shared:] for x in ids], shared)  # shape: (n, T - P, H)
        finally:
            handle.remove()
        return [torch.cat([opening, rest[i, : len(x) - shared].float().cpu()]) for i, x in enumerate(ids)]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.features

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Raw rewards of cached texts from the top blocks only, shape (N,); and how many were truncated.

        Gradients flow into the top blocks, the final norm and the head (whatever requires grad). The opening
        the texts share runs through the top blocks once, for one row, and the rest after its KV cache
        (the gradient of that one copy is the sum over the rows, as in the full pass)."""
        keys = list(zip(prompts, responses))
        feats = [self.features[key] for key in keys]
        shared = common_prefix_length([self.ids[key] for key in keys])
        shared = shared if shared >= MIN_SHARED else 0
        device = next(self.model.parameters()).device
        hidden, mask = _pad_features([f[shared:] for f in feats])  # shape: (N, T - P, H), (N, T - P)
        hidden, mask = hidden.to(device), mask.to(device)
        full_mask, positions = suffix_inputs(mask, shared)
        backbone = getattr(self.model, self.model.base_model_prefix)
        every = backbone.layers
        top = list(every)[-self.k :]
        numbers = [block.self_attn.layer_idx for block in top]
        backbone.layers = nn.ModuleList(top)  # the same block objects: grads reach them
        try:
            past = None
            if shared:
                for j, block in enumerate(top):  # the cache below holds the top blocks only, as layers 0..k-1
                    block.self_attn.layer_idx = j
                past = DynamicCache(config=self.model.config)
                opening = feats[0][:shared].unsqueeze(0).to(device)  # shape: (1, P, H)
                ones = torch.ones((1, shared), dtype=torch.long, device=device)
                backbone(inputs_embeds=opening, attention_mask=ones, position_ids=position_ids_from_mask(ones),
                         past_key_values=past, use_cache=True)  # fmt: skip
                past.batch_repeat_interleave(len(feats))
            out = backbone(
                inputs_embeds=hidden, attention_mask=full_mask, position_ids=positions,
                past_key_values=past, use_cache=past is not None,
            ).last_hidden_state  # shape: (N, T - P, H)  # fmt: skip
        finally:
            backbone.layers = every
            for block, number in zip(top, numbers):
                block.self_attn.layer_idx = number
        return score_at_last_token(self.model, out, mask), sum(self.truncated[key] for key in keys)

    def pair_scores(
        self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Like :func:`components.models.reward.model.pair_scores`: chosen and rejected in one pass of 2B texts."""
        b = len(prompts)
        scores, truncated = self.scores([*prompts, *prompts], [*chosen, *rejected])
        return scores[:b], scores[b:], truncated
