"""The serving endpoint under load: a real ``bentoml serve`` on a temporary project, clients on loopback.

Two benchmarks share the server set-up here:

``python -m bench serving``: throughput at 1, 4 and 16 concurrent clients, batched against one at a time. Starts
the service twice, with the batcher (``serve.max_batch_size`` 16) and with batches of one; for each client count
sends a bounded number of ``POST /generate`` requests and reports req/s, completion tokens/s and p50/p95/p99
latency, then checks that every 200 response has its row in the served-output store. Writes
``bench/results/serving.json``.

``python -m bench serving_hostage``: does one long request hold short ones hostage, and does streaming send tokens
as they are made? 8 clients send ``--rounds`` requests for 16 tokens (p50/p95), then the same while one more
client keeps asking for ``--long-tokens`` tokens, then one streaming chat request for ``--long-tokens`` tokens
(time to the first content chunk and to ``[DONE]``). Appends to ``bench/results/serving_hostage.json``.

    python -m bench serving                                             # tiny model (seconds)
    nice -n 10 python -m bench serving --model smollm2-135m-instruct --requests 64
    python -m bench serving_hostage                                     # tiny model
    nice -n 10 python -m bench serving_hostage --model smollm2-135m-instruct --rounds 2

The server runs on ``--server-threads`` torch threads (1: the clients use the other core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench import harness


@contextmanager
def served(project_dir: Path, model: str, **serve: object):
    """A running service (its URL) on a fresh project with ``model`` and ``serve`` overrides; killed after."""
    import yaml

    from tests.serving.server import make_project, start_server

    project = make_project(project_dir, reload_poll_seconds=0.0, **serve)
    if model != "tiny":
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["model"]["base"] = model
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"RLHF_HOME": os.environ.get("RLHF_HOME", str(Path.home() / ".cache" / "rlhf-loop"))}
    server = start_server(project, extra_env=env, timeout=300)
    try:
        yield server.url, project
    finally:
        server.kill()


def _parser(name: str, out: str):
    ap = harness.parser(__doc__, name=name, out=out, model="tiny")
    ap.add_argument(
        "--server-threads", type=int, default=1, help="the server's torch threads (the clients use the other core)"
    )
    return ap


# ---------------------------------------------------------------------------------------------
# serving: throughput by client count
# ---------------------------------------------------------------------------------------------


def run_level(url: str, clients: int, total: int, max_new_tokens: int) -> dict:
    latencies: list[float] = []
    tokens: list[int] = []
    ids: list[str] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"prompt": f"Customer {i}: my order #{1000 + i} is late, what can I do?"}
                body |= {"max_new_tokens": max_new_tokens, "temperature": 1.0, "seed": i}
                t0 = time.perf_counter()
                r = c.post("/generate", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                        tokens.append(r.json()["completion_tokens"])
                        ids.append(r.json()["id"])
                    else:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": total,
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "req_per_s": round(len(latencies) / wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 2),
        "mean_completion_tokens": round(statistics.mean(tokens), 2) if tokens else 0,
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(harness.percentile(latencies, 95) * 1000, 1),
        "p99_ms": round(harness.percentile(latencies, 99) * 1000, 1),
        "_ids": ids,
    }


def run_mode(name: str, batch: int, args: argparse.Namespace, work: Path) -> dict:
    from components.data.served_store import open_store

    serve = {"max_batch_size": batch, "torch_threads": args.server_threads, "bf16": args.bf16}
    with served(work / name, args.model, **serve) as (url, project):
        run_level(url, 2, 4, args.max_new_tokens)  # warm-up
        levels = [run_level(url, c, args.requests, args.max_new_tokens) for c in args.clients]
    store = open_store(project / "live" / "served.sqlite")
    for level in levels:
        ids = level.pop("_ids")
        level["logged"] = len(store.has_ids(ids))
        level["every_200_logged"] = level["logged"] == level["ok"]
    store.close()
    for level in levels:
        print(
            f"{name:>14} {level['clients']:>3} clients: {level['req_per_s']:7.2f} req/s "
            f"{level['tokens_per_s']:8.1f} tok/s  p50 {level['p50_ms']:7.0f} ms  p95 {level['p95_ms']:7.0f} ms  "
            f"p99 {level['p99_ms']:7.0f} ms  logged {level['logged']}/{level['ok']}"
        )
    return {"max_batch_size": batch, "levels": levels}


def main(argv: list[str] | None = None) -> None:
    ap = _parser("serving", "serving.json")
    ap.add_argument("--requests", type=int, default=64, help="requests per client count")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="serve in float32 (serve.bf16 false)")
    args = ap.parse_args(argv)
    with harness.workdir("serving") as tmp:
        modes = {
            "batched": run_mode("batched", 16, args, Path(tmp)),
            "one_at_a_time": run_mode("one_at_a_time", 1, args, Path(tmp)),
        }

    def rps(mode: str, clients: int) -> float:
        return next(lv["req_per_s"] for lv in modes[mode]["levels"] if lv["clients"] == clients)

    lo, hi = min(args.clients), max(args.clients)
    result = {
        "benchmark": "serving",
        "hardware": f"CPU only: {os.cpu_count()} cores, the server uses {args.server_threads} torch thread(s), "
        f"serve.bf16 {args.bf16}",
        "conditions": args.conditions,
        "device": "cpu",
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "requests_per_level": args.requests,
        "modes": modes,
        f"throughput_ratio_{hi}_to_{lo}_clients_batched": round(rps("batched", hi) / rps("batched", lo), 2),
        f"throughput_ratio_{hi}_to_{lo}_clients_one_at_a_time": round(
            rps("one_at_a_time", hi) / rps("one_at_a_time", lo), 2
        ),
        f"batched_vs_one_at_a_time_at_{hi}_clients": round(rps("batched", hi) / rps("one_at_a_time", hi), 2),
        "every_200_logged": all(lv["every_200_logged"] for m in modes.values() for lv in m["levels"]),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "modes"}, indent=2))
    harness.write_results(args.out, result)


# ---------------------------------------------------------------------------------------------
# serving_hostage: short requests beside a long one, and streaming
# ---------------------------------------------------------------------------------------------


def shorts(url: str, clients: int, rounds: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(w: int) -> None:
        with httpx.Client(base_url=url, timeout=900) as c:
            for k in range(rounds):
                body = {"prompt": f"Customer {w}: where is order {k}?", "max_new_tokens": 16, "seed": w * 100 + k}
                t0 = time.perf_counter()
                r = c.post("/generate", json=body)
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def summary(latencies: list[float]) -> dict:
    return {
        "requests": len(latencies),
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(harness.percentile(latencies, 95) * 1000, 1),
    }


def with_long(url: str, clients: int, rounds: int, long_tokens: int) -> dict:
    stop = threading.Event()
    longs: list[float] = []

    def long_client() -> None:
        with httpx.Client(base_url=url, timeout=900) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                body = {"prompt": "Tell me everything about refunds.", "max_new_tokens": long_tokens, "seed": 1}
                c.post("/generate", json=body).raise_for_status()
                longs.append(time.perf_counter() - t0)

    t = threading.Thread(target=long_client)
    t.start()
    time.sleep(0.5)  # the long request is running when the short ones arrive
    got = shorts(url, clients, rounds)
    stop.set()
    t.join()
    return {**summary(got), "long_requests_done": len(longs)}


def stream(url: str, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": "Tell me about refunds."}], "max_tokens": tokens, "seed": 2}
    body |= {"stream": True, "temperature": 1.0}
    t0 = time.perf_counter()
    first = None
    chunks = 0
    with httpx.Client(base_url=url, timeout=900) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"]
            if delta and delta[0]["delta"].get("content"):
                chunks += 1
                first = first or time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"first_content_s": round(first or total, 3), "done_s": round(total, 3), "content_chunks": chunks}


def main_hostage(argv: list[str] | None = None) -> None:
    ap = _parser("serving_hostage", "serving_hostage.json")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="short requests per client")
    ap.add_argument("--long-tokens", type=int, default=400)
    ap.add_argument("--label", default="", help="a name for this run in the output (e.g. before/after)")
    args = ap.parse_args(argv)
    with harness.workdir("hostage") as tmp, served(Path(tmp) / "p", args.model, torch_threads=args.server_threads) as s:
        url = s[0]
        shorts(url, 2, 1)  # warm-up
        result = {
            "short": summary(shorts(url, args.clients, args.rounds)),
            "short_with_long": with_long(url, args.clients, args.rounds, args.long_tokens),
            "stream": stream(url, args.long_tokens),
        }
    result |= {
        "benchmark": "serving_hostage",
        "label": args.label,
        "conditions": args.conditions,
        "model": args.model,
        "clients": args.clients,
        "long_tokens": args.long_tokens,
        "hardware": f"CPU only: {os.cpu_count()} cores, the server uses {args.server_threads} torch thread(s)",
    }
    print(json.dumps(result, indent=2))
    harness.append_results(args.out, result)
