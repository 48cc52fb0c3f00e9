"""The ``flow`` section's config (defined in ``components.flow_config`` so params validation needs no Prefect)."""

from components.flow_config import GPU_POOL_ENV, PPO_PROCESSES_ENV, SERVICE_URL_ENV, FlowConfig, load_flow_config

__all__ = ["GPU_POOL_ENV", "PPO_PROCESSES_ENV", "SERVICE_URL_ENV", "FlowConfig", "load_flow_config"]
