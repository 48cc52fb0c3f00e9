"""One stage contract: every function of ``components/stages.py`` has a caller outside the tests, and each DVC
stage's command calls its stage function (the one the flow's task calls), not a lower-level trainer."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DVC_STAGE_FUNCTION = {
    "train_reward": "train_reward_model",
    "ppo": "train_policy",
    "train_judge": "train_judge_model",
    "evaluate": "evaluate",
}


def _callers() -> str:
    files = [*(REPO / "flows").glob("*.py"), *(REPO / "rlhf_cli").glob("*.py")]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def test_every_stage_function_is_called_by_a_flow_or_the_cli():
    from components import stages

    functions = [n for n in stages.__all__ if inspect.isfunction(getattr(stages, n)) and n != "load_params"]
    callers = _callers()
    unused = [n for n in functions if not re.search(rf"\bstages\.{n}\(", callers)]
    assert not unused, f"stage functions nothing calls: {unused}"


def test_each_dvc_stage_command_calls_its_stage_function():
    from components import stages

    template = yaml.safe_load((REPO / "components/project/templates/pipeline.yaml").read_text(encoding="utf-8"))[
        "stages"
    ]
    assert set(template) == set(DVC_STAGE_FUNCTION)
    for stage, spec in template.items():
        module_name = re.search(r"python -m (\S+)", spec["cmd"]).group(1)
        module = importlib.import_module(module_name)
        function = DVC_STAGE_FUNCTION[stage]
        assert getattr(module, function) is getattr(stages, function), (stage, module_name)
        assert re.search(rf"\b{function}\(", inspect.getsource(module.main)), f"{module_name}.main skips {function}"
