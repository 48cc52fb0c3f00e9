"""The ``train_reward`` DVC stage's command: ``python -m components.reward.train --params params.yaml``.

Reads the ``reward`` section of the params file and trains on ``data/feedback/pairs.parquet`` of the
project holding that params file, writing ``models/reward`` and ``metrics/reward*``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from components.config import ConfigError, load_section
from components.paths import ProjectPaths
from components.reward.config import RewardConfig
from components.reward.pairs import PairsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.reward.train", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (section reward)")
    parser.add_argument("--pairs", type=Path, default=None, help="pairs file (default: data/feedback/pairs.parquet)")
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: models/reward)")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics folder (default: metrics)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    paths = ProjectPaths(args.params.resolve().parent)
    try:
        cfg = load_section(RewardConfig, "reward", args.params)
        from components.reward.trainer import train_reward

        result = train_reward(
            args.pairs or paths.pairs,
            cfg,
            args.out or paths.reward_model,
            args.metrics or paths.metrics,
            project_root=paths.root,
        )
    except (ConfigError, PairsError) as exc:
        print(f"train_reward: {exc}", file=sys.stderr)
        return 2
    acc = result.eval_accuracy
    logging.getLogger(__name__).info(
        "reward model saved to %s; held-out accuracy %s", result.model_dir, "n/a" if acc is None else f"{acc:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
