"""What `plan_children` reads and decides: the observed children, the reads it may ask for, and
the actions the reconciler executes in order (small frozen dataclasses, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slm_operator.observe import JobObservation, RuntimeObservation

# --- what was read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The children as read for one pass (API dicts; None = absent), and the on-demand reads."""

    now: datetime
    claim: Mapping[str, Any] | None
    fetch_job: Mapping[str, Any] | None  # the Job of the current model version
    deployment: Mapping[str, Any] | None
    service: Mapping[str, Any] | None
    fetch_attempt: int = 0  # the attempt the fetch Job is on, as counted so far; 0 = none counted
    # Read only when plan_children asks (None = not read yet):
    runtime: RuntimeObservation | None = None  # ReadRuntimePods
    fetch_pods: tuple[Mapping[str, Any], ...] | None = None  # ReadFetchPods
    fetch_log: str | None = None  # ReadFetchProgress: the running fetch Pod's last lines, "" = none
    claim_holder: str | None = None  # ReadClaimHolder: the node, "" = none


@dataclass(frozen=True)
class FetchBackoff:
    """How long to wait before retrying a failed fetch: doubling from `base_seconds`, capped."""

    base_seconds: float
    max_seconds: float

    def delay(self, attempt: int) -> float:
        return fetch_retry_delay(attempt, self.base_seconds, self.max_seconds)


def fetch_retry_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before fetch attempt ``attempt + 1`` (attempt counts from 1)."""
    return float(min(base * 2 ** max(attempt - 1, 0), cap))


# --- reads plan_children may ask for ------------------------------------------------------------


@dataclass(frozen=True)
class ReadRuntimePods:
    """List the serving Pods and observe them (`observe_runtime_pods` with these arguments)."""

    cache_key: str
    cached_since: datetime | None  # when the model was recorded as cached (older reports are stale)


@dataclass(frozen=True)
class ReadFetchPods:
    """List the fetch Job's Pods: the fetcher's error or result is in their termination message."""

    job_name: str


@dataclass(frozen=True)
class ReadFetchProgress:
    """The last lines of the running fetch Pod's log ("" when none runs or the log is refused)."""

    job_name: str


@dataclass(frozen=True)
class ReadClaimHolder:
    """The node where serving Pods have the cache claim mounted (`node_holding_claim`)."""


Read = ReadRuntimePods | ReadFetchPods | ReadFetchProgress | ReadClaimHolder


# --- actions, executed in order -----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """An Event on the SLMDeployment (posted once per distinct reason and message)."""

    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class Apply:
    """Server-side apply of a child.

    `if_refused`: when the API refuses the change (403, 422), post this Event (the API's message
    appended to it) and go on with the child as it is; None: the refusal fails the pass.
    """

    manifest: Mapping[str, Any]
    if_refused: Event | None = None


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    why: str  # for the log


@dataclass(frozen=True)
class Annotate:
    """Merge annotations into a child (under a field manager of their own)."""

    kind: str
    name: str
    annotations: Mapping[str, str]
    summary: str  # how the change reads in the log ("PersistentVolumeClaim/x#cached")


@dataclass(frozen=True)
class Requeue:
    """Look again within `seconds` (the soonest of all the requeues of a pass wins)."""

    seconds: float


@dataclass(frozen=True)
class RecordFetchAttempt:
    """The fetch Job is on attempt `attempt` now (kept in memory; a restart starts over)."""

    job_name: str
    attempt: int


@dataclass(frozen=True)
class ForgetFetchAttempts:
    job_name: str


Action = Apply | Delete | Annotate | Event | Requeue | RecordFetchAttempt | ForgetFetchAttempts


@dataclass(frozen=True)
class Decision:
    """Reads still needed (then nothing else), or the actions and what status shows of the children."""

    reads: tuple[Read, ...] = ()
    actions: tuple[Action, ...] = ()
    fetch: JobObservation | None = None  # the fetch of the current model; None = none this pass
    runtime: RuntimeObservation = field(default_factory=RuntimeObservation)
    model_corrupted: str = ""  # the cached model was found corrupted: it is dropped and fetched again
