"""A candidate served beside the champion: a sticky share of conversations, every output naming its version."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from components.base_model import prepare_tiny
from components.served_store import open_store
from tests.serving.server import make_project, start_server


def _register_candidate(project) -> None:
    """The tiny base as champion and a differently seeded tiny model registered as candidate ``policy-2``."""
    base = prepare_tiny(project / "models" / "base-tiny", seed=0)
    new = prepare_tiny(project / "models" / "policy-2", seed=1)
    code = (
        "import sys; from pathlib import Path; from components.paths import ProjectPaths; "
        "from components.registry import ensure_base_champion, register; "
        "p = ProjectPaths(Path(sys.argv[1])); ensure_base_champion(p, 'tiny', Path(sys.argv[2])); "
        "register(p, 'policy-2', Path(sys.argv[3]), parent='base-tiny')"
    )
    env = {**os.environ, "BENTOML_HOME": str(project / ".bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(project), str(base), str(new)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_canary_answers_a_sticky_share_of_conversations(tmp_path):
    project = make_project(tmp_path / "proj", reload_poll_seconds=0.0, canary_version="policy-2", canary_share=0.5)
    _register_candidate(project)
    server = start_server(project)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            models = [m["id"] for m in api.get("/v1/models").json()["data"]]
            assert models[1] == "policy-2" and len(models) == 2
            versions = {}
            for i in range(16):
                body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 2}
                versions[i] = api.post("/v1/chat/completions", json=body).json()["model_version"]
            assert set(versions.values()) == {models[0], "policy-2"}, versions
            for i in (0, 1, 2):  # the same conversation goes to the same model
                body = {
                    "messages": [
                        {"role": "user", "content": f"question {i}"},
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": "and then?"},
                    ],
                    "max_tokens": 2,
                }
                assert api.post("/v1/chat/completions", json=body).json()["model_version"] == versions[i]
            out = api.post("/generate", json={"prompt": "question 3", "max_new_tokens": 2}).json()
            assert out["model_version"] == versions[3]
        store = open_store(project / "live" / "served.sqlite")
        row = store.get(out["id"])
        assert row.model_version == versions[3] and row.params["arm"] == (
            "canary" if versions[3] == "policy-2" else "champion"
        )
        store.close()
    finally:
        server.kill()
