"""Pure builders: Plan -> child objects as dicts ready for server-side apply."""

from slm_operator.builders.deployment import RUNTIME_ENV_NAMES, build_deployment, runtime_env
from slm_operator.builders.fetch_job import (
    FETCH_FLAGS,
    build_fetch_job,
    fetch_command,
)
from slm_operator.builders.pvc import build_pvc
from slm_operator.builders.service import build_service

__all__ = [
    "FETCH_FLAGS",
    "RUNTIME_ENV_NAMES",
    "build_deployment",
    "build_fetch_job",
    "build_pvc",
    "build_service",
    "fetch_command",
    "runtime_env",
]
