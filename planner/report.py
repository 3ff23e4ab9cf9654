"""What a run means to a user: the summary table and the plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from planner.pod import DONE, KILLED, NO_ENDPOINT, PENDING, REJECTED
from planner.sim import SimResult

BIN_SECONDS = 60.0


@dataclass(frozen=True)
class Summary:
    policy: str
    requests: int
    completed: int
    rejected: int
    unfinished: int
    latency_p50: float
    latency_p95: float
    latency_p99: float
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    within_slo: float
    gpu_hours: float
    peak_replicas: int
    mean_replicas: float
    time_to_capacity: float
    ramp_within_slo: float | None = None  # while the trace's rate rises

    def meets(self, share: float) -> bool:
        return self.within_slo >= share


@dataclass(frozen=True)
class Digest:
    """A run reduced to what the table and the plot need (cheap to send between processes)."""

    summary: Summary
    t: np.ndarray
    pods: np.ndarray
    ready: np.ndarray
    bin_t: np.ndarray
    offered: np.ndarray
    ttft_p95: np.ndarray


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def time_to_capacity(result: SimResult, capacity: float) -> float:
    """The longest stretch during which the offered rate (per minute) exceeded what the ready pods
    could carry within the objective (ready pods x `capacity`): how long the policy took, at worst,
    to catch up with the traffic. 0 if it never fell behind."""
    trace = result.trace
    if not len(trace.arrivals):
        return 0.0
    starts, offered = trace.rate(BIN_SECONDS)
    t = np.asarray(result.timeline.t)
    ready = np.asarray(result.timeline.ready)
    # the fewest ready pods during each minute
    at = np.clip(np.searchsorted(t, starts, side="right") - 1, 0, len(t) - 1)
    until = np.clip(np.searchsorted(t, starts + BIN_SECONDS, side="left"), 0, len(t))
    fewest = np.array([ready[a:max(u, a + 1)].min() for a, u in zip(at, until)])
    behind = offered > fewest * capacity
    worst = run = 0
    for b in behind:
        run = run + 1 if b else 0
        worst = max(worst, run)
    return worst * BIN_SECONDS


def summarize(result: SimResult, slo_ttft: float, capacity: float) -> Summary:
    status = result.status
    ok = status == DONE
    n = len(status)
    good = ok & (result.ttft <= slo_ttft)
    within = int(np.count_nonzero(good))
    ramp = None
    if result.trace.ramp is not None:
        a, b = result.trace.ramp
        rising = (result.arrival >= a) & (result.arrival < b)
        ramp = float(np.count_nonzero(good & rising) / max(np.count_nonzero(rising), 1))
    hours = result.trace.duration / 3600.0
    gpu_hours = result.gpu_hours()
    per_pod = result.profile.gpus_per_pod or 1
    return Summary(
        policy=result.policy,
        requests=n,
        completed=int(np.count_nonzero(ok)),
        rejected=int(np.count_nonzero((status == REJECTED) | (status == NO_ENDPOINT))),
        unfinished=int(np.count_nonzero((status == PENDING) | (status == KILLED))),
        latency_p50=_pct(result.latency[ok], 50),
        latency_p95=_pct(result.latency[ok], 95),
        latency_p99=_pct(result.latency[ok], 99),
        ttft_p50=_pct(result.ttft[ok], 50),
        ttft_p95=_pct(result.ttft[ok], 95),
        ttft_p99=_pct(result.ttft[ok], 99),
        within_slo=within / n if n else 1.0,
        gpu_hours=gpu_hours,
        peak_replicas=int(max(result.timeline.pods)) if result.timeline.pods else 0,
        mean_replicas=gpu_hours / per_pod / hours if hours else 0.0,
        time_to_capacity=time_to_capacity(result, capacity),
        ramp_within_slo=ramp,
    )


def digest(result: SimResult, slo_ttft: float, capacity: float) -> Digest:
    edges = np.arange(0.0, result.trace.duration + BIN_SECONDS, BIN_SECONDS)
    idx = np.clip(np.searchsorted(edges, result.arrival, side="right") - 1, 0, len(edges) - 2)
    offered = np.bincount(idx, minlength=len(edges) - 1) / BIN_SECONDS
    # A request that never got a first token counts as infinitely late in its minute.
    ttft = np.where(result.status == DONE, result.ttft, np.inf)
    p95 = np.full(len(edges) - 1, np.nan)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    bounds = np.searchsorted(sorted_idx, np.arange(len(edges)))
    for b in range(len(edges) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        if hi > lo:
            p95[b] = np.quantile(ttft[order[lo:hi]], 0.95, method="inverted_cdf")
    return Digest(
        summary=summarize(result, slo_ttft, capacity),
        t=np.asarray(result.timeline.t),
        pods=np.asarray(result.timeline.pods),
        ready=np.asarray(result.timeline.ready),
        bin_t=edges[:-1],
        offered=offered,
        ttft_p95=p95,
    )


def _fmt(v: float, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "never"
    if math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


COLUMNS = (
    "policy", "within SLO", "while rising", "rejected", "TTFT p50/p95/p99 s", "GPU-hours", "of static peak",
    "replicas peak/mean", "time to capacity s",
)  # fmt: skip


def table(summaries: list[Summary], static_peak_gpu_hours: float | None = None) -> str:
    """A Markdown table: readable in a terminal and pasteable into a report. "while rising": within
    the objective among the requests that arrived while the trace's rate rose (its morning)."""
    rows = [COLUMNS, tuple("---" for _ in COLUMNS)]
    for s in summaries:
        share = f"{100 * s.gpu_hours / static_peak_gpu_hours:.0f} %" if static_peak_gpu_hours else "n/a"
        rows.append(
            (
                s.policy,
                f"{100 * s.within_slo:.2f} %",
                "n/a" if s.ramp_within_slo is None else f"{100 * s.ramp_within_slo:.2f} %",
                f"{s.rejected + s.unfinished}",
                f"{_fmt(s.ttft_p50)} / {_fmt(s.ttft_p95)} / {_fmt(s.ttft_p99)}",
                f"{s.gpu_hours:.1f}",
                share,
                f"{s.peak_replicas} / {s.mean_replicas:.2f}",
                _fmt(s.time_to_capacity, 0),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows)


def as_dict(summary: Summary) -> dict:
    return asdict(summary)


def plot(digests: list[Digest], title: str, slo_ttft: float, path: str | Path) -> Path:
    """Three panels sharing the time axis: offered load, pods, p95 time to first token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_load, ax_pods, ax_ttft) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    hours = digests[0].bin_t / 3600.0
    ax_load.plot(hours, digests[0].offered, color="black", lw=0.8)
    ax_load.set_ylabel("offered req/s")
    ax_load.set_title(title)
    for d in digests:
        (line,) = ax_pods.step(d.t / 3600.0, d.pods, where="post", lw=1.0, label=d.summary.policy)
        ax_ttft.plot(hours, np.where(np.isinf(d.ttft_p95), np.nan, d.ttft_p95), lw=0.8, color=line.get_color())
    ax_pods.set_ylabel("pods (GPUs billed)")
    ax_pods.legend(fontsize=8, ncol=3, loc="upper left")
    ax_ttft.axhline(slo_ttft, color="red", ls="--", lw=0.8, label=f"objective {slo_ttft:g} s")
    ax_ttft.set_yscale("log")
    ax_ttft.set_ylabel("p95 TTFT per minute, s")
    ax_ttft.set_xlabel("hours")
    ax_ttft.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
