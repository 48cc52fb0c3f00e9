"""Load test of the serving endpoint: 1, 4 and 16 concurrent clients, batched against one-at-a-time.

Starts a real `bentoml serve` (temporary project, its own SQLite store) twice: with the dynamic batcher
(``serve.max_batch_size`` 16) and with batches of one. For each client count it sends a bounded number of
``POST /generate`` requests on loopback and reports req/s, completion tokens/s and p50/p95/p99 latency, then
checks that every 200 response has its row in the served-output store. Writes ``bench/results/serving.json``.

    python bench/bench_serving.py                                  # tiny model (seconds)
    nice -n 10 python bench/bench_serving.py --model smollm2-135m-instruct --requests 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.served_store import open_store  # noqa: E402
from tests.serving.server import make_project, start_server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


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
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "_ids": ids,
    }


def run_mode(name: str, batch: int, args: argparse.Namespace, work: Path) -> dict:
    project = make_project(
        work / name, reload_poll_seconds=0.0, max_batch_size=batch, torch_threads=args.server_threads, bf16=args.bf16
    )
    if args.model != "tiny":
        import yaml

        params = yaml.safe_load((project / "params.yaml").read_text())
        params["model"]["base"] = args.model
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"RLHF_HOME": os.environ.get("RLHF_HOME", str(Path.home() / ".cache" / "rlhf-loop"))}
    server = start_server(project, extra_env=env, timeout=300)
    try:
        run_level(server.url, 2, 4, args.max_new_tokens)  # warm-up
        levels = [run_level(server.url, c, args.requests, args.max_new_tokens) for c in args.clients]
    finally:
        server.kill()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model.base for the served project (tiny or a real spec)")
    parser.add_argument("--requests", type=int, default=64, help="requests per client count")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    parser.add_argument(
        "--server-threads", type=int, default=1, help="the server's torch threads (the clients use the other core)"
    )
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="serve in float32 (serve.bf16 false)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        modes = {
            "batched": run_mode("batched", 16, args, Path(tmp)),
            "one_at_a_time": run_mode("one_at_a_time", 1, args, Path(tmp)),
        }

    def rps(mode: str, clients: int) -> float:
        return next(lv["req_per_s"] for lv in modes[mode]["levels"] if lv["clients"] == clients)

    lo, hi = min(args.clients), max(args.clients)
    result = {
        "hardware": f"CPU only: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"the server uses {args.server_threads} torch thread(s), serve.bf16 {args.bf16}",
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
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "modes"}, indent=2))


if __name__ == "__main__":
    main()
