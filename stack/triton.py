"""Start the real NVIDIA Triton server (from the nvidia-pytriton wheel) on model_repository/.

The wheel ships the server, the Python backend and one backend stub per Python
version. The stub must match this interpreter, find libpython and Triton's own
libraries, and find this virtualenv's ``python3`` first on PATH (it derives its
prefix from it): ``triton_environment`` arranges all three.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from stack.ports import free_port_on_all
from stack.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
MODEL_NAME = "qwen3_vl"
TINY_CHECKPOINT = ROOT / "var" / "checkpoints" / "tiny"


def pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: pip install --no-deps -r requirements-triton.txt")
    return Path(list(spec.submodule_search_locations)[0])


def backend_directory(cache: Path = ROOT / "var" / "triton-backends") -> Path:
    """A backends folder holding the Python backend with the stub for this interpreter."""
    server = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = cache / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (
        server / "backends" / "python" / "libtriton_python.so",
        server / "backends" / "python" / "triton_python_backend_utils.py",
        server / "python_backend_stubs" / version / "triton_python_backend_stub",
    ):
        target = python / source.name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
        if target.name == "triton_python_backend_stub":
            target.chmod(0o755)  # a wheel unpacked by other tools can lose the executable bit
    return cache


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(pytriton_dir().parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def model_repository(parameters: dict[str, str] | None = None, queue_size: int | None = None,
                     config_name: str | None = None) -> Path:
    """The repository itself, or a temporary copy whose config overrides some values (for tests)."""
    if not parameters and queue_size is None:
        return MODEL_REPOSITORY
    source = MODEL_REPOSITORY / MODEL_NAME
    config_file = source / "configs" / f"{config_name}.pbtxt" if config_name else source / "config.pbtxt"
    text = config_file.read_text()
    for key, value in (parameters or {}).items():
        pattern = re.compile(r'(\{ key: "%s", value: \{ string_value: ")[^"]*(" \} \})' % re.escape(key))
        if pattern.search(text):
            text = pattern.sub(lambda m: f"{m.group(1)}{value}{m.group(2)}", text)
        else:
            text = text.replace("parameters [", f'parameters [\n  {{ key: "{key}", value: {{ string_value: "{value}" }} }},', 1)
    if queue_size is not None:
        text = re.sub(r"max_queue_size: \d+", f"max_queue_size: {queue_size}", text)
    repo = Path(tempfile.mkdtemp(prefix="qwen3vl-repo-"))
    (repo / MODEL_NAME / "1").mkdir(parents=True)
    (repo / MODEL_NAME / "1" / "model.py").symlink_to(source / "1" / "model.py")
    (repo / MODEL_NAME / "config.pbtxt").write_text(text)
    return repo


class TritonServer(ServerProcess):
    """A tritonserver process on chosen ports; ``start`` returns once the model is ready."""

    name = "tritonserver"

    def __init__(self, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 model_path: str | None = None, parameters: dict[str, str] | None = None,
                 queue_size: int | None = None, config_name: str | None = None,
                 exit_timeout: int = 30, log_file: str | None = None, log_verbose: int = 0,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None):
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        super().__init__(log_file)
        self.model_path = model_path or os.environ.get("MODEL_PATH") or str(TINY_CHECKPOINT)
        # A copy with overrides exists from start to stop only: tests start hundreds of servers.
        self._overrides = (parameters, queue_size, config_name)
        self.repository = MODEL_REPOSITORY
        self.config_name = config_name
        self.exit_timeout = exit_timeout
        self.log_verbose = log_verbose
        self.host = host
        self.env = dict(env or {})  # added to the environment, e.g. CUDA_VISIBLE_DEVICES: one GPU per replica

    # Where clients reach it: the address it listens on, or the loopback one when it listens on all.
    address = property(lambda self: "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host)
    grpc_url = property(lambda self: f"{self.address}:{self.grpc_port}")
    http_url = property(lambda self: f"http://{self.address}:{self.http_port}")
    metrics_url = property(lambda self: f"http://{self.address}:{self.metrics_port}/metrics")

    def command(self) -> list[str]:
        binary = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        command = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
            "--disable-auto-complete-config",
            "--metrics-config=summary_latencies=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.config_name:
            command.append(f"--model-config-name={self.config_name}")
        if not has_gpu():
            command += ["--allow-gpu-metrics=false"]
        return command

    def start(self, timeout: float = 180) -> "TritonServer":
        if self.model_path == str(TINY_CHECKPOINT) and not (TINY_CHECKPOINT / "config.json").exists():
            from backend_python.checkpoint import build

            build(TINY_CHECKPOINT)
        env = {**triton_environment(), "MODEL_PATH": self.model_path, **self.env}
        self.repository = model_repository(*self._overrides)
        # Triton starts its metrics service after the HTTP one (tens of ms later on a busy machine):
        # ready means both, so that a caller's first scrape finds it.
        self.launch(self.command(), [f"{self.http_url}/v2/models/{MODEL_NAME}/ready", self.metrics_url], timeout,
                    env=env)
        return self

    def ready(self) -> bool:
        return self.answers(f"{self.http_url}/v2/models/{MODEL_NAME}/ready")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: Triton refuses new requests and lets in-flight ones finish, up to its exit timeout."""
        super().stop(timeout)
        if self.repository != MODEL_REPOSITORY:
            shutil.rmtree(self.repository, ignore_errors=True)
            self.repository = MODEL_REPOSITORY


def loopback_replicas(count: int, ports: tuple[int, int, int] | None = None, **kwargs) -> list[TritonServer]:
    """``count`` servers on 127.0.0.1, 127.0.0.2, ... (not started): the same three ports on each address,
    as every pod of a Deployment has them, so one address list and one metrics port reach them all.
    Without ``ports``, three ports free on every one of those addresses."""
    hosts = [f"127.0.0.{i + 1}" for i in range(count)]
    while ports is None or len(set(ports)) < 3:
        ports = tuple(free_port_on_all(hosts) for _ in range(3))
    http, grpc, metrics = ports
    return [TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics, host=host, **kwargs) for host in hosts]


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Triton on model_repository/ in the foreground.")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--model-config-name", default=None, help="e.g. gpu (default: gpu when nvidia-smi sees one)")
    args = parser.parse_args()
    config_name = args.model_config_name or ("gpu" if has_gpu() else None)
    server = TritonServer(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          config_name=config_name, host=args.host)
    os.execve(server.command()[0], server.command(), {**triton_environment(), "MODEL_PATH": server.model_path})


if __name__ == "__main__":
    main()
