"""Piped output (CI, Prefect run logs, files) is never wrapped at 80 columns: one message, one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

LONG = "a-long-log-message-" + "x" * 200


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("COLUMNS", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_long_log_line_from_rlhf_stays_one_line(tmp_path):
    code = (  # the real app and its callback (the CLI's logging setup), plus one command that logs a long line
        "import logging\n"
        "from rlhf_cli.main import app\n"
        "@app.command('say', hidden=True)\n"
        "def say() -> None:\n"
        f"    logging.getLogger('components.example').info({LONG!r})\n"
        "app(['say'])\n"
    )
    result = _run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "a-long-log-message" in line]
    assert len(lines) == 1, result.stdout
    assert LONG in lines[0] and "INFO" in lines[0] and "components.example" in lines[0]


def test_rlhf_validate_piped_prints_long_paths_on_one_line(tmp_path):
    folder = tmp_path / ("a-folder-with-a-long-name-" + "y" * 120)
    folder.mkdir()
    feedback = folder / "feedback.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(2)]
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rlhf = Path(sys.executable).with_name("rlhf")
    result = _run([str(rlhf), "validate", str(feedback), "--out", str(folder / "out")], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    accepted = [line for line in result.stdout.splitlines() if line.startswith("accepted rows:")]
    assert len(accepted) == 1 and accepted[0].endswith(str(folder / "out" / "accepted_pairs.parquet")), result.stdout
    logged = [line for line in result.stdout.splitlines() if "validated 2 pairs rows" in line]
    assert len(logged) == 1 and logged[0].rstrip().endswith("s)"), result.stdout
