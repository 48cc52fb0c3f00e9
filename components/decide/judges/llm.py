"""The ``llm`` judge: a pairwise LLM judge over any OpenAI-compatible ``/chat/completions`` endpoint.

Protocol (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", pairwise comparison):
- a versioned template (``templates/<name>.txt``: a system and a user message) shows the conversation and the
  two replies and asks for reasons, then a verdict ``[[A]]`` or ``[[B]]``;
- every comparison is asked in both orders (position bias); the two answers agree -> win / loss, disagree ->
  tie ("position bias");
- an answer is parsed by :func:`parse_choice`: the last ``[[A]]`` / ``[[B]]`` (both letters -> no verdict), or an
  answer that is nothing but the letter; an answer with no verdict is asked again (temperature 1, another seed)
  ``junk_retries`` times, then the evaluation fails naming the endpoint;
- HTTP: a timeout per request, retries with exponential backoff on connection errors, timeouts, 429 and 5xx,
  at most ``concurrency`` requests in flight; an unreachable endpoint fails the evaluation with its URL;
- an on-disk cache (SQLite) keyed by judge model + template version + the rendered messages (prompt and
  replies in their order) + sampling settings: a rerun sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from components.config.judges import LLMJudgeConfig
from components.decide.judges.base import Comparison, Judge, JudgeError, Prompt, Verdict, prompt_text

log = logging.getLogger(__name__)

_BRACKETED = re.compile(r"\[\[\s*([AB])\s*\]\]")
_BARE = re.compile(r"^[\W_]*(?:reply\s+)?([AB])[\W_]*$", re.IGNORECASE)


def parse_choice(answer: str) -> str | None:
    """``"A"`` or ``"B"`` from a judge's answer, or None when it holds no single verdict.

    ``[[A]]`` / ``[[B]]`` anywhere (the template asks for it last); both letters bracketed is ambiguous (None).
    Else an answer that is only the letter (``"A"``, ``"B."``, ``"Reply B"``) counts."""
    found = set(_BRACKETED.findall(answer))
    if len(found) == 1:
        return found.pop()
    if found:
        return None
    m = _BARE.match(answer.strip())
    return m.group(1).upper() if m else None


def combine(first: str, second: str) -> str:
    """The outcome for reply a from the choice asked with a shown first (``first``) and with b first (``second``).

    Both orders agreeing gives win / loss; a disagreement is a tie (the judge followed the position)."""
    a_first = first == "A"  # a shown as A
    a_second = second == "B"  # a shown as B
    if a_first and a_second:
        return "win"
    if not a_first and not a_second:
        return "loss"
    return "tie"


@dataclass(frozen=True)
class Template:
    """A judge prompt template: its version (file name + content hash) and its two messages."""

    version: str
    system: str
    user: str

    @classmethod
    def load(cls, name: str) -> Template:
        path = Path(name)
        if path.suffix == ".txt" and path.is_file():
            text, stem = path.read_text(encoding="utf-8"), path.stem
        else:
            ref = resources.files("components.decide.judges").joinpath("templates", f"{name}.txt")
            if not ref.is_file():
                raise JudgeError(
                    f"eval.llm_judge.template {name!r}: no such template in components/decide/judges/templates/"
                )
            text, stem = ref.read_text(encoding="utf-8"), name
        parts = re.split(r"^=== (system|user) ===\n", text, flags=re.MULTILINE)
        found = dict(zip(parts[1::2], parts[2::2]))
        if set(found) != {"system", "user"} or "{reply_a}" not in found["user"] or "{reply_b}" not in found["user"]:
            raise JudgeError(f"template {name!r}: needs '=== system ===' and '=== user ===' parts with {{reply_a}}, "
                             "{reply_b} and {conversation}")  # fmt: skip
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return cls(f"{stem}@{digest}", found["system"].strip(), found["user"].strip())

    def messages(self, prompt: Prompt, reply_a: str, reply_b: str) -> list[dict[str, str]]:
        user = (
            self.user.replace("{conversation}", prompt_text(prompt))
            .replace("{reply_a}", reply_a)
            .replace("{reply_b}", reply_b)
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


class AnswerCache:
    """Answers by key in one SQLite file (safe across threads and processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as c:
            c.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT, choice TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, key: str) -> tuple[str, str] | None:
        with self._lock, self._connect() as c:
            row = c.execute("SELECT answer, choice FROM answers WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, key: str, answer: str, choice: str) -> None:
        with self._lock, self._connect() as c:
            c.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, answer, choice))


def rationale(answer: str) -> str:
    """The answer without its verdict, on one line, at most 300 characters."""
    text = " ".join(_BRACKETED.sub("", answer).split())
    return text[:297] + "..." if len(text) > 300 else text


class LLMJudge(Judge):
    """Asks an LLM endpoint which of two replies is better, in both orders."""

    name = "llm"

    def __init__(self, cfg: LLMJudgeConfig, *, cache_dir: Path) -> None:
        import httpx

        if not cfg.model.strip():
            raise JudgeError("eval.llm_judge.model is empty: name the judge model the endpoint serves")
        self.cfg = cfg
        self.template = Template.load(cfg.template)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(timeout=cfg.timeout_s, headers=headers)
        self.cache = AnswerCache(Path(cache_dir) / cfg.cache if not Path(cfg.cache).is_absolute() else cfg.cache)
        self.requests = 0
        """HTTP requests sent by this judge (cache hits send none)."""
        self._count = threading.Lock()

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {"name": self.name, "base_url": c.base_url, "model": c.model, "template": self.template.version,
                "temperature": c.temperature, "max_tokens": c.max_tokens, "both_orders": True}  # fmt: skip

    def preflight(self) -> None:
        """The endpoint accepts connections (any HTTP answer counts), tried with the same retries and backoff."""
        self._retrying(lambda: self.client.get(self.cfg.base_url.rstrip("/") + "/models"), retry_status=False)

    def _retrying(self, send: Callable[[], Any], *, retry_status: bool) -> Any:
        """``send()`` with the judge's retries and doubling backoff: transport errors (refused, reset, timed out)
        and, with ``retry_status``, HTTP 429 / 5xx are tried again; after the last try a :class:`JudgeError`
        naming the URL."""
        import httpx

        delay, last = self.cfg.backoff_s, ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                r = send()
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if retry_status and (r.status_code == 429 or r.status_code >= 500):
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            return r
        raise JudgeError(
            f"judge endpoint {self.url} unreachable after {self.cfg.retries + 1} tries ({last}); start it or fix "
            "eval.llm_judge.base_url. Nothing was promoted."
        )

    # -- one question ---------------------------------------------------------------------------------------

    def _key(self, messages: list[dict[str, str]]) -> str:
        c = self.cfg
        blob = json.dumps([c.model, self.template.version, messages, c.temperature, c.max_tokens, c.seed])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _post(self, body: dict[str, Any]) -> str:
        """One completion's text, with retries and backoff; a final failure is a :class:`JudgeError` naming the URL."""

        def send() -> Any:
            with self._count:
                self.requests += 1
            return self.client.post(self.url, json=body)

        r = self._retrying(send, retry_status=True)
        if r.status_code >= 400:
            raise JudgeError(f"judge endpoint {self.url} refused the request: HTTP {r.status_code}: "
                             f"{r.text[:300]} (check eval.llm_judge.model and the API key in "
                             f"${self.cfg.api_key_env})")  # fmt: skip
        try:
            return str(r.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge endpoint {self.url} answered something that is not an OpenAI chat "
                             f"completion ({exc!r}): {r.text[:300]}") from exc  # fmt: skip

    def ask(self, prompt: Prompt, reply_a: str, reply_b: str) -> tuple[str, str]:
        """The choice (``A`` / ``B``) and the answer for one order; cached."""
        messages = self.template.messages(prompt, reply_a, reply_b)
        key = self._key(messages)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[1], hit[0]
        c = self.cfg
        answers = []
        for attempt in range(c.junk_retries + 1):
            body = {"model": c.model, "messages": messages, "max_tokens": c.max_tokens,
                    "temperature": c.temperature if attempt == 0 else 1.0, "seed": c.seed + attempt}  # fmt: skip
            answer = self._post(body)
            choice = parse_choice(answer)
            if choice is not None:
                self.cache.put(key, answer, choice)
                return choice, answer
            answers.append(answer)
        shown = "; ".join(repr(a[:80]) for a in answers)
        raise JudgeError(
            f"judge endpoint {self.url} (model {c.model}) gave no verdict in {len(answers)} answers ({shown}): "
            "the template asks for [[A]] or [[B]]; use a judge model that follows instructions"
        )

    def _both(self, it: Comparison) -> Verdict:
        if it.reply_a == it.reply_b:
            return Verdict("tie", "identical replies (not asked)")
        first, ans1 = self.ask(it.prompt, it.reply_a, it.reply_b)
        second, ans2 = self.ask(it.prompt, it.reply_b, it.reply_a)
        outcome = combine(first, second)
        how = "both orders agree" if outcome != "tie" else "position bias: the orders disagree"
        return Verdict(outcome, f"{how}; a shown first: [[{first}]] {rationale(ans1)} | b shown first: "
                                f"[[{second}]] {rationale(ans2)}")  # fmt: skip

    def compare(self, prompt: Prompt, reply_a: str, reply_b: str) -> Verdict:
        return self._both(Comparison(prompt, reply_a, reply_b))

    def compare_many(self, items: Sequence[Comparison], on_done: Callable[[int], None] | None = None) -> list[Verdict]:
        """Every comparison, ``concurrency`` at a time; the first failure cancels the rest and is raised."""
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = [pool.submit(self._both, it) for it in items]
            if on_done:
                for f in futures:
                    f.add_done_callback(lambda f: not f.cancelled() and f.exception() is None and on_done(1))
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()
        return [f.result() for f in futures]
