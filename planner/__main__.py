"""python -m planner: simulate the ScaledObject of a built overlay against a trace and a pod profile."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from monitoring.objective import load_objective
from planner.capacity import pod_capacity
from planner.policies import comparison, fit_static_peak, run_policies
from planner.profile import PodProfile, ProfileError, load_profile
from planner.report import as_dict, plot, table
from planner.scaledobject import ScaledObjectError, load_overlay
from planner.schedule import (ScheduleError, daily_rate, plan, rate_from_prometheus, rate_from_trace, with_schedule,
                              write_schedule)
from planner.search import choice, search, write_overlay
from planner.sim import Policy, SimConfig
from planner.traffic import RequestMix, TraceError, make_trace


def _outage(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds, got {text!r}") from exc
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError("need 0 <= START < END")
    return a, b


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planner", description=__doc__)
    p.add_argument("--overlay", required=True, help="kustomize overlay holding the ScaledObject, e.g. k8s/overlays/gpu")
    p.add_argument("--scaledobject", help="name of the ScaledObject when the overlay has several")
    p.add_argument("--profile", required=True, help="pod profile JSON (planner/profiles/*.json)")
    p.add_argument("--trace", required=True,
                   help="daynight, burst, step, flash, ramp, or a CSV file (arrival_seconds,prompt_tokens,max_tokens)")
    p.add_argument("--hours", type=_positive, help="length of the daynight/burst trace (default 24 / 3)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--peak-pods", type=_positive, default=4.5,
                       help="generated traces peak at this many pods' capacity (default 4.5)")
    scale.add_argument("--peak-rps", type=_positive, help="generated traces peak at this many requests/s instead")
    p.add_argument("--prompt-tokens", type=_positive, default=220.0, help="median prompt tokens of generated traces")
    p.add_argument("--max-tokens", type=_positive, default=512.0, help="median answer tokens of generated traces")
    p.add_argument("--slo-ttft", type=_positive, help="objective: time to first token, seconds "
                   "(default: the platform's, monitoring/objective.yml)")
    p.add_argument("--slo-share", type=float, help="objective: share of requests within --slo-ttft "
                   "(default: monitoring/objective.yml)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/planner", help="folder for the PNG and the JSON summary")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="compare static, queue, occupancy and combined policies")
    mode.add_argument("--search", action="store_true", help="propose thresholds and bounds for the objective")
    p.add_argument("--propose-overlay", metavar="DIR", help="with --search: write a kustomize overlay with the proposal")
    cold = p.add_argument_group("cold start (assumptions: the profile's unless given)")
    cold.add_argument("--image-pull-seconds", type=_seconds, help="pulling the Triton image onto a node")
    cold.add_argument("--node-provision-seconds", type=_seconds, help="a new GPU node (0: free GPUs in the pool)")
    cold.add_argument("--no-compile-artifacts", action="store_true",
                      help="new pods compile the decode step (empty node caches, no published artifacts)")
    sched = p.add_argument_group("predictive pre-scaling")
    sched.add_argument("--schedule-from", metavar="HISTORY",
                       help="learn minimum replicas by time of day from a trace (daynight, a CSV file) or "
                            "prometheus:URL (the last --schedule-days of Triton's request rate)")
    sched.add_argument("--schedule-seed", type=int, help="seed of a generated history trace (default: --seed + 1)")
    sched.add_argument("--schedule-days", type=_positive, default=7.0)
    sched.add_argument("--schedule-utilization", type=_positive, default=1.0,
                       help="the scheduled pods carry the history's rate at this share of their capacity")
    sched.add_argument("--schedule-overlay", metavar="DIR", help="write the schedule as an overlay (cron triggers)")
    sched.add_argument("--timezone", default="Etc/UTC",
                       help="the cron triggers' timezone (the history's day starts at 00:00 there)")
    p.add_argument("--scrape-interval", type=_positive, help="Triton scrape interval (default: the overlay's ServiceMonitor)")
    p.add_argument("--eval-interval", type=_positive, help="recording rules' interval (default: the overlay's PrometheusRule)")
    p.add_argument("--prometheus-outage", type=_outage, action="append", default=[], metavar="START:END")
    p.add_argument("--workers", type=int, default=2, help="processes for --compare/--search")
    return p


def _cold_start(profile: PodProfile, args) -> PodProfile:
    cold = profile.cold_start
    if args.image_pull_seconds is not None:
        cold = replace(cold, image_pull_seconds=args.image_pull_seconds)
    if args.node_provision_seconds is not None:
        cold = replace(cold, node_provision_seconds=args.node_provision_seconds)
    if args.no_compile_artifacts:
        cold = replace(cold, model_load_seconds=cold.model_load_seconds + cold.compile_seconds)
    return replace(profile, cold_start=cold)


def _schedule(args, so, profile: PodProfile, capacity: float, mix: RequestMix, peak_rps: float | None,
              config: SimConfig):
    """Minimum replicas by time of day, learnt from the history the user named."""
    source = args.schedule_from
    if source.startswith("prometheus:"):
        times, rates = rate_from_prometheus(source.removeprefix("prometheus:"), days=args.schedule_days)
    else:
        seed = args.seed + 1 if args.schedule_seed is None else args.schedule_seed
        history = make_trace(source, seed, mix, args.hours, peak_rps if not source.endswith(".csv") else None)
        times, rates = rate_from_trace(history)
    # a pod asked for at the start of a bin is ready one cold start (and a poll, a sync) later
    lead = profile.cold_start.total_seconds + so.polling_interval + config.hpa_sync_period + config.readiness_period
    return plan(daily_rate(times, rates), capacity, lead, so.min_replica_count, so.max_replica_count,
                args.schedule_utilization)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    slo = load_objective()
    args.slo_ttft = slo.seconds if args.slo_ttft is None else args.slo_ttft
    args.slo_share = slo.share if args.slo_share is None else args.slo_share
    if not 0 < args.slo_share <= 1:
        print("error: --slo-share must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        so, pod = load_overlay(args.overlay, args.scaledobject)
        profile = _cold_start(load_profile(args.profile), args)
        mix = RequestMix(prompt_median=args.prompt_tokens, max_tokens_median=args.max_tokens)
        recorded = args.trace.endswith(".csv")
        # the pod's capacity for requests of the trace's sizes (a built-in trace's: those of an hour of
        # its mix, the same draws whatever the shape); built-in traces are scaled to it
        sizes = make_trace(args.trace, args.seed) if recorded else make_trace("daynight", args.seed, mix, 1.0, 10.0)
        capacity = pod_capacity(profile, sizes.prompt_tokens, sizes.max_tokens, args.slo_ttft, args.slo_share)
        peak_rps = args.peak_rps or args.peak_pods * capacity
        trace = sizes if recorded else make_trace(args.trace, args.seed, mix, args.hours, peak_rps)
    except (ScaledObjectError, ProfileError, TraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = SimConfig(
        scrape_interval=args.scrape_interval or pod.scrape_interval,
        eval_interval=args.eval_interval or pod.rule_interval,
        readiness_period=pod.readiness_period,
        termination_grace_seconds=pod.termination_grace_seconds,
        prometheus_outages=tuple(args.prometheus_outage),
    )
    scheduled = None
    if args.schedule_from:
        try:
            windows = _schedule(args, so, profile, capacity, mix, peak_rps, config)
        except (ScheduleError, TraceError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        scheduled = with_schedule(so, windows)
        clock = lambda seconds: f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"  # noqa: E731
        print("schedule (minimum replicas by time of day): " + ", ".join(
            f"{clock(w.start)}-{clock(w.end)} {w.replicas}" for w in windows))
        if args.schedule_overlay:
            print(f"wrote {write_schedule(windows, so.name, args.overlay, args.schedule_overlay, args.timezone)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"trace {trace.name}: {len(trace.arrivals)} requests over {trace.duration / 3600:.1f} h, "
        f"peak {trace.peak_rps():.1f} req/s, mean {trace.mean_rps():.2f} req/s; profile {profile.name}: "
        f"{capacity:.2f} req/s per pod within the objective, cold start {profile.cold_start.total_seconds:.0f} s; "
        f"ScaledObject {so.name} from {so.source}: {len(so.triggers)} triggers, "
        f"{so.min_replica_count}-{so.max_replica_count} replicas"
    )
    started = time.monotonic()
    objective = f"TTFT <= {args.slo_ttft:g} s for {100 * args.slo_share:g} % of requests"
    if args.search:
        best, everything = search(so, profile, trace, config, args.seed, args.slo_ttft, args.slo_share,
                                  capacity, args.workers)
        print(f"searched {len(everything)} ScaledObjects in {time.monotonic() - started:.1f} s; objective: {objective}")
        (out / f"{trace.name}-search.json").write_text(json.dumps({
            "objective": {"ttft_seconds": args.slo_ttft, "share": args.slo_share},
            "trace": trace.name, "seed": args.seed, "profile": profile.name, "overlay": str(args.overlay),
            "proposal": choice(best.so) if best else None,
            "candidates": [{"choice": choice(c.so), "summary": as_dict(c.summary)} for c in everything]},
            indent=2) + "\n")
        if best is None:
            print("no candidate met the objective; the closest:")
            print(table([max(everything, key=lambda c: c.summary.within_slo).summary]))
            return 1
        print(table([replace(best.summary, policy="proposed")]))
        print("\n# the proposal:\n" + json.dumps(choice(best.so), indent=2))
        if args.propose_overlay:
            print(f"wrote {write_overlay(best.so, args.overlay, args.propose_overlay)} (kubectl kustomize builds it)")
        return 0
    reference = None
    if args.compare:
        peak_start = max(1, math.ceil(trace.peak_rps() / capacity - 1e-9))
        policies = comparison(so, peak_start, max(1, math.ceil(trace.mean_rps() / capacity - 1e-9)), scheduled)
        n_peak, peak_digest = fit_static_peak(trace, profile, config, args.seed, args.slo_ttft, args.slo_share,
                                              capacity, peak_start)
        digests = [peak_digest] + run_policies(trace, profile, policies[1:], config, args.seed, args.slo_ttft, capacity,
                                               args.workers)
        reference = peak_digest.summary.gpu_hours
        name = f"{trace.name}-compare"
    else:
        policy = Policy(f"KEDA {Path(so.source).name}", scaled_object=scheduled or so)
        digests = run_policies(trace, profile, [policy], config, args.seed, args.slo_ttft, capacity, 1)
        name = f"{trace.name}-as-built"
    summaries = [d.summary for d in digests]
    print(f"simulated {len(digests)} policies in {time.monotonic() - started:.1f} s; objective: {objective}")
    print(table(summaries, reference))
    if args.compare:
        print(f"static at peak: {n_peak} pods, the fewest that meet the objective")
        for s in summaries[2:]:
            verdict = "meets" if s.meets(args.slo_share) else "misses"
            print(f"{s.policy}: {verdict} the objective ({100 * s.within_slo:.2f} % within) with "
                  f"{100 * s.gpu_hours / reference:.0f} % of static peak's GPU-hours")
    png = plot(digests, f"{trace.name} trace, {profile.name}, {objective}", args.slo_ttft, out / f"{name}.png")
    (out / f"{name}.json").write_text(json.dumps([as_dict(s) for s in summaries], indent=2) + "\n")
    print(f"wrote {png} and {out / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
