"""The benchmarks' one entry point: ``python -m bench`` lists them, ``python -m bench NAME [ARGS]`` runs one.

``python -m bench NAME --help`` shows a benchmark's options; every one takes ``--threads``, ``--out``,
``--conditions`` and ``--no-table``, and all but ``validation`` ``--model`` (see ``bench/harness.py``). Run from
the repository root.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS: dict[str, tuple[str, str]] = {
    # name: (module:function, what it answers)
    "ppo_vs_trl": ("bench.ppo_vs_trl:main", "PPO samples/s and phase times, ours vs TRL 1.12 PPOTrainer"),
    "optimisers_vs_trl": (
        "bench.optimisers_vs_trl:main",
        "GRPO / RLOO / DPO samples/s (pairs/s), ours vs TRL 1.12 GRPOTrainer / RLOOTrainer / DPOTrainer",
    ),
    "ppo_steps": ("bench.ppo_steps:main", "PPO steps at params.yaml's defaults, per phase; value model variants"),
    "reward_vs_trl": ("bench.reward_vs_trl:main", "reward-model training pairs/s, ours vs TRL's RewardTrainer"),
    "reward_rounds": ("bench.reward_rounds:main", "the reward stage on a demo's two rounds of pairs, with its store"),
    "reward_hh": ("bench.reward_hh:main", "the reward model on real HH-RLHF pairs: accuracy, or step cost per mode"),
    "reward_splits": ("bench.reward_splits:main", "reward-model held-out accuracy over several prompt splits"),
    "hh_round": ("bench.hh_round:main", "one round on HH-RLHF: init -> import -> retrain (judge RM gate) -> audit"),
    "eval_stage": ("bench.eval_stage:main", "the evaluate stage's time at the default EvalConfig"),
    "kl_estimators": (
        "bench.kl_estimators:main",
        "a policy's KL to its reference from a few replies: k1 against the exact per-position KL, their spread",
    ),
    "eval_evidence": ("bench.eval_evidence:main", "the win rate's interval (A/A) by held-out fraction and samples"),
    "serving": ("bench.serving_load:main", "serving load test: 1 / 4 / 16 clients, batched vs one at a time"),
    "serving_hostage": ("bench.serving_load:main_hostage", "short requests beside a long one; streaming latency"),
    "serving_stream": (
        "bench.serving_load:main_stream",
        "streaming chat at 1 / 4 / 16 / 32 clients: time to first token, gaps, tokens/s, ratios to one client",
    ),
    "validation": ("bench.validation_rows:main", "feedback validation (Great Expectations) rows/s"),
    "gpu_roofline": ("bench.gpu_roofline:main", "GPU: PPO update MFU and decoding against the bandwidth bound"),
    "alignment": ("bench/alignment.py", "reward-model over-optimisation: gold score against KL (its own script)"),
}


def _usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in BENCHMARKS.items()]
    return "usage: python -m bench NAME [ARGS]  (NAME --help for its options)\n\nbenchmarks:\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "list"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = BENCHMARKS[name][0]
    if target.endswith(".py"):  # a standalone script: run it as its docstring says
        script = Path(__file__).resolve().parents[1] / target
        return subprocess.call([sys.executable, str(script), *rest])
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)(rest)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
