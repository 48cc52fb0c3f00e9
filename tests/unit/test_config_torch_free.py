"""Configs are torch-free: ``rlhf --help``, ``rlhf validate`` and ``load_params`` never import torch or transformers.

Each case runs in a fresh interpreter (a test process has torch loaded already) and reports which heavy modules
were loaded when the interpreter exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")

PROBE = """
import atexit, json, sys
atexit.register(lambda: print("LOADED=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules))))
{body}
"""


def _loaded_heavy(body: str, cwd: Path) -> list[str]:
    code = PROBE.format(heavy=HEAVY, body=body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("LOADED=")), None)
    assert line is not None, f"probe did not finish (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line.removeprefix("LOADED="))


def _cli(*args: str) -> str:
    return "\n".join(
        [
            "import sys",
            f"sys.argv = ['rlhf', *{list(args)!r}]",
            "from rlhf_cli.main import app",
            "try:\n    app()\nexcept SystemExit:\n    pass",
        ]
    )


def test_the_probe_sees_torch():
    assert _loaded_heavy("import torch", REPO) == ["torch"]


def test_load_params_and_every_config_module_import_no_torch():
    body = (
        "import importlib, pkgutil, components.config\n"
        "for m in pkgutil.iter_modules(components.config.__path__):\n"
        "    importlib.import_module('components.config.' + m.name)\n"
        "from components.project.params import load_params\n"
        f"load_params({str(REPO / 'params.yaml')!r})"
    )
    assert _loaded_heavy(body, REPO) == []


def test_rlhf_help_imports_no_torch():
    assert _loaded_heavy(_cli("--help"), REPO) == []


def test_rlhf_validate_imports_no_torch(tmp_path):
    rows = [{"prompt": f"question {i}?", "chosen": f"a helpful answer {i}", "rejected": "no"} for i in range(3)]
    feedback = tmp_path / "pairs.jsonl"
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = _cli("validate", str(feedback), "--out", str(tmp_path / "out"), "--params", str(REPO / "params.yaml"))
    assert _loaded_heavy(body, tmp_path) == []
    assert (tmp_path / "out").is_dir()
