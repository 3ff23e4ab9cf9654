"""Traffic traces: request arrival times and sizes, generated from a seed or read from CSV."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CSV_COLUMNS = ("arrival_seconds", "prompt_tokens", "max_tokens")


class TraceError(ValueError):
    """A trace cannot be built or read."""


@dataclass(frozen=True)
class RequestMix:
    """Request sizes: log-normal around the medians, clipped to the given bounds."""

    prompt_median: float = 220.0
    prompt_sigma: float = 0.35
    prompt_min: int = 64
    prompt_max: int = 4096
    max_tokens_median: float = 512.0
    max_tokens_sigma: float = 0.5
    max_tokens_min: int = 16
    max_tokens_max: int = 2048

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = np.exp(rng.normal(math.log(self.prompt_median), self.prompt_sigma, n))
        out = np.exp(rng.normal(math.log(self.max_tokens_median), self.max_tokens_sigma, n))
        if self.prompt_sigma == 0:
            prompt = np.full(n, self.prompt_median)
        if self.max_tokens_sigma == 0:
            out = np.full(n, self.max_tokens_median)
        prompt = np.clip(np.rint(prompt), self.prompt_min, self.prompt_max).astype(np.int64)
        out = np.clip(np.rint(out), self.max_tokens_min, self.max_tokens_max).astype(np.int64)
        return prompt, out


@dataclass(frozen=True)
class Burst:
    """A rise of the offered rate: used to measure how long the policy takes to catch up."""

    start: float
    end: float
    rps: float


@dataclass
class Trace:
    name: str
    duration: float
    arrivals: np.ndarray
    prompt_tokens: np.ndarray
    max_tokens: np.ndarray
    bursts: list[Burst] = field(default_factory=list)
    ramp: tuple[float, float] | None = None  # where the rate rises (the morning, for daynight)

    def __post_init__(self) -> None:
        n = len(self.arrivals)
        if len(self.prompt_tokens) != n or len(self.max_tokens) != n:
            raise TraceError("arrivals, prompt_tokens and max_tokens must have the same length")
        if n and (np.any(np.diff(self.arrivals) < 0) or self.arrivals[0] < 0):
            raise TraceError("arrival times must be >= 0 and sorted")
        if n and self.arrivals[-1] > self.duration:
            raise TraceError("an arrival lies after the end of the trace")

    def rate(self, bin_seconds: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
        """Offered requests/s per bin (bin start times, rates)."""
        edges = np.arange(0.0, self.duration + bin_seconds, bin_seconds)
        counts, _ = np.histogram(self.arrivals, bins=edges)
        return edges[:-1], counts / bin_seconds

    def peak_rps(self, bin_seconds: float = 60.0) -> float:
        return float(self.rate(bin_seconds)[1].max()) if len(self.arrivals) else 0.0

    def mean_rps(self) -> float:
        return len(self.arrivals) / self.duration if self.duration else 0.0


def _poisson(rng: np.random.Generator, rate_fn, peak: float, duration: float) -> np.ndarray:
    """Non-homogeneous Poisson arrivals by thinning a process at the peak rate."""
    if peak <= 0 or duration <= 0:
        return np.empty(0)
    n = rng.poisson(peak * duration)
    t = np.sort(rng.uniform(0.0, duration, n))
    keep = rng.uniform(0.0, 1.0, n) * peak < rate_fn(t)
    return t[keep]


def _finish(name: str, rng: np.random.Generator, arrivals: np.ndarray, duration: float, mix: RequestMix, bursts,
            ramp: tuple[float, float] | None = None):
    prompt, out = mix.draw(rng, len(arrivals))
    return Trace(name, duration, arrivals, prompt, out, list(bursts), ramp)


def daynight(
    seed: int, hours: float = 24.0, peak_rps: float = 12.0, trough_rps: float = 1.0, mix: RequestMix = RequestMix()
) -> Trace:
    """A cosine day: lowest at 04:00, highest at 16:00."""
    if peak_rps < trough_rps or trough_rps < 0:
        raise TraceError("need 0 <= trough_rps <= peak_rps")
    duration = hours * 3600.0

    def rate(t):
        phase = 2 * np.pi * ((t / 3600.0 - 4.0) % 24.0) / 24.0
        return trough_rps + (peak_rps - trough_rps) * (1 - np.cos(phase)) / 2

    rng = np.random.default_rng(seed)
    return _finish("daynight", rng, _poisson(rng, rate, peak_rps, duration), duration, mix, [],
                   (4 * 3600.0, min(16 * 3600.0, duration)))


def bursts(
    seed: int,
    hours: float = 3.0,
    base_rps: float = 2.0,
    burst_rps: float = 15.0,
    burst_minutes: float = 10.0,
    every_minutes: float = 45.0,
    mix: RequestMix = RequestMix(),
) -> Trace:
    """A quiet base load with sudden bursts, the first one 20 minutes in."""
    duration = hours * 3600.0
    starts = np.arange(20 * 60.0, duration - burst_minutes * 60.0, every_minutes * 60.0)
    windows = [Burst(float(s), float(s + burst_minutes * 60.0), burst_rps) for s in starts]

    def rate(t):
        r = np.full_like(t, base_rps)
        for b in windows:
            r[(t >= b.start) & (t < b.end)] = burst_rps
        return r

    rng = np.random.default_rng(seed)
    return _finish("burst", rng, _poisson(rng, rate, max(base_rps, burst_rps), duration), duration, mix, windows)


def step(
    seed: int,
    low_rps: float = 5.0,
    high_rps: float = 30.0,
    before_minutes: float = 10.0,
    high_minutes: float = 30.0,
    after_minutes: float = 20.0,
    mix: RequestMix = RequestMix(),
) -> Trace:
    """The load-test step: low, then high, then low again to watch the scale-down."""
    t1 = before_minutes * 60.0
    t2 = t1 + high_minutes * 60.0
    duration = t2 + after_minutes * 60.0

    def rate(t):
        return np.where((t >= t1) & (t < t2), high_rps, low_rps)

    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, rate, max(low_rps, high_rps), duration)
    return _finish("step", rng, arrivals, duration, mix, [Burst(t1, t2, high_rps)])


def flash(
    seed: int,
    peak_rps: float = 30.0,
    factor: float = 10.0,
    rise_seconds: float = 60.0,
    before_minutes: float = 30.0,
    high_minutes: float = 20.0,
    after_minutes: float = 30.0,
    mix: RequestMix = RequestMix(),
) -> Trace:
    """A flash crowd: the rate goes up `factor` times within `rise_seconds`, stays, and falls back."""
    base = peak_rps / factor
    t1 = before_minutes * 60.0
    t2 = t1 + rise_seconds
    t3 = t2 + high_minutes * 60.0
    duration = t3 + rise_seconds + after_minutes * 60.0

    def rate(t):
        up = np.clip((t - t1) / rise_seconds, 0.0, 1.0) - np.clip((t - t3) / rise_seconds, 0.0, 1.0)
        return base + (peak_rps - base) * up

    rng = np.random.default_rng(seed)
    return _finish("flash", rng, _poisson(rng, rate, peak_rps, duration), duration, mix, [Burst(t1, t3, peak_rps)],
                   (t1, t3))


def ramp(
    seed: int,
    peak_rps: float = 30.0,
    base_rps: float | None = None,
    up_minutes: float = 120.0,
    high_minutes: float = 30.0,
    down_minutes: float = 60.0,
    mix: RequestMix = RequestMix(),
) -> Trace:
    """A slow ramp from a tenth of the peak (by default) up to it, a while at the peak, and back."""
    base = peak_rps / 10.0 if base_rps is None else base_rps
    t1 = 10 * 60.0
    t2 = t1 + up_minutes * 60.0
    t3 = t2 + high_minutes * 60.0
    t4 = t3 + down_minutes * 60.0
    duration = t4 + 10 * 60.0

    def rate(t):
        up = np.clip((t - t1) / (t2 - t1), 0.0, 1.0) - np.clip((t - t3) / (t4 - t3), 0.0, 1.0)
        return base + (peak_rps - base) * up

    rng = np.random.default_rng(seed)
    return _finish("ramp", rng, _poisson(rng, rate, peak_rps, duration), duration, mix, [Burst(t1, t3, peak_rps)],
                   (t1, t2))


def constant(seed: int, rps: float, seconds: float, mix: RequestMix = RequestMix()) -> Trace:
    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, lambda t: np.full_like(t, rps), rps, seconds)
    return _finish(f"constant-{rps:g}", rng, arrivals, seconds, mix, [])


def read_csv(path: str | Path) -> Trace:
    """CSV with a header `arrival_seconds,prompt_tokens,max_tokens`, one request per row."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except FileNotFoundError as exc:
        raise TraceError(f"trace file not found: {path}") from exc
    rows: list[tuple[float, int, int]] = []
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in CSV_COLUMNS):
            raise TraceError(f"{path}: the header must name {', '.join(CSV_COLUMNS)}; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                t, p, m = float(row["arrival_seconds"]), int(row["prompt_tokens"]), int(row["max_tokens"])
            except (TypeError, ValueError) as exc:
                raise TraceError(f"{path}:{line}: {exc}") from exc
            if t < 0 or not math.isfinite(t) or p < 1 or m < 1:
                raise TraceError(f"{path}:{line}: need arrival_seconds >= 0, prompt_tokens >= 1, max_tokens >= 1")
            rows.append((t, p, m))
    if not rows:
        raise TraceError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    arr = np.array(rows, dtype=float)
    duration = float(math.ceil(arr[-1, 0] + 1.0))
    return Trace(path.stem, duration, arr[:, 0], arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64), [])


def write_csv(trace: Trace, path: str | Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for t, p, m in zip(trace.arrivals, trace.prompt_tokens, trace.max_tokens):
            writer.writerow([f"{t:.6f}", int(p), int(m)])


BUILT_IN = {"daynight": daynight, "burst": bursts, "step": step, "flash": flash, "ramp": ramp}
# Each shape at a given peak: the other rates keep the default shape's proportions.
SHAPES = {
    "daynight": lambda peak: {"peak_rps": peak, "trough_rps": peak / 12.0},
    "burst": lambda peak: {"burst_rps": peak, "base_rps": peak * 2.0 / 15.0},
    "step": lambda peak: {"high_rps": peak, "low_rps": peak / 6.0},
    "flash": lambda peak: {"peak_rps": peak},
    "ramp": lambda peak: {"peak_rps": peak},
}


def make_trace(spec: str, seed: int, mix: RequestMix = RequestMix(), hours: float | None = None,
               peak_rps: float | None = None) -> Trace:
    """A built-in shape (at `peak_rps` requests/s at its highest, or its default rates), or the path
    of a CSV file (as recorded)."""
    if spec in BUILT_IN:
        kwargs: dict = {"mix": mix}
        if hours is not None and spec in ("daynight", "burst"):
            kwargs["hours"] = hours
        if peak_rps is not None:
            kwargs.update(SHAPES[spec](peak_rps))
        return BUILT_IN[spec](seed, **kwargs)
    if spec.endswith(".csv"):
        return read_csv(spec)
    raise TraceError(f"unknown trace {spec!r}: use {', '.join(BUILT_IN)} or a .csv file")
