"""A SIGKILLed server loses nothing it acknowledged; a changed champion is hot-reloaded without dropping requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from components.data.served_store import open_store
from components.models.base_model import prepare_tiny
from tests.serving.server import TOKEN, Server, free_port, make_project, start_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _promote_in_registry(project) -> None:
    """Register the tiny base as the first champion and promote a differently seeded one (in the server's
    BentoML home, from another process, as the retraining flow would)."""
    base = prepare_tiny(project / "models" / "base-tiny", seed=0)
    new = prepare_tiny(project / "models" / "policy-2", seed=1)
    code = (
        "import sys; from pathlib import Path; from components.project.paths import ProjectPaths; "
        "from components.records.registry import ensure_base_champion, promote, register; "
        "p = ProjectPaths(Path(sys.argv[1])); ensure_base_champion(p, 'tiny', Path(sys.argv[2])); "
        "register(p, 'policy-2', Path(sys.argv[3]), parent='base-tiny'); promote(p, 'policy-2')"
    )
    env = {**os.environ, "BENTOML_HOME": str(project / ".bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(project), str(base), str(new)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _load(url: str, stop: threading.Event, acked: list, acked_feedback: list, worker: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = client.post("/generate", json={"prompt": f"w{worker} q{i}", "max_new_tokens": 4})
                if r.status_code == 200:
                    sid = r.json()["id"]
                    acked.append(sid)
                    f = client.post("/feedback", json={"id": sid, "rating": 1 + i % 5}, headers=AUTH)
                    if f.status_code == 200:
                        acked_feedback.append((sid, 1 + i % 5))
            except httpx.HTTPError:
                return  # the server died under us: what was acknowledged so far is what counts


def _sigkill_under_load(server: Server) -> tuple[list[str], list[tuple[str, int]]]:
    """Load from 4 clients, then SIGKILL the whole server process group mid-stream; returns what the clients
    got acknowledged (output ids, and (id, rating) of the ratings)."""
    acked: list[str] = []
    acked_feedback: list[tuple[str, int]] = []
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(server.url, stop, acked, acked_feedback, w)) for w in range(4)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while len(acked_feedback) < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    server.kill(signal.SIGKILL)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert len(acked) >= 12 and len(acked_feedback) >= 12
    return acked, acked_feedback


def _check_nothing_acknowledged_was_lost(store_ref, acked: list[str], acked_feedback: list[tuple[str, int]]) -> None:
    """Every acknowledged output and rating is in the store (a SQLite file or a database URL), and it is sound."""
    store = open_store(store_ref)
    try:
        assert store.integrity_ok()
        assert store.has_ids(acked) == set(acked)
        for sid, rating in acked_feedback:
            assert rating in [r["rating"] for r in store.ratings_of(sid)]
    finally:
        store.close()


def _check_after_restart(client: httpx.Client, acked: list[str], acked_feedback: list[tuple[str, int]]) -> None:
    """A restarted server on the same store keeps serving, and the old ids still take feedback (once)."""
    sid, rating = acked_feedback[0]
    again = client.post("/feedback", json={"id": sid, "rating": rating}, headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = client.post("/feedback", json={"id": sid, "rating": 1 + rating % 5}, headers=AUTH)
    assert other.status_code == 409  # one judgement per output and rater, across restarts too
    # an output whose rating was in flight at the kill may or may not hold it: 200 or 409, never 5xx
    in_flight = [s for s in acked if s not in {f for f, _ in acked_feedback}]
    if in_flight:
        late = client.post("/feedback", json={"id": in_flight[0], "rating": 5}, headers=AUTH)
        assert late.status_code in (200, 409), late.text
    fresh = client.post("/generate", json={"prompt": "after the restart", "max_new_tokens": 4})
    assert fresh.status_code == 200
    first = client.post("/feedback", json={"id": fresh.json()["id"], "rating": 5}, headers=AUTH)
    assert first.status_code == 200 and first.json()["duplicate"] is False


@pytest.mark.slow
def test_sigkill_during_load_then_hot_reload(tmp_path):
    project = make_project(tmp_path / "proj", reload_poll_seconds=0.5)
    server = start_server(project)
    try:
        # 1. load from 4 clients, then SIGKILL the whole server process group mid-stream
        acked, acked_feedback = _sigkill_under_load(server)

        # 2. every acknowledged output and rating is in the store, and the store is sound
        _check_nothing_acknowledged_was_lost(project / "live" / "served.sqlite", acked, acked_feedback)

        # 3. restart on the same store; it keeps serving and the old ids still take feedback
        server = start_server(project)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _check_after_restart(client, acked, acked_feedback)

            # 4. hot reload: a champion is registered, then a new one promoted, while requests keep coming
            versions: list[str] = []
            failures: list[int] = []

            def steady() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    for i in range(300):
                        r = c.post("/generate", json={"prompt": f"steady {i}", "max_new_tokens": 8})
                        if r.status_code != 200:
                            failures.append(r.status_code)
                        else:
                            versions.append(r.json()["model_version"])
                        if versions.count("policy-2") >= 3:
                            return

            t = threading.Thread(target=steady)
            t.start()
            time.sleep(0.5)
            _promote_in_registry(project)
            t.join(timeout=120)
            assert not failures
            assert versions[0] == "base:tiny" and versions[-1] == "policy-2"
            # each version serves one contiguous run of requests: the switch never goes back
            runs = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
            assert len(runs) == len(set(runs)) and set(runs) <= {"base:tiny", "base-tiny", "policy-2"}
            assert client.get("/v1/models").json()["data"][0]["id"] == "policy-2"
            metrics = client.get("/metrics").text
            assert 'model_version="policy-2"' in metrics
    finally:
        server.kill()


@pytest.mark.slow
def test_sigkill_during_load_loses_nothing_on_postgres(tmp_path, postgres):
    """The same kill under load with the store on a real PostgreSQL server (``serve.store_url``)."""
    url = postgres.new_database()
    project = make_project(tmp_path / "proj", reload_poll_seconds=0.0, store_url=url)
    server = start_server(project)
    try:
        acked, acked_feedback = _sigkill_under_load(server)
        _check_nothing_acknowledged_was_lost(url, acked, acked_feedback)
        server = start_server(project)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _check_after_restart(client, acked, acked_feedback)
        assert not (project / "live" / "served.sqlite").exists()  # it really ran on Postgres
    finally:
        server.kill()


@pytest.mark.slow
def test_public_address_without_token_is_refused(tmp_path):
    """`bentoml serve` on 0.0.0.0 with no RLHF_API_TOKEN stops with the reason (it never serves)."""
    project = make_project(tmp_path / "proj")
    env = {k: v for k, v in os.environ.items() if k != "RLHF_API_TOKEN"}
    env |= {"RLHF_PROJECT": str(project), "BENTOML_HOME": str(project / ".bentoml"), "RLHF_HOME": str(project / ".h")}
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:RLHFService", "--host", "0.0.0.0"]
    cmd += ["--port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("", proc, tmp_path / "log", project)
    try:
        output, _ = proc.communicate(timeout=90)
    finally:
        server.kill(signal.SIGKILL)
    assert b"refusing to serve on 0.0.0.0 without an API token" in output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "in_flight", "grace_s"),
    [(signal.SIGTERM, "reply", 60), (signal.SIGINT, "stuck", 3)],
    ids=["sigterm-reply-finishes", "sigint-stuck-request-cut"],
)
def test_stop_signal_to_rlhf_serve_stops_every_process_within_the_grace_period(tmp_path, sig, in_flight, grace_s):
    """SIGTERM or SIGINT to `rlhf serve`: a reply being streamed at the signal finishes and is stored; a request
    that would never end (its body never arrives) is cut at ``serve.shutdown_grace_s``; either way no process of
    the service is left and the port is free."""
    import psutil

    project = make_project(tmp_path / "proj", reload_poll_seconds=0.0, shutdown_grace_s=grace_s)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RLHF_API_TOKEN"}
    env |= {"BENTOML_HOME": str(project / ".bentoml"), "RLHF_HOME": str(project / ".h"), "HF_HUB_OFFLINE": "1"}
    rlhf = [str(Path(sys.executable).parent / "rlhf")]
    cmd = [*rlhf, "serve", "--params", str(project / "params.yaml"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        workers = [p for p in psutil.process_iter(["cmdline"]) if f"{port}" in " ".join(p.info["cmdline"] or [])]
        if in_flight == "reply":
            t0, reply = _signal_mid_stream(url, proc, sig)
        else:
            t0 = _signal_with_a_stuck_request(port, proc, sig, grace_s)
        proc.wait(timeout=grace_s + 60)
        _, alive = psutil.wait_procs(tree + workers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        assert time.monotonic() - t0 < grace_s + 30  # bounded by the grace period, whatever the clients do
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: closed connections may linger
            s.bind(("127.0.0.1", port))  # in TIME_WAIT, but nothing listens: the port is free again
            s.listen()
        if in_flight == "reply":
            store = open_store(project / "live" / "served.sqlite")
            assert store.has_ids([reply["id"]]) == {reply["id"]}  # stored before [DONE]
            store.close()
    finally:
        if proc.poll() is None:
            proc.kill()


def _signal_mid_stream(url: str, proc: subprocess.Popen, sig: int) -> tuple[float, dict]:
    """Stream a short reply, send ``sig`` at its first piece; the stream still ends with the stored reply."""
    lines: list[str] = []
    t0 = 0.0
    body = {"prompt": "in flight at the signal", "max_new_tokens": 12, "temperature": 1.0, "seed": 1}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/generate/stream", json=body) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                lines.append(line.removeprefix("data: "))
                if len(lines) == 1:
                    t0 = time.monotonic()
                    proc.send_signal(sig)
    assert lines[-1] == "[DONE]", lines[-3:]  # the reply in flight finished
    reply = json.loads(lines[-2])
    assert reply["id"] and "text" in reply, reply
    return t0, reply


def _signal_with_a_stuck_request(port: int, proc: subprocess.Popen, sig: int, grace_s: int) -> float:
    """Open a request whose body never fully arrives, send ``sig``; the server closes it at the grace period."""
    stuck = socket.create_connection(("127.0.0.1", port))
    head = b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    stuck.sendall(head + b'\r\n{"prompt": ')
    time.sleep(1.0)  # the worker has read the headers and waits for the body
    t0 = time.monotonic()
    proc.send_signal(sig)
    stuck.settimeout(grace_s + 60)
    try:
        cut = stuck.recv(1024)  # a timeout here: the server waited on the stuck client past its grace period
    except ConnectionResetError:
        cut = b""
    finally:
        stuck.close()
    assert cut == b"" or cut.startswith(b"HTTP/1.1 5"), cut  # closed (or answered 5xx) at the grace period
    return t0
