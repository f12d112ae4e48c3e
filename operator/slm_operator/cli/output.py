"""Tables like kubectl's, JSON/YAML output, sizes and ages like Ollama's."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import yaml

from slm_operator.cli.errors import CliError

OutputFormat = Literal["table", "wide", "json", "yaml"]
OUTPUT_FORMATS: tuple[str, ...] = ("table", "wide", "json", "yaml")
SortKey = tuple[int, float, str]


@dataclass(frozen=True)
class Cell:
    """What a column shows, and how it sorts (numbers as numbers)."""

    text: str
    number: float | None = None

    def sort_key(self) -> SortKey:
        if self.number is not None:
            return (0, self.number, self.text)
        return (1, 0.0, self.text.lower())


def cell(value: str | int | float | Cell) -> Cell:
    if isinstance(value, Cell):
        return value
    if isinstance(value, bool):
        return Cell(str(value).lower())
    if isinstance(value, int | float):
        return Cell(str(value), float(value))
    return Cell(value)


@dataclass
class Table:
    """Rows of cells under headers; `wide` headers only show with -o wide."""

    headers: list[str]
    wide: list[str] = field(default_factory=list)
    rows: list[dict[str, Cell]] = field(default_factory=list)

    def add(self, **values: str | int | float | Cell) -> None:
        self.rows.append({key.upper(): cell(value) for key, value in values.items()})

    def all_headers(self) -> list[str]:
        return [*self.headers, *self.wide]

    def sort(self, by: str | None) -> None:
        if not by:
            return
        wanted = by.strip().lstrip(".").upper().replace("-", "_")
        headers = self.all_headers()
        if wanted not in headers:
            raise CliError(
                f"cannot sort by {by!r}: the columns are {', '.join(h.lower() for h in headers)}; "
                "pass one of them to --sort-by"
            )
        self.rows.sort(key=lambda row: row.get(wanted, Cell("")).sort_key())

    def render(self, wide: bool = False) -> str:
        headers = self.all_headers() if wide else list(self.headers)
        table = [headers] + [[row.get(h, Cell("")).text for h in headers] for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
        lines = ["   ".join(text.ljust(widths[i]) for i, text in enumerate(line)).rstrip() for line in table]
        return "\n".join(lines) + "\n"


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def emit(
    out: TextIO,
    table: Table,
    fmt: str,
    sort_by: str | None,
    objects: Sequence[Mapping[str, Any]] | None = None,
    empty: str = "",
) -> None:
    """Print `table` (table/wide) or the objects behind it (json/yaml) in table order."""
    table.sort(sort_by)
    if fmt in ("json", "yaml"):
        if objects is None:
            items: list[Any] = [
                {h.lower(): row[h].text for h in table.all_headers() if h in row} for row in table.rows
            ]
        else:
            items = list(objects)
            if sort_by:
                order = _object_order(table, objects)
                items = [objects[i] for i in order]
        out.write(dump({"apiVersion": "v1", "kind": "List", "items": items}, fmt))
        return
    if not table.rows and empty:
        out.write(empty + "\n")
        return
    out.write(table.render(wide=fmt == "wide"))


def _object_order(table: Table, objects: Sequence[Mapping[str, Any]]) -> list[int]:
    # Rows carry a hidden _INDEX cell pointing back at their object.
    return [int(row["_INDEX"].text) for row in table.rows if "_INDEX" in row] or list(range(len(objects)))


def check_format(fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        raise CliError(f"unknown output format {fmt!r}: use -o table, wide, json or yaml")
    return fmt


def human_size(size_bytes: int) -> str:
    """Decimal units like `ollama list` (98 MB, 2.5 GB); '-' when unknown."""
    if size_bytes <= 0:
        return "-"
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.0f} TB"  # pragma: no cover


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None


def human_ago(when: datetime | None, now: datetime | None = None) -> str:
    """`ollama list` style: '5 minutes ago', 'About an hour ago'."""
    if when is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 60:
        return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute ago"
    if minutes < 60:
        return f"{int(minutes)} minutes ago"
    hours = minutes / 60
    if hours < 2:
        return "About an hour ago"
    if hours < 48:
        return f"{int(hours)} hours ago"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days ago"
    if days < 60:
        return f"{int(days / 7)} weeks ago"
    if days < 730:
        return f"{int(days / 30)} months ago"
    return f"{int(days / 365)} years ago"


def getpath(obj: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    """obj[a][b]... or `default` where any step is missing."""
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current if current is not None else default


Printer = Callable[[str], None]
