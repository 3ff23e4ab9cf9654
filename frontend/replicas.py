"""The set of Triton replicas this frontend routes to: one gRPC channel each, kept ready-checked and load-read.

A background task re-resolves the targets every few seconds (a DNS name; a fixed list never
changes) and probes every replica every second or so: Triton's server and model readiness over
gRPC, and the replica's own occupancy from its metrics endpoint. A replica that stops being
ready (SIGTERM: Triton refuses new work while it drains) is not chosen any more within a probe;
one that becomes ready is chosen from the next probe on. A replica whose address leaves the DNS
answer takes no new request and is closed once its last stream has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import httpx
import tritonclient.grpc.aio as grpcclient_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from frontend import routing
from frontend.discovery import Targets, host_of
from frontend.metrics import FrontendMetrics

log = logging.getLogger(__name__)

# Gauges of the model and of Triton (docs/contracts.md) that say what a replica holds.
HELD = ("qwen3vl_sequences_in_flight", "qwen3vl_sequences_waiting", "nv_inference_pending_request_count")
CAPACITY = "qwen3vl_max_sequences"
# How long after one of this frontend's streams ends the replica's count may still hold it: the model
# applies its gauges every 0.1 s, later on a busy host. Taken for another client's stream, it made an
# idle replica look busy until the next probe, and a burst arriving meanwhile went around it.
REPORT_LAG_S = 1.0


@dataclass
class Replica:
    address: str
    client: grpcclient_aio.InferenceServerClient
    ready: bool = False
    reason: str = "not probed yet"
    in_flight: int = 0
    reported: int | None = None
    in_flight_at_report: int = 0
    capacity: int | None = None
    retired: bool = False  # left the DNS answer: no new requests, closed when idle
    ended: deque[float] = field(default_factory=deque)  # when this frontend's streams on it ended, recent ones

    def load(self) -> routing.ReplicaLoad:
        return routing.ReplicaLoad(self.address, self.ready, self.in_flight, self.reported,
                                   self.in_flight_at_report, self.capacity)

    def stream_ended(self, now: float) -> None:
        self.ended.append(now)
        self._forget_ended(now)

    def report(self, held: int, capacity: int | None, now: float) -> None:
        """The replica's own count, just read: it may still hold this frontend's streams that ended lately."""
        self._forget_ended(now)
        self.reported, self.capacity = held, capacity
        self.in_flight_at_report = self.in_flight + len(self.ended)

    def _forget_ended(self, now: float) -> None:
        while self.ended and self.ended[0] < now - REPORT_LAG_S:
            self.ended.popleft()


class ReplicaSet:
    """Created and closed by the app's lifespan (through TritonClient)."""

    def __init__(self, targets: Targets, model_name: str, metrics: FrontendMetrics, *, channel_args: list,
                 ready_timeout_s: float, probe_interval_s: float, resolve_interval_s: float,
                 metrics_port: int) -> None:
        self.targets = targets
        self.model_name = model_name
        self.metrics = metrics
        self._channel_args = channel_args
        self._ready_timeout_s = ready_timeout_s
        self._probe_interval_s = probe_interval_s
        self._resolve_interval_s = resolve_interval_s
        self._metrics_port = metrics_port
        self._replicas: dict[str, Replica] = {}
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Resolve and probe once, so that the first requests and /readyz see real state."""
        self._http = httpx.AsyncClient(timeout=self._ready_timeout_s)
        await self._refresh()
        await self._probe_all()
        self._task = asyncio.create_task(self._maintain(), name="triton-replicas")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for replica in list(self._replicas.values()):
            await self._drop(replica)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def active(self) -> list[Replica]:
        return [r for r in self._replicas.values() if not r.retired]

    def pick(self, avoid: Collection[str] = ()) -> Replica | None:
        address = routing.pick([r.load() for r in self.active], avoid)
        return None if address is None else self._replicas[address]

    @contextlib.contextmanager
    def streaming(self, replica: Replica) -> Iterator[None]:
        """Counts one stream on ``replica``; enter it right after ``pick``, with no await between."""
        replica.in_flight += 1
        self.metrics.upstream_in_flight.labels(replica=replica.address).inc()
        try:
            yield
        finally:
            replica.in_flight -= 1
            replica.stream_ended(time.monotonic())
            self.metrics.upstream_in_flight.labels(replica=replica.address).dec()

    def readiness(self) -> tuple[bool, str]:
        replicas = self.active
        ready = [r for r in replicas if r.ready]
        if ready:
            return True, f"{len(ready)} of {len(replicas)} Triton replicas ready"
        if not replicas:
            return False, f"no Triton replica found at {self.targets.dns_name}"
        return False, "no Triton replica is ready: " + "; ".join(f"{r.address}: {r.reason}" for r in replicas)

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        resolve_at = loop.time() + self._resolve_interval_s
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                if loop.time() >= resolve_at:
                    resolve_at = loop.time() + self._resolve_interval_s
                    await self._refresh()
                await self._probe_all()
                for replica in [r for r in self._replicas.values() if r.retired and not r.in_flight]:
                    await self._drop(replica)
            except Exception:  # the next round tries again; routing keeps the last known state
                log.exception("refreshing the Triton replicas failed")

    async def _refresh(self) -> None:
        try:
            addresses = await self.targets.resolve()
        except OSError as error:
            log.warning("resolving %s failed (%s); keeping %d known replicas",
                        self.targets.dns_name, error, len(self._replicas))
            return
        for address in addresses:
            if address in self._replicas:
                self._replicas[address].retired = False
            else:
                client = grpcclient_aio.InferenceServerClient(address, channel_args=self._channel_args)
                self._replicas[address] = Replica(address, client)
                log.info("Triton replica %s added", address)
        for address in set(self._replicas) - set(addresses):
            if not self._replicas[address].retired:
                log.info("Triton replica %s left %s; closing it once idle", address, self.targets.dns_name)
            self._replicas[address].retired = True
            self.metrics.upstream_ready.labels(replica=address).set(0)

    async def _drop(self, replica: Replica) -> None:
        del self._replicas[replica.address]
        self.metrics.forget_replica(replica.address)
        await replica.client.close()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in self.active))

    async def _probe(self, replica: Replica) -> None:
        ready, reason = await self._ask_ready(replica)
        if ready != replica.ready:
            log.info("Triton replica %s is %s", replica.address, "ready" if ready else f"not ready: {reason}")
        replica.ready, replica.reason = ready, reason
        self.metrics.upstream_ready.labels(replica=replica.address).set(int(ready))
        if ready and self._metrics_port:
            await self._read_load(replica)

    async def _ask_ready(self, replica: Replica) -> tuple[bool, str]:
        timeout = self._ready_timeout_s
        try:
            if not await replica.client.is_server_ready(client_timeout=timeout):
                return False, "Triton is not ready"
            if not await replica.client.is_model_ready(self.model_name, client_timeout=timeout):
                return False, f"model {self.model_name!r} is not ready"
        except InferenceServerException as exc:
            return False, f"Triton is not reachable: {exc.message()}"
        return True, "ready"

    async def _read_load(self, replica: Replica) -> None:
        """What the replica holds and how much it can run, from its Prometheus text; unknown if unread."""
        url = f"http://{host_of(replica.address)}:{self._metrics_port}/metrics"
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            values = {name: 0.0 for name in (*HELD, CAPACITY)}
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if sample.name in values and sample.labels.get("model") == self.model_name:
                        values[sample.name] += sample.value
        except (httpx.HTTPError, ValueError) as error:
            log.debug("reading %s failed: %s", url, error)
            replica.reported = replica.capacity = None
            return
        replica.report(int(sum(values[name] for name in HELD)), int(values[CAPACITY]) or None, time.monotonic())
