"""The children of SLMDeployments as the watch last showed them, so a reconcile reads them without a GET.

Fed by the child watches (and by the operator's own writes, whose watch events may come after the
next read); a miss falls back to a GET. `clear` forgets everything: after a watch outage Kopf
re-lists without DELETED events, so a child deleted meanwhile would otherwise stay remembered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slm_operator.k8s.client import KubeApi

ChildKey = tuple[str, str, str]  # (kind, namespace, name)


class ChildCache:
    """Children by (kind, namespace, name); a remembered None means known absent."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._objects: dict[ChildKey, dict[str, Any] | None] = {}

    def remember(self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Record a child as a watch event (or our own write) showed it; None: deleted."""
        if body is None:
            self._objects[(kind, namespace, name)] = None
            return
        copy = dict(body)
        # managedFields are the bulk of an object and nothing here reads them.
        copy["metadata"] = {k: v for k, v in dict(body["metadata"]).items() if k != "managedFields"}
        self._objects[(kind, namespace, name)] = copy

    def remember_annotations(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None:
        """Record annotations just written on a remembered child (the watch may lag behind)."""
        remembered = self._objects.get((kind, namespace, name))
        if remembered is None:
            return
        metadata = dict(remembered.get("metadata") or {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
        self._objects[(kind, namespace, name)] = {**remembered, "metadata": metadata}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The child as remembered, else as the API has it now (then remembered)."""
        key = (kind, namespace, name)
        if key in self._objects:
            cached = self._objects[key]
            return dict(cached) if cached is not None else None
        live = await self._api.get(kind, namespace, name)
        self.remember(kind, namespace, name, live)
        return live

    def clear(self) -> None:
        """Forget every child: the next reads GET them afresh."""
        self._objects.clear()
