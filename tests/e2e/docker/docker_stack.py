"""Shared pieces of the Docker tests: limits, the Service handle, bounded waiting."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from stack.triton import MODEL_NAME

ROOT = Path(__file__).resolve().parents[3]
K8S_BASE = ROOT / "k8s" / "base"
LOG_DIR = ROOT / "var" / "log" / "docker-tests"
FILL_SCRIPT = ROOT / "k8s" / "base" / "fill-model-cache.sh"
MODEL_SOURCE = ROOT / "k8s" / "base" / "model-source.env"
CONFIG_NAME = "docker-test"
# Two engine slots and a queue of two: a burst of a couple of dozen clients overflows it. Measured: an idle
# replica takes six requests 10 ms apart (two running, one waiting in the engine, one in `execute`, two
# queued), but only two that arrive together: they wait in the queue for the dynamic batcher's 5 ms (for a
# preferred batch of 4 that a queue of two never holds), and Triton counts them against max_queue_size, so a
# third is refused ("Exceeds maximum queue size", 10 of 10 bursts of three).
SLOTS, QUEUE_SIZE = 2, 2
# Requests Triton can hand to the model at once: one batch waits inside `execute` for slots.
MAX_BATCH = int(re.search(r"^max_batch_size: (\d+)", (ROOT / "model_repository" / MODEL_NAME / "config.pbtxt")
                          .read_text(), re.M).group(1))
EXIT_TIMEOUT_S = 60
TRITON_MEMORY_LIMIT = 4 * 1024**3  # k8s/base/deployment-triton.yaml
FRONTEND_MEMORY_LIMIT = 1024**3  # k8s/base/deployment-frontend.yaml
MAX_TOKENS_LIMIT = 2048
FRONTEND_ENV = {
    "FRONTEND_MAX_TOKENS_LIMIT": str(MAX_TOKENS_LIMIT),
    "FRONTEND_DEFAULT_MAX_TOKENS": "16",
    "FRONTEND_UNAVAILABLE_RETRY_S": "2",
    "FRONTEND_OVERLOADED_RETRY_AFTER_S": "3",
    "FRONTEND_REQUEST_TIMEOUT_S": "180",
}


def testcontainers_classes():
    """testcontainers reads its settings when imported: no reaper, the engine on 127.0.0.1."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    os.environ.setdefault("TC_HOST", "127.0.0.1")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    return DockerContainer, Network


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as error:
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:.0f} s (last error: {last_error})")


@dataclass
class Service:
    """A started container and the loopback URL of each published port."""

    container: object  # testcontainers DockerContainer
    urls: dict[int, str]

    @property
    def docker(self):
        """The docker SDK's container: kill, signals, stats, inspect."""
        return self.container.get_wrapped_container()

    def inspect(self) -> dict:
        wrapped = self.docker
        wrapped.reload()
        return wrapped.attrs

    def logs(self) -> str:
        return self.docker.logs().decode(errors="replace")[-4000:]

    def save_logs(self, name: str) -> None:
        """The whole log under var/log/docker-tests/, for a failure seen in CI."""
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / f"{name}.log").write_bytes(self.docker.logs())

    def publish_urls(self) -> None:
        """Published ports change when a container starts again."""
        for port in list(self.urls):
            self.urls[port] = f"http://127.0.0.1:{self.container.get_exposed_port(port)}"


def triton_ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200


def wait_for_triton(service: Service, timeout: float = 240) -> None:
    try:
        wait_until(lambda: triton_ready(service.urls[8000]), timeout, "Triton's model ready")
    except TimeoutError as error:
        raise TimeoutError(f"{error}\n--- triton log ---\n{service.logs()}") from None


def ensure_running(triton: Service) -> None:
    """Tests that stop Triton leave it stopped; the next test needing it starts it again."""
    if triton.inspect()["State"]["Running"]:
        return
    triton.docker.start()
    triton.publish_urls()
    wait_for_triton(triton)


def k8s_container(deployment: str, name: str, init: bool = False) -> dict:
    """A container of k8s/base/deployment-<deployment>.yaml, as the cluster would run it."""
    manifest = yaml.safe_load((K8S_BASE / f"deployment-{deployment}.yaml").read_text())
    spec = manifest["spec"]["template"]["spec"]
    containers = spec["initContainers"] if init else spec["containers"]
    return next(c for c in containers if c["name"] == name)


def k8s_command(container: dict, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(command, args) with $(VAR) expanded from ``env`` as the kubelet does: Docker's entrypoint and cmd."""
    def expand(words: list[str]) -> list[str]:
        return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), word) for word in words]

    return expand(container.get("command", [])), expand(container.get("args", []))


def k8s_plain_env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def triton_replicas_name() -> str:
    """The name the frontend's manifest resolves for every Triton replica (the headless Service's)."""
    from frontend.discovery import Targets

    return Targets.parse(k8s_plain_env(k8s_container("frontend", "frontend"))["FRONTEND_TRITON_GRPC_URL"]).dns_name
