"""The guard in front of every route: one error shape, JSON-only bodies, Host/Origin checks, the rater header."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from serving.middleware import GuardMiddleware, openai_error
from serving.ratelimit import RateLimiter

TOKEN = "t0k"


async def echo(scope, receive, send):
    """A stand-in app: answers 200 with the rater header and body it got; ``/fail`` answers FastAPI's 422."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/fail":
        out = json.dumps({"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "bad role", "type": "x"}]})
        status = 422
    else:
        rater = dict(scope["headers"]).get(b"x-rlhf-rater", b"").decode()
        out, status = json.dumps({"rater": rater, "body": body.decode()}), 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out.encode()})


def client(token: str | None) -> TestClient:
    """An open loopback service (``open_feedback`` on) without a token, or a guarded one with ``token``."""
    app = GuardMiddleware(echo, max_body_bytes=1000, token=lambda: token, open_feedback=lambda: True)
    return TestClient(app, base_url="http://127.0.0.1:3000")


def shaped(r, status: int, says: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and says in error["message"], error


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=x", None],
)
def test_non_json_bodies_are_415(content_type):
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/generate", "/feedback", "/v1/chat/completions"):
        r = client(None).post(path, content=b"a=1", headers=headers)
        shaped(r, 415, "application/json")


def test_json_passes_and_the_client_cannot_name_the_rater():
    r = client(None).post("/feedback", json={"id": "x"}, headers={"x-rlhf-rater": "mallory"})
    assert r.status_code == 200 and r.json()["rater"] == "local"
    r = client(TOKEN).post(
        "/feedback", json={}, headers={"x-rlhf-rater": "mallory", "Authorization": f"Bearer {TOKEN}"}
    )
    assert r.json()["rater"] == "api-token"
    r = client(None).post("/generate", content=b"{}", headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_open_service_refuses_foreign_origins_and_hosts():
    c = client(None)
    shaped(c.post("/feedback", json={}, headers={"origin": "https://evil.example"}), 403, "another site")
    shaped(c.get("/feedback/queue", headers={"host": "evil.example"}), 403, "loopback")
    assert c.post("/feedback", json={}, headers={"origin": "http://localhost:3000"}).status_code == 200
    assert c.get("/rate", headers={"host": "[::1]:3000"}).status_code == 200
    # with a token the bearer check guards writes; other hosts are allowed
    assert client(TOKEN).get("/v1/models", headers={"host": "serve.example"}).status_code == 200


def test_errors_of_every_shape_leave_in_openai_shape():
    shaped(client(TOKEN).post("/feedback", json={}), 401, "RLHF_API_TOKEN")
    r = client(None).post("/fail", json={})
    shaped(r, 422, "messages.0.role: bad role")
    assert r.json()["error"]["param"] == "messages.0.role" and r.json()["error"]["type"] == "invalid_request_error"
    bento = json.loads(openai_error(400, json.dumps([{"error": "prompt is empty"}]).encode()))
    assert bento["error"]["message"] == "prompt is empty" and bento["error"]["code"] == "bad_request"
    assert json.loads(openai_error(404, b"Not Found"))["error"]["type"] == "not_found_error"
    assert json.loads(openai_error(503, b""))["error"]["message"] == "Service Unavailable"


def guarded(
    token: str | None,
    *,
    raters: dict[str, str] | None = None,
    open_feedback: bool = True,
    limiter: RateLimiter | None = None,
) -> TestClient:
    app = GuardMiddleware(
        echo,
        max_body_bytes=1000,
        token=lambda: token,
        rater_of=lambda t: (raters or {}).get(t),
        open_feedback=lambda: open_feedback,
        limiter=limiter,
    )
    return TestClient(app, base_url="http://127.0.0.1:3000")


def test_each_rater_token_names_its_rater_and_the_shared_token_stays_api_token():
    c = guarded(TOKEN, raters={"rt-alice": "alice"})
    assert c.post("/feedback", json={}, headers={"Authorization": "Bearer rt-alice"}).json()["rater"] == "alice"
    assert c.post("/feedback", json={}, headers={"Authorization": f"Bearer {TOKEN}"}).json()["rater"] == "api-token"
    for auth in ({}, {"Authorization": "Bearer rt-bob"}):
        shaped(c.post("/feedback", json={}, headers=auth), 401, "rlhf raters add")
    # open loopback: no token passes as 'local', a rater's token names them, a wrong one is refused
    c = guarded(None, raters={"rt-alice": "alice"})
    assert c.post("/feedback", json={}).json()["rater"] == "local"
    assert c.post("/feedback", json={}, headers={"Authorization": "Bearer rt-alice"}).json()["rater"] == "alice"
    shaped(c.post("/feedback", json={}, headers={"Authorization": "Bearer nope"}), 401, "wrong API token")


def test_open_feedback_false_needs_a_token_even_on_loopback():
    c = guarded(None, raters={"rt-alice": "alice"}, open_feedback=False)
    shaped(c.post("/feedback", json={"id": "x"}), 401, "missing API token")
    shaped(c.get("/feedback/queue"), 401, "missing API token")
    assert c.post("/feedback", json={}, headers={"Authorization": "Bearer rt-alice"}).json()["rater"] == "alice"
    assert c.post("/generate", json={"prompt": "hi"}).status_code == 200  # generation stays open


def test_the_service_reads_open_feedback_and_the_raters_file_of_its_project(tmp_path, monkeypatch):
    from components.data.raters import add_rater, raters_file
    from components.project.paths import ProjectPaths
    from serving.service import guard_options
    from tests.serving.server import make_project

    monkeypatch.delenv("RLHF_API_TOKEN", raising=False)
    for open_feedback, status in ((True, 200), (None, 401)):  # None: the repository's params.yaml says
        serve = {} if open_feedback is None else {"open_feedback": open_feedback}
        paths = ProjectPaths(make_project(tmp_path / str(open_feedback), **serve))
        c = TestClient(GuardMiddleware(echo, **guard_options(paths)), base_url="http://127.0.0.1:3000")
        assert c.post("/feedback", json={}).status_code == status
        token = add_rater(raters_file(paths.live), "erin")  # added while it runs: no restart needed
        assert c.post("/feedback", json={}, headers={"Authorization": f"Bearer {token}"}).json()["rater"] == "erin"

    # the rate limit comes from serve.rate_limit_per_minute / rate_limit_burst
    paths = ProjectPaths(make_project(tmp_path / "limited", rate_limit_per_minute=1, rate_limit_burst=2))
    c = TestClient(GuardMiddleware(echo, **guard_options(paths)), base_url="http://127.0.0.1:3000")
    erin = {"Authorization": f"Bearer {add_rater(raters_file(paths.live), 'erin')}"}
    assert [c.post("/feedback", json={}, headers=erin).status_code for _ in range(3)] == [200, 200, 429]


def test_the_queue_and_admin_routes_need_the_admin_token_or_the_service_token():
    c = guarded(TOKEN, raters={"rt-alice": "alice", "at-1": "admin"})
    for path in ("/feedback/queue", "/admin/reload"):
        shaped(c.get(path, headers={"Authorization": "Bearer rt-alice"}), 403, "admin token")
        shaped(c.get(path), 401, "missing API token")
        assert c.get(path, headers={"Authorization": "Bearer at-1"}).json()["rater"] == "admin"
        assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).json()["rater"] == "api-token"
    assert c.post("/feedback", json={}, headers={"Authorization": "Bearer rt-alice"}).json()["rater"] == "alice"
    # the service's default: no open loopback, so the queue needs the admin token there too
    c = guarded(None, raters={"rt-alice": "alice", "at-1": "admin"}, open_feedback=False)
    shaped(c.get("/feedback/queue", headers={"Authorization": "Bearer rt-alice"}), 403, "rlhf raters admin")
    assert c.get("/feedback/queue", headers={"Authorization": "Bearer at-1"}).status_code == 200


def test_each_rater_token_has_its_own_rate_limit_answered_with_429_and_retry_after():
    now = [100.0]
    limiter = RateLimiter(per_minute=30, burst=2, clock=lambda: now[0])  # one request back every 2 s
    c = guarded(TOKEN, raters={"rt-alice": "alice", "rt-bob": "bob", "at-1": "admin"}, limiter=limiter)
    alice, bob = ({"Authorization": f"Bearer {t}"} for t in ("rt-alice", "rt-bob"))
    assert [c.post("/feedback", json={}, headers=alice).status_code for _ in range(2)] == [200, 200]
    r = c.post("/generate", json={"prompt": "hi"}, headers=alice)  # every route counts
    shaped(r, 429, "too many requests")
    assert r.headers["retry-after"] == "2" and r.json()["error"]["type"] == "rate_limit_error"
    assert c.post("/feedback", json={}, headers=bob).status_code == 200  # bob has a bucket of his own
    for auth in ({"Authorization": "Bearer at-1"}, {"Authorization": f"Bearer {TOKEN}"}):  # operators: no limit
        assert all(c.post("/feedback", json={}, headers=auth).status_code == 200 for _ in range(5))
    now[0] += 1.0
    assert c.post("/feedback", json={}, headers=alice).status_code == 429
    now[0] += 1.0
    assert c.post("/feedback", json={}, headers=alice).status_code == 200
