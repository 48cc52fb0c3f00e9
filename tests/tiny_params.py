"""params.yaml overrides shared by the tests that run stages on the tiny model."""

from __future__ import annotations

TINY_REWARD = {
    "backbone": "tiny",
    "trainable": "all",
    "lr": 3e-3,
    "epochs": 1,
    "batch_size": 8,
    "max_length": 96,
    "eval_fraction": 0.25,
}
"""The ``reward`` section for a tiny reward model that trains in seconds."""
