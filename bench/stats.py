"""Summaries and the plain tables the benchmarks print."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class RunSummary:
    label: str
    clients: int
    requests: int
    errors: int
    seconds: float
    tokens: int
    ttft: list[float]
    itl: list[float]  # gaps between streamed chunks
    latency: list[float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def row(self) -> dict[str, str]:
        ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
        return {
            "path": self.label, "clients": str(self.clients), "requests": str(self.requests),
            "errors": str(self.errors), "req/s": f"{self.requests_per_s:.2f}", "tok/s": f"{self.tokens_per_s:.1f}",
            "TTFT p50 ms": ms(percentile(self.ttft, 50)), "TTFT p95 ms": ms(percentile(self.ttft, 95)),
            "ITL p50 ms": ms(percentile(self.itl, 50)), "ITL p95 ms": ms(percentile(self.itl, 95)),
            "total p50 ms": ms(percentile(self.latency, 50)),
        }


def table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r.get(k, "")) for r in rows)) for k in keys}
    line = lambda r: "| " + " | ".join(r.get(k, "").rjust(widths[k]) for k in keys) + " |"  # noqa: E731
    return "\n".join([line({k: k for k in keys}), "|" + "|".join("-" * (widths[k] + 2) for k in keys) + "|",
                      *(line(r) for r in rows)])
