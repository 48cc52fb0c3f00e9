"""One round of the loop on HH-RLHF, the way a new team runs it: ``rlhf init`` -> ``rlhf import`` -> ``rlhf
retrain`` (judge reward model gate) -> ``rlhf models`` / ``rlhf audit``, with the figures and the time per stage.

    python -m bench hh_round HH_RLHF_JSONL_GZ [--lines N] [--model SPEC] [--set section.key=VALUE ...]
                             [--workdir DIR] [--threads N] [--conditions TEXT] [--no-table]

1. ``rlhf init WORKDIR/project --model SPEC`` (default: the default model), then ``--set`` overrides written
   into its ``params.yaml`` (none: the defaults ``rlhf init`` writes, i.e. full size).
2. ``rlhf import`` of the file (``--lines N``: its first N lines only): rows in / accepted / quarantined by reason,
   the prompt pool's train / held-out split.
3. ``rlhf retrain``: the training reward model and the judge reward model on prompt-disjoint slices
   (``reward.judge_fraction``), held-out prompts apart from both; PPO; the evaluation judged by the judge
   reward model; the gate. Stage boundaries are the times each stage wrote its last output file
   (``registry/ppo_parent.json`` before training, then ``metrics/reward_train.png``, ``metrics/ppo.json``,
   ``metrics/judge_reward.json``, ``metrics/eval.json``, ``registry/status.json``); a file the run did not
   rewrite joins its stage to the next (:func:`stage_seconds`), so the stages add up to the retrain's time.
4. ``rlhf models --json`` and ``rlhf audit CANDIDATE --json``: the audit must name no demo data or annotator.
5. Long conversations: every stored pair's text as the reward model reads it (``reward.max_length``), how many
   were cut and by how much, and whether the cut stayed in the conversation's past (the reply being scored and
   the user turn it answers intact).

Every command runs as a subprocess with the ``rlhf`` of this interpreter's environment (``--threads``: their
``OMP_NUM_THREADS``); the results JSON (default ``bench/results/hh_round.json``) is rewritten after each step, so
a run stopped part way keeps what it measured. Unless ``--no-table``, the row "HH-RLHF round" of the table in
``docs/benchmarks.md`` is updated at the end.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import harness

RLHF = str(Path(sys.executable).with_name("rlhf"))
STAGE_ENDS = [  # (stage, the file it writes last), in the order `rlhf retrain` runs them
    ("feedback export + validation + DVC version", "registry/ppo_parent.json"),
    ("train_reward", "metrics/reward_train.png"),
    ("ppo", "metrics/ppo.json"),
    ("train_judge", "metrics/judge_reward.json"),
    ("evaluate", "metrics/eval.json"),
    ("gate + register", "registry/status.json"),
]
DEMO_WORDS = ("demo", "gold")


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, str]:
    """Run one command, its output to ``log``: (exit code, wall seconds, output)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    out = done.stdout + done.stderr
    log.write_text(out, encoding="utf-8")
    print(f"[{seconds:8.1f} s] {' '.join(cmd[1:])} -> exit {done.returncode}", flush=True)
    return done.returncode, seconds, out


def set_params(params: Path, overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=VALUE`` (YAML values) to a params file; returns the overrides applied."""
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    applied: dict[str, Any] = {}
    for item in overrides:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = raw
        for s in sections:
            node = node[s]
        if leaf not in node:
            raise SystemExit(f"--set {item}: {key} is not a key of {params}")
        node[leaf] = applied[key] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return applied


def first_lines(src: Path, n: int, dest: Path) -> Path:
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dest, "wt", encoding="utf-8") as out:
        for _, line in zip(range(n), f):
            out.write(line)
    return dest


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def json_tail(output: str, opener: str) -> Any:
    """The JSON document a ``--json`` command printed (after any log lines)."""
    return json.loads(output[output.index(opener) :])


def stage_seconds(root: Path, t0: float, wall: float) -> dict[str, float]:
    """Wall seconds per stage of the ``rlhf retrain`` that started at ``t0`` (epoch seconds) and ran ``wall``
    seconds, from the times its stages wrote their last files (``STAGE_ENDS``), in the order they run.

    A file this run did not write (older than ``t0``, e.g. ``registry/ppo_parent.json`` rewritten only for a new
    champion, or the outputs of a stage DVC skipped as up to date) ends no stage: its stage is counted together
    with the next one that wrote its file, under both names joined by " + ". The time from the last file written
    to the command's exit is its own entry (named after the stage that did not finish when one did not, e.g. a
    round stopped part way), so every figure is >= 0 and they add up to ``wall``."""
    t1 = t0 + wall
    out: dict[str, float] = {}
    names: list[str] = []
    before = t0
    for stage, rel in STAGE_ENDS:
        path = root / rel
        if not path.exists():
            names.append(f"{stage} (did not finish)")
            break
        names.append(stage)
        end = path.stat().st_mtime
        if end < t0:
            continue
        end = min(max(end, before), t1)
        out[" + ".join(names)] = round(end - before, 1)
        names, before = [], end
    rest = " + ".join([*names, "to exit (the round's summary)"])
    out[rest] = round(max(0.0, wall - sum(out.values())), 1)
    return out


def cut_report(root: Path, max_length: int) -> dict[str, Any]:
    """What ``reward.max_length`` cuts from the stored pairs' texts (chosen and rejected), read as the reward
    model reads them (:func:`components.models.reward.model.reward_text`, last ``max_length`` tokens kept)."""
    from transformers import AutoTokenizer

    from components.data.prompt_pool import as_messages
    from components.models.reward.model import reward_text
    from components.models.reward.pairs import read_pairs

    tok = AutoTokenizer.from_pretrained(root / "models" / "reward")
    pairs = read_pairs(root / "data" / "feedback" / "pairs.parquet")
    rows = [(p, r) for p, c, rj in zip(pairs.prompts, pairs.chosen, pairs.rejected) for r in (c, rj)]
    texts = [reward_text(tok, p, r) for p, r in rows]
    encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    cut = reply_hit = user_hit = first_turn_hit = 0
    cuts: list[int] = []
    for (prompt, reply), text, ids, offsets in zip(rows, texts, encoded["input_ids"], encoded["offset_mapping"]):
        lost = max(0, len(ids) - max_length)
        if not lost:
            continue
        cut, cuts = cut + 1, [*cuts, lost]
        messages = as_messages(prompt)
        first, last_user = messages[0]["content"], [m for m in messages if m["role"] == "user"][-1]["content"]
        reply_char = text.rindex(reply)
        chars = (text.index(first), text.rindex(last_user, 0, reply_char), reply_char)
        first_tok, user_tok, reply_tok = (next(i for i, (_, end) in enumerate(offsets) if end > c) for c in chars)
        first_turn_hit += lost > first_tok
        user_hit += lost > user_tok
        reply_hit += lost > reply_tok
    return {
        "max_length": max_length,
        "texts": len(texts),
        "truncated": cut,
        "tokens_cut": sum(cuts),
        "mean_cut_of_truncated": round(sum(cuts) / len(cuts), 1) if cuts else 0.0,
        "max_cut": max(cuts, default=0),
        "cut_only_system_turn": cut - first_turn_hit,
        "cut_reached_first_turn": first_turn_hit,
        "cut_reached_last_user_turn": user_hit,
        "cut_reached_reply": reply_hit,
        "reply_intact": cut - reply_hit,
    }


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="hh_round", out="hh_round.json")
    ap.add_argument("data", type=Path, help="an HH-RLHF JSONL(.gz) file, e.g. the harmless-base test split")
    ap.add_argument("--lines", type=int, default=0, help="import only the first N lines (0: all)")
    ap.add_argument("--set", nargs="*", default=[], help="params overrides, section.key=VALUE (YAML values)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the project goes (default: a temp folder)")
    args = ap.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="hh-round-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root, out = work / "project", args.out.resolve()
    env = os.environ | {
        "RLHF_DVC_REMOTE": str(work / "remote"),
        "PREFECT_HOME": str(work / "prefect"),
        "DO_NOT_TRACK": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded machine starts it slowly
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RLHF_PROJECT", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    report: dict[str, Any] = {
        "data": "HH-RLHF harmless-base test split" + (f", first {args.lines} lines" if args.lines else ""),
        "benchmark": "hh_round",
        "model": args.model,
        "conditions": args.conditions,
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "workdir": str(work),
        "seconds": {},
    }

    def save() -> None:
        harness.write_results(out, {k: v for k, v in report.items() if k != "machine"})

    # 1. init (+ overrides)
    code, report["seconds"]["init"], text = run(
        [RLHF, "init", str(root), "--model", args.model], work, env, work / "init.log"
    )
    if code:
        raise SystemExit(f"rlhf init failed:\n{text}")
    report["overrides"] = set_params(root / "params.yaml", args.set)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    save()

    # 2. import
    data = first_lines(args.data, args.lines, work / "hh.jsonl.gz") if args.lines else args.data.resolve()
    code, report["seconds"]["import"], text = run([RLHF, "import", str(data)], root, env, work / "import.log")
    summaries = sorted((root / "reports" / "validation").glob("*/summary.json"))
    report["import"] = {"exit_code": code, **(read_json(summaries[-1]) if summaries else {})}
    report["prompt_pool"] = read_json(root / "data" / "prompts" / "pool.json")
    save()
    if code:
        raise SystemExit(f"rlhf import failed:\n{text}")

    # 3. retrain
    t0 = time.time()
    code, report["seconds"]["retrain"], text = run([RLHF, "retrain"], root, env, work / "retrain.log")
    report["seconds"]["retrain_stages"] = stage_seconds(root, t0, report["seconds"]["retrain"])
    metrics = {
        name: read_json(root / "metrics" / f"{name}.json") for name in ("reward", "judge_reward", "ppo", "eval", "gate")
    }
    ev, gate = metrics["eval"], metrics["gate"]
    report["retrain"] = {
        "exit_code": code,
        "decision": next(
            (line.split("decision:")[1].split(";")[0].strip() for line in text.splitlines() if "decision:" in line),
            None,
        ),
        "reward": {k: metrics["reward"].get(k) for k in ("eval", "train", "truncation", "pool_heldout_pairs")},
        "judge_reward": metrics["judge_reward"],
        "ppo": metrics["ppo"],
        "eval": {k: v for k, v in ev.items() if k not in ("examples",)},
        "gate": {k: gate.get(k) for k in ("passed", "decided", "decide_on", "judge", "checks")},
    }
    save()
    if code:
        raise SystemExit(f"rlhf retrain failed (see {work / 'retrain.log'}):\n{text[-3000:]}")

    # 4. models + audit
    code, report["seconds"]["models"], text = run([RLHF, "models", "--json"], root, env, work / "models.log")
    candidate = ev.get("candidate", {}).get("version")
    code, report["seconds"]["audit"], text = run([RLHF, "audit", candidate, "--json"], root, env, work / "audit.log")
    trail = json_tail(text, "{")
    words = json.dumps(trail).lower()
    report["audit"] = {
        "exit_code": code,
        "judge": trail.get("judge", {}).get("name"),
        "gate_judge": (trail.get("gate") or {}).get("judge"),
        "names_demo_data_or_annotator": {w: w in words for w in DEMO_WORDS},
        "prompt_pool": trail.get("prompt_pool"),
    }
    save()

    # 5. what max_length cuts
    t1 = time.perf_counter()
    report["truncation_check"] = cut_report(root, int(params["reward"]["max_length"]))
    report["seconds"]["truncation_check"] = round(time.perf_counter() - t1, 1)
    save()
    print(json.dumps({k: report[k] for k in ("seconds", "audit", "truncation_check")}, indent=2))
    if not args.no_table:
        harness.update_row("HH-RLHF round", table_cells(report, args, out))


def table_cells(report: dict[str, Any], args, out: Path) -> list[str]:
    """The row of ``docs/benchmarks.md``'s table: conditions, the round's figures, how to rerun it."""
    s, r = report["seconds"], report["retrain"]
    ev, judge = r["eval"], r["judge_reward"].get("eval", {})
    size = f"first {args.lines} lines" if args.lines else "all 2,312 lines"
    ours = (
        f"init {s['init']} s, import {s['import']} s, retrain {s['retrain']} s "
        f"({', '.join(f'{k} {v} s' for k, v in s.get('retrain_stages', {}).items())}); "
        f"reward model held-out accuracy {r['reward']['eval']['accuracy']:.3f}, judge {judge.get('accuracy', 0):.3f}; "
        f"win rate by the judge {ev['win_rate']:.1%} [{ev['win_rate_low']:.1%}, {ev['win_rate_high']:.1%}], "
        f"KL {ev['candidate']['kl']}, {r['decision']}"
    )
    lines = ["--lines", str(args.lines)] if args.lines else []
    rerun = harness.command("hh_round", ["HH_RLHF_FILE", *lines, *(["--set", *args.set] if args.set else [])])
    conditions = f"CPU, {harness.machine()['cpu_count']} cores; {args.conditions or 'conditions not given'}"
    return [
        f"{conditions}; {args.model}, HH-RLHF harmless-base test, {size}",
        ours,
        "-",
        "-",
        rerun,
        f"`{harness.results_path(out)}`",
    ]


if __name__ == "__main__":
    main()
