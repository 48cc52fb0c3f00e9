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

``python -m bench serving_stream``: streaming chat (``POST /v1/chat/completions`` with ``stream: true``) at 1, 4,
16 and 32 concurrent clients against one server, each client sending ``--rounds`` requests one after another: time
to the first content chunk (TTFT), gaps between content chunks, time per output token after the first, completion
tokens/s (all clients together and per stream), p50/p95, and the engine's decode steps and rows per step (from
``/metrics``). Every figure is also given as a ratio to the one-client level of the same run; the serving goals
are TTFT p50 at 16 clients <= 3x one client's and 16 clients' tokens/s >= 8x one client's. Writes
``bench/results/serving_stream.json``.

    python -m bench serving_stream                                      # tiny model
    nice -n 10 python -m bench serving_stream --model smollm2-135m-instruct

The server runs on ``--server-threads`` torch threads (1: the clients use the other core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench import harness


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Run ``client(0..clients-1)`` on one thread each, all started before any is joined; the wall seconds."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


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

    wall = run_clients(client, clients)
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

    run_clients(client, clients)
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


# ---------------------------------------------------------------------------------------------
# serving_stream: streaming chat by client count, as ratios against one client
# ---------------------------------------------------------------------------------------------

STREAM_PROMPTS = (
    "Explain step by step how to return a damaged parcel and get a refund.",
    "Write a short, friendly reply to a customer whose order #{i} is a week late.",
    "List the things to check before contacting support about a login problem.",
    "Describe how a refund is processed after a return is received.",
)


def stream_once(c: httpx.Client, i: int, max_tokens: int) -> dict:
    """One streaming chat request: when each content chunk arrived (seconds after sending), the completion tokens
    (the usage chunk), the status."""
    prompt = STREAM_PROMPTS[i % len(STREAM_PROMPTS)].format(i=1000 + i)
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 1.0}
    body |= {"seed": i, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                stamps.append(time.perf_counter() - t0)
    return {"status": 200, "stamps": stamps, "done": time.perf_counter() - t0, "tokens": tokens}


def engine_steps(url: str) -> tuple[float, float]:
    """The engine's decode steps so far and the rows they sampled (the ``rlhf_batch_size`` histogram)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("rlhf_batch_size_count"):
            count += float(line.split()[-1])
        elif line.startswith("rlhf_batch_size_sum"):
            total += float(line.split()[-1])
    return count, total


def prompt_tokens(url: str) -> dict[str, int]:
    """Prompt tokens admitted so far by source (``prefix_cache`` / ``prefilled``, the ``rlhf_prompt_tokens_total``
    counter)."""
    got: dict[str, int] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("rlhf_prompt_tokens_total{"):
            got[line.split('source="')[1].split('"')[0]] = int(float(line.split()[-1]))
    return got


def _ms(values: list[float], q: float) -> float | None:
    return round(harness.percentile(values, q) * 1000, 1) if values else None


def stream_level(url: str, clients: int, requests: int, max_tokens: int, spacing: float = 0.0) -> dict:
    """``clients`` concurrent clients, each sending streaming requests one after another, ``requests`` in all.

    ``spacing`` 0: every client starts at once (a burst: with replies of the same length they stay in step, so
    every round's prompts arrive together). Otherwise client k starts ``k * spacing`` seconds late (staggered:
    requests then arrive one by one into a running batch)."""
    got: list[dict] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(k: int) -> None:
        time.sleep(k * spacing)
        with httpx.Client(base_url=url, timeout=900) as c:
            while (i := next(counter, None)) is not None:
                one = stream_once(c, i, max_tokens)
                with lock:
                    got.append(one)

    steps0, rows0 = engine_steps(url)
    wall = run_clients(client, clients)
    steps1, rows1 = engine_steps(url)
    ok = [g for g in got if g["status"] == 200 and g["stamps"]]
    ttft = [g["stamps"][0] for g in ok]
    gaps = [b - a for g in ok for a, b in zip(g["stamps"], g["stamps"][1:])]
    # time per output token after the first chunk, per request
    tpot = [(g["done"] - g["stamps"][0]) / (g["tokens"] - 1) for g in ok if g["tokens"] > 1]
    per_stream = [g["tokens"] / g["done"] for g in ok if g["done"] > 0]
    tokens = sum(g["tokens"] for g in ok)
    steps = steps1 - steps0
    return {
        "clients": clients,
        "arrivals": "staggered" if spacing else "burst",
        "start_spacing_s": round(spacing, 3),
        "requests": requests,
        "ok": len(ok),
        "errors": [g["status"] for g in got if g["status"] != 200],
        "wall_s": round(wall, 3),
        "req_per_s": round(len(ok) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "mean_completion_tokens": round(tokens / len(ok), 1) if ok else 0,
        "ttft_p50_ms": _ms(ttft, 50),
        "ttft_p95_ms": _ms(ttft, 95),
        "chunk_gap_p50_ms": _ms(gaps, 50),
        "chunk_gap_p95_ms": _ms(gaps, 95),
        "tpot_p50_ms": _ms(tpot, 50),
        "tpot_p95_ms": _ms(tpot, 95),
        "stream_tokens_per_s_p50": round(harness.percentile(per_stream, 50), 2) if per_stream else None,
        "latency_p50_ms": _ms([g["done"] for g in ok], 50),
        "latency_p95_ms": _ms([g["done"] for g in ok], 95),
        "decode_steps": int(steps),
        "mean_rows_per_step": round((rows1 - rows0) / steps, 2) if steps else None,
        "ms_per_step": round(wall / steps * 1000, 1) if steps else None,
    }


def main_stream(argv: list[str] | None = None) -> None:
    ap = _parser("serving_stream", "serving_stream.json")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--rounds", type=int, default=3, help="streaming requests per client at each client count")
    ap.add_argument("--anchor-requests", type=int, default=8, help="requests of the one-client anchor (at least)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--arrivals",
        nargs="+",
        choices=["burst", "staggered"],
        default=["burst", "staggered"],
        help="burst: every client starts at once; staggered: client k starts k x (one-client latency / clients) late",
    )
    ap.add_argument("--max-batch-size", type=int, default=16, help="serve.max_batch_size")
    ap.add_argument("--max-queued", type=int, default=64, help="serve.max_queued")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="serve in float32 (serve.bf16 false)")
    ap.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="prefill every prompt whole (serve.prefix_cache false)",
    )
    ap.add_argument(
        "--prefill-rows",
        type=int,
        default=None,
        help="serve.prefill_rows: most prompts per prefill pass (0: all admitted in one pass; default: params.yaml's)",
    )
    ap.add_argument("--label", default="", help="a name for this run in the output")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    serve = {"max_batch_size": args.max_batch_size, "max_queued": args.max_queued}
    serve |= {"torch_threads": args.server_threads, "bf16": args.bf16, "prefix_cache": args.prefix_cache}
    if args.prefill_rows is not None:
        serve["prefill_rows"] = args.prefill_rows
    levels: list[dict] = []
    with harness.workdir("stream") as tmp, served(Path(tmp) / "p", args.model, **serve) as (url, _):
        with httpx.Client(base_url=url, timeout=900) as c:  # warm-up
            stream_once(c, 0, 8)
        stream_level(url, 2, 4, args.max_tokens)
        for clients in args.clients:
            if clients == 1:
                runs = [(max(args.rounds, args.anchor_requests), 0.0)]
            else:
                one = next((lv["latency_p50_ms"] / 1000 for lv in levels if lv["clients"] == 1), 0.0)
                runs = [(clients * args.rounds, 0.0 if a == "burst" else one / clients) for a in args.arrivals]
            for n, spacing in runs:
                levels.append(lv := stream_level(url, clients, n, args.max_tokens, spacing))
                print(
                    f"{clients:>3} clients {lv['arrivals']:>9}: TTFT p50 {lv['ttft_p50_ms']} ms "
                    f"p95 {lv['ttft_p95_ms']} ms, {lv['tokens_per_s']} tok/s, gap p50 {lv['chunk_gap_p50_ms']} ms, "
                    f"{lv['mean_rows_per_step']} rows x {lv['ms_per_step']} ms per step, errors {lv['errors']}",
                    flush=True,
                )
        admitted = prompt_tokens(url)
    anchor = next(lv for lv in levels if lv["clients"] == min(args.clients))
    for lv in levels:
        lv["ttft_p50_vs_one"] = round(lv["ttft_p50_ms"] / anchor["ttft_p50_ms"], 2)
        lv["throughput_vs_one"] = round(lv["tokens_per_s"] / anchor["tokens_per_s"], 2)
    result: dict = {
        "benchmark": "serving_stream",
        "label": args.label,
        "conditions": args.conditions,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "serve": serve,
        "hardware": f"CPU only: {os.cpu_count()} cores, the server uses {args.server_threads} torch thread(s)",
        "load_average_before": load_before,
        "prompt_tokens": admitted,
        "goals": _stream_goals(levels, anchor),
        "levels": levels,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "levels"}, indent=2))
    harness.write_results(args.out, result)
    if not args.no_table:
        harness.update_row(STREAM_ROW, stream_row(json.loads(args.out.read_text()), args.out))


STREAM_ROW = "Serving, streaming chat by client count"


def stream_row(result: dict, out: Path) -> list[str]:
    """The results table's cells (after the first) for a ``serving_stream`` run."""
    levels = result["levels"]

    def fig(arrivals: str, key: str, fmt: str = "{:g}") -> str:
        got = [lv for lv in levels if lv["arrivals"] == arrivals or lv["clients"] == 1]
        return " / ".join(fmt.format(lv[key]) for lv in got)

    counts = " / ".join(str(lv["clients"]) for lv in levels if lv["arrivals"] == "burst")
    load = result.get("load_average_before", [0])[0], result.get("load_average_at_end", [0])[0]
    where = (
        f"CPU ({result['machine']['cpu']}, bf16 {result['serve']['bf16']}), {result['machine']['cpu_count']} cores; "
        f"prefix cache {'on' if result['serve'].get('prefix_cache') else 'off'}; "
        f"server on {result['serve']['torch_threads']} torch thread; {result['conditions'] or 'conditions not given'}, "
        f"load average {load[0]:.1f} before / {load[1]:.1f} after; {result['model']}, {result['max_tokens']} tokens"
    )
    ours = [f"TTFT p50 (ms) at {counts} clients, burst: {fig('burst', 'ttft_p50_ms')}"]
    ours.append(f"tokens/s: {fig('burst', 'tokens_per_s')}")
    ours.append(f"chunk gap p50 (ms): {fig('burst', 'chunk_gap_p50_ms')}")
    if any(lv["arrivals"] == "staggered" for lv in levels):
        ours.append(
            f"staggered: TTFT p50 {fig('staggered', 'ttft_p50_ms')}, tokens/s {fig('staggered', 'tokens_per_s')}"
        )
    ratios = [
        f"{a}: TTFT p50 16:1 **{g['ttft_p50_16_over_1']['value']}x** (goal <= 3x), "
        f"throughput 16:1 **{g['throughput_16_over_1']['value']}x** (goal >= 8x)"
        for a, g in result.get("goals", {}).items()
    ]
    args = ["--model", result["model"]] if result["model"] != "tiny" else []
    return [
        where,
        "; ".join(ours),
        "the same run's one client",
        "; ".join(ratios),
        harness.command("serving_stream", args),
        f"`{harness.results_path(out)}`",
    ]


def _stream_goals(levels: list[dict], anchor: dict) -> dict:
    """The serving goals at 16 clients against the one-client anchor, for each arrival pattern measured."""
    if anchor["clients"] != 1:
        return {}
    goals = {}
    for lv in levels:
        if lv["clients"] != 16:
            continue
        ttft, tput = lv["ttft_p50_vs_one"], lv["throughput_vs_one"]
        goals[lv["arrivals"]] = {
            "ttft_p50_16_over_1": {"value": ttft, "goal": "<= 3", "met": ttft <= 3},
            "throughput_16_over_1": {"value": tput, "goal": ">= 8", "met": tput >= 8},
        }
    return goals
