"""A candidate served beside the champion: a sticky share of conversations, shadow replies, the blind compare
route; every output names its version."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from components.data.served_store import open_store
from tests.serving.server import make_project, register_candidate, start_server


@pytest.mark.slow
def test_canary_answers_a_sticky_share_of_conversations_and_shadows_the_rest(tmp_path):
    project = make_project(
        tmp_path / "proj", reload_poll_seconds=0.0, canary_version="policy-2", canary_share=0.5, shadow=True
    )
    register_candidate(project)
    server = start_server(project)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            models = [m["id"] for m in api.get("/v1/models").json()["data"]]
            assert models[1] == "policy-2" and len(models) == 2
            versions, ids = {}, {}
            for i in range(16):
                body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 2}
                got = api.post("/v1/chat/completions", json=body).json()
                versions[i], ids[i] = got["model_version"], got["id"]
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
            # streamed replies name their version in the header and in every chunk, canary or not
            for i in (0, 1, 2, 3):
                body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 2, "stream": True}
                with api.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.headers["x-model-version"] == versions[i]
                    chunks = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
                assert {c["model_version"] for c in chunks} == {versions[i]}
            # the blind compare route: one reply of each model, versions only in the store
            pair = api.post("/compare", json={"prompt": "Where is my parcel?", "max_new_tokens": 3}).json()
            assert pair["candidate"] and len(pair["replies"]) == 2
            assert "model_version" not in json.dumps(pair)
        store = open_store(project / "live" / "served.sqlite")
        row = store.get(out["id"])
        assert row.model_version == versions[3]
        assert row.params["arm"] == ("canary" if versions[3] == "policy-2" else "champion")
        compared = [store.get(r["id"]) for r in pair["replies"]]
        assert {o.model_version for o in compared} == {models[0], "policy-2"}
        assert {o.group_id for o in compared} == {pair["group_id"]} and {o.endpoint for o in compared} == {"compare"}
        # shadow: every conversation the champion answered was answered by the candidate too, unseen
        expected = sum(v == models[0] for v in versions.values())
        for _ in range(50):  # shadow replies are logged when they finish, independently of the user's
            with store.engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT id, model_version, params FROM served").all()
            shadows = {json.loads(p)["shadow_of"]: v for _, v, p in rows if json.loads(p)["arm"] == "shadow"}
            if len(set(shadows) & set(ids.values())) >= expected:
                break
            time.sleep(0.2)
        for i in range(16):
            if versions[i] == models[0]:
                assert shadows[ids[i]] == "policy-2"
            else:
                assert ids[i] not in shadows  # the canary's own replies are not shadowed
        assert set(shadows) <= {i for i, _, _ in rows}
        store.close()
    finally:
        server.kill()
