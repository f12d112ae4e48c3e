"""The Service in front of the serving Pods."""

from __future__ import annotations

from typing import Any

from slm_operator.builders.common import metadata
from slm_operator.naming import selector_labels, service_name
from slm_operator.plan import Plan

HTTP_PORT_NAME = "http"


def build_service(plan: Plan) -> dict[str, Any]:
    """ClusterIP Service on spec.api.port, forwarding to the runtime's named port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(plan, service_name(plan.owner.name), "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(plan.owner.name),
            "ports": [
                {
                    "name": HTTP_PORT_NAME,
                    "protocol": "TCP",
                    "port": plan.spec.api.port,
                    "targetPort": HTTP_PORT_NAME,
                    "appProtocol": "http",
                }
            ],
        },
    }
