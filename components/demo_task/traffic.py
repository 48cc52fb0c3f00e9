"""Simulated users of the served policy: concurrent HTTP clients that ask, read and rate.

Each simulated user takes a prompt, asks the service for two replies (through the OpenAI-compatible
``/v1/chat/completions`` with ``n=2`` for even-numbered prompts, through two ``/generate`` calls for odd ones),
and the gold annotator plays the rater: a 1..5 rating of each reply and, when their gold scores differ by at
least ``min_gap``, a pairwise choice of the better one, all sent through ``POST /feedback`` with their rater
token: one token per concurrent user (the demo registers ``simulated-user-1`` .. ``-N``, one per client), so
each stands for one person with that person's rate limit. A 429 (the token's rate limit) is waited out as its
``Retry-After`` says.
Nothing here touches the store directly: everything the next round learns went through HTTP.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from components.demo_task import gold
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrafficResult:
    """What the simulated users sent and what the service answered."""

    prompts: int
    replies: int
    ratings: int
    pairs: int
    requests: dict[str, int]
    """Requests per endpoint."""
    errors: list[str] = field(default_factory=list)
    served_ids: list[str] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)
    mean_gold: float | None = None
    seconds: float = 0.0


def _post(client: httpx.Client, path: str, body: dict, tries: int = 20) -> httpx.Response:
    """POST ``body``; a 429 is retried after its ``Retry-After`` (up to ``tries`` times); other errors raise."""
    for attempt in range(tries):
        r = client.post(path, json=body)
        if r.status_code != 429 or attempt == tries - 1:
            break
        time.sleep(float(r.headers.get("retry-after", "1")))
    r.raise_for_status()
    return r


def _chat(client: httpx.Client, prompt: str, max_tokens: int, seed: int) -> list[tuple[str, str, str]]:
    body = {"messages": [{"role": "user", "content": prompt}], "n": 2, "max_tokens": max_tokens, "seed": seed}
    r = _post(client, "/v1/chat/completions", body)
    data = r.json()
    return [(c["id"], c["message"]["content"], data["model_version"]) for c in data["choices"]]


def _generate(client: httpx.Client, prompt: str, max_tokens: int, seed: int) -> list[tuple[str, str, str]]:
    out = []
    for k in range(2):
        body = {"prompt": prompt, "max_new_tokens": max_tokens, "temperature": 1.0, "seed": seed + k}
        r = _post(client, "/generate", body)
        d = r.json()
        out.append((d["id"], d["text"], d["model_version"]))
    return out


def _user(base_url: str, token: str | None, prompt: str, i: int, max_tokens: int, min_gap: float, seed: int) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url, timeout=300, headers=headers) as client:
        endpoint = "/v1/chat/completions" if i % 2 == 0 else "/generate"
        ask = _chat if i % 2 == 0 else _generate
        replies = ask(client, prompt, max_tokens, seed + 1000 * i)
        scores = [gold.score(prompt, text) for _, text, _ in replies]
        ratings = pairs = 0
        for sid, text, _ in replies:
            _post(client, "/feedback", {"id": sid, "rating": gold.rating(prompt, text)})
            ratings += 1
        (a, _, _), (b, _, _) = replies[0], replies[1]
        if abs(scores[0] - scores[1]) >= min_gap and a != b:
            chosen, rejected = (a, b) if scores[0] > scores[1] else (b, a)
            _post(client, "/feedback", {"chosen_id": chosen, "rejected_id": rejected})
            pairs += 1
    return {
        "endpoint": endpoint,
        "requests": 1 if i % 2 == 0 else 2,
        "ids": [sid for sid, _, _ in replies],
        "versions": [v for _, _, v in replies],
        "gold": scores,
        "ratings": ratings,
        "pairs": pairs,
    }


def simulate_users(
    base_url: str,
    prompts: Sequence[str],
    *,
    tokens: Sequence[str],
    clients: int = 4,
    max_tokens: int = 32,
    min_gap: float = 0.05,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> TrafficResult:
    """``clients`` users at once, one prompt each at a time, until every prompt was asked and rated; prompt ``i``
    is asked and rated with ``tokens[i % len(tokens)]`` (no tokens: without one, as on an open service)."""
    t0 = time.perf_counter()
    done: list[dict] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [
            pool.submit(_user, base_url, tokens[i % len(tokens)] if tokens else None, p, i, max_tokens, min_gap, seed)
            for i, p in enumerate(prompts)
        ]
        for n, fut in enumerate(futures, 1):
            try:
                done.append(fut.result())
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("simulated user failed: %s", exc)
            if progress:
                progress(n, len(futures), "simulated users")
    requests = Counter()
    for d in done:
        requests[d["endpoint"]] += d["requests"]
        requests["/feedback"] += d["ratings"] + d["pairs"]
    scores = [s for d in done for s in d["gold"]]
    return TrafficResult(
        prompts=len(done),
        replies=sum(len(d["ids"]) for d in done),
        ratings=sum(d["ratings"] for d in done),
        pairs=sum(d["pairs"] for d in done),
        requests=dict(requests),
        errors=errors,
        served_ids=[sid for d in done for sid in d["ids"]],
        model_versions=sorted({v for d in done for v in d["versions"]}),
        mean_gold=round(sum(scores) / len(scores), 4) if scores else None,
        seconds=round(time.perf_counter() - t0, 1),
    )


def traffic_prompts(paths: ProjectPaths, n: int, seed: int = 0, skip: int = 0) -> list[str]:
    """``n`` prompts the project's pool trains on (never the held-out ones the gate evaluates on), in a seeded
    order, after its first ``skip`` (so each phase of traffic asks other prompts; round the pool where it ends)."""
    import random

    from components.demo_task.seed import train_prompts

    prompts = train_prompts(paths)
    random.Random(seed).shuffle(prompts)
    return [prompts[(skip + i) % len(prompts)] for i in range(min(n, len(prompts)))]
