"""Every stage's configuration, in one torch-free place.

One module per ``params.yaml`` section, each holding that section's frozen dataclass with every field documented
where it is declared:

==============  =========================================  ==========================================
section         module                                     dataclass
==============  =========================================  ==========================================
``model``       ``components/config/model.py``             ``ModelConfig``
``validation``  ``components/config/validation.py``        ``ValidationConfig``
``seeding``     ``components/config/seeding.py``           ``SeedingConfig`` (the demo task only)
``prompts``     ``components/config/prompts.py``           ``PromptsConfig`` (the prompt pool)
``reward``      ``components/config/reward.py``            ``RewardConfig``
``policy``      ``components/config/policy.py``            ``PolicyConfig``
``eval``        ``components/config/evaluation.py``        ``EvalConfig``
``gate``        ``components/config/gate.py``              ``GateConfig``
``serve``       ``components/config/serve.py``             ``ServeConfig``
``flow``        ``components/config/flow.py``              ``FlowConfig``
==============  =========================================  ==========================================

These modules import neither torch nor transformers (a test checks it), so validating a params file is cheap.
This package re-exports only the loading functions; import a stage's dataclass from its module.
"""

from components.config.loading import (
    RENAMED_SECTIONS,
    ConfigError,
    from_dict,
    load_section,
    read_params,
    read_section,
    to_dict,
)

__all__ = [
    "RENAMED_SECTIONS",
    "ConfigError",
    "from_dict",
    "load_section",
    "read_params",
    "read_section",
    "to_dict",
]
