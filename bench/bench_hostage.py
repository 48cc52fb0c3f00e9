"""Does one long request hold short ones hostage? And does streaming send tokens as they are made?

Starts a real `bentoml serve` (temporary project), then:

1. ``short``: 8 clients each send ``--rounds`` requests for 16 tokens (``/generate``); p50/p95 latency.
2. ``short_with_long``: the same while one more client keeps asking for ``--long-tokens`` tokens.
3. ``stream``: one streaming chat request for ``--long-tokens`` tokens: time to the first content chunk and to
   ``[DONE]``.

Writes ``bench/results/serving_hostage.json`` (or ``--out``).

    python bench/bench_hostage.py                                   # tiny model
    nice -n 10 python bench/bench_hostage.py --model smollm2-135m-instruct --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import percentile  # noqa: E402
from tests.serving.server import make_project, start_server  # noqa: E402


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
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="short requests per client")
    parser.add_argument("--long-tokens", type=int, default=400)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--label", default="", help="a name for this run in the output (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving_hostage.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hostage-") as tmp:
        project = make_project(Path(tmp) / "p", reload_poll_seconds=0.0, torch_threads=args.server_threads)
        if args.model != "tiny":
            import yaml

            params = yaml.safe_load((project / "params.yaml").read_text())
            params["model"]["base"] = args.model
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {"RLHF_HOME": os.environ.get("RLHF_HOME", str(Path.home() / ".cache" / "rlhf-loop"))}
        server = start_server(project, extra_env=env, timeout=300)
        try:
            shorts(server.url, 2, 1)  # warm-up
            result = {
                "short": summary(shorts(server.url, args.clients, args.rounds)),
                "short_with_long": with_long(server.url, args.clients, args.rounds, args.long_tokens),
                "stream": stream(server.url, args.long_tokens),
            }
        finally:
            server.kill()
    result |= {
        "label": args.label,
        "model": args.model,
        "clients": args.clients,
        "long_tokens": args.long_tokens,
        "hardware": f"CPU only: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"the server uses {args.server_threads} torch thread(s)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*runs, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
