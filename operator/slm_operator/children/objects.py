"""Reading the children's API objects (pure): the claim's record of cached models, Job conditions,
the Pods a decision needs, and whether a live object has drifted from its manifest."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from slm_operator.observe import JobObservation
from slm_operator.resolve.quantities import parse_quantity

# On the cache claim: JSON {cache key: {source, sha256, sizeBytes, quantization, cachedAt}} of the
# models it holds.
CACHED_MODELS_ANNOTATION = "slm.dev/cached-models"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def cached_models(claim: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The models a cache claim is known to hold, by cache key (from its annotation)."""
    if claim is None:
        return {}
    text = ((claim.get("metadata") or {}).get("annotations") or {}).get(CACHED_MODELS_ANNOTATION, "")
    try:
        loaded = json.loads(text) if text else {}
    except ValueError:
        return {}
    return (
        {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
        if isinstance(loaded, dict)
        else {}
    )


def cached_at(record: Mapping[str, Any] | None) -> datetime | None:
    """When the operator recorded a model as cached (None: unknown, e.g. a record from before)."""
    if not record or not record.get("cachedAt"):
        return None
    try:
        return datetime.strptime(str(record["cachedAt"]), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def from_record(seen: JobObservation, record: Mapping[str, Any]) -> JobObservation:
    """A completed fetch as the claim records it (digest, size, quantization)."""
    size = int(record.get("sizeBytes") or 0)
    return dataclasses.replace(
        seen,
        sha256=str(record.get("sha256") or ""),
        size_bytes=size,
        quantization=str(record.get("quantization") or ""),
        total_bytes=size,
        bytes_downloaded=size,
    )


def claim_phase(claim: Mapping[str, Any] | None) -> str | None:
    if claim is None:
        return None
    return str((claim.get("status") or {}).get("phase") or "Pending")


def running_pod(pods: Sequence[Mapping[str, Any]]) -> str:
    """The name of a running, not terminating Pod among `pods`, else ""."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") == "Running" and not (pod.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            return str(pod["metadata"]["name"])
    return ""


def node_holding_claim(serving_pods: Sequence[Mapping[str, Any]]) -> str:
    """The node where a scheduled, live serving Pod has the claim mounted (the first by name), else ""."""
    nodes = sorted(
        str(pod["spec"]["nodeName"])
        for pod in serving_pods
        if (pod.get("spec") or {}).get("nodeName")
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") in ("Pending", "Running")
    )
    return nodes[0] if nodes else ""


def _conditions(job: Mapping[str, Any], type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def job_failed(job: Mapping[str, Any]) -> bool:
    return _conditions(job, "Failed")


def job_complete(job: Mapping[str, Any]) -> bool:
    return _conditions(job, "Complete")


def job_failed_pods(job: Mapping[str, Any]) -> bool:
    return bool((job.get("status") or {}).get("failed"))


def condition_time(obj: Mapping[str, Any], type_: str) -> datetime | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("lastTransitionTime"):
            return datetime.strptime(condition["lastTransitionTime"], TIME_FORMAT).replace(tzinfo=UTC)
    return None


# --- drift --------------------------------------------------------------------------------------


def matches(live: Mapping[str, Any] | None, manifest: Mapping[str, Any]) -> bool:
    return live is not None and contains(live, manifest)


_QUANTITY_TEXT = re.compile(r"^[+]?[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def _same_quantity(a: str, b: str) -> bool:
    """Whether two strings are the same Kubernetes quantity written differently."""
    if not (_QUANTITY_TEXT.match(a) and _QUANTITY_TEXT.match(b)):
        return False
    return parse_quantity(a) == parse_quantity(b)


def contains(observed: Any, desired: Any) -> bool:
    """Whether every field the operator sets has the wanted value in the live object.

    Fields the server or other controllers add (defaults, status, clusterIP) are ignored;
    quantities compare by value ("1024Mi" equals "1Gi").
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(contains(observed.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(contains(o, d) for o, d in zip(observed, desired, strict=True))
    if isinstance(desired, str) and isinstance(observed, str) and desired != observed:
        return _same_quantity(desired, observed)
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(observed == desired)
