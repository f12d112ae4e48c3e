"""The operator's requests to the Kubernetes API (besides Kopf's own watches).

Plain JSON over kubernetes_asyncio's authenticated client: server-side apply under one
field manager, reads, status patches and Events. Every request is counted (by verb and
kind) so the scale benchmark and the metrics can tell how many calls a reconcile costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client, config

from slm_operator.api.v1alpha1 import API_VERSION, KIND, PLURAL
from slm_operator.metrics import OperatorMetrics
from slm_operator.naming import FIELD_MANAGER

log = logging.getLogger(__name__)

# kind -> (API path prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    KIND: (f"/apis/{API_VERSION}", PLURAL, True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "Service": ("/api/v1", "services", True),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "Node": ("/api/v1", "nodes", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
}


class ApiError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


class KubeApi(Protocol):
    """What reconcile needs from the API; tests may pass a fake."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None: ...

    async def annotate(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None: ...

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def event(
        self, involved: Mapping[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None: ...

    async def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int) -> str: ...


def _path(kind: str, namespace: str, name: str = "") -> str:
    prefix, plural, namespaced = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class Kubernetes:
    """KubeApi over kubernetes_asyncio, authenticated from kubeconfig or in-cluster."""

    def __init__(self, api_client: client.ApiClient, metrics: OperatorMetrics | None = None) -> None:
        self._client = api_client
        self._metrics = metrics
        self.requests: Counter[str] = Counter()

    @classmethod
    async def connect(cls, metrics: OperatorMetrics | None = None) -> Kubernetes:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config()
        return cls(client.ApiClient(), metrics)

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        raw: bool = False,
    ) -> Any:
        self.requests[f"{method} {kind}"] += 1
        if self._metrics is not None:
            self._metrics.api_requests.labels(verb=method, kind=kind).inc()
        try:
            return await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": accept},
                body=body,
                auth_settings=["BearerToken"],
                response_types_map={200: "object", 201: "object", 202: "object"},
                _return_http_data_only=True,
                _request_timeout=30,
                # raw: the aiohttp response, unread (the client would try JSON on any text)
                _preload_content=not raw,
            )
        except client.ApiException as error:
            message = error.reason or ""
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                message = json.loads(error.body or b"{}").get("message", message)
            raise ApiError(int(error.status or 0), f"{method} {path}: {message}") from error
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            # No answer: a timeout, a refused connection, or the apiserver going away mid-request
            # (aiohttp.ServerDisconnectedError is not an OSError).
            raise ApiError(0, f"{method} {path}: {type(error).__name__}: {error}") from error

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call("GET", _path(kind, namespace, name), kind=kind)
        except ApiError as error:
            if error.not_found:
                return None
            raise
        return result

    async def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = await self._call(
            "GET", _path(kind, namespace), kind=kind, query=[("labelSelector", label_selector)]
        )
        return list(result.get("items") or [])

    async def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int) -> str:
        """The last lines a container wrote (at most 16 KiB), as text."""
        response = await self._call(
            "GET",
            _path("Pod", namespace, name) + "/log",
            kind="Pod/log",
            query=[("container", container), ("tailLines", str(tail_lines)), ("limitBytes", "16384")],
            accept="*/*",  # the log subresource refuses text/plain in Accept, yet answers text
            raw=True,
        )
        try:
            text = str(await response.text(errors="replace"))
            if not 200 <= response.status <= 299:  # unread responses are not checked by the client
                message = text
                with contextlib.suppress(TypeError, ValueError, AttributeError):
                    message = json.loads(text).get("message", text)
                raise ApiError(response.status, f"GET pods/{name}/log: {message}")
            return text
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            raise ApiError(0, f"GET pods/{name}/log: {type(error).__name__}: {error}") from error
        finally:
            response.release()

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager; it owns what it sets."""
        meta = manifest["metadata"]
        kind = str(manifest["kind"])
        result: dict[str, Any] = await self._call(
            "PATCH",
            _path(kind, meta.get("namespace", ""), meta["name"]),
            kind=kind,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )
        return result

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self._call(
                "DELETE",
                _path(kind, namespace, name),
                kind=kind,
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as error:
            if not error.not_found:
                raise

    async def annotate(self, kind: str, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Set annotations with a merge patch under a manager of their own, so that the
        children's server-side applies never take them away."""
        await self._call(
            "PATCH",
            _path(kind, namespace, name),
            kind=kind,
            query=[("fieldManager", f"{FIELD_MANAGER}-cache")],
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        # Replace the whole status (a JSON patch), so fields that no longer apply go away;
        # only the status subresource is written: the operator never writes spec.
        result: dict[str, Any] = await self._call(
            "PATCH",
            _path(kind, namespace, name) + "/status",
            kind=kind,
            query=[("fieldManager", FIELD_MANAGER)],
            body=[{"op": "add", "path": "/status", "value": dict(status)}],
            content_type="application/json-patch+json",
        )
        return result

    async def event(
        self, involved: Mapping[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = str(meta["namespace"])
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", ""),
                "kind": involved.get("kind", ""),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call("POST", _path("Event", namespace), kind="Event", body=event)
        except ApiError as error:
            # An Event is a courtesy; losing one never fails a reconcile.
            log.warning("could not post event %s: %s", reason, error.message)


async def retry_on_conflict(coro_factory: Any, attempts: int = 5) -> Any:
    """Run an API operation again when the server reports a conflict (409)."""
    for attempt in range(attempts):
        try:
            return await coro_factory()
        except ApiError as error:
            if not error.conflict or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * 2**attempt)
    return None
