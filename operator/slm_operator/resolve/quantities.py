"""Kubernetes quantities and device-memory labels, as numbers and back."""

from __future__ import annotations

import math
import re

from slm_operator.settings import GiB, MiB

_SUFFIX_BYTES: dict[str, int] = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "e": 1000**6,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
    "pi": 1 << 50,
    "ei": 1 << 60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity (memory 62Gi, cpu 7910m, devices 2) as a number of base units."""
    match = _QUANTITY.match(str(value))
    if not match:
        return 0.0
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":  # milli (cpu); never "mega" in Kubernetes quantities
        return number / 1000
    return number * _SUFFIX_BYTES.get(suffix.lower(), 0 if suffix else 1)


_LABEL_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_LABEL_UNITS: dict[str, int] = {"bytes": 1, "MiB": MiB, "GiB": GiB}


def parse_device_memory(value: str, plain_unit: str) -> int | None:
    """Device memory from a node label: a plain number is in `plain_unit`; 64G, 16Gi, 80GB are binary.

    Device vendors label memory as marketed (AMD's labeller writes `64G` for 64 GiB of VRAM), so
    decimal-looking suffixes are read as binary here, unlike Kubernetes quantities.
    """
    match = _LABEL_MEMORY.match(value)
    if not match:
        return None
    number, suffix = float(match.group(1)), (match.group(2) or "").upper().rstrip("I")
    if not suffix:
        return int(number * _LABEL_UNITS[plain_unit])
    return int(number * {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[suffix])


def format_gib(size_bytes: int | float) -> str:
    """A size for people to read, in reasons."""
    return f"{size_bytes / GiB:.1f} GiB"


def mi_quantity(size_bytes: int) -> str:
    """A size as a Kubernetes quantity in Mi, rounded up."""
    return f"{math.ceil(size_bytes / MiB)}Mi"


def gi_quantity(size_bytes: int) -> str:
    """A size as a Kubernetes quantity in Gi, rounded up."""
    return f"{math.ceil(size_bytes / GiB)}Gi"
