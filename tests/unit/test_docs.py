"""The generated reference pages match their sources (the CRD and the runtime settings)."""

from __future__ import annotations

import gen_docs


def test_generated_pages_are_current() -> None:
    for path, render in gen_docs.PAGES.items():
        assert path.read_text() == render(), f"{path.name} is stale: run `make docs`"


def test_api_reference_covers_every_spec_field_and_rule() -> None:
    page = gen_docs.api_reference()
    for field in (
        "spec.model.name",
        "spec.hardware.fallback",
        "spec.cache.retain",
        "status.placement.reason",
    ):
        assert f"| `{field}`" in page
    assert "hardware.fallback must not contain the preferred tier" in page
