"""status.benchmark as `slm ps -o wide` and `slm show` read it (written by `slm bench --record`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slm_operator.cli.output import Cell, getpath

PlacementKey = tuple[str, str, str]  # tier, accelerator, quantization: what an entry is recorded for


def placement_key(obj: Mapping[str, Any]) -> PlacementKey:
    """Where the model runs now, as benchmark entries are keyed."""
    placement = getpath(obj, "status", "placement", default={}) or {}
    return (
        str(placement.get("tier") or ""),
        str(placement.get("accelerator") or ""),
        str(placement.get("quantization") or ""),
    )


def entry_key(entry: Mapping[str, Any]) -> PlacementKey:
    return (
        str(entry.get("tier") or ""),
        str(entry.get("accelerator") or ""),
        str(entry.get("quantization") or ""),
    )


def entries(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    recorded = getpath(obj, "status", "benchmark", default=[]) or []
    return [e for e in recorded if isinstance(e, Mapping)]


def current_entry(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The entry measured where the model runs now, of the model served now (None: none such)."""
    key = placement_key(obj)
    if not key[0]:
        return None
    digest = str(getpath(obj, "status", "model", "sha256", default="") or "")
    for entry in entries(obj):
        if entry_key(entry) != key:
            continue
        measured = str(entry.get("modelSha256") or "")
        if digest and measured and measured.lower() != digest.lower():
            return None  # recorded for another version of the model
        return entry
    return None


def levels(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [level for level in entry.get("levels") or [] if isinstance(level, Mapping)]
    return sorted(found, key=lambda level: int(level.get("concurrency") or 0))


def measured(level: Mapping[str, Any]) -> bool:
    """Whether any request at this level succeeded (otherwise its figures are zeros)."""
    return int(level.get("requests") or 0) > int(level.get("errors") or 0)


def milliseconds(ms: float) -> str:
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def ps_cells(entry: Mapping[str, Any] | None) -> dict[str, Cell]:
    """TTFT (median, lowest concurrency), TOK/S@1 (one stream's decode rate at concurrency 1) and
    TOK/S@MAX (all streams together at the highest concurrency, with that concurrency)."""
    none = {"TTFT": Cell("-"), "TOK/S@1": Cell("-"), "TOK/S@MAX": Cell("-")}
    ordered = [level for level in levels(entry or {}) if measured(level)]
    if not ordered:
        return none
    lowest, highest = ordered[0], ordered[-1]
    ttft = float(lowest.get("ttftMs") or 0)
    cells = dict(none)
    cells["TTFT"] = Cell(milliseconds(ttft), ttft)
    single = next((level for level in ordered if int(level.get("concurrency") or 0) == 1), None)
    if single is not None:
        decode = float(single.get("decodeTokensPerSecond") or 0)
        cells["TOK/S@1"] = Cell(f"{decode:.1f}", decode)
    aggregate = float(highest.get("aggregateTokensPerSecond") or 0)
    cells["TOK/S@MAX"] = Cell(f"{aggregate:.1f}@{int(highest.get('concurrency') or 0)}", aggregate)
    return cells


def show_lines(obj: Mapping[str, Any]) -> list[str]:
    """The `Benchmark` block of `slm show`: every recorded entry, the current one marked."""
    recorded = entries(obj)
    if not recorded:
        return []
    current = current_entry(obj)
    lines = ["  Benchmark"]
    for entry in recorded:
        tier, accelerator, quantization = entry_key(entry)
        device = tier.upper() + (f" ({accelerator})" if accelerator and accelerator != tier else "")
        mark = ", where it runs now" if entry is current else ""
        load = float(entry.get("loadSeconds") or 0)
        lines.append(
            f"    {device} {quantization or '-'}{mark}: recorded {entry.get('recordedAt') or '?'}, "
            f"prompt {int(entry.get('promptTokens') or 0)} tokens, up to {int(entry.get('maxTokens') or 0)} "
            f"generated" + (f", model load {load:.2f}s" if load else "")
        )
        lines += [f"      {text}" for text in _level_texts(levels(entry))]
    lines.append("")
    return lines


def _level_texts(ordered: Sequence[Mapping[str, Any]]) -> list[str]:
    texts: list[str] = []
    for level in ordered:
        requests, errors = int(level.get("requests") or 0), int(level.get("errors") or 0)
        failed = f", {errors} failed" if errors else ""
        head = f"concurrency {int(level.get('concurrency') or 0)}: {requests} requests{failed}"
        if not measured(level):
            texts.append(head)
            continue
        texts.append(
            f"{head}; TTFT {milliseconds(float(level.get('ttftMs') or 0))} "
            f"(p95 {milliseconds(float(level.get('ttftP95Ms') or 0))}), "
            f"prefill {float(level.get('prefillTokensPerSecond') or 0):.1f} tok/s, "
            f"decode {float(level.get('decodeTokensPerSecond') or 0):.1f} tok/s per stream, "
            f"{float(level.get('aggregateTokensPerSecond') or 0):.1f} tok/s in all"
        )
    return texts
