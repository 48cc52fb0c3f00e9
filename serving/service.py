"""The BentoML service: serves the champion, logs every output before answering, takes feedback.

Start it with ``rlhf serve`` (or ``bentoml serve serving.service:RLHFService``). The project it serves is
found from ``$RLHF_PROJECT`` (a folder holding ``params.yaml``) or the working directory.

Routes: ``POST /generate`` and ``POST /feedback`` (BentoML APIs); ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /feedback/queue`` and the rater page ``GET /rate`` (a mounted FastAPI app);
BentoML's ``/healthz``, ``/readyz``, ``/metrics``, ``/docs.json``; the mounted app's ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BadInput, BentoMLException, NotFound, ServiceUnavailable
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field

from components.config import load_section
from components.config.model import ModelConfig
from components.config.serve import ServeConfig, load_serve_config
from components.data.raters import RaterBook, raters_file
from components.data.served_store import (
    AlreadyRated,
    FeedbackConflict,
    ServedOutput,
    UnknownServedId,
    new_id,
    open_store,
    store_url,
)
from components.decide import canary as canary_plan
from components.models.generation import RowParams, RowResult, encode_chat
from components.models.precision import autocast
from components.models.shared_prefix import template_prefix
from components.project.paths import ProjectPaths
from serving import model_source
from serving.middleware import (
    RATER_HEADER,
    ClientErrorLogFilter,
    GuardMiddleware,
    check_host_allowed,
    error_body,
)
from serving.ratelimit import RateLimiter
from serving.scheduler import DeadlineExceeded, Engine, Finished, QueueFull, Row
from serving.schemas import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChoiceMessage,
    CompareReply,
    CompareRequest,
    CompareResponse,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    QueueItem,
    QueuePage,
    Usage,
)

log = logging.getLogger("rlhf.serving")

requests_total = bentoml.metrics.Counter(
    name="rlhf_requests_total",
    documentation="Replies served, by route and model version",
    labelnames=["endpoint", "model_version"],
)
tokens_total = bentoml.metrics.Counter(
    name="rlhf_completion_tokens_total",
    documentation="Completion tokens served, by model version",
    labelnames=["model_version"],
)
feedback_total = bentoml.metrics.Counter(
    name="rlhf_feedback_total",
    documentation="Feedback accepted (new, not duplicates), by kind and model version of the rated output",
    labelnames=["kind", "model_version"],
)
prompt_tokens_total = bentoml.metrics.Counter(
    name="rlhf_prompt_tokens_total",
    documentation="Prompt tokens of admitted replies: read from the shared prefix's KV cache, or prefilled",
    labelnames=["source"],
)
batch_sizes = bentoml.metrics.Histogram(
    name="rlhf_batch_size",
    documentation="Requests sampled together per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


def _refuse_public_without_token(host: str) -> None:
    """In a worker: refuse, and stop the BentoML server that started us (else it would respawn the worker)."""
    try:
        check_host_allowed(host, _token())
    except SystemExit as exc:
        log.error("%s", exc)
        import signal

        import psutil

        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(os.getppid())
            if "bentoml" in " ".join(parent.cmdline()):
                parent.send_signal(signal.SIGTERM)
        raise


def bound_host(argv: Sequence[str] | None = None) -> str | None:
    """The address this worker's listening socket is bound to (BentoML hands workers the socket as ``--fd N``).

    Lets the service check its real address even when started with ``bentoml serve`` directly (whose
    default host is 0.0.0.0), not only through ``rlhf serve``.
    """
    import socket
    import sys

    args = list(sys.argv if argv is None else argv)
    if "--fd" not in args or args.index("--fd") + 1 >= len(args):
        return None
    try:
        fd = int(args[args.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as sock:
            return str(sock.getsockname()[0])
    except (ValueError, OSError):
        return None


@dataclass(frozen=True)
class Loaded:
    model: Any
    tok: Any
    version: str
    spec: str


@dataclass(frozen=True)
class Job:
    id: str
    """The served-output id this reply will have (known up front, so a stream can name it)."""
    ids: list[int]
    """The templated prompt's token ids (message text encoded as text: :func:`encode_chat`)."""
    prompt: str
    messages: list[dict[str, str]]
    params: RowParams
    endpoint: str
    group_id: str | None
    start: float
    arm: str = "champion"
    """Which model answers: ``champion``, or the candidate as ``canary`` (the user sees its reply) or ``shadow``
    (it answered the same request unseen; only logged)."""
    shadow_of: str | None = None
    """For a shadow reply: the id of the reply the user got."""


@dataclass(frozen=True)
class Served:
    id: str
    result: RowResult
    model_version: str


class Overloaded(ServiceUnavailable):
    """503 (the middleware adds ``Retry-After``): the queue is full or the request waited past its deadline."""


def _bad(message: str) -> BadInput:
    return BadInput(message)


def _no_nul(text: str, what: str) -> None:
    """400 for a NUL character: no prompt or comment needs one, and PostgreSQL text cannot store it."""
    if "\x00" in text:
        raise _bad(f"{what} contains a NUL character (\\u0000), which text fields cannot store: remove it")


class Conflict(BentoMLException):
    """409: the request contradicts what is stored (a rater judging the same output twice, differently)."""

    error_code = HTTPStatus.CONFLICT


openai_app = FastAPI(
    title="rlhf-loop",
    description="OpenAI-compatible chat API, review queue and rater page of the rlhf-loop service.",
    version="1",
)

_static = resources.files("serving") / "static"
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
"""The rater page's own assets only, never inside another site's frame (no clickjacking of the rating keys)."""


@openai_app.exception_handler(BentoMLException)
async def _bentoml_error(request: Request, exc: BentoMLException) -> JSONResponse:
    """The chat routes raise the same errors as the BentoML APIs; answer them the same way (one line logged)."""
    status = int(exc.error_code)
    message = str(exc) if status < 500 else f"{exc}; nothing was served, try again"
    (log.warning if status < 500 else log.error)("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return JSONResponse(error_body(status, message), status_code=status)


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())

unmatched_total = bentoml.metrics.Counter(
    name="rlhf_unmatched_requests_total",
    documentation="Requests to paths the service does not have (one series, whatever the path)",
)
FIXED_PATHS = frozenset(
    {"/", "/generate", "/feedback", "/docs.json", "/healthz", "/livez", "/readyz", "/metrics", "/rate/rate.js"}
    | {"/rate/rate.css"}
)


def _known_path(path: str) -> bool:
    """A route of this service (a template's path, not one that only matches a wildcard parameter)."""
    return path in FIXED_PATHS or any(getattr(r, "path", None) == path for r in openai_app.routes)


def _label_known_paths_only() -> None:
    """BentoML's traffic metrics label every request by its raw path, so random 404s would grow /metrics
    without bound; requests to unknown paths skip them and count in one series of our own instead."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    if getattr(RunnerTrafficMetricsMiddleware, "_rlhf_known_only", False):
        return
    labelled = RunnerTrafficMetricsMiddleware.__call__

    async def call(self: Any, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _known_path(scope["path"]):
            unmatched_total.inc()
            await self.app(scope, receive, send)
            return
        await labelled(self, scope, receive, send)

    RunnerTrafficMetricsMiddleware.__call__ = call  # type: ignore[method-assign]
    RunnerTrafficMetricsMiddleware._rlhf_known_only = True  # type: ignore[attr-defined]


_label_known_paths_only()


def _count_prompt_tokens(cached: int, computed: int) -> None:
    prompt_tokens_total.labels(source="prefix_cache").inc(cached)
    prompt_tokens_total.labels(source="prefilled").inc(computed)


@bentoml.asgi_app(openai_app, path="/")
@bentoml.service(name="rlhf", workers=1, traffic={"timeout": 600})
class RLHFService:
    """Serves the champion policy; every reply is logged (with its id and model version) before it is sent."""

    def __init__(self) -> None:
        import torch

        self.paths = ProjectPaths.discover()
        self.cfg: ServeConfig = load_serve_config(self.paths, _params_override())
        self.model_cfg = load_section(ModelConfig, "model", _params_override() or self.paths.params)
        _refuse_public_without_token(bound_host() or os.environ.get("RLHF_SERVE_HOST", "127.0.0.1"))
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        self.store = open_store(store_url(self.cfg, self.paths))
        self._swap = threading.Lock()
        self.loaded = self._load(model_source.resolve(self.paths))
        self.engines = {"champion": self._engine(lambda: self.loaded)}
        self._candidate: tuple[Loaded, canary_plan.CanaryAssignment] | None = None
        self._candidate_model: Loaded | None = None
        """The last candidate loaded (its engine finishes rows already running after it leaves canary)."""
        self.refresh_canary(fail=True)
        self._stop = threading.Event()
        if self.cfg.reload_poll_seconds > 0:
            threading.Thread(target=self._poll, name="champion-poll", daemon=True).start()
        log.info("serving %s from project %s", self.loaded.version, self.paths.root)

    # -- model and batches ----------------------------------------------------------------------

    def _engine(self, loaded: Callable[[], Loaded]) -> Engine:
        def current() -> tuple[Any, Any, str]:
            got = loaded()
            return got.model, got.tok, got.version

        return Engine(
            current,
            max_rows=int(os.environ.get("RLHF_MAX_BATCH_SIZE", self.cfg.max_batch_size)),
            max_queued=self.cfg.max_queued,
            on_finish=self._record,
            on_step=lambda n: batch_sizes.observe(n) if n else None,
            autocast=lambda model: autocast(model.device, self.cfg.bf16),
            prefix=self._prefix if self.cfg.prefix_cache else None,
            on_prefill=_count_prompt_tokens,
            prefill_rows=self.cfg.prefill_rows,
        )

    def _prefix(self, tok: Any) -> list[int]:
        """The token ids every prompt with the configured system prompt opens with (the engine caches their KV)."""
        return template_prefix(tok, self.model_cfg.system_prompt)

    @property
    def canary(self) -> Loaded | None:
        """The candidate served beside the champion (canary share or shadow), if any."""
        got = self._candidate
        return None if got is None else got[0]

    def refresh_canary(self, *, fail: bool = False) -> bool:
        """Serve the candidate that ``live/canary.json`` (else ``serve.canary_*``) names; True when it changed.

        ``fail``: raise when ``serve.canary_version`` cannot be loaded (at start); a version named by the
        assignment file, and any failure later, is logged and the service keeps what it serves."""
        try:
            plan = canary_plan.effective(self.paths, self.cfg.canary_version, self.cfg.canary_share, self.cfg.shadow)
            current = self._candidate
            if plan is None:
                if current is None:
                    return False
                self._candidate = None
                log.info("canary %s taken off: the champion answers everything", current[0].version)
                return True
            if current is not None and current[1] == plan:
                return False
            if current is not None and current[0].version == plan.version:
                loaded = current[0]
            else:
                loaded = self._load(model_source.resolve_version(self.paths, plan.version))
        except Exception:
            if fail and canary_plan.read_assignment(self.paths) is None:
                raise  # serve.canary_version names a version that cannot be served: refuse to start
            log.exception("canary check failed; serving as before")
            return False
        with self._swap:
            self._candidate_model = loaded
            if "canary" not in self.engines:
                self.engines["canary"] = self._engine(lambda: self._candidate_model)
            self._candidate = (loaded, plan)
        log.info(
            "canary %s answers %.0f%% of conversations%s (%s)",
            loaded.version,
            100 * plan.share,
            ", and every request in shadow" if plan.shadow else "",
            plan.reason or "assigned",
        )
        return True

    def _arm(self, messages: list[dict[str, str]], user: str | None = None) -> tuple[str, Loaded]:
        """Champion or canary for this conversation: sticky, by a hash of its first user message and ``user``."""
        got = self._candidate
        if got is None or got[1].share <= 0:
            return "champion", self.loaded
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        digest = hashlib.sha256(f"{user or ''}\x1f{first}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        return ("canary", got[0]) if bucket < got[1].share else ("champion", self.loaded)

    def _load(self, source: model_source.ModelSource) -> Loaded:
        from components.models.base_model import load_base

        t0 = time.perf_counter()
        model, tok = load_base(source.spec, dtype=self.model_cfg.dtype)
        log.info("loaded model %s (%s) in %.1f s", source.version, source.spec, time.perf_counter() - t0)
        return Loaded(model, tok, source.version, source.spec)

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.reload_poll_seconds):
            self.reload_if_changed()
            self.refresh_canary()

    def reload_if_changed(self) -> bool:
        """Load the champion if it changed; batches already running finish on the old weights."""
        try:
            source = model_source.resolve(self.paths)
            if source.version == self.loaded.version:
                return False
            fresh = self._load(source)
        except Exception:
            log.exception("champion check failed; still serving %s", self.loaded.version)
            return False
        with self._swap:
            old, self.loaded = self.loaded.version, fresh
        log.info("hot reload: %s -> %s", old, fresh.version)
        return True

    def _record(self, finished: list[Finished]) -> None:
        """Log finished replies in one transaction (called by the engine before any caller hears of them)."""
        done = time.perf_counter()
        self.store.log_outputs(
            [
                ServedOutput(
                    id=job.id,
                    prompt=job.prompt,
                    reply=f.result.text,
                    model_version=f.model_version,
                    messages=job.messages,
                    params={
                        "max_new_tokens": job.params.max_new_tokens,
                        "temperature": job.params.temperature,
                        "top_p": job.params.top_p,
                        "seed": job.params.seed,
                        "stop": list(job.params.stop),
                        "batch_size": f.row.peak_rows,
                        "arm": job.arm,
                        **({"shadow_of": job.shadow_of} if job.shadow_of else {}),
                    },
                    endpoint=job.endpoint,
                    prompt_tokens=f.result.prompt_tokens,
                    completion_tokens=f.result.completion_tokens,
                    finish_reason=f.result.finish_reason,
                    latency_ms=(done - job.start) * 1000.0,
                    group_id=job.group_id,
                )
                for f in finished
                for job in [f.row.tag]
            ]
        )
        for f in finished:
            endpoint = "shadow" if f.row.tag.arm == "shadow" else f.row.tag.endpoint
            requests_total.labels(endpoint=endpoint, model_version=f.model_version).inc()
            tokens_total.labels(model_version=f.model_version).inc(f.result.completion_tokens)

    def _rows(
        self, jobs: list[Job], on_text: Callable[[int, str], None] | None = None, *, shadow: bool = True
    ) -> list[Row]:
        """Queue the jobs' rows (all or none; each to its model's engine): 503 when a queue is full. With a
        candidate in shadow mode, it also answers each champion job, unseen (``shadow``)."""
        deadline = time.monotonic() + self.cfg.deadline_s
        rows = [
            Row(
                j.ids,
                j.params,
                deadline=deadline,
                tag=j,
                on_text=None if on_text is None else functools.partial(on_text, i),
            )
            for i, j in enumerate(jobs)
        ]
        queued: list[Row] = []
        try:
            for arm in dict.fromkeys(j.arm for j in jobs):
                mine = [r for r in rows if r.tag.arm == arm]
                self.engines["canary" if arm == "shadow" else arm].submit(mine)
                queued += mine
        except QueueFull as exc:
            for r in queued:
                r.cancel()
            raise Overloaded(f"the service is busy ({exc}): retry after a second") from exc
        if shadow:
            self._shadow(jobs, deadline)
        return rows

    def _shadow(self, jobs: list[Job], deadline: float) -> None:
        """The candidate in shadow mode answers the champion's jobs too; its replies are only logged (a full
        queue skips them: the user's request never waits for the shadow)."""
        got = self._candidate
        if got is None or not got[1].shadow or got[0].version == self.loaded.version:
            return
        loaded = got[0]
        try:
            shadows = [
                dataclasses.replace(
                    j,
                    id=new_id(),
                    ids=self._prompt_ids(loaded, j.messages, j.params.max_new_tokens),
                    arm="shadow",
                    shadow_of=j.id,
                    group_id=None,
                )
                for j in jobs
                if j.arm == "champion"
            ]
            if shadows:
                self.engines["canary"].submit([Row(j.ids, j.params, deadline=deadline, tag=j) for j in shadows])
        except (QueueFull, BadInput) as exc:
            log.warning("shadow %s skipped for %d job(s): %s", loaded.version, len(jobs), exc)

    async def _sample(self, jobs: list[Job], request: Any = None, *, shadow: bool = True) -> list[Served]:
        """Generate the jobs' replies; a client that hangs up cancels its rows (stored as ``aborted``)."""
        rows = self._rows(jobs, shadow=shadow)
        futures = [asyncio.wrap_future(r.future) for r in rows]
        try:
            while not all(f.done() for f in futures):
                await asyncio.wait(futures, timeout=0.5)
                if request is not None and not all(f.done() for f in futures) and await request.is_disconnected():
                    log.info("client went away: cancelling %d row(s)", len(rows))
                    raise asyncio.CancelledError
            return [_served(f.result()) for f in futures]
        except DeadlineExceeded as exc:
            raise Overloaded(f"the request waited {self.cfg.deadline_s:.0f} s for a place: retry later") from exc
        except (asyncio.CancelledError, GeneratorExit):
            for r in rows:
                r.cancel()
            raise
        except BentoMLException:
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise ServiceUnavailable(f"generation failed ({type(exc).__name__}); nothing was served") from exc

    def _messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if messages and messages[0]["role"] == "system":
            return messages
        return [{"role": "system", "content": self.model_cfg.system_prompt}, *messages]

    def _check_text(self, text: str, what: str) -> None:
        if not text.strip():
            raise _bad(f"{what} is empty: send some text")
        _no_nul(text, what)
        if len(text) > self.cfg.max_prompt_chars:
            raise _bad(f"{what} has {len(text)} characters; the limit is {self.cfg.max_prompt_chars}: shorten it")

    def _check_tokens(self, n: int, what: str) -> None:
        if not 1 <= n <= self.cfg.max_new_tokens_limit:
            raise _bad(f"{what} must be from 1 to {self.cfg.max_new_tokens_limit}, got {n}")

    def _prompt_ids(self, loaded: Loaded, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
        """The conversation's token ids (message text stays text); refused when it and the reply would not
        fit the model's context."""
        ids = encode_chat(loaded.tok, messages)
        context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0)
        if context and len(ids) + max_new_tokens > context:
            raise _bad(
                f"the prompt has {len(ids)} tokens and the reply may have {max_new_tokens}: together more than the "
                f"model's context of {context} tokens; shorten the conversation or ask for fewer tokens"
            )
        return ids

    # -- BentoML APIs ---------------------------------------------------------------------------

    @bentoml.api
    async def generate(
        self,
        prompt: Annotated[str, Field(description="The user's message.")],
        max_new_tokens: Annotated[int | None, Field(ge=1, description="Reply length limit in tokens.")] = None,
        temperature: Annotated[float, Field(ge=0.0, le=2.0, description="0 = greedy.")] = 0.7,
        top_p: Annotated[float, Field(ge=0.0, le=1.0, description="Nucleus mass; 0 keeps only the top token.")] = 1.0,
        seed: Annotated[int | None, Field(ge=0, le=2**63 - 1, description="Same seed, same reply.")] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> GenerateResponse:
        """One reply to one prompt (it joins the running batch at the next step); the reply is logged first."""
        job = self._generate_job(prompt, max_new_tokens, temperature, top_p, seed)
        (out,) = await self._sample([job], ctx.request if ctx is not None else None)
        return _generated(out)

    def _generate_job(
        self, prompt: str, max_new_tokens: int | None, temperature: float, top_p: float, seed: int | None
    ) -> Job:
        self._check_text(prompt, "prompt")
        n_tokens = self.cfg.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        self._check_tokens(n_tokens, "max_new_tokens")
        messages = self._messages([{"role": "user", "content": prompt}])
        arm, loaded = self._arm(messages)
        return Job(
            new_id(),
            self._prompt_ids(loaded, messages, n_tokens),
            prompt,
            messages,
            RowParams(n_tokens, temperature, top_p, seed),
            "generate",
            None,
            time.perf_counter(),
            arm,
        )

    @bentoml.api
    def feedback(
        self,
        id: Annotated[str | None, Field(max_length=64, description="Served-output id to rate.")] = None,
        rating: Annotated[int | None, Field(ge=1, le=5, description="1 (bad) .. 5 (excellent).")] = None,
        comment: Annotated[str | None, Field(max_length=2000)] = None,
        chosen_id: Annotated[str | None, Field(max_length=64, description="The better reply's id.")] = None,
        rejected_id: Annotated[str | None, Field(max_length=64, description="The worse reply's id.")] = None,
        tie: Annotated[bool, Field(description="Neither is better (chosen/rejected order does not matter).")] = False,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> FeedbackResponse:
        """A rating of one served output, or a choice between two replies to the same prompt (bearer token).

        The rater is who the token says (set by the middleware), never a name the client sends. One judgement
        per output (or pair) and rater: the same one again is a duplicate (200), a different one is a 409.
        """
        who = ctx.request.headers.get(RATER_HEADER.decode(), "local") if ctx is not None else "local"
        as_rating = id is not None or rating is not None
        as_pair = chosen_id is not None or rejected_id is not None
        if as_rating == as_pair:
            raise _bad('send either {"id", "rating"} (a rating) or {"chosen_id", "rejected_id"} (a pair)')
        for name, value in (("id", id), ("comment", comment), ("chosen_id", chosen_id), ("rejected_id", rejected_id)):
            if value is not None:
                _no_nul(value, name)
        try:
            if as_rating:
                if id is None or rating is None:
                    raise _bad("a rating needs both id and rating (an integer from 1 to 5)")
                got = self.store.record_rating(id, rating, comment=comment, annotator=who)
                rated = [id]
                kind = "rating"
            else:
                if chosen_id is None or rejected_id is None:
                    raise _bad("a pair needs both chosen_id and rejected_id")
                got = self.store.record_pair(chosen_id, rejected_id, tie=tie, annotator=who)
                rated = [chosen_id]
                kind = "pair"
        except UnknownServedId as exc:
            raise NotFound(str(exc)) from exc
        except AlreadyRated as exc:
            raise Conflict(str(exc)) from exc
        except FeedbackConflict as exc:
            raise _bad(str(exc)) from exc
        if got.created:
            output = self.store.get(rated[0])
            feedback_total.labels(kind=kind, model_version=output.model_version if output else "?").inc()
        return FeedbackResponse(accepted=True, kind=kind, duplicate=not got.created)

    # -- mounted app: OpenAI-compatible chat, models, review queue, rater page -------------------

    @openai_app.post("/v1/chat/completions", response_model=ChatResponse)
    async def chat_completions(self, req: ChatRequest, request: Request) -> Any:
        """OpenAI-compatible chat completion (``stream`` sends each piece of text as it is sampled, as
        server-sent events ending with ``[DONE]``; the reply is in the store before its final chunk)."""
        jobs = self._chat_jobs(req)
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()

            def on_text(i: int, piece: str) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (i, piece))

            rows = self._rows(jobs, on_text)  # a full queue is a 503 before the stream starts
            for i, r in enumerate(rows):
                r.future.add_done_callback(lambda _, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, None)))
            version = self._version_of(jobs[0])
            return StreamingResponse(
                _sse(jobs, rows, events, created, version, include_usage),
                media_type="text/event-stream",
                headers={"x-model-version": version, "cache-control": "no-store"},
            )
        outs = await self._sample(jobs, request)
        version = outs[0].model_version
        prompt_tokens = outs[0].result.prompt_tokens
        completion = sum(o.result.completion_tokens for o in outs)
        return ChatResponse(
            id=outs[0].id,
            created=created,
            model=version,
            model_version=version,
            choices=[
                Choice(
                    index=i, message=ChoiceMessage(content=o.result.text), finish_reason=o.result.finish_reason, id=o.id
                )
                for i, o in enumerate(outs)
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
            ),
        )

    @openai_app.post("/generate/stream", response_class=StreamingResponse)
    async def generate_stream(self, req: GenerateRequest) -> StreamingResponse:
        """``/generate`` as server-sent events: ``{"id", "delta"}`` as text is sampled, then ``/generate``'s
        whole response once the reply is stored, then ``[DONE]``; a client that hangs up cancels the reply."""
        job = self._generate_job(req.prompt, req.max_new_tokens, req.temperature, req.top_p, req.seed)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[str | None] = asyncio.Queue()
        (row,) = self._rows([job], lambda _, piece: loop.call_soon_threadsafe(events.put_nowait, piece))
        row.future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
        headers = {"cache-control": "no-store", "x-model-version": self._version_of(job)}
        return StreamingResponse(_generate_sse(job, row, events), media_type="text/event-stream", headers=headers)

    def _version_of(self, job: Job) -> str:
        """The version that will answer ``job`` (the stream's header names it before the first token)."""
        got = self._candidate
        return got[0].version if job.arm in ("canary", "shadow") and got is not None else self.loaded.version

    @openai_app.post("/compare", response_model=CompareResponse)
    async def compare(self, req: CompareRequest, request: Request) -> CompareResponse:
        """Two replies to one message for a blind comparison: the champion's and the candidate's (when one is
        served beside it; else two of the champion's), in random order, without their versions. Both are
        stored in one group; a rater's choice (``POST /feedback`` with ``chosen_id`` / ``rejected_id``) is
        the pairwise judgement the ``human`` judge counts."""
        self._check_text(req.prompt, "prompt")
        n_tokens = self.cfg.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        self._check_tokens(n_tokens, "max_new_tokens")
        messages = self._messages([{"role": "user", "content": req.prompt}])
        got = self._candidate
        sides = [("champion", self.loaded), ("canary" if got else "champion", got[0] if got else self.loaded)]
        group, start = new_id("cmp"), time.perf_counter()
        jobs = [
            Job(
                new_id(),
                self._prompt_ids(loaded, messages, n_tokens),
                req.prompt,
                messages,
                RowParams(n_tokens, 0.7, 1.0, None),
                "compare",
                group,
                start,
                arm,
            )
            for arm, loaded in sides
        ]
        outs = await self._sample(jobs, request, shadow=False)
        random.SystemRandom().shuffle(outs)
        return CompareResponse(
            replies=[CompareReply(id=o.id, text=o.result.text) for o in outs], group_id=group, candidate=got is not None
        )

    def _chat_jobs(self, req: ChatRequest) -> list[Job]:
        cfg = self.cfg
        if len(req.messages) > cfg.max_messages:
            raise _bad(f"{len(req.messages)} messages; the limit is {cfg.max_messages}: drop older turns")
        for i, m in enumerate(req.messages):
            _no_nul(m.content, f"messages[{i}].content")
            if len(m.content) > cfg.max_prompt_chars:
                raise _bad(
                    f"messages[{i}].content has {len(m.content)} characters; the limit is {cfg.max_prompt_chars}"
                )
        if req.messages[-1].role != "user":
            raise _bad("the last message must have role 'user' (the turn the model answers)")
        if not req.messages[-1].content.strip():
            raise _bad("the last user message is empty: send some text")
        if req.n > cfg.max_n:
            raise _bad(f"n={req.n}: this service returns at most {cfg.max_n} choices per request")
        limit = req.max_completion_tokens or req.max_tokens or cfg.default_max_new_tokens
        if limit > cfg.max_new_tokens_limit:
            raise _bad(f"max_tokens={limit}: the limit is {cfg.max_new_tokens_limit}")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s or len(s) > 100 for s in stop):
            raise _bad("stop: up to 4 non-empty strings of at most 100 characters")
        messages = self._messages([m.model_dump(include={"role", "content"}) for m in req.messages])
        arm, loaded = self._arm(messages, req.user)
        ids = self._prompt_ids(loaded, messages, limit)
        group = new_id("grp") if req.n > 1 else None
        start = time.perf_counter()
        jobs = []
        for i in range(req.n):
            seed = None if req.seed is None else (req.seed + i) % 2**63
            params = RowParams(limit, req.temperature, req.top_p, seed, tuple(stop))
            jobs.append(Job(new_id(), ids, req.messages[-1].content, messages, params, "chat", group, start, arm))
        return jobs

    @openai_app.get("/v1/models", response_model=ModelList)
    def models(self) -> ModelList:
        """The served models, in OpenAI's list shape (ids are model versions): the champion, then the canary."""
        served = [self.loaded, *([self.canary] if self.canary is not None else [])]
        return ModelList(data=[ModelCard(id=m.version, created=int(time.time()), owned_by="rlhf-loop") for m in served])

    @openai_app.get("/feedback/queue", response_model=QueuePage)
    def feedback_queue(
        self,
        response: Response,
        limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
        offset: Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")] = 0,
    ) -> QueuePage:
        """Served outputs without a rating, oldest first (the admin token or RLHF_API_TOKEN; never cached)."""
        response.headers["cache-control"] = "no-store"
        items, total = self.store.unrated(limit=limit, offset=offset)
        return QueuePage(
            items=[
                QueueItem(
                    id=o.id, prompt=o.prompt, reply=o.reply, model_version=o.model_version, created_at=o.created_at
                )
                for o in items
            ],
            total=total,
            offset=offset,
            limit=limit,
        )

    @openai_app.get("/rate", response_class=HTMLResponse, include_in_schema=False)
    def rate_page(self) -> HTMLResponse:
        return HTMLResponse((_static / "rate.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @openai_app.get("/rate/{name}", include_in_schema=False)
    def rate_asset(self, name: str) -> Response:
        types = {"rate.js": "text/javascript", "rate.css": "text/css"}
        if name not in types:
            raise HTTPException(404, f"no asset {name!r}")
        return Response((_static / name).read_text(encoding="utf-8"), media_type=types[name], headers=PAGE_HEADERS)


def _served(f: Finished) -> Served:
    return Served(f.row.tag.id, f.result, f.model_version)


def _generated(out: Served) -> GenerateResponse:
    r = out.result
    return GenerateResponse(
        id=out.id,
        text=r.text,
        model_version=out.model_version,
        finish_reason=r.finish_reason,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
    )


async def _generate_sse(job: Job, row: Row, events: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    """``/generate/stream``'s events; the final one is ``/generate``'s response, sent after the reply is stored."""
    try:
        while (piece := await events.get()) is not None:
            yield f"data: {json.dumps({'id': job.id, 'delta': piece})}\n\n"
        error = "the reply was cancelled" if row.future.cancelled() else row.future.exception()
        if error is not None:
            status = 503 if isinstance(error, (DeadlineExceeded, str)) else 500
            log.warning("stream of %s ended without a reply: %s", job.id, error)
            yield f"data: {json.dumps(error_body(status, f'no reply: {error}; try again'))}\n\n"
            return
        yield f"data: {_generated(_served(row.future.result())).model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not row.future.done():
            log.info("stream client went away: cancelling %s", job.id)
            row.cancel()


async def _sse(
    jobs: Sequence[Job],
    rows: Sequence[Row],
    events: asyncio.Queue[tuple[int, str | None]],
    created: int,
    version: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's streaming shape: a role chunk per choice, content chunks as text is sampled, a finish chunk
    per choice once its reply is stored, the usage chunk if asked, ``[DONE]``. A client that hangs up
    cancels the rows still running (they are stored as ``aborted``)."""

    def event(choices: list[dict], usage: dict | None = None, model: str = version) -> str:
        body = {
            "id": jobs[0].id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "model_version": model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    finished: dict[int, Finished] = {}
    try:
        for i in range(len(rows)):
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while len(finished) < len(rows):
            i, piece = await events.get()
            model = rows[i].model_version or version
            if piece is not None:
                yield event([{"index": i, "delta": {"content": piece}, "finish_reason": None}], model=model)
                continue
            future = rows[i].future
            error = "the reply was cancelled" if future.cancelled() else future.exception()
            if error is not None:
                status = 503 if isinstance(error, (DeadlineExceeded, str)) else 500
                log.warning("stream of %s ended without a reply: %s", jobs[i].id, error)
                yield f"data: {json.dumps(error_body(status, f'no reply: {error}; try again'))}\n\n"
                return
            finished[i] = future.result()
            yield event([{"index": i, "delta": {}, "finish_reason": finished[i].result.finish_reason}], model=model)
        if include_usage:
            prompt = finished[0].result.prompt_tokens
            completion = sum(f.result.completion_tokens for f in finished.values())
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            yield event([], usage)
        yield "data: [DONE]\n\n"
    finally:
        running = [r for r in rows if not r.future.done()]
        if running:
            log.info("stream client went away: cancelling %d row(s)", len(running))
            for r in running:
                r.cancel()


def _token() -> str | None:
    return os.environ.get("RLHF_API_TOKEN") or None


def _params_override() -> Path | None:
    env = os.environ.get("RLHF_PARAMS")
    return Path(env).resolve() if env else None


def guard_options(paths: ProjectPaths, params: Path | None = None) -> dict[str, Any]:
    """The guard middleware's settings for a project: body cap, shared token, rater book, open feedback, rate
    limits."""
    cfg = load_serve_config(paths, params)
    raters = RaterBook(raters_file(paths.live))
    return {
        "max_body_bytes": cfg.max_body_bytes,
        "token": _token,
        "rater_of": raters.name_of,
        "open_feedback": lambda: cfg.open_feedback,
        "limiter": RateLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst),
    }


RLHFService.add_asgi_middleware(GuardMiddleware, **guard_options(ProjectPaths.discover(), _params_override()))
