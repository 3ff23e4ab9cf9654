"""Reads a dcgm-exporter counters CSV as strictly as dcgm-exporter does, and a little stricter.

dcgm-exporter reads the file with Go's encoding/csv (comment character `#`, every
record the same number of fields, no lazy quotes), trims spaces around each field
and refuses a record without exactly three fields or with an unknown Prometheus
type. A mistake there stops the exporter on every GPU node, so we fail first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

COUNTERS_CSV = Path(__file__).with_name("counters.csv")
FIELD_NAME = re.compile(r"DCGM_FI_[A-Z0-9_]+")
# dcgm-exporter also knows histogram, summary and label; this platform enables
# only plain gauges and counters, so anything else is a mistake here.
PROMETHEUS_TYPES = ("gauge", "counter")


class CountersSyntaxError(ValueError):
    """A line dcgm-exporter would refuse or misread; the message names the line."""


@dataclass(frozen=True)
class Counter:
    field: str
    prom_type: str
    help: str
    line: int


def parse_counters(text: str) -> list[Counter]:
    counters: list[Counter] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw == "" or raw.startswith("#"):
            continue
        if raw.strip() == "":
            raise CountersSyntaxError(f"line {number}: blank line holding whitespace (Go's csv reads it as a record)")
        if '"' in raw:
            raise CountersSyntaxError(f"line {number}: quotes are not allowed: {raw!r}")
        fields = [part.strip(" ") for part in raw.split(",")]
        if len(fields) != 3:
            raise CountersSyntaxError(
                f"line {number}: expected 3 fields 'DCGM field, type, help', got {len(fields)}: {raw!r}"
            )
        field, prom_type, help_text = fields
        if not FIELD_NAME.fullmatch(field):
            raise CountersSyntaxError(f"line {number}: {field!r} is not a DCGM field name (DCGM_FI_...)")
        if prom_type not in PROMETHEUS_TYPES:
            raise CountersSyntaxError(
                f"line {number}: type {prom_type!r} of {field} is not one of {', '.join(PROMETHEUS_TYPES)}"
            )
        if not help_text:
            raise CountersSyntaxError(f"line {number}: {field} has no help text")
        if field in seen:
            raise CountersSyntaxError(f"line {number}: {field} already enabled on line {seen[field]}")
        seen[field] = number
        counters.append(Counter(field=field, prom_type=prom_type, help=help_text, line=number))
    if not counters:
        raise CountersSyntaxError("no counter enabled")
    return counters


def load_counters(path: Path = COUNTERS_CSV) -> list[Counter]:
    return parse_counters(path.read_text(encoding="utf-8"))
