"""Start Debian's Prometheus beside the local stack, scraping it with the platform's rules.

The Kubernetes configuration (monitoring/prometheus/prometheus.yml) discovers pods
through the API server; locally the same jobs get static targets, and target
labels `namespace="local"` and `pod=...` stand in for the relabeling, so the
recording rules, alerts and dashboards work unchanged.

`make monitor`:  python -m stack.prometheus   (prints the URL, Ctrl-C stops it)
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stack.process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = REPO_ROOT / "monitoring" / "prometheus" / "rules"
LOCAL_NAMESPACE = "local"
INSTALL_HINT = "install it with: apt-get update && apt-get install -y prometheus"


@dataclass(frozen=True)
class LocalTargets:
    """host:port of each local service to scrape; an empty list leaves the job out."""

    triton: list[str] = field(default_factory=lambda: ["127.0.0.1:8002"])
    frontend: list[str] = field(default_factory=lambda: ["127.0.0.1:8080"])
    dcgm_exporter: list[str] = field(default_factory=lambda: ["127.0.0.1:9400"])


def _job(name: str, addresses: list[str], pod_prefix: str, interval: str, **extra: object) -> dict:
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{name} target {address!r} is not host:port")
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": "/metrics",
        **extra,
        "static_configs": [
            {"targets": [address], "labels": {"namespace": LOCAL_NAMESPACE, "pod": f"{pod_prefix}-{index}"}}
            for index, address in enumerate(addresses)
        ],
    }


def local_config(targets: LocalTargets, *, scrape_interval: str = "5s", evaluation_interval: str = "5s") -> dict:
    """The local twin of prometheus.yml: same job names, same rules, static targets."""
    jobs = []
    if targets.triton:
        jobs.append(_job("triton", targets.triton, "triton", scrape_interval))
    if targets.frontend:
        jobs.append(_job("frontend", targets.frontend, "frontend", scrape_interval))
    if targets.dcgm_exporter:
        # As on Kubernetes: the exporter's own namespace/pod labels name the pod
        # holding each GPU and win over the target's.
        jobs.append(_job("dcgm-exporter", targets.dcgm_exporter, "dcgm-exporter", scrape_interval, honor_labels=True))
    if not jobs:
        raise ValueError("nothing to scrape: give at least one target")
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": jobs,
    }


class PrometheusError(RuntimeError):
    """Prometheus refused a query or could not be started."""


class PrometheusServer(ServerProcess):
    """The real `prometheus` binary on 127.0.0.1 with a generated config and a throwaway TSDB."""

    name = "prometheus"

    def __init__(
        self,
        *,
        port: int,
        config: dict,
        binary: str = "prometheus",
        data_dir: str | None = None,
        log_file: str | None = None,
    ) -> None:
        super().__init__(log_file)
        self.port = port
        self.config = config
        self.binary = binary
        self.url = f"http://127.0.0.1:{port}"
        self._given_data_dir = data_dir
        self._workdir: str | None = None

    def command(self, config_file: str, data_dir: str) -> list[str]:
        return [
            self.binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={data_dir}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]

    def start(self, timeout: float = 60) -> PrometheusServer:
        binary = shutil.which(self.binary)
        if binary is None:
            raise PrometheusError(f"{self.binary!r} not found on PATH; {INSTALL_HINT}")
        self._workdir = tempfile.mkdtemp(prefix="prometheus-")
        config_file = Path(self._workdir) / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        data_dir = self._given_data_dir or str(Path(self._workdir) / "data")
        try:
            self.launch(self.command(str(config_file), data_dir), f"{self.url}/-/ready", timeout, cwd=self._workdir)
        except RuntimeError as exc:
            raise PrometheusError(str(exc)) from None
        return self

    def stop(self, timeout: float = 20) -> None:
        super().stop(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def api(self, path: str, **params: str) -> object:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError with Prometheus' own message."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} (GET {url})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query, now or at Unix time `at`; the result vector (items have `metric` and `value`)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} returned a {data['resultType']}, not a vector")
        return data["result"]

    def wait_for_targets(self, jobs: list[str], timeout: float = 60) -> None:
        """Block until every target of these jobs has been scraped successfully."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            active = self.api("targets", state="active")["activeTargets"]
            last = {f"{t['labels']['job']}/{t['labels'].get('pod')}": t["health"] for t in active
                    if t["labels"]["job"] in jobs}
            seen_jobs = {key.split("/")[0] for key in last}
            if seen_jobs == set(jobs) and all(health == "up" for health in last.values()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"targets not all up within {timeout} s: {last}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prometheus for the local stack (make monitor).")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--triton", action="append", metavar="HOST:PORT",
                        help="Triton metrics endpoint, repeatable (default 127.0.0.1:8002)")
    parser.add_argument("--frontend", action="append", metavar="HOST:PORT",
                        help="frontend endpoint, repeatable (default 127.0.0.1:8080)")
    parser.add_argument("--dcgm-exporter", action="append", metavar="HOST:PORT",
                        help="dcgm-exporter endpoint, repeatable (default 127.0.0.1:9400)")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--data-dir", help="keep the TSDB here (default: a temporary directory)")
    args = parser.parse_args(argv)
    defaults = LocalTargets()
    try:
        config = local_config(
            LocalTargets(
                triton=args.triton or defaults.triton,
                frontend=args.frontend or defaults.frontend,
                dcgm_exporter=args.dcgm_exporter or defaults.dcgm_exporter,
            ),
            scrape_interval=args.scrape_interval,
        )
    except ValueError as error:
        parser.error(str(error))
    server = PrometheusServer(port=args.port, config=config, data_dir=args.data_dir)
    try:
        server.start()
    except (PrometheusError, TimeoutError) as error:
        raise SystemExit(f"error: {error}") from None
    jobs = ", ".join(f"{job['job_name']} {t['targets'][0]}" for job in config["scrape_configs"]
                     for t in job["static_configs"])
    print(f"Prometheus at {server.url} scraping {jobs}", flush=True)
    print(f"rules: {server.url}/rules  alerts: {server.url}/alerts  targets: {server.url}/targets", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        if not server.running:
            raise SystemExit("error: prometheus exited")
    server.stop()


if __name__ == "__main__":
    main()
