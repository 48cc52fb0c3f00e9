"""The stage API: one function per stage of the loop, each taking its frozen config, the project paths and the
versions it consumes, and returning a small frozen, JSON-serialisable result (``json.dumps(asdict(r))``).

No live model crosses this boundary. Long stages take ``progress(done, total, note)``. The CLI, the Prefect
tasks, the DVC stage commands and the tests all call these same functions:

==================  ======================================================================  =====================
stage               function                                                                result
==================  ======================================================================  =====================
seed: sample        ``sample_seed(SeedingConfig, paths, *, model, progress)``               ``SeedSample``
seed: label         ``label_seed(SeedingConfig, paths, *, sample, progress)``               ``SeedLabels``
seed: ingest        ``ingest_seed(ValidationConfig, paths, *, labels, report_dir, push)``   ``IngestSummary``
validate (+ store)  ``validate_and_store(ValidationConfig, paths, *, source, out, store)``  ``ValidateResult``
train reward model  ``train_reward_model(RewardConfig, paths, *, data_version, ...)``       ``RewardStageResult``
train policy (PPO)  ``train_policy(PolicyConfig, paths, *, model, reward, parent, ...)``       ``PolicyResult``
evaluate            ``evaluate(EvalConfig, paths, *, model, candidate, kl_target, ...)``    ``EvalResult``
gate                ``gate(GateConfig, paths, *, evaluation)``                              ``GateResult``
register / promote  ``register_and_decide(paths, *, policy, evaluation, gate)``             ``PromotionResult``
==================  ======================================================================  =====================

Each stage's module is imported on first use (torch and transformers only for the stages that run a model); the
registry's BentoML import stays lazy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config.evaluation import EvalConfig
    from components.config.gate import GateConfig
    from components.demo_task.seed import SeedLabels, SeedSample, ingest_seed, label_seed, sample_seed
    from components.evaluation import EvalResult, ModelEval, evaluate
    from components.feedback.store import IngestSummary, ValidateResult, validate_and_store
    from components.gate import GateCheck, GateResult, gate
    from components.params import Params, load_params
    from components.ppo.train import PolicyResult, train_policy
    from components.progress import Progress
    from components.registry import PromotionResult, register_and_decide
    from components.reward.train import RewardStageResult, reward_result, train_reward_model

_HOME: dict[str, str] = {
    "EvalConfig": "components.config.evaluation",
    "EvalResult": "components.evaluation",
    "GateCheck": "components.gate",
    "GateConfig": "components.config.gate",
    "GateResult": "components.gate",
    "IngestSummary": "components.feedback.store",
    "ModelEval": "components.evaluation",
    "Params": "components.params",
    "PolicyResult": "components.ppo.train",
    "Progress": "components.progress",
    "PromotionResult": "components.registry",
    "RewardStageResult": "components.reward.train",
    "SeedLabels": "components.demo_task.seed",
    "SeedSample": "components.demo_task.seed",
    "ValidateResult": "components.feedback.store",
    "evaluate": "components.evaluation",
    "gate": "components.gate",
    "ingest_seed": "components.demo_task.seed",
    "label_seed": "components.demo_task.seed",
    "load_params": "components.params",
    "register_and_decide": "components.registry",
    "reward_result": "components.reward.train",
    "sample_seed": "components.demo_task.seed",
    "train_policy": "components.ppo.train",
    "train_reward_model": "components.reward.train",
    "validate_and_store": "components.feedback.store",
}
"""Where each name of the stage API is defined; imported on first use, so a light command (``rlhf validate``)
loads no torch."""


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "EvalConfig",
    "EvalResult",
    "GateCheck",
    "GateConfig",
    "GateResult",
    "IngestSummary",
    "ModelEval",
    "Params",
    "PolicyResult",
    "Progress",
    "PromotionResult",
    "RewardStageResult",
    "SeedLabels",
    "SeedSample",
    "ValidateResult",
    "evaluate",
    "gate",
    "ingest_seed",
    "label_seed",
    "load_params",
    "register_and_decide",
    "reward_result",
    "sample_seed",
    "train_policy",
    "train_reward_model",
    "validate_and_store",
]
