"""python -m planner: simulate the ScaledObject of a built overlay against a trace and a pod profile."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from monitoring.objective import load_objective
from planner.policies import comparison, fit_static_peak, pod_capacity, run_policies
from planner.profile import ProfileError, load_profile
from planner.report import as_dict, plot, table
from planner.scaledobject import ScaledObjectError, load_overlay
from planner.search import scaledobject_snippet, search, write_overlay
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planner", description=__doc__)
    p.add_argument("--overlay", required=True, help="kustomize overlay holding the ScaledObject, e.g. k8s/overlays/gpu")
    p.add_argument("--scaledobject", help="name of the ScaledObject when the overlay has several")
    p.add_argument("--profile", required=True, help="pod profile JSON (planner/profiles/*.json or `make bench` output)")
    p.add_argument("--trace", required=True, help="daynight, burst, step, or a CSV file (arrival_seconds,prompt_tokens,max_tokens)")
    p.add_argument("--hours", type=_positive, help="length of the daynight/burst trace (default 24 / 3)")
    p.add_argument("--prompt-tokens", type=_positive, default=220.0, help="median prompt tokens of generated traces")
    p.add_argument("--max-tokens", type=_positive, default=160.0, help="median max_tokens of generated traces")
    p.add_argument("--slo-ttft", type=_positive, help="objective: time to first token, seconds "
                   "(default: the platform's, monitoring/objective.yml)")
    p.add_argument("--slo-share", type=float, help="objective: share of requests within --slo-ttft "
                   "(default: monitoring/objective.yml)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/planner", help="folder for the PNG and the JSON summary")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="compare static, CPU HPA and KEDA policies")
    mode.add_argument("--search", action="store_true", help="propose thresholds and min/max for the objective")
    p.add_argument("--propose-overlay", metavar="DIR", help="with --search: write a kustomize overlay with the proposal")
    p.add_argument("--scrape-interval", type=_positive, help="Triton scrape interval (default: the overlay's ServiceMonitor)")
    p.add_argument("--eval-interval", type=_positive, help="recording rules' interval (default: the overlay's PrometheusRule)")
    p.add_argument("--prometheus-outage", type=_outage, action="append", default=[], metavar="START:END")
    p.add_argument("--workers", type=int, default=2, help="processes for --compare/--search")
    return p


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
        profile = load_profile(args.profile)
        mix = RequestMix(prompt_median=args.prompt_tokens, max_tokens_median=args.max_tokens)
        trace = make_trace(args.trace, args.seed, mix, args.hours)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cap = pod_capacity(profile, trace)
    print(
        f"trace {trace.name}: {len(trace.arrivals)} requests over {trace.duration / 3600:.1f} h, "
        f"peak {trace.peak_rps():.1f} req/s, mean {trace.mean_rps():.2f} req/s; "
        f"profile {profile.name}: {cap:.2f} req/s per pod, cold start {profile.cold_start.total_seconds:.0f} s; "
        f"ScaledObject {so.name} from {so.source}: {len(so.triggers)} triggers, {so.min_replica_count}-{so.max_replica_count} replicas"
    )
    started = time.monotonic()
    objective = f"TTFT <= {args.slo_ttft:g} s for {100 * args.slo_share:g} % of requests"
    if args.search:
        best, everything = search(so, profile, trace, config, args.seed, args.slo_ttft, args.slo_share, args.workers)
        print(f"searched {len(everything)} ScaledObjects in {time.monotonic() - started:.1f} s; objective: {objective}")
        if best is None:
            print("no candidate met the objective; the closest:")
            print(table([max(everything, key=lambda c: c.summary.within_slo).summary]))
            return 1
        print(table([replace(best.summary, policy="proposed")]))
        print("\n# ScaledObject values to use:\n" + scaledobject_snippet(best.so))
        if args.propose_overlay:
            print(f"wrote {write_overlay(best.so, args.overlay, args.propose_overlay)} (kubectl kustomize builds it)")
        return 0
    if args.compare:
        policies = comparison(so, profile, trace)
        digests = run_policies(trace, profile, policies[1:], config, args.seed, args.slo_ttft, args.workers)
        n_peak, peak_digest = fit_static_peak(
            trace, profile, config, args.seed, args.slo_ttft, args.slo_share, policies[0].static_replicas
        )
        digests.insert(0, peak_digest)
        name = f"{trace.name}-compare"
    else:
        policy = Policy(f"KEDA {Path(so.source).name}", scaled_object=so)
        digests = run_policies(trace, profile, [policy], config, args.seed, args.slo_ttft, 1)
        name = f"{trace.name}-as-built"
    summaries = [d.summary for d in digests]
    print(f"simulated {len(digests)} policies in {time.monotonic() - started:.1f} s; objective: {objective}")
    print(table(summaries))
    if args.compare:
        peak = summaries[0]
        for s in summaries[2:]:
            if s.meets(args.slo_share) and peak.meets(args.slo_share):
                saved = 100 * (1 - s.gpu_hours / peak.gpu_hours)
                how = f"{saved:.0f} % fewer" if saved >= 0 else f"{-saved:.0f} % more"
                print(f"{s.policy}: meets the objective with {how} GPU-hours than static at peak ({n_peak} pods)")
            elif not s.meets(args.slo_share):
                print(f"{s.policy}: misses the objective ({100 * s.within_slo:.2f} % within)")
    png = plot(digests, f"{trace.name} trace, {profile.name}, {objective}", args.slo_ttft, out / f"{name}.png")
    (out / f"{name}.json").write_text(json.dumps([as_dict(s) for s in summaries], indent=2) + "\n")
    print(f"wrote {png} and {out / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
