"""The whole stack in containers: Triton, the frontend and Prometheus on one Docker network.

Images are built (or found up to date) by stack.docker on the local Debian base; the
engine is started when none answers. When Docker cannot be had these fixtures raise,
so the tests fail: only `--docker=skip` skips them.

Containers get what k8s/base gives the pods: read-only root filesystem, a writable
/tmp, no capabilities, the image's own (non-root) user, the same memory limits, and
for Triton the model cache volume filled by k8s/base/fill-model-cache.sh.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from docker_stack import (
    CONFIG_NAME, EXIT_TIMEOUT_S, FILL_SCRIPT, FRONTEND_ENV, FRONTEND_MEMORY_LIMIT, MODEL_SOURCE, QUEUE_SIZE, SLOTS,
    TRITON_MEMORY_LIMIT, Service, k8s_command, k8s_container, k8s_plain_env, testcontainers_classes,
    triton_replicas_name, wait_for_triton, wait_until,
)

from stack import docker as platform_docker
from stack.prometheus import LocalTargets, local_config
from stack.triton import MODEL_NAME, model_repository


def _hardened(container, memory_limit: int, **kwargs):
    """The pod's securityContext and memory limit, in Docker's words."""
    return container.with_tmpfs_mount("/tmp", "size=1g").with_kwargs(
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=memory_limit,
        memswap_limit=memory_limit,
        **kwargs,
    )


def _publish(container, *ports: int):
    for port in ports:
        container.ports[f"{port}/tcp"] = ("127.0.0.1",)  # loopback only, a free port
    return container


@pytest.fixture(scope="session")
def docker_client():
    platform_docker.ensure_engine()
    import docker

    client = docker.from_env(timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, str]:
    platform_docker.build_images(base="local", prometheus=True)
    return {name: platform_docker.image_name(name) for name in ("triton", "frontend", "prometheus")}


@pytest.fixture(scope="session")
def network(docker_client):
    _, Network = testcontainers_classes()
    net = Network().create()
    yield net
    net.remove()


@pytest.fixture(scope="session")
def test_files() -> Iterator[Path]:
    """Files mounted into the containers (readable by their non-root users)."""
    folder = Path(tempfile.mkdtemp(prefix="qwen3vl-docker-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def model_volume(docker_client, images) -> Iterator[str]:
    """The model cache volume, filled the way the Triton pod's init container fills it."""
    name = f"qwen3vl-models-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name)
    source = dict(line.split("=", 1) for line in MODEL_SOURCE.read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    init = k8s_container("triton", "fill-model-cache", init=True)
    try:
        output = docker_client.containers.run(
            images["triton"],
            sum(k8s_command(init, {}), []),
            environment={**k8s_plain_env(init), **source},
            volumes={name: {"bind": "/models", "mode": "rw"},
                     str(FILL_SCRIPT): {"bind": "/opt/platform/fill/fill-model-cache.sh", "mode": "ro"}},
            read_only=True, tmpfs={"/tmp": "size=1g"}, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            network_mode="none", remove=True, stdout=True, stderr=True,
        )
        assert b"model cache filled" in output, output.decode(errors="replace")
        yield name
    finally:
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture(scope="session")
def triton_config(test_files: Path) -> Path:
    """model_repository's CPU config with a small engine and queue, mounted as configs/docker-test.pbtxt."""
    repository = model_repository(parameters={"max_num_seqs": str(SLOTS)}, queue_size=QUEUE_SIZE)
    try:
        text = (repository / MODEL_NAME / "config.pbtxt").read_text()
    finally:
        shutil.rmtree(repository, ignore_errors=True)
    assert re.search(rf"max_queue_size: {QUEUE_SIZE}\b", text)
    path = test_files / f"{CONFIG_NAME}.pbtxt"
    path.write_text(text)
    path.chmod(0o644)
    return path


def start_triton(images, network, model_volume, triton_config, *aliases: str) -> Service:
    """A Triton container as the Deployment runs it, reachable on the network by ``aliases``."""
    DockerContainer, _ = testcontainers_classes()
    spec = k8s_container("triton", "triton")
    env = {**k8s_plain_env(spec), "TRITON_MODEL_CONFIG": CONFIG_NAME, "TRITON_EXIT_TIMEOUT_SECS": str(EXIT_TIMEOUT_S)}
    entrypoint, args = k8s_command(spec, env)
    container = (
        DockerContainer(images["triton"])
        .with_name(f"qwen3vl-triton-{uuid.uuid4().hex[:6]}")
        .with_network(network)
        .with_network_aliases(*aliases)
        .with_command(args)
        .with_envs(**env, MODEL_PATH="/models/tiny")
        .with_volume_mapping(str(triton_config),
                             f"/opt/platform/model_repository/{MODEL_NAME}/configs/{CONFIG_NAME}.pbtxt", "ro")
        .with_volume_mapping(model_volume, "/models", "ro")
    )
    # The Python backend exchanges tensors with its stub through /dev/shm (k8s: a 1Gi emptyDir).
    container = _publish(_hardened(container, TRITON_MEMORY_LIMIT, shm_size="1g", entrypoint=entrypoint), 8000, 8002)
    container.start()
    service = Service(container, {8000: "", 8002: ""})
    service.publish_urls()
    return service


@pytest.fixture(scope="session")
def triton(images, network, model_volume, triton_config) -> Iterator[Service]:
    # `triton` as the ClusterIP Service is named, and the name the frontend resolves for every replica.
    service = start_triton(images, network, model_volume, triton_config, "triton", triton_replicas_name())
    try:
        wait_for_triton(service)
        yield service
    finally:
        service.save_logs("triton")
        service.container.stop()


@pytest.fixture(scope="session")
def start_triton_replica(images, network, model_volume, triton_config):
    """Starts one more Triton container under the frontend's replica name; the caller stops it."""
    return lambda: start_triton(images, network, model_volume, triton_config, triton_replicas_name())


@pytest.fixture(scope="session")
def frontend(images, network, triton) -> Iterator[Service]:
    DockerContainer, _ = testcontainers_classes()
    spec = k8s_container("frontend", "frontend")
    entrypoint, args = k8s_command(spec, {})
    container = (
        DockerContainer(images["frontend"])
        .with_command(args)
        .with_name(f"qwen3vl-frontend-{uuid.uuid4().hex[:6]}")
        .with_network(network)
        .with_network_aliases("frontend")
        .with_envs(**{**k8s_plain_env(spec), **FRONTEND_ENV})
    )
    container = _publish(_hardened(container, FRONTEND_MEMORY_LIMIT, entrypoint=entrypoint), 8080)
    container.start()
    service = Service(container, {8080: ""})
    service.publish_urls()
    try:
        url = service.urls[8080]
        try:
            wait_until(lambda: httpx.get(f"{url}/readyz", timeout=3).status_code == 200, 120, "frontend /readyz")
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n--- frontend log ---\n{service.logs()}") from None
        yield service
    finally:
        service.save_logs("frontend")
        container.stop()


@pytest.fixture(scope="session")
def prometheus(images, network, frontend, test_files: Path) -> Iterator[Service]:
    DockerContainer, _ = testcontainers_classes()
    config = local_config(LocalTargets(triton=["triton:8002"], frontend=["frontend:8080"], dcgm_exporter=[]),
                          scrape_interval="2s", evaluation_interval="2s")
    config["rule_files"] = ["/etc/prometheus/rules/*.yml"]
    path = test_files / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o644)
    container = (
        DockerContainer(images["prometheus"])
        .with_name(f"qwen3vl-prometheus-{uuid.uuid4().hex[:6]}")
        .with_network(network)
        .with_volume_mapping(str(path), "/etc/prometheus/prometheus.yml", "ro")
    )
    container = _publish(container, 9090)
    container.start()
    service = Service(container, {9090: ""})
    service.publish_urls()
    try:
        url = service.urls[9090]
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=3).status_code == 200, 60, "Prometheus ready")
        yield service
    finally:
        service.save_logs("prometheus")
        container.stop()
