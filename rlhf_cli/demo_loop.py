"""``rlhf demo``: two rounds of the loop through the ``retrain`` flow, with real HTTP traffic in between.

Round 1: seed feedback -> validate -> version -> reward model -> PPO -> evaluate -> gate -> promote (the flow).
Then the service (a real ``bentoml serve`` process) serves the champion; simulated users (concurrent HTTP
clients, the gold annotator as their rater) ask it questions and rate the replies through ``/feedback``.
Round 2: the flow exports that feedback, validates and versions it beside the seed data, retrains, evaluates
the candidate against round 1's champion, gates, and promotes or rejects; the service reloads on its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]

QUICK: dict[str, dict[str, Any]] = {
    "seeding": {"seed_prompts": 48, "replies_per_prompt": 4},
    "reward": {"epochs": 2},
    "policy": {"steps": 4, "batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4},
    "eval": {"max_prompts": 20},
}
"""``--quick``: the same loop with less of everything (a smoke test in a few minutes)."""


def prepare_project(dest: Path, params: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """A project at ``dest`` made as ``rlhf init`` makes one (the package's pipeline, no code copied), holding
    ``params`` with ``overrides`` applied (the demo's: ``seeding.demo_task: true``); reused when it exists."""
    from components.project import create_project, set_params

    dest = Path(dest).resolve()
    if (dest / "dvc.yaml").is_file():
        return dest
    raw = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    paths = create_project(dest, model=(raw.get("model") or {}).get("base"))
    set_params(paths, raw, "the demo task's params")
    return paths.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """A running ``bentoml serve`` of the project's champion."""

    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def model_version(self) -> str | None:
        try:
            data = httpx.get(f"{self.url}/v1/models", timeout=5).json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        return data[0]["id"] if data else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_service(root: Path, params: Path, *, port: int | None = None, timeout_s: float = 180.0) -> Service:
    """``bentoml serve serving.service:RLHFService`` on a free loopback port with a fresh API token."""
    port = port or free_port()
    token = secrets.token_urlsafe(24)
    log = root / "live" / f"serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RLHF_PROJECT": str(root),
        "RLHF_PARAMS": str(params),
        "RLHF_API_TOKEN": token,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:RLHFService", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = Service(f"http://127.0.0.1:{port}", token, proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return service
        time.sleep(0.5)
    service.stop()
    raise RuntimeError(f"bentoml serve was not ready after {timeout_s:.0f} s; see {log}")


def traffic_prompts(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` prompts the project's pool trains on (never the held-out ones the gate evaluates on), seeded order."""
    import random

    from components.demo_task.seed import train_prompts
    from components.paths import ProjectPaths

    prompts = train_prompts(ProjectPaths(root))
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def round_table(rounds: list[dict[str, Any]]) -> Any:
    """One column per round: counts, reward-model accuracy, win rate with its interval, KL, decision, version."""
    from rich.table import Table

    table = Table(title="rlhf demo: the loop, round by round")
    table.add_column("")
    for r in rounds:
        table.add_column(r.get("label") or "round", justify="right")

    def cell(r: dict[str, Any], key: str) -> str:
        val, ev = r.get("validation") or {}, r.get("evaluation") or {}
        exp = r.get("exported") or {}
        acc = (r.get("reward") or {}).get("accuracy")
        values = {
            "feedback": "seed (demo annotator)"
            if r.get("seeded")
            else f"served: {exp.get('ratings', 0)} ratings, {exp.get('pairs', 0)} choices",
            "rows": f"{val.get('accepted', 0)} / {val.get('quarantined', 0)}",
            "data": (r.get("data_version") or "-")[:12],
            "acc": "-" if acc is None else f"{acc:.1%}",
            "against": ev.get("champion", "-"),
            "win": "-"
            if "win_rate" not in ev
            else f"{ev['win_rate']:.1%} [{ev['win_rate_low']:.1%}, {ev['win_rate_high']:.1%}]",
            "judge": (ev.get("judge") or {}).get("name", "-"),
            "score": "-"
            if ev.get("judge_candidate") is None
            else f"{ev['judge_candidate']:.3f} vs {ev['judge_champion']:.3f}",
            "aa": "-"
            if ev.get("aa_win_rate") is None
            else f"{ev['aa_win_rate']:.1%} [{ev['aa_low']:.1%}, {ev['aa_high']:.1%}]",
            "kl": "-"
            if ev.get("kl") is None
            else f"{ev['kl']:.2f}" + (f" (target {ev['kl_target']:g})" if ev.get("kl_target") else ""),
            "decision": r.get("decision", "-"),
            "candidate": r.get("candidate") or "-",
            "champion": r.get("champion_after") or "-",
            "time": f"{r.get('seconds', 0):.0f} s",
        }
        return values[key]

    for name, key in (
        ("feedback", "feedback"),
        ("rows accepted / quarantined", "rows"),
        ("data version", "data"),
        ("reward model held-out accuracy", "acc"),
        ("evaluated against", "against"),
        ("judge", "judge"),
        ("win rate by the judge [95 % interval]", "win"),
        ("A/A: champion vs itself (about 50 %)", "aa"),
        ("judge score candidate vs champion", "score"),
        ("KL to reference, nats/reply", "kl"),
        ("gate decision", "decision"),
        ("candidate version", "candidate"),
        ("champion after the round", "champion"),
        ("round time (CPU)", "time"),
    ):
        table.add_row(name, *(cell(r, key) for r in rounds))
    return table


def where_next(root: Path, service_note: str) -> str:
    prefect_home = os.environ.get("PREFECT_HOME", "~/.prefect")
    return "\n".join(
        [
            "Where to look next:",
            f"  Prefect UI (flow runs, task logs, artifacts): PREFECT_HOME={prefect_home} prefect server start, "
            "then http://127.0.0.1:4200",
            f"  evaluation report: {root / 'reports' / 'eval.md'}; gate: {root / 'metrics' / 'gate.json'}",
            f"  plots: {root / 'metrics'}/ppo_score.png, ppo_kl.png, reward_train.png (or `dvc plots show`)",
            "  models and their gate decisions: rlhf models; lineage of the champion: rlhf audit",
            f"  the pipeline's state: dvc status; dvc.lock; serve the champion again: rlhf serve ({service_note})",
        ]
    )
