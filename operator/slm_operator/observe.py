"""What the children say: the fetch Job, the Deployment and the serving Pods as observations (pure).

Each `observe_*` turns an API object (a dict) into a small frozen dataclass that `status` and
`children` decide on; the fetcher's termination-message prefixes and its progress lines are read
here (a contract with slm_runtime.fetch, held by tests/contract/test_fetch_contract.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slm_operator.naming import MODEL_KEY_ANNOTATION

# Prefixes the runtime puts on a container's termination message ("<Prefix>: <message>") for
# failures the operator names in status (a contract with slm_runtime.integrity).
CACHE_NOT_WRITABLE = "CacheNotWritable"
MODEL_CORRUPTED = "ModelCorrupted"
SOURCE_UNAUTHORIZED = "SourceUnauthorized"
FETCH_FAILED = "FetchFailed"
RUNTIME_FAILING = "RuntimeFailing"


@dataclass(frozen=True)
class FetchFailureKind:
    """How a kind of fetch failure shows in status: its reason, and whether retrying can help."""

    reason: str
    # True: nothing changes until someone acts (Stalled=True from the first failed attempt);
    # the operator keeps retrying with backoff all the same, so it recovers once fixed.
    stalls: bool
    waiting_for: str  # the Reconciling message while stalled


# The one mapping from fetch failures (by termination-message prefix) to how status shows them.
# "" is any other failure: FetchFailed once the Job has failed for good (FetchRetrying before).
FETCH_FAILURE_KINDS: Mapping[str, FetchFailureKind] = {
    "": FetchFailureKind(FETCH_FAILED, True, "waiting for a change of the spec to retry the fetch"),
    CACHE_NOT_WRITABLE: FetchFailureKind(
        CACHE_NOT_WRITABLE,
        True,
        "retrying the fetch with backoff; it succeeds once the cache volume is writable",
    ),
    # Fixing a Secret changes no spec: keep retrying, so a corrected credential is picked up.
    SOURCE_UNAUTHORIZED: FetchFailureKind(
        SOURCE_UNAUTHORIZED,
        True,
        "retrying the fetch with backoff; it succeeds once the Secret holds a credential the source accepts",
    ),
}


def split_failure(line: str) -> tuple[str, str]:
    """(kind, message) of a termination-message line: a known fetch-failure prefix, else ("", line)."""
    for prefix in FETCH_FAILURE_KINDS:
        if prefix and line.startswith(f"{prefix}: "):
            return prefix, line[len(prefix) + 2 :].strip()
    return "", line


def fetch_failure_reason(job: JobObservation) -> str:
    """The reason a failed fetch shows under (the Event's reason too)."""
    return FETCH_FAILURE_KINDS.get(job.failure_kind, FETCH_FAILURE_KINDS[""]).reason


# ---------------------------------------------------------------------------------------------
# Observations (simplified children), with parsers from API dicts


@dataclass(frozen=True)
class JobObservation:
    name: str
    active: int = 0
    succeeded: bool = False
    failed: bool = False
    message: str = ""  # why it failed, or the fetcher's last word
    failed_attempts: int = 0  # pods that failed so far (the Job retries until its backoffLimit)
    bytes_downloaded: int = 0
    total_bytes: int = 0
    bytes_per_second: int = 0  # while downloading, from the fetcher's last progress line
    sha256: str = ""
    size_bytes: int = 0
    quantization: str = ""  # what the fetched file declares (a direct source's only word on it)
    failure_kind: str = ""  # a known prefix of the fetcher's error (FETCH_FAILURE_KINDS), "" = other


@dataclass(frozen=True)
class DeploymentObservation:
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    unavailable_replicas: int = 0
    progress_deadline_exceeded: bool = False
    message: str = ""


@dataclass(frozen=True)
class RuntimeObservation:
    """What the serving Pods say while replicas are unavailable (read only then)."""

    corrupted: str = ""  # a runtime's ModelCorrupted message about the current model, since it was cached
    failing: str = ""  # a runtime Pod that keeps failing for another reason


@dataclass(frozen=True)
class ObservedChildren:
    claim_phase: str | None = None  # PersistentVolumeClaim status.phase; None = absent
    fetch_job: JobObservation | None = None  # the Job of the current model version
    deployment: DeploymentObservation | None = None
    service: bool = False
    apply_error: str = ""  # a child could not be created or updated (the API said why)
    runtime: RuntimeObservation = RuntimeObservation()
    model_corrupted: str = ""  # the cached model was found corrupted this pass; it is fetched again


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def observe_job(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobObservation:
    """Simplify a batch/v1 Job and its Pods.

    A failed Job's reason comes from the Pod's termination message (the fetcher's error, thanks to
    terminationMessagePolicy FallbackToLogsOnError), else the Job's Failed condition. A succeeded
    Pod's termination message may be the fetch result JSON ({"sha256", "sizeBytes", ...}).
    """
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failed_condition = conditions.get("Failed") or {}
    complete = (conditions.get("Complete") or {}).get("status") == "True"
    failed = failed_condition.get("status") == "True"
    pod_messages: list[str] = []
    result: dict[str, Any] = {}
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", ""))):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or (
                (container.get("lastState") or {}).get("terminated") or {}
            )
            message = str(terminated.get("message") or "").strip()
            if not message:
                continue
            if terminated.get("exitCode") == 0:
                try:
                    parsed = json.loads(message)
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    result = parsed
            else:
                pod_messages.append(message.splitlines()[-1])
    message = ""
    kind, detail = split_failure(pod_messages[-1]) if pod_messages else ("", "")
    failed_attempts = _int(status.get("failed"))
    if failed_attempts and not failed and not complete and pod_messages:
        message = detail
    if failed:
        reason = failed_condition.get("message") or failed_condition.get("reason") or "the fetch Job failed"
        # A known kind says all there is; the Job's own reason (backoff limit...) adds nothing.
        message = detail if kind else (f"{detail} ({reason})" if detail else str(reason))
    size = _int(result.get("sizeBytes"))
    return JobObservation(
        name=str((job.get("metadata") or {}).get("name", "")),
        active=_int(status.get("active")),
        succeeded=complete,
        failed=failed,
        failed_attempts=failed_attempts,
        message=message,
        bytes_downloaded=size if complete else 0,
        total_bytes=size,
        sha256=str(result.get("sha256") or ""),
        size_bytes=size,
        quantization=str(result.get("quantization") or ""),
        failure_kind=kind if (failed or failed_attempts) and not complete else "",
    )


# The fetcher's progress line on stderr (slm_runtime.fetch.progress.Progress):
#   "fetch: 1234/5678 bytes (21.7%) at 345678 B/s"; the total is absent when the source sends none.
_PROGRESS_LINE = re.compile(r"^fetch: (\d+)(?:/(\d+))? bytes\b.*?\bat (\d+) B/s\s*$")


def parse_fetch_progress(log_text: str) -> tuple[int, int, int] | None:
    """(bytes done, total or 0, bytes per second) from the fetcher's last progress line, if any."""
    for line in reversed(log_text.splitlines()):
        match = _PROGRESS_LINE.match(line.strip())
        if match:
            return int(match.group(1)), int(match.group(2) or 0), int(match.group(3))
    return None


def with_fetch_progress(job: JobObservation, log_text: str) -> JobObservation:
    """A running fetch Job's observation with the progress its Pod's log shows."""
    progress = parse_fetch_progress(log_text)
    if progress is None or job.succeeded or job.failed:
        return job
    done, total, rate = progress
    return dataclasses.replace(job, bytes_downloaded=done, total_bytes=total, bytes_per_second=rate)


def observe_deployment(deployment: Mapping[str, Any]) -> DeploymentObservation:
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    progressing: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    return DeploymentObservation(
        generation=_int(metadata.get("generation")),
        observed_generation=_int(status.get("observedGeneration")),
        replicas=_int(status.get("replicas")),
        updated_replicas=_int(status.get("updatedReplicas")),
        ready_replicas=_int(status.get("readyReplicas")),
        available_replicas=_int(status.get("availableReplicas")),
        unavailable_replicas=_int(status.get("unavailableReplicas")),
        progress_deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        message=str(progressing.get("message") or ""),
    )


# Waiting reasons of a container that will not start without a change (or keeps crashing).
_IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
_FAILING_WAIT_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
_MESSAGE_LIMIT = 300


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"


def observe_runtime_pods(
    pods: Sequence[Mapping[str, Any]], *, cache_key: str, cached_since: datetime | None
) -> RuntimeObservation:
    """Why serving Pods are not available, from their containers' states and termination messages.

    A `ModelCorrupted:` termination counts only for a Pod serving `cache_key` and only when it
    ended after the model was (last) cached: a container's lastState keeps the message of a crash
    from before a re-fetch until it terminates again. A running container (starting, loading)
    is not failing, whatever its lastState says.
    """
    corrupted = ""
    failing = ""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        pod_name = str(metadata.get("name", ""))
        pod_key = str((metadata.get("annotations") or {}).get(MODEL_KEY_ANNOTATION, ""))
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            state = container.get("state") or {}
            if "running" in state or container.get("ready"):
                continue
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
            line = _last_line(terminated.get("message"))
            if line.startswith(f"{MODEL_CORRUPTED}: "):
                ended = _timestamp(terminated.get("finishedAt"))
                current = cached_since is None or (ended is not None and ended > cached_since)
                if pod_key == cache_key and current and not corrupted:
                    corrupted = f"runtime pod {pod_name}: {line[len(MODEL_CORRUPTED) + 2 :]}"
                continue  # a stale report, or another model's: the Pod restarts with what is cached
            if failing:
                continue
            reason = str(waiting.get("reason") or "")
            # Messages stay the same from one crash (or pull back-off) to the next: no status churn.
            if reason in _IMAGE_PULL_REASONS:
                failing = f"runtime pod {pod_name} cannot pull its image {container.get('image', '')}"
            elif reason == "CrashLoopBackOff":
                detail = line or (f"exit code {terminated['exitCode']}" if "exitCode" in terminated else "")
                failing = f"runtime pod {pod_name} is in CrashLoopBackOff" + (f": {detail}" if detail else "")
            elif reason in _FAILING_WAIT_REASONS:
                detail = _last_line(waiting.get("message"))
                failing = f"runtime pod {pod_name} is in {reason}" + (f": {detail}" if detail else "")
            elif state.get("terminated") and _int(terminated.get("exitCode")) != 0:
                failing = f"runtime pod {pod_name} exited with code {_int(terminated.get('exitCode'))}" + (
                    f": {line}" if line else ""
                )
    return RuntimeObservation(corrupted=corrupted, failing=failing)
