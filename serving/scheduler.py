"""Continuous batching over the project's sampler: a request joins the running batch at the next decode step
and leaves it when its reply ends.

One engine thread owns the model. Each step it (1) admits waiting requests while there is room, in passes of
at most ``prefill_rows`` prompts: each pass prefills its prompts together, joins their KV caches to the running
batch's (left padded to a common length) and at once samples and streams each new row's first token; the passes
run back to back, taking whoever arrived meanwhile, before the running batch's next decode step, (2) samples
one token for every other running row with the row's own temperature, top-p and ``torch.Generator`` (the functions
of ``components/models/generation.py``), (3) ends rows that hit EOS, their token limit, a stop string, their
deadline, or whose client went away, and hands each finished reply to ``on_finish`` (the service logs it to
the store there) before the caller sees it, and (4) runs one forward pass of the remaining rows.
A short request therefore waits for at most one step of a long one, never for its end (vLLM and TGI schedule
the same way, at token granularity; Yu et al. 2022, "Orca").

Bursts (``prefill_rows``): a prefill pass is compute-bound, so prefilling 16 prompts costs many times one, and
in a single pass every request of a burst waits for all of it. Split into passes, the first requests get their
first token after their own pass: the burst's prefill takes a little longer in all (each pass has a fixed cost),
and its requests wait less on average.

Streaming: each row's text so far is offered to its ``on_text`` callback after every step (only what can no
longer change: incomplete UTF-8, trailing whitespace and a possible start of a stop string are held back), so
the concatenated pieces equal the final reply.

Shared prefix (``prefix``, ``serve.prefix_cache``): every prompt the service renders opens with the same tokens
(the chat template's system turn with the configured system prompt and the user turn's header, often half of
a short chat prompt). Their KV cache is computed once per served model (again after a reload); an
admitted row whose prompt really starts with them prefills only its suffix after a copy of it, so the cache
row reads [prefix][padding][suffix], the mask zero in the middle and the suffix's position ids continuing from
the prefix (:func:`components.models.shared_prefix.prefixed_inputs`): the same keys, values and positions the
whole prompt would get, up to float rounding. Other rows are prefilled whole; both join the running batch.

Backpressure: at most ``max_queued`` requests wait for a place; more raise :class:`QueueFull` (the service
answers 503 with ``Retry-After``). A request still waiting at its deadline raises :class:`DeadlineExceeded`.

Letters: B running rows, T cached positions (left padded; [prefix][padding][suffix] for rows after the
shared prefix), V vocabulary, P shared prefix tokens, S suffix tokens.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from components.models.generation import RowParams, RowResult, _pick, filter_logits, left_pad, position_ids_from_mask
from components.models.shared_prefix import MIN_SHARED, prefix_cache, prefixed_inputs, repeat_cache, starts_with

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many requests are waiting; try again shortly."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it could start."""


@dataclass(eq=False)
class Row:
    """One reply being generated (a chat request with ``n`` > 1 is ``n`` rows)."""

    prompt_ids: list[int]
    params: RowParams
    deadline: float | None = None
    """``time.monotonic()`` after which the row ends (cut, ``finish_reason`` ``length``) or, still waiting, fails."""
    on_text: Callable[[str], None] | None = None
    """Called from the engine thread with each new piece of the reply's text."""
    tag: Any = None
    """Whatever the caller needs back in ``on_finish`` (the service's job)."""
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finish_reason: str | None = None
    model_version: str = ""
    started: float = 0.0
    generator: torch.Generator | None = None
    peak_rows: int = 0
    """The most rows sampled together with this one."""
    pending: int | None = None
    """The token sampled for this row in the current step, not yet run through the model."""

    def cancel(self) -> None:
        """The client went away: the row ends at the next step, stored as ``aborted`` with what it has."""
        self.cancelled.set()


@dataclass(frozen=True)
class Finished:
    """A finished row as ``on_finish`` sees it."""

    row: Row
    result: RowResult
    model_version: str


def _visible(tok: Any, tokens: Sequence[int], stop: Sequence[str], final: bool) -> tuple[str, bool]:
    """The reply text that can be shown now, and whether a stop string was found.

    Final text is the decoded reply without special tokens, cut before the first stop string, stripped (as
    ``generate_rows`` does), without NUL characters (a byte token can decode to one; no reply needs it, and
    PostgreSQL text cannot store it, so the store would refuse the reply). Before the end, also hold back what
    may still change.
    """
    text = tok.decode(list(tokens), skip_special_tokens=True).replace("\x00", "").lstrip()
    cuts = [text.find(s) for s in stop if s and s in text]
    if cuts:
        return text[: min(cuts)].rstrip(), True
    if final:
        return text.rstrip(), False
    text = text.rstrip("\ufffd")  # an incomplete UTF-8 sequence
    for s in stop:  # the longest suffix that could begin a stop string
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if s.startswith(text[-k:]):
                text = text[:-k]
                break
    return text.rstrip(), False


class Engine:
    """The engine thread. ``current()`` gives the ``(model, tokenizer, version)`` to serve; a change is picked
    up when the running batch is empty (rows never switch weights mid-reply). ``prefix(tokenizer)`` gives the
    token ids prompts open with, whose KV cache is computed once per served model and reused at admission
    (None: every prompt is prefilled whole); ``on_prefill(cached, computed)`` hears, per admission pass, how many
    prompt tokens came from that cache and how many ran through the model. ``prefill_rows``: most prompts per
    prefill pass (None or 0: up to ``max_rows``)."""

    def __init__(
        self,
        current: Callable[[], tuple[Any, Any, str]],
        *,
        max_rows: int,
        max_queued: int,
        on_finish: Callable[[list[Finished]], None],
        on_step: Callable[[int], None] | None = None,
        autocast: Callable[[Any], Any] | None = None,
        prefix: Callable[[Any], Sequence[int]] | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
        prefill_rows: int | None = None,
    ):
        self.current = current
        self.prefill_rows = prefill_rows or max_rows
        self.prefix = prefix
        self.on_prefill = on_prefill
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.on_finish = on_finish
        self.on_step = on_step
        self.autocast = autocast
        self._waiting: deque[Row] = deque()
        self._lock = threading.Condition()
        self._stop = False
        self._rows: list[Row] = []
        self._served: tuple[Any, Any, str] | None = None
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # shape: (B, T)
        self._pos: torch.Tensor | None = None  # shape: (B,): position of each row's next token
        self._logits: torch.Tensor | None = None  # shape: (B, V): predicts each row's next token
        self._prefix_key: tuple[str, int] | None = None  # the served model the prefix below belongs to
        self._prefix_ids: list[int] = []
        self._prefix_kv: Any = None  # the prefix's KV cache (one row), computed at its first use
        self._thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self._thread.start()

    # -- callers (any thread) -------------------------------------------------------------------

    def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows (all or none); raises :class:`QueueFull` when they do not fit in the queue."""
        with self._lock:
            if len(self._waiting) + len(rows) > self.max_queued:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the limit is {self.max_queued})")
            self._waiting.extend(rows)
            self._lock.notify()

    @property
    def load(self) -> tuple[int, int]:
        """Running rows and waiting rows."""
        return len(self._rows), len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # -- the engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._waiting and not self._rows:
                    self._lock.wait()
                if self._stop:
                    return
            with self._busy_region():
                while True:
                    try:
                        self._step()
                    except Exception as exc:  # every running caller gets the error; the engine keeps serving
                        log.exception("decode step failed with %d running row(s)", len(self._rows))
                        for row in self._rows:
                            if not row.future.done():
                                row.future.set_exception(exc)
                        self._reset()
                    if not self._rows or self._stop:  # drained: the region ends (the next rows may use a new model)
                        break

    def _busy_region(self) -> Any:
        """One autocast region from the first step of a busy period until the batch drains.

        torch keeps autocast's low-precision copy of a weight (a leaf that requires grad) until the outermost
        autocast region ends; each step's own region, nested in this one, reuses the copies, so the weights are
        cast once per busy period instead of at every decode step (the cast of every weight is a fixed cost per
        step that does not shrink with the batch). The copies are freed when the batch drains."""
        if self.autocast is None:
            return _nullcontext()
        try:
            return self.autocast(self.current()[0])
        except Exception:  # no model to serve: the step fails and reports it to the callers, as without the region
            log.exception("could not open the autocast region for the next steps")
            return _nullcontext()

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._pos, self._logits = [], None, None, None, None

    def _step(self) -> None:
        self._admit()  # new rows: prefilled, their first token sampled and streamed
        if not self._rows:
            return
        model, tok, _ = self._served  # type: ignore[misc]
        for row in self._rows:
            row.peak_rows = max(row.peak_rows, len(self._rows))
        ctx = self.autocast(model) if self.autocast is not None else _nullcontext()
        with torch.no_grad(), ctx:
            waiting = [i for i, r in enumerate(self._rows) if r.pending is None]  # not sampled at admission
            if waiting:
                self._sample_and_advance(tok, waiting, self._logits[waiting])  # type: ignore[index]
            tokens = torch.tensor([r.pending for r in self._rows], dtype=torch.long, device=self._mask.device)  # type: ignore[union-attr]
            keep = torch.tensor(
                [i for i, r in enumerate(self._rows) if r.finish_reason is None], dtype=torch.long, device=tokens.device
            )
            for row in self._rows:
                row.pending = None
            self._finish(tok)
            if self._rows:
                self._select(keep)
                self._forward(model, tokens[keep])
            else:
                self._reset()
        if self.on_step is not None:
            self.on_step(len(self._rows))

    def _admit(self) -> None:
        """Take waiting rows while there is room, a pass of at most ``prefill_rows`` at a time, back to back
        (rows that arrive during a pass join the next one): each pass's rows are prefilled, joined to the
        running batch and get their first token at once."""
        latest = self.current()
        if not self._rows:
            self._served = latest  # the model to serve, fixed while rows run
        elif latest[2] != self._served[2]:  # type: ignore[index]
            return  # a new model: let the old one's rows finish first
        while self._admit_pass():
            pass

    def _admit_pass(self) -> bool:
        """One prefill pass of waiting rows (at most ``prefill_rows``, within the room left); False when none."""
        now = time.monotonic()
        with self._lock:
            new: list[Row] = []
            room = min(self.max_rows - len(self._rows), self.prefill_rows)
            while self._waiting and len(new) < room:
                row = self._waiting.popleft()
                if row.cancelled.is_set():
                    row.future.cancel()
                elif row.deadline is not None and now > row.deadline:
                    row.future.set_exception(DeadlineExceeded("the request waited past its deadline"))
                else:
                    new.append(row)
        if not new:
            return False
        model, tok, version = self._served  # type: ignore[misc]
        for r in new:
            r.model_version, r.started = version, now
        prefix = self._shared_prefix(model, tok, version)
        hits = [r for r in new if starts_with(r.prompt_ids, prefix)]
        rest = [r for r in new if not starts_with(r.prompt_ids, prefix)]
        ctx = self.autocast(model) if self.autocast is not None else _nullcontext()
        try:
            with torch.no_grad(), ctx:
                for group, after_prefix in ((hits, True), (rest, False)):
                    if not group:
                        continue
                    if after_prefix:
                        cache, mask, logits = self._prefill_after_prefix(model, group, prefix)
                    else:
                        cache, mask, logits = self._prefill(model, group)
                    self._join(group, cache, mask, logits)
                    joined = list(range(len(self._rows) - len(group), len(self._rows)))
                    self._sample_and_advance(tok, joined, logits)  # their first token, streamed now
        except Exception as exc:  # rows not joined yet hear of it here, the running ones from the step's handler
            for r in new:
                if r not in self._rows and not r.future.done():
                    r.future.set_exception(exc)
            raise
        if self.on_prefill is not None:
            cached = len(prefix) * len(hits)
            self.on_prefill(cached, sum(len(r.prompt_ids) for r in new) - cached)
        return True

    def _shared_prefix(self, model: Any, tok: Any, version: str) -> list[int]:
        """The served model's shared prefix ids ([] when off or too short to be worth a pass); a new model
        (version or object) drops the cached KV of the last one."""
        key = (version, id(model))
        if self._prefix_key != key:
            self._prefix_key, self._prefix_ids, self._prefix_kv = key, [], None
            if self.prefix is not None:
                try:
                    ids = list(self.prefix(tok))
                except Exception:  # serving goes on without the cache: every prompt is prefilled whole
                    log.exception(
                        "could not derive the shared prompt prefix of %s: prompts are prefilled whole", version
                    )
                    ids = []
                self._prefix_ids = ids if len(ids) >= MIN_SHARED else []
        return self._prefix_ids

    def _prefill(self, model: Any, rows: list[Row]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Whole prompts, left padded: their KV cache, mask (b, T) and last logits (b, V)."""
        ids, mask = left_pad([r.prompt_ids for r in rows], 0)
        ids, mask = ids.to(model.device), mask.to(model.device)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.past_key_values, mask, out.logits[:, -1, :]

    def _prefill_after_prefix(
        self, model: Any, rows: list[Row], prefix: list[int]
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Prompts that start with ``prefix``: only their suffixes run, after a copy of the prefix's KV cache
        (computed here the first time); the cache, mask (b, P+S) and last logits (b, V) as :meth:`_prefill`."""
        if self._prefix_kv is None:
            self._prefix_kv = prefix_cache(model, prefix, 1, model.device, logits_to_keep=1)
            log.info("cached the %d-token prompt prefix of %s", len(prefix), self._prefix_key[0])  # type: ignore[index]
        shared = len(prefix)
        ids, mask, positions = prefixed_inputs([r.prompt_ids[shared:] for r in rows], shared, 0)
        out = model(
            input_ids=ids.to(model.device),  # shape: (b, S)
            attention_mask=mask.to(model.device),  # shape: (b, P+S)
            position_ids=positions.to(model.device),  # shape: (b, S)
            past_key_values=repeat_cache(self._prefix_kv, len(rows)),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.past_key_values, mask.to(model.device), out.logits[:, -1, :]

    def _join(self, new: list[Row], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Append prefilled rows (their cache, mask (b, T'), last logits (b, V)) to the running batch."""
        pos = mask.sum(dim=1)  # shape: (b,): each row's real tokens = the position of its next token
        if not self._rows:
            self._rows, self._cache, self._mask, self._pos, self._logits = new, cache, mask, pos, logits
            return
        width = max(self._mask.shape[1], mask.shape[1])  # type: ignore[union-attr]
        _join_caches(self._cache, cache, width)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])  # shape: (B, T)
        self._pos = torch.cat([self._pos, pos])  # type: ignore[list-item]
        self._logits = torch.cat([self._logits, logits])  # type: ignore[list-item]
        self._rows = self._rows + new

    def _sample_and_advance(self, tok: Any, index: list[int], logits: torch.Tensor) -> None:
        """Sample the next token of running rows ``index`` from their ``logits`` (b, V), keep it as the row's
        ``pending`` token and advance the row with it (the text streams at once)."""
        rows = [self._rows[i] for i in index]
        temp = torch.tensor([r.params.temperature for r in rows], dtype=torch.float32, device=logits.device)
        top_p = torch.tensor([r.params.top_p for r in rows], dtype=torch.float32, device=logits.device)
        gens = [_generator(r, logits.device) for r in rows]
        filtered = filter_logits(logits.float(), temp, 0, top_p)
        tokens = _pick(filtered, temp, gens)  # shape: (b,)
        now = time.monotonic()
        for row, token in zip(rows, tokens.tolist()):
            row.pending = token
            self._advance(tok, row, token, now)

    @staticmethod
    def _advance(tok: Any, row: Row, token: int, now: float) -> None:
        """Append the row's token, decide whether the row ends, stream the new text."""
        if token == tok.eos_token_id:
            row.finish_reason = "stop"
        else:
            row.tokens.append(token)
        if row.finish_reason is None:
            if row.cancelled.is_set():
                row.finish_reason = "aborted"
            elif len(row.tokens) >= row.params.max_new_tokens:
                row.finish_reason = "length"
            elif row.deadline is not None and now > row.deadline:
                row.finish_reason = "length"
                log.warning("a reply hit its deadline after %d tokens: cut", len(row.tokens))
        if row.finish_reason is None and (row.params.stop or row.on_text is not None):
            text, hit = _visible(tok, row.tokens, row.params.stop, final=False)
            if hit:
                row.finish_reason = "stop"
            elif row.on_text is not None and len(text) > len(row.sent) and text.startswith(row.sent):
                piece, row.sent = text[len(row.sent) :], text
                row.on_text(piece)

    def _finish(self, tok: Any) -> None:
        done = [r for r in self._rows if r.finish_reason is not None]
        if not done:
            return
        finished = []
        for row in done:
            text, _ = _visible(tok, row.tokens, row.params.stop, final=True)
            if row.on_text is not None and text.startswith(row.sent) and len(text) > len(row.sent):
                row.on_text(text[len(row.sent) :])
                row.sent = text
            result = RowResult(text, len(row.prompt_ids), len(row.tokens), row.finish_reason or "stop")
            finished.append(Finished(row, result, row.model_version))
        try:
            self.on_finish(finished)  # durable before any caller hears of it
        except Exception as exc:
            log.exception("could not record %d finished repl(ies)", len(finished))
            for f in finished:
                f.row.future.set_exception(exc)
        else:
            for f in finished:
                if not f.row.future.done():
                    f.row.future.set_result(f)
        self._rows = [r for r in self._rows if r.finish_reason is None]

    def _select(self, keep: torch.Tensor) -> None:
        """Keep only the running rows; drop cache columns that are padding in every row."""
        if len(keep) == self._mask.shape[0]:  # type: ignore[union-attr]
            return  # nobody left: nothing to copy
        self._cache.batch_select_indices(keep)
        self._mask, self._pos, self._logits = self._mask[keep], self._pos[keep], None  # type: ignore[index]
        lead = int((self._mask.sum(dim=0) == 0).cumprod(dim=0).sum())  # padding columns on the left of all rows
        if lead:
            self._mask = self._mask[:, lead:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]

    def _forward(self, model: Any, tokens: torch.Tensor) -> None:
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)  # type: ignore[list-item]
        out = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=self._mask,
            position_ids=self._pos.unsqueeze(1),  # type: ignore[union-attr]
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache, self._logits = out.past_key_values, out.logits[:, -1, :]  # shape: (B, V)
        self._pos = self._pos + 1  # type: ignore[operator]


def _generator(row: Row, device: torch.device) -> torch.Generator | None:
    """The row's own generator (seeded once, kept on the row)."""
    if row.params.seed is None:
        return None
    if row.generator is None:
        row.generator = torch.Generator(device=device).manual_seed(row.params.seed)
    return row.generator


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dim 1 of (B, T) or dim 2 of (B, H, T, D) on the left up to ``width``."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _join_caches(running: Any, new: Any, width: int) -> None:
    """Append ``new``'s rows to ``running``, both left padded to ``width`` positions (in place)."""
    for a, b in zip(running.layers, new.layers):
        if type(a).__name__ != "DynamicLayer" or type(b).__name__ != "DynamicLayer":
            raise TypeError(f"continuous batching needs plain dynamic KV caches, got {type(a).__name__}")
        a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)])  # shape: (B, H, T, D)
        a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)])


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
