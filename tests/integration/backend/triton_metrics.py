"""Reading Triton's /metrics the way Prometheus would."""

from __future__ import annotations

import time
import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Sample name (with sorted labels) -> value, summed over the labels not named.

    The parser names every counter sample `<family>_total`, so Triton's `nv_inference_count` reads
    as `nv_inference_count_total` here.
    """
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in ("model", "version")}
            key = sample.name + ("" if not labels else str(sorted(labels.items())))
            values[key] = values.get(key, 0.0) + sample.value
    return values


def scrape_until(url: str, settled: Callable[[dict[str, float]], bool], timeout: float = 10) -> dict[str, float]:
    """Scrape until ``settled`` holds: the model applies its metric updates a moment after the fact."""
    deadline = time.monotonic() + timeout
    values = scrape(url)
    while not settled(values) and time.monotonic() < deadline:
        time.sleep(0.05)
        values = scrape(url)
    return values
