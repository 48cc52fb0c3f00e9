"""The index arithmetic of encoding a batch's common opening once (components/models/shared_prefix.py)."""

from __future__ import annotations

import torch

from components.models.shared_prefix import common_prefix_length, suffix_after_prefix, suffix_inputs


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
