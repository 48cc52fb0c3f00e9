"""Shared test setup: offline, telemetry off, a throwaway RLHF_HOME and BentoML store unless given, and one
temporary Prefect home (and one local Prefect API, on request) per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from components.common.env import telemetry_off

telemetry_off()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# BentoML's model store for the whole session (the registry saves models there); never the user's ~/bentoml.
# A store made here is removed when the session ends; one given in $BENTOML_HOME is left alone.
if "BENTOML_HOME" not in os.environ:
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="rlhf-test-bentoml-")
    atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)

# Prefect: a fresh home per session (never ~/.prefect), no analytics, never a server the developer configured.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlhf-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The tiny random model and tokenizer (built once per session; treat as read-only)."""
    from components.models.base_model import build_tiny

    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def prefect_api():
    """One real local Prefect API (SQLite) for the whole session: ~7 s to start, ~1 s per flow run after."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real `bentoml serve` of the tiny model for the whole session (token set, loopback)."""
    from tests.serving.server import make_project, start_server

    project = make_project(tmp_path_factory.mktemp("served-project"), reload_poll_seconds=0.0)
    server = start_server(project)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session (Debian's `postgresql` binaries); skipped with the install
    command where they are missing."""
    pytest.importorskip("psycopg", reason="needs psycopg (pip install 'psycopg[binary]'; in the dev extras)")
    from tests.serving.postgres import INSTALL_HINT, bindir, start_postgres

    if bindir() is None:
        pytest.skip(INSTALL_HINT)
    server = start_postgres()
    yield server
    server.stop()
