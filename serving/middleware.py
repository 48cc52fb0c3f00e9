"""One ASGI middleware in front of every route (BentoML's APIs and the mounted app alike).

- **One error shape**: every 4xx/5xx body leaves as OpenAI's ``{"error": {"message", "type", "param",
  "code"}}``, whatever produced it (BentoML's ``{"error"}`` / ``[{"error"}]``, FastAPI's ``{"detail"}``,
  a plain-text 404), so the ``openai`` client's exception carries the message.
- **Origin and Host** (only when no API token is configured, i.e. open on loopback): a request whose
  ``Host`` is not a loopback name, or whose ``Origin`` is a page on another host, is a 403. Without this any
  web page a developer visits could post ratings to the local service (or reach it by DNS rebinding).
- **Auth**: paths under ``/feedback`` and ``/admin`` need ``Authorization: Bearer <token>``: the shared
  ``RLHF_API_TOKEN`` (rater ``api-token``) or one rater's own token (``rlhf raters add``; the rater's
  name), compared in constant time; a missing or wrong token is a 401. With no ``RLHF_API_TOKEN``
  (allowed on a loopback address only) and ``serve.open_feedback`` on, a request without a token passes
  as rater ``local``. The middleware names the rater for the service: it replaces any client-sent
  ``x-rlhf-rater`` header with the name the token gives.
- **Admin routes**: the review queue (``/feedback/queue``, other people's conversations) and ``/admin`` need
  the admin token (``rlhf raters admin``) or ``RLHF_API_TOKEN``; a rater's token there is a 403.
- **Rate limits**: each rater token gets ``serve.rate_limit_per_minute`` requests a minute (bursts of
  ``rate_limit_burst``) on every route; past that a 429 with ``Retry-After`` (:mod:`serving.ratelimit`).
  The admin token and ``RLHF_API_TOKEN`` are the operator's and not limited.
- **JSON only**: a body sent with POST/PUT/PATCH must be ``application/json`` (or ``+json``); anything else
  (``text/plain``, forms, ``multipart/form-data``, no type) is a 415 before any parser sees it.
- **Body cap**: a request body over ``max_body_bytes`` is a 413, whether announced by ``Content-Length``
  or sent chunked; the body is buffered (up to the cap) and replayed to the app.
- **UTF-8**: a body that is not valid UTF-8 is a 400 that says so (rather than a parser error deeper in).

Health and metrics paths pass straight through.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from components.data.raters import ADMIN, LOCAL, SHARED
from serving.ratelimit import RateLimiter, retry_after

EXEMPT = ("/readyz", "/healthz", "/livez", "/metrics")
PROTECTED = ("/feedback", "/admin")
ADMIN_ONLY = ("/feedback/queue", "/admin")
OPERATORS = (ADMIN, SHARED)
"""Who may use the admin routes (and is not rate limited)."""
RATER_HEADER = b"x-rlhf-rater"
"""Set by the middleware (never trusted from the client): who sent this feedback."""

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host_allowed(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without an API token (feedback would be open to the network).

    Here, not in :mod:`serving.service`, so ``rlhf serve`` checks it without importing the service (torch,
    BentoML) in the process it is about to replace with ``bentoml serve``."""
    if not token and not is_loopback(host):
        raise SystemExit(
            f"refusing to serve on {host} without an API token: set RLHF_API_TOKEN (feedback endpoints need it "
            "on any address but loopback), or serve on 127.0.0.1"
        )


def _hostname(authority: str) -> str:
    """The host part of a ``Host`` header value (``name:port``, ``[v6]:port``)."""
    return urlsplit("//" + authority).hostname or ""


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape for one HTTP status."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    try:
        code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        code = None
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _loc_text(loc: Any) -> str | None:
    parts = [str(p) for p in (loc or []) if p != "body"]
    return ".".join(parts) or None


def _message_of(body: Any) -> tuple[str, str | None]:
    """The message (and the offending field, when known) of an error body in any of the shapes in use."""
    if isinstance(body, list):
        if body and isinstance(body[0], dict) and "msg" in body[0]:  # pydantic's list of errors
            parts = [f"{_loc_text(e.get('loc')) or 'body'}: {e.get('msg')}" for e in body if isinstance(e, dict)]
            return "; ".join(parts), _loc_text(body[0].get("loc"))
        return _message_of(body[0]) if body else ("", None)
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list) and detail:
            found, param = _message_of(detail)
            head = body.get("error")
            return (f"{head}: {found}" if isinstance(head, str) else found), param
        if isinstance(body.get("error"), str):
            return body["error"], None
        if isinstance(detail, str):
            return detail, None
        return json.dumps(body), None
    return str(body), None


def openai_error(status: int, raw: bytes) -> bytes:
    """Rewrite an error body into OpenAI's shape (kept as is when it is in that shape already)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]:
        return raw
    message, param = _message_of(parsed) if parsed is not None else ("", None)
    if not message:
        message = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else f"HTTP {status}"
    return json.dumps(error_body(status, message, param)).encode()


async def _reply(
    send: Callable,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    param: str | None = None,
) -> None:
    body = json.dumps(error_body(status, message, param)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _rewrite_errors(send: Callable) -> Callable:
    """Wrap ``send`` so an error response's body is rewritten into OpenAI's shape."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"] = message
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start = held.pop("start")
        body = openai_error(start["status"], b"".join(chunks))
        skip = {b"content-length", b"content-type"}
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in skip]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if start["status"] in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in headers):
            headers.append((b"retry-after", b"1"))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def token_ok(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented bearer token with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def foreign_request(headers: dict[str, str]) -> str | None:
    """Why a request must be refused on an open (token-less) loopback service, or None when it may pass."""
    host = _hostname(headers.get("host", ""))
    if not is_loopback(host):
        return (
            f"Host {headers.get('host', '')!r} is not a loopback name: this service has no API token, so it only "
            "answers requests to localhost/127.0.0.1 (set RLHF_API_TOKEN to serve other names)"
        )
    origin = headers.get("origin")
    if origin is not None and not is_loopback(urlsplit(origin).hostname or ""):
        return (
            f"Origin {origin!r} is a page on another site: this service has no API token and accepts requests only "
            "from its own pages (set RLHF_API_TOKEN and send it as a bearer token)"
        )
    return None


class GuardMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        token: Callable[[], str | None],
        rater_of: Callable[[str], str | None] = lambda _: None,
        open_feedback: Callable[[], bool] = lambda: False,
        limiter: RateLimiter | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.token = token
        self.rater_of = rater_of
        self.open_feedback = open_feedback
        self.limiter = limiter

    def _who(self, presented: str, expected: str | None) -> str | None:
        """Who a bearer token names: ``api-token`` for the shared token, ``admin``, else a rater's own name."""
        if expected and token_ok(presented, expected):
            return SHARED
        return self.rater_of(presented) if presented else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        send = _rewrite_errors(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        expected = self.token()
        if not expected and (why := foreign_request(headers)) is not None:
            await _reply(send, 403, why)
            return
        auth = headers.get("authorization", "")
        scheme, _, presented = auth.partition(" ")
        presented = presented.strip() if scheme.lower() == "bearer" else ""
        who = self._who(presented, expected) if presented else None
        is_open = not expected and self.open_feedback()
        if _under(scope["path"], PROTECTED) and who is None and (auth or not is_open):
            why = "missing" if not auth else "wrong"
            await _reply(
                send,
                401,
                f"{why} API token: send the header 'Authorization: Bearer <token>' with your rater token "
                "(`rlhf raters add NAME`) or the service's RLHF_API_TOKEN",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if _under(scope["path"], ADMIN_ONLY) and who is not None and who not in OPERATORS:
            await _reply(
                send,
                403,
                f"rater {who!r} may not use {scope['path']}: it needs the admin token (`rlhf raters admin`) or the "
                "service's RLHF_API_TOKEN",
            )
            return
        if who is not None and who not in OPERATORS and self.limiter is not None:
            wait = self.limiter.take(who)
            if wait > 0:
                await _reply(
                    send,
                    429,
                    f"rater {who!r} sent too many requests (serve.rate_limit_per_minute): retry after "
                    f"{retry_after(wait)} s",
                    [(b"retry-after", retry_after(wait).encode())],
                )
                return
        rater = (who or (SHARED if expected else LOCAL)).encode()
        scope = {
            **scope,
            "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != RATER_HEADER]
            + [(RATER_HEADER, rater)],
        }
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        content_type = headers.get("content-type", "")
        if not _is_json(content_type):
            await _reply(
                send,
                415,
                f"Content-Type {content_type or '(none)'!r} is not accepted: send the body as JSON with "
                "'Content-Type: application/json'",
            )
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


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every exception of an API, 4xx included, at ERROR with a traceback. This filter turns
    those of client errors (bad input, not found, conflicts) into one WARNING line with the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = _client_status(exc)
        if status is None:
            return True
        args = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        record.msg = "%s %s -> %d: %s"
        record.args = (args[1], args[0], status, _describe(exc))
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = None
        record.exc_text = None
        return True


def _client_status(exc: BaseException) -> int | None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    code = getattr(exc, "error_code", None)
    value = getattr(code, "value", code)
    return value if isinstance(value, int) and 400 <= value < 500 else None


def _describe(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{_loc_text(e.get('loc')) or 'body'}: {e.get('msg')}" for e in exc.errors())
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
