"""The watch-fed child cache: remembered children cost no GET, a miss does, a clear forgets all."""

from __future__ import annotations

from typing import Any

from slm_operator.k8s.cache import ChildCache
from tests.unit.operator.test_reconcile import FakeApi

CLAIM = ("PersistentVolumeClaim", "ai", "assistant-model-cache")


def counting(api: FakeApi) -> list[str]:
    gets: list[str] = []
    original = api.get

    async def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        gets.append(f"{kind}/{name}")
        return await original(kind, namespace, name)

    api.get = get  # type: ignore[method-assign]
    return gets


async def test_a_miss_gets_once_and_an_absence_is_remembered_too() -> None:
    api = FakeApi()
    gets = counting(api)
    cache = ChildCache(api)
    assert await cache.get(*CLAIM) is None
    assert await cache.get(*CLAIM) is None
    assert gets == ["PersistentVolumeClaim/assistant-model-cache"]
    api.put({"kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM[2], "namespace": "ai"}})
    assert await cache.get(*CLAIM) is None  # until a watch event says otherwise
    cache.clear()
    assert await cache.get(*CLAIM) is not None
    assert len(gets) == 2


async def test_watch_events_are_remembered_without_managed_fields() -> None:
    api = FakeApi()
    gets = counting(api)
    cache = ChildCache(api)
    body = {"metadata": {"name": CLAIM[2], "managedFields": [{"manager": "x"}], "uid": "u"}, "spec": {}}
    cache.remember(*CLAIM, body)
    assert await cache.get(*CLAIM) == {"metadata": {"name": CLAIM[2], "uid": "u"}, "spec": {}}
    assert "managedFields" in body["metadata"]  # the watch's own object is left alone
    cache.remember(*CLAIM, None)
    assert await cache.get(*CLAIM) is None
    assert gets == []


async def test_annotations_the_operator_wrote_are_merged_into_what_is_remembered() -> None:
    cache = ChildCache(FakeApi())
    cache.remember(*CLAIM, {"metadata": {"name": CLAIM[2], "annotations": {"a": "1", "b": "2"}}})
    cache.remember_annotations(*CLAIM, {"b": "3"})
    remembered = await cache.get(*CLAIM)
    assert remembered is not None and remembered["metadata"]["annotations"] == {"a": "1", "b": "3"}
    cache.remember(*CLAIM, None)
    cache.remember_annotations(*CLAIM, {"b": "4"})  # a child known absent stays absent
    assert await cache.get(*CLAIM) is None
