"""A stand-in for NVIDIA's dcgm-exporter, for machines without a GPU.

dcgm-exporter needs a GPU and the DCGM host engine; neither exists on the
development and CI machines. This double serves the same text format on
`/metrics`: one series per enabled field of monitoring/dcgm/counters.csv and per
GPU, with dcgm-exporter's labels (gpu, UUID, pci_bus_id, device, modelName,
Hostname, DCGM_FI_DRIVER_VERSION) and the pod labels its Kubernetes pod mapping
adds (namespace, pod, container). Values are plausible for an H100 80GB serving
a model: they vary over time within real ranges, memory used plus free equals
the card's memory, and counters only grow.

Run it beside `make run` + `make monitor` to see the GPU panels fill:
    python -m tests.doubles.dcgm_exporter --port 9400 --pod local/triton-0
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from monitoring.dcgm.counters import Counter, load_counters

FB_TOTAL_MIB = 81559  # an H100 80GB HBM3 as dcgm-exporter reports it
FB_RESERVED_MIB = 593
MODEL_NAME = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION = "550.90.07"


@dataclass(frozen=True)
class GpuAssignment:
    """A GPU and the pod that holds it (what dcgm-exporter's pod mapping reports)."""

    namespace: str
    pod: str
    container: str = "triton"

    @classmethod
    def parse(cls, spec: str) -> "GpuAssignment":
        namespace, sep, pod = spec.partition("/")
        if not sep or not namespace or not pod:
            raise ValueError(f"expected NAMESPACE/POD, got {spec!r}")
        return cls(namespace=namespace, pod=pod)


class _Gpu:
    """One simulated card: a load curve of its own (or a fixed utilization), counters integrated over time."""

    def __init__(self, index: int, owner: GpuAssignment, rng: random.Random, utilization: float | None = None) -> None:
        self.index = index
        self.owner = owner
        self.rng = rng
        self.utilization = utilization
        self.phase = rng.uniform(0, 2 * math.pi)
        self.started = time.monotonic()
        self.last = self.started
        self.energy_mj = rng.uniform(1e9, 5e9)
        self.power_violation_us = 0.0
        self.thermal_violation_us = 0.0
        self.nvlink_total = rng.uniform(1e9, 1e10)
        self.pcie_replays = 0.0
        self.labels = {
            "gpu": str(index),
            "UUID": f"GPU-{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"
            f"-{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}",
            "pci_bus_id": f"00000000:{0x18 + 0x10 * index:02X}:00.0",
            "device": f"nvidia{index}",
            "modelName": MODEL_NAME,
            "Hostname": "gpu-node-1",
            "DCGM_FI_DRIVER_VERSION": DRIVER_VERSION,
            "container": owner.container,
            "namespace": owner.namespace,
            "pod": owner.pod,
        }

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        t = now - self.started
        util = self.utilization
        if util is None:
            util = min(100.0, max(0.0, 55 + 35 * math.sin(t / 15 + self.phase) + self.rng.uniform(-5, 5)))
        load = util / 100
        power = 90 + 560 * load
        self.energy_mj += power * 1000 * dt
        if util > 95:
            self.power_violation_us += dt * 1e6 * 0.2
        self.nvlink_total += dt * 2e9 * load
        fb_used = 9000 + 60000 * load  # weights (~8.3 GiB) + KV cache growing with the batch
        return {
            "DCGM_FI_DEV_GPU_UTIL": round(util),
            "DCGM_FI_DEV_MEM_COPY_UTIL": round(util * 0.6),
            "DCGM_FI_DEV_ENC_UTIL": 0,
            "DCGM_FI_DEV_DEC_UTIL": 0,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(load * 0.98, 6),
            "DCGM_FI_PROF_SM_ACTIVE": round(load * 0.9, 6),
            "DCGM_FI_PROF_SM_OCCUPANCY": round(load * 0.45, 6),
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(load * 0.35, 6),
            "DCGM_FI_PROF_DRAM_ACTIVE": round(load * 0.7, 6),
            "DCGM_FI_DEV_FB_USED": round(fb_used),
            "DCGM_FI_DEV_FB_FREE": FB_TOTAL_MIB - FB_RESERVED_MIB - round(fb_used),
            "DCGM_FI_DEV_FB_RESERVED": FB_RESERVED_MIB,
            "DCGM_FI_DEV_POWER_USAGE": round(power, 3),
            "DCGM_FI_DEV_POWER_MGMT_LIMIT": 700,
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": round(self.energy_mj),
            "DCGM_FI_DEV_GPU_TEMP": round(34 + 40 * load),
            "DCGM_FI_DEV_MEMORY_TEMP": round(38 + 35 * load),
            "DCGM_FI_DEV_SM_CLOCK": 1980 if util < 95 else 1755,
            "DCGM_FI_DEV_MEM_CLOCK": 2619,
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 1 if util < 5 else 0,
            "DCGM_FI_DEV_POWER_VIOLATION": round(self.power_violation_us),
            "DCGM_FI_DEV_THERMAL_VIOLATION": round(self.thermal_violation_us),
            "DCGM_FI_DEV_XID_ERRORS": 0,
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 0,
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0,
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0,
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0,
            "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0,
            "DCGM_FI_PROF_PCIE_TX_BYTES": round(2e8 * load + 1e6),
            "DCGM_FI_PROF_PCIE_RX_BYTES": round(6e8 * load + 1e6),
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": round(self.pcie_replays),
            "DCGM_FI_PROF_NVLINK_TX_BYTES": round(1e9 * load),
            "DCGM_FI_PROF_NVLINK_RX_BYTES": round(1e9 * load),
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": round(self.nvlink_total),
        }


def _label_text(labels: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels.items()) + "}"


class DcgmExporterDouble:
    """Serves dcgm-exporter's /metrics for the given GPUs (one entry per GPU) on 127.0.0.1.

    ``utilization`` pins DCGM_FI_DEV_GPU_UTIL (and what follows from it) to one value, as a real
    exporter reads a GPU that runs any kernel at all times: near 100 % with one sequence decoding.
    """

    def __init__(self, gpus: list[GpuAssignment], *, port: int = 0, counters: list[Counter] | None = None,
                 seed: int = 0, utilization: float | None = None) -> None:
        if not gpus:
            raise ValueError("at least one GPU is needed")
        if utilization is not None and not 0 <= utilization <= 100:
            raise ValueError(f"utilization is a percentage, got {utilization}")
        self.counters = counters if counters is not None else load_counters()
        rng = random.Random(seed)
        self._gpus = [_Gpu(index, owner, rng, utilization) for index, owner in enumerate(gpus)]
        unknown = {c.field for c in self.counters} - set(self._gpus[0].sample())
        if unknown:
            raise ValueError(f"the double has no simulation for {sorted(unknown)}: add one")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def render(self) -> str:
        with self._lock:
            samples = [(gpu.labels, gpu.sample()) for gpu in self._gpus]
        lines: list[str] = []
        for counter in self.counters:
            lines.append(f"# HELP {counter.field} {counter.help}")
            lines.append(f"# TYPE {counter.field} {counter.prom_type}")
            for labels, values in samples:
                lines.append(f"{counter.field}{_label_text(labels)} {values[counter.field]}")
        return "\n".join(lines) + "\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = double.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler

    def start(self) -> "DcgmExporterDouble":
        self._thread = threading.Thread(target=self._server.serve_forever, name="dcgm-exporter-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "DcgmExporterDouble":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--pod", action="append", metavar="NAMESPACE/POD",
                        help="one GPU held by this pod; repeat for more GPUs (default local/triton-0)")
    args = parser.parse_args(argv)
    try:
        gpus = [GpuAssignment.parse(spec) for spec in (args.pod or ["local/triton-0"])]
    except ValueError as error:
        parser.error(str(error))
    double = DcgmExporterDouble(gpus, port=args.port).start()
    print(f"dcgm-exporter test double serving {double.url} for {len(gpus)} GPU(s)", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    double.stop()


if __name__ == "__main__":
    main()
