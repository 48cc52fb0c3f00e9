"""Shared test setup: offline, telemetry off, a throwaway RLHF_HOME and BentoML store unless given."""

from __future__ import annotations

import os
import tempfile

from components.env import telemetry_off

telemetry_off()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# BentoML's model store for the whole session (the registry saves models there); never the user's ~/bentoml.
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="rlhf-test-bentoml-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The tiny random model and tokenizer (built once per session; treat as read-only)."""
    from components.base_model import build_tiny

    return build_tiny(seed=0)
