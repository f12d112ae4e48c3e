"""The SLMDeployment API: pydantic models (single source of truth) and CRD generation."""

from slm_operator.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    SLMDeployment,
    SLMDeploymentSpec,
    SLMDeploymentStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "SLMDeployment",
    "SLMDeploymentSpec",
    "SLMDeploymentStatus",
]
