"""`slm pull`'s progress: status.cache (bytes, total, rate) as lines, or a rich bar on a terminal."""

from __future__ import annotations

import io
from typing import Any

import pytest

from slm_operator.cli.__main__ import build_parser
from slm_operator.cli.commands import Context, progress_text, wait_cached
from slm_operator.cli.errors import CliError


def slm(phase: str, done: int, total: int, rate: int, *, cached: bool = False) -> dict[str, Any]:
    conditions = [
        {
            "type": "ModelCached",
            "status": "True" if cached else "False",
            "reason": "Cached" if cached else phase,
        }
    ]
    return {
        "metadata": {"name": "smollm2", "namespace": "ai", "generation": 1},
        "spec": {"model": {"name": "smollm2:135m"}, "replicas": 0},
        "status": {
            "observedGeneration": 1,
            "conditions": [{**c, "observedGeneration": 1} for c in conditions],
            "cache": {
                "claimName": "smollm2-model-cache",
                "phase": phase,
                "bytesDownloaded": done,
                "totalBytes": total,
                "bytesPerSecond": rate,
            },
            "model": {"sizeBytes": total},
        },
    }


class SequenceKube:
    """get_slm answers the given objects in turn (the last one for ever)."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = list(objects)
        self.namespace = "ai"

    def get_slm(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objects.pop(0) if len(self.objects) > 1 else self.objects[0]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def context(kube: SequenceKube, out: io.StringIO) -> Context:
    args = build_parser().parse_args(["pull", "smollm2:135m"])
    return Context(args=args, out=out, err=io.StringIO(), kube_factory=lambda _: kube, sleep=lambda _: None)  # type: ignore[arg-type,return-value]


def test_progress_text() -> None:
    assert (
        progress_text(slm("Fetching", 36_000_000, 80_000_000, 3_400_000))
        == "fetching  45% 36 MB/80 MB 3.4 MB/s"
    )
    assert progress_text(slm("Fetching", 2_048, 0, 0)) == "fetching 2.0 KB"
    assert progress_text(slm("Pending", 0, 0, 0)) == "pending"
    # A rate is only ever shown while fetching.
    assert progress_text(slm("Ready", 80_000_000, 80_000_000, 3_400_000)) == "ready 100% 80 MB/80 MB"


def test_pull_prints_a_line_per_change_off_a_terminal() -> None:
    out = io.StringIO()
    kube = SequenceKube(
        slm("Pending", 0, 0, 0),
        slm("Fetching", 10_000_000, 80_000_000, 0),
        slm("Fetching", 10_000_000, 80_000_000, 0),  # unchanged: no second line
        slm("Fetching", 40_000_000, 80_000_000, 6_000_000),
        slm("Ready", 80_000_000, 80_000_000, 0, cached=True),
    )
    wait_cached(context(kube, out), "ai", "smollm2", 60)
    assert out.getvalue().splitlines() == [
        "smollm2: pending",
        "smollm2: fetching  12% 10 MB/80 MB",
        "smollm2: fetching  50% 40 MB/80 MB 6.0 MB/s",
        "smollm2: ready 100% 80 MB/80 MB",
        "success: smollm2:135m is cached in smollm2-model-cache (80 MB)",
    ]


def test_pull_draws_a_progress_bar_on_a_terminal() -> None:
    out = Terminal()
    kube = SequenceKube(
        slm("Fetching", 40_000_000, 80_000_000, 6_000_000),
        slm("Ready", 80_000_000, 80_000_000, 0, cached=True),
    )
    wait_cached(context(kube, out), "ai", "smollm2", 60)
    text = out.getvalue()
    assert "pulling smollm2" in text and "━" in text  # rich's bar
    assert "80.0/80.0 MB" in text
    assert text.rstrip().endswith("success: smollm2:135m is cached in smollm2-model-cache (80 MB)")


def test_pull_times_out_with_what_to_do() -> None:
    kube = SequenceKube(slm("Fetching", 1, 80_000_000, 0))
    with pytest.raises(
        CliError, match=r"not cached after 0s; keep waiting with `slm pull smollm2`.*`slm why smollm2`"
    ):
        wait_cached(context(kube, io.StringIO()), "ai", "smollm2", 0)
