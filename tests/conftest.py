"""Shared test setup: offline, telemetry off, a throwaway RLHF_HOME unless one is given."""

from __future__ import annotations

import os

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The tiny random model and tokenizer (built once per session; treat as read-only)."""
    from components.base_model import build_tiny

    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real `bentoml serve` of the tiny model for the whole session (token set, loopback)."""
    from tests.serving.server import make_project, start_server

    project = make_project(tmp_path_factory.mktemp("served-project"), reload_poll_seconds=0.0)
    server = start_server(project)
    yield server
    server.kill()
