"""One ASGI middleware in front of every route (BentoML's APIs and the mounted app alike).

- **Auth**: paths under ``/feedback`` and ``/admin`` need ``Authorization: Bearer <RLHF_API_TOKEN>``,
  compared in constant time; a missing or wrong token is a 401. With no token configured (allowed on a
  loopback address only) they are open.
- **Body cap**: a request body over ``max_body_bytes`` is a 413, whether announced by ``Content-Length``
  or sent chunked; the body is buffered (up to the cap) and replayed to the app.
- **UTF-8**: a JSON body that is not valid UTF-8 is a 400 that says so (rather than a parser error deeper in).

Health and metrics paths pass straight through.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

EXEMPT = ("/readyz", "/healthz", "/livez", "/metrics")
PROTECTED = ("/feedback", "/admin")


def _protected(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


async def _reply(send: Callable, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def token_ok(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented bearer token with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class GuardMiddleware:
    def __init__(self, app: Any, *, max_body_bytes: int, token: Callable[[], str | None]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.token = token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        expected = self.token()
        if expected and _protected(scope["path"]):
            auth = headers.get("authorization", "")
            scheme, _, presented = auth.partition(" ")
            if not token_ok(presented.strip() if scheme.lower() == "bearer" else None, expected):
                why = "missing" if not auth else "wrong"
                await _reply(
                    send,
                    401,
                    f"{why} API token: send the header 'Authorization: Bearer <token>' with the service's "
                    "RLHF_API_TOKEN",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_big = f"request body over {limit} bytes: send a shorter prompt or fewer messages"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _reply(send, 413, too_big)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reply(send, 413, too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if "json" in headers.get("content-type", "json"):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await _reply(send, 400, f"request body is not valid UTF-8 (byte {exc.start}): send UTF-8 JSON")
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
