"""The stage API: one function per stage of the loop, each taking its frozen config, the project paths and the
versions it consumes, and returning a small frozen, JSON-serialisable result (``json.dumps(asdict(r))``).

No live model crosses this boundary. Long stages take ``progress(done, total, note)``. These are the only
entry points: the DVC stage commands (``dvc.yaml`` ``cmd:``, each a ``main()`` beside its stage function that
parses ``--params`` and calls it), the Prefect tasks (``flows/``), the CLI and the tests all call them.

==================  ======================================================================  =====================
stage               function                                                                result
==================  ======================================================================  =====================
seed: sample        ``sample_seed(SeedingConfig, paths, *, model, progress)``               ``SeedSample``
seed: label         ``label_seed(SeedingConfig, paths, *, sample, progress)``               ``SeedLabels``
seed: ingest        ``ingest_seed(ValidationConfig, paths, *, labels, report_dir, push)``   ``IngestSummary``
served: export      ``export_served_feedback(ServeConfig, paths, *, progress)``             ``ServedExport``
served: ingest      ``ingest_served_feedback(ValidationConfig, paths, *, exported, ...)``   ``ServedIngest``
validate (+ store)  ``validate_and_store(ValidationConfig, paths, *, source, out, store)``  ``ValidateResult``
policy parent       ``point_policy_at_champion(ModelConfig, paths)``                        ``str`` (version)
train reward model  ``train_reward_model(RewardConfig, paths, *, data_version, ...)``       ``RewardStageResult``
train judge model   ``train_judge_model(RewardConfig, JudgeRewardConfig, paths, *, used)``  ``JudgeModelResult``
train policy        ``train_policy(PolicyConfig, paths, *, model, reward, parent, ...)``    ``PolicyResult``
evaluate            ``evaluate(EvalConfig, paths, *, model, candidate, kl_target, ...)``    ``EvalResult``
human judge         ``judge_by_humans(EvalConfig, ServeConfig, paths, *, policy, evaluation)``  ``HumanJudgeResult``
gate                ``gate(GateConfig, paths, *, evaluation)``                              ``GateResult``
register / promote  ``register_and_decide(paths, *, policy, evaluation, gate)``             ``PromotionResult``
tournament: train   ``train_candidate(PolicyConfig, CandidateRecipe, paths, *, model, ...)``  ``PolicyResult``
tournament: eval    ``evaluate_candidate(EvalConfig, paths, *, name, model, candidate, ...)``  ``EvalResult``
tournament: decide  ``decide_tournament(EvalConfig, GateConfig, paths, *, entrants)``      ``list[GateResult]``
compare (audit)     ``compare(EvalConfig, paths, *, model, a, b, demo_task, progress)``       ``CompareResult``
==================  ======================================================================  =====================

The DVC stages (``train_reward``, ``ppo``, ``train_judge``, ``evaluate``) also have ``reward_result``,
``policy_result``, ``judge_model_result`` and ``evaluation_result``: the result their last run left, for a caller
that found the stage up to date (:func:`components.project.dvc_runner.run_stage`). :func:`result_from_dict` rebuilds any
result from its ``asdict`` form (what crosses a Prefect task boundary).

Each stage's module is imported on first use (torch and transformers only for the stages that run a model); the
registry's BentoML import stays lazy.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

from components.project.paths import ProjectPaths

if TYPE_CHECKING:
    from components.common.progress import Progress
    from components.config.evaluation import EvalConfig
    from components.config.gate import GateConfig
    from components.config.judges import JudgeRewardConfig
    from components.config.model import ModelConfig
    from components.data.feedback.served import (
        ServedExport,
        ServedIngest,
        export_served_feedback,
        ingest_served_feedback,
    )
    from components.data.feedback.store import IngestSummary, ValidateResult, validate_and_store
    from components.decide.compare import CompareResult, compare
    from components.decide.evaluation import EvalResult, ModelEval, evaluate
    from components.decide.gate import GateCheck, GateResult, gate
    from components.decide.judges.human import HumanJudgeResult, judge_by_humans
    from components.decide.judges.reward_model import JudgeModelResult, train_judge_model
    from components.decide.tournament import decide_tournament, evaluate_candidate, train_candidate
    from components.demo_task.seed import SeedLabels, SeedSample, ingest_seed, label_seed, sample_seed
    from components.models.policy.train import PolicyResult, policy_result, train_policy
    from components.models.reward.train import RewardStageResult, reward_result, train_reward_model
    from components.project.params import Params, load_params
    from components.records.registry import PromotionResult, register_and_decide

_HOME: dict[str, str] = {
    "CompareResult": "components.decide.compare",
    "EvalConfig": "components.config.evaluation",
    "EvalResult": "components.decide.evaluation",
    "ForgetResult": "components.data.feedback.forget",
    "GateCheck": "components.decide.gate",
    "GateConfig": "components.config.gate",
    "GateResult": "components.decide.gate",
    "HumanJudgeResult": "components.decide.judges.human",
    "IngestSummary": "components.data.feedback.store",
    "JudgeModelResult": "components.decide.judges.reward_model",
    "ModelEval": "components.decide.evaluation",
    "Params": "components.project.params",
    "PolicyResult": "components.models.policy.train",
    "Progress": "components.common.progress",
    "PromotionResult": "components.records.registry",
    "RewardStageResult": "components.models.reward.train",
    "SeedLabels": "components.demo_task.seed",
    "SeedSample": "components.demo_task.seed",
    "ServedExport": "components.data.feedback.served",
    "ServedIngest": "components.data.feedback.served",
    "ValidateResult": "components.data.feedback.store",
    "compare": "components.decide.compare",
    "decide_tournament": "components.decide.tournament",
    "evaluate": "components.decide.evaluation",
    "evaluate_candidate": "components.decide.tournament",
    "export_served_feedback": "components.data.feedback.served",
    "forget_rater": "components.data.feedback.forget",
    "gate": "components.decide.gate",
    "ingest_served_feedback": "components.data.feedback.served",
    "judge_by_humans": "components.decide.judges.human",
    "ingest_seed": "components.demo_task.seed",
    "label_seed": "components.demo_task.seed",
    "load_params": "components.project.params",
    "policy_result": "components.models.policy.train",
    "rater_summary": "components.data.feedback.agreement",
    "register_and_decide": "components.records.registry",
    "reward_result": "components.models.reward.train",
    "sample_seed": "components.demo_task.seed",
    "train_candidate": "components.decide.tournament",
    "train_judge_model": "components.decide.judges.reward_model",
    "train_policy": "components.models.policy.train",
    "train_reward_model": "components.models.reward.train",
    "validate_and_store": "components.data.feedback.store",
}
"""Where each name of the stage API is defined; imported on first use, so a light command (``rlhf validate``)
loads no torch."""


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


T = TypeVar("T")


def evaluation_result(paths: ProjectPaths) -> EvalResult:
    """The result of the evaluate stage's last run (``metrics/eval.json``, which is ``asdict`` of it)."""
    from components.decide.evaluation import EvalResult

    if not paths.eval_metrics.is_file():
        raise FileNotFoundError(f"{paths.eval_metrics}: no evaluation yet; run the evaluate stage first")
    return result_from_dict(EvalResult, json.loads(paths.eval_metrics.read_text(encoding="utf-8")))


def point_policy_at_champion(model: ModelConfig, paths: ProjectPaths) -> str:
    """Register ``model.base`` as the first champion when the registry has none, and write
    ``registry/ppo_parent.json`` (a dep of the ``ppo`` stage, which starts from the champion with
    ``ppo.init_from: champion``), so a new champion reruns PPO and the same one skips it. Returns the champion."""
    from components.models.base_model import resolve_model_dir
    from components.records import registry

    champion = registry.ensure_base_champion(paths, model.base, resolve_model_dir(model.base))
    registry.write_ppo_parent(paths)
    return champion.version


def judge_model_result(judge: JudgeRewardConfig, paths: ProjectPaths) -> JudgeModelResult:
    """The result of the train_judge stage's last run (``metrics/judge_reward.json``)."""
    from components.decide.judges.reward_model import JudgeModelResult

    summary = paths.metrics / "judge_reward.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: no judge model yet; run the train_judge stage first")
    record, path = json.loads(summary.read_text(encoding="utf-8")), str(paths.root / judge.path)
    if not record.get("used"):
        return JudgeModelResult(False, path, None, None, 0, 0, record.get("reason", ""))
    ev = record.get("eval") or {}
    pairs = int(ev.get("pairs", 0))
    return JudgeModelResult(True, path, record["version"], ev.get("accuracy"), pairs, int(record["train_pairs"]))


def result_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a stage result (a dataclass, nested dataclasses and lists of them included) from ``asdict``."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _rebuild(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}  # type: ignore[arg-type]
    return cls(**values)


def _rebuild(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return result_from_dict(tp, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and args and isinstance(value, list):
        return [_rebuild(args[0], v) for v in value]
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return result_from_dict(arg, value)
    return value


__all__ = [
    "CompareResult",
    "EvalConfig",
    "EvalResult",
    "GateCheck",
    "GateConfig",
    "GateResult",
    "HumanJudgeResult",
    "IngestSummary",
    "JudgeModelResult",
    "ModelEval",
    "Params",
    "PolicyResult",
    "Progress",
    "PromotionResult",
    "RewardStageResult",
    "SeedLabels",
    "SeedSample",
    "ServedExport",
    "ServedIngest",
    "ValidateResult",
    "compare",
    "decide_tournament",
    "evaluate",
    "evaluate_candidate",
    "evaluation_result",
    "export_served_feedback",
    "gate",
    "ingest_seed",
    "ingest_served_feedback",
    "judge_by_humans",
    "judge_model_result",
    "label_seed",
    "load_params",
    "point_policy_at_champion",
    "policy_result",
    "register_and_decide",
    "result_from_dict",
    "reward_result",
    "sample_seed",
    "train_candidate",
    "train_judge_model",
    "train_policy",
    "train_reward_model",
    "validate_and_store",
]
