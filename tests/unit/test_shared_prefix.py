"""The index arithmetic of encoding a batch's common opening once (components/models/shared_prefix.py)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from components.models.generation import encode_chat, left_pad, position_ids_from_mask
from components.models.shared_prefix import (
    common_prefix_length,
    prefixed_inputs,
    repeat_cache,
    starts_with,
    suffix_after_prefix,
    suffix_inputs,
    template_prefix,
)


def test_common_prefix_leaves_every_row_a_token():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 9], [1, 2, 8, 7]]) == 2
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 2
    assert common_prefix_length([]) == 0


def test_suffix_inputs_counts_positions_after_the_prefix():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    full, positions = suffix_inputs(mask, 4)
    assert full.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert positions[:, :2].tolist() == [[4, 5], [4, 5]] and positions[1, 2] == 6
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert suffix_inputs(left, 3)[1][:, 1:].tolist() == [[3, 4], [4, 5]]


def test_suffix_after_prefix_keeps_each_rows_rest_and_masks_the_rest():
    # rows: pads, prefix (7, 8), own tokens, then a right-padded reply (0 = pad)
    ids = torch.tensor(
        [
            [0, 0, 7, 8, 5, 6, 1, 0],
            [0, 7, 8, 4, 4, 4, 1, 2],
            [7, 8, 3, 3, 3, 3, 1, 2],
        ]
    )
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ]
    )
    rest, rest_mask = suffix_after_prefix(ids, mask, 2)
    assert rest.tolist() == ids[:, 2:].tolist()  # the widest rest starts after row 3's prefix
    assert rest_mask.tolist() == [
        [0, 0, 1, 1, 1, 0],  # row 1's prefix (columns 2-3) masked, its reply pad too
        [0, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ]
    real = [r[m.bool()].tolist() for r, m in zip(rest, rest_mask)]
    assert real == [[5, 6, 1], [4, 4, 4, 1, 2], [3, 3, 3, 3, 1, 2]]


def test_prefixed_inputs_pad_in_the_middle_and_keep_each_tokens_position():
    # prefix of 3 tokens (7, 8, 9); suffixes [5, 6] and [4]
    ids, mask, positions = prefixed_inputs([[5, 6], [4]], 3, 0)
    assert ids.tolist() == [[5, 6], [0, 4]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]]  # [prefix][pad][suffix]
    assert positions.tolist() == [[3, 4], [3, 3]]  # the pad's position is never attended to
    # the whole prompts, left padded: each real suffix token has the same position
    _, whole = left_pad([[7, 8, 9, 5, 6], [7, 8, 9, 4]], 0)
    full = position_ids_from_mask(whole)
    assert full.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert full[:, -1].tolist() == positions[:, -1].tolist() and full[0, -2] == positions[0, 0]
    assert mask.sum(dim=1).tolist() == whole.sum(dim=1).tolist()  # the next token's position, as without


def test_starts_with_needs_the_whole_prefix_and_a_token_after_it():
    assert starts_with([1, 2, 3], [1, 2])
    assert not starts_with([1, 2], [1, 2])  # nothing left to prefill
    assert not starts_with([1, 3, 3], [1, 2])
    assert not starts_with([1, 2, 3], [])


def test_template_prefix_is_the_system_turn_and_the_user_header(tiny):
    _, tok = tiny
    prefix = template_prefix(tok, "Be brief.")
    assert tok.decode(prefix) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    ids = encode_chat(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Be brief."}])
    assert starts_with(ids, prefix)  # a user text that repeats the system prompt does not move it
    other = encode_chat(tok, [{"role": "system", "content": "Be long."}, {"role": "user", "content": "hi"}])
    assert not starts_with(other, prefix)


def test_repeat_cache_copies_and_leaves_the_original():
    one = DynamicCache()
    one.update(torch.arange(6.0).reshape(1, 1, 3, 2), torch.ones(1, 1, 3, 2), 0)
    many = repeat_cache(one, 3)
    many.update(torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2), 0)  # a forward pass appends to the copy
    assert many.layers[0].keys.shape == (3, 1, 4, 2)
    assert one.layers[0].keys.shape == (1, 1, 3, 2) and one.layers[0].keys.flatten().tolist() == list(range(6))
    assert bool((many.layers[0].keys[:, :, :3] == one.layers[0].keys).all())
