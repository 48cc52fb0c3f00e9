"""Process environment shared by the CLI, stage commands and tests: telemetry off, tokenizers quiet."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Variables that switch off usage reporting of DVC, BentoML, Great Expectations and Prefect."""


def telemetry_off(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set :data:`TELEMETRY_OFF` in ``env`` (default ``os.environ``) where not set already; returns ``env``."""
    target = os.environ if env is None else env
    for key, value in TELEMETRY_OFF.items():
        target.setdefault(key, value)
    return target
