"""Build the platform's container images on a machine without a registry.

No image can be pulled here, so the images build on a local Debian base
(docker/base-image.sh) and install from a wheelhouse made on the host: neither
a package index nor CA setup is needed inside a build. Each build gets a context
of exactly the files its Dockerfile copies (a tar on stdin), so the frontend
never ships the multi-GiB Triton wheelhouse to the engine, and an image whose
inputs did not change since the last build is not built again.

    python -m stack.docker images                 # triton + frontend on the local base
    python -m stack.docker images --base ngc      # on the NGC / python:3.11-slim bases
    python -m stack.docker images --prometheus    # also the Prometheus image of the tests
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
WHEELHOUSE = ROOT / "var" / "wheelhouse"
DEBS = ROOT / "var" / "docker" / "debs"
LOG_DIR = ROOT / "var" / "log"

LOCAL_BASE = "qwen3-vl-platform/base:bookworm"
NGC_BASE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the server tested here
NGC_PYTHON = "3.10"  # the python3 of NGC 24.10 (Ubuntu 22.04)
SLIM_BASE = "python:3.11-slim"
INPUTS_LABEL = "io.qwen3-vl-platform.inputs"
BUILD_STAGE_LABEL = "io.qwen3-vl-platform.build-stage"
# Debian packages the Prometheus image needs beyond the base (prometheus' dependencies).
PROMETHEUS_DEBS = (
    "prometheus", "fonts-glyphicons-halflings", "javascript-common", "libjs-bootstrap", "libjs-bootstrap4",
    "libjs-d3", "libjs-eonasdan-bootstrap-datetimepicker", "libjs-jquery", "libjs-jquery-hotkeys",
    "libjs-moment", "libjs-moment-timezone", "libjs-mustache", "libjs-popper.js", "libjs-rickshaw",
)


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def version() -> str:
    return project()["version"]


def image_name(component: str) -> str:
    """The names k8s/base/deployment-*.yaml use."""
    return f"qwen3-vl-platform/{component}:{version()}"


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def engine_answers() -> bool:
    try:
        return _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine(timeout: float = 90) -> None:
    """A Docker engine that answers: the running one, or dockerd started here (root only)."""
    if engine_answers():
        return
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise RuntimeError("no Docker engine: install Debian's docker.io (make system-deps), "
                           "or skip these tests explicitly with --docker=skip")
    if os.geteuid() != 0:
        raise RuntimeError("the Docker engine does not answer and only root can start dockerd here; "
                           "start it (sudo dockerd &) or skip these tests explicitly with --docker=skip")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / "dockerd.log", "ab")
    process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine_answers():
            return
        if process.poll() is not None:
            break
        time.sleep(1)
    raise RuntimeError(f"dockerd did not come up within {timeout:.0f} s; see {LOG_DIR / 'dockerd.log'}")


def image_exists(image: str) -> bool:
    return _run(["docker", "image", "inspect", image]).returncode == 0


def ensure_base_image() -> None:
    if image_exists(LOCAL_BASE):
        return
    result = subprocess.run(["sh", str(DOCKER_DIR / "base-image.sh")], env={**os.environ, "BASE_IMAGE_TAG": LOCAL_BASE})
    if result.returncode != 0:
        raise RuntimeError(f"docker/base-image.sh failed with {result.returncode} (needs root and debootstrap)")


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def _fill_wheelhouse(folder: Path, requirements: list[str], server_requirements: list[str] = (),
                     python_version: str | None = None) -> None:
    """Wheels for ``requirements`` (with dependencies) and ``server_requirements`` (without).

    ``python_version``: wheels for another Python than this one (an image's), manylinux x86_64.
    """
    target = ["--python-version", python_version, "--platform", "manylinux_2_35_x86_64"] if python_version else []
    stamp_text = "\n".join(["requirements:", *requirements, "server:", *server_requirements, *target]) + "\n"
    stamp = folder / ".complete"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (folder / "server-requirements.txt").write_text("\n".join(server_requirements) + "\n")
    download = [*_pip(), "download", "-q", "--only-binary=:all:", *target, "-d", str(folder)]
    subprocess.run([*download, *requirements], check=True)
    if server_requirements:
        subprocess.run([*download, "--no-deps", *server_requirements], check=True)
    stamp.write_text(stamp_text)


def _setuptools_pin() -> str:
    """The project installs with --no-build-isolation, so the wheelhouse carries setuptools."""
    from importlib.metadata import version as installed

    return f"setuptools=={installed('setuptools')}"


def triton_wheelhouse(python_version: str | None = None) -> str:
    """The wheelhouse folder (relative to the repository) for this Python or ``python_version``."""
    relative = "var/wheelhouse/triton" + (f"-py{python_version}" if python_version else "")
    server = [line.strip() for line in (ROOT / "requirements-triton.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    # The NGC image brings its own server: the wheel's server is only for TRITON_SERVER=pytriton.
    _fill_wheelhouse(ROOT / relative, [*project()["dependencies"], _setuptools_pin()],
                     [] if python_version else server, python_version)
    return relative


def frontend_wheelhouse() -> Path:
    folder = WHEELHOUSE / "frontend"
    _fill_wheelhouse(folder, [*project()["optional-dependencies"]["frontend"], _setuptools_pin()])
    return folder


def prometheus_debs() -> Path:
    stamp = DEBS / ".complete"
    if stamp.exists() and stamp.read_text() == "\n".join(PROMETHEUS_DEBS):
        return DEBS
    DEBS.mkdir(parents=True, exist_ok=True)
    download = ["apt-get", "download", *PROMETHEUS_DEBS]
    if subprocess.run(download, cwd=DEBS, capture_output=True).returncode != 0:
        # Package lists missing or stale (a fresh machine): refresh them once, as root.
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(download, cwd=DEBS, check=True, capture_output=True)
    stamp.write_text("\n".join(PROMETHEUS_DEBS))
    return DEBS


@dataclass
class Build:
    """One image: its Dockerfile, the paths (relative to the repository) it copies, build args."""

    tag: str
    dockerfile: str
    paths: list[str]
    build_args: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[Path]:
        found = []
        for path in [self.dockerfile, *self.paths]:
            top = ROOT / path
            if not top.exists():
                raise FileNotFoundError(f"{path} is missing: it belongs in the build context of {self.tag}")
            candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
            found += [p for p in candidates if "__pycache__" not in p.parts and p.suffix != ".pyc"]
        return found

    def inputs_digest(self) -> str:
        """Content of source files; name and size of wheels and debs (their names pin versions)."""
        digest = hashlib.sha256()
        for key, value in sorted(self.build_args.items()):
            digest.update(f"arg {key}={value}\n".encode())
        for path in self.files():
            relative = path.relative_to(ROOT).as_posix()
            if path.suffix in (".whl", ".deb"):
                digest.update(f"{relative} {path.stat().st_size}\n".encode())
            else:
                digest.update(f"{relative} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        return digest.hexdigest()[:32]

    def current(self) -> bool:
        result = _run(["docker", "image", "inspect", "-f", "{{index .Config.Labels \"%s\"}}" % INPUTS_LABEL, self.tag])
        return result.returncode == 0 and result.stdout.strip() == self.inputs_digest()

    def run(self, force: bool = False) -> float:
        """Builds unless an image with the same inputs exists; returns the seconds spent."""
        if not force and self.current():
            print(f"{self.tag}: up to date")
            return 0.0
        started = time.monotonic()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"docker-build-{self.tag.split('/')[-1].replace(':', '-')}.log"
        args = [f"--build-arg={k}={v}" for k, v in sorted(self.build_args.items())]
        command = ["docker", "build", "-f", self.dockerfile, "-t", self.tag,
                   f"--label={INPUTS_LABEL}={self.inputs_digest()}", *args, "-"]
        relative = [p.relative_to(ROOT).as_posix() for p in self.files()]
        previous = _run(["docker", "image", "inspect", "-f", "{{.Id}}", self.tag]).stdout.strip()
        print(f"{self.tag}: building ({' '.join(command)}), log {log_path}")
        with open(log_path, "wb") as log:
            tar = subprocess.Popen(["tar", "-c", "-C", str(ROOT), "--no-recursion", "-T", "-"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            build = subprocess.Popen(command, stdin=tar.stdout, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            tar.stdout.close()
            tar.stdin.write("\n".join(relative).encode() + b"\n")
            tar.stdin.close()
            tar.wait()
            build.wait()
        if tar.returncode != 0 or build.returncode != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"docker build of {self.tag} failed (log {log_path}):\n{tail}")
        seconds = time.monotonic() - started
        print(f"{self.tag}: built in {seconds:.0f} s")
        if previous and previous != _run(["docker", "image", "inspect", "-f", "{{.Id}}", self.tag]).stdout.strip():
            # The image this build replaced (GiBs for Triton); kept when a container still uses it.
            _run(["docker", "image", "rm", previous])
        self._drop_stale_build_stages()
        return seconds


    def _drop_stale_build_stages(self) -> None:
        """Untagged dependency stages of this image but the newest (the one just used) go."""
        component = self.tag.split("/")[-1].split(":")[0]
        listed = _run(["docker", "images", "-f", "dangling=true", "-f", f"{BUILD_STAGE_LABEL}={component}",
                       "--format", "{{.CreatedAt}}\t{{.ID}}"]).stdout.splitlines()
        for line in sorted(listed, reverse=True)[1:]:
            _run(["docker", "image", "rm", line.split("\t")[1]])


def triton_build(base: str = "local", base_image: str | None = None) -> Build:
    wheelhouse = triton_wheelhouse(None if base == "local" else NGC_PYTHON)
    return Build(
        tag=image_name("triton"),
        dockerfile="docker/triton.Dockerfile",
        paths=["pyproject.toml", "wire_contract", "backend_python", "model_repository", wheelhouse],
        build_args={"BASE_IMAGE": base_image or (LOCAL_BASE if base == "local" else NGC_BASE),
                    "TRITON_SERVER": "pytriton" if base == "local" else "ngc",
                    "WHEELHOUSE": wheelhouse,
                    "VERSION": version()},
    )


def frontend_build(base: str = "local", base_image: str | None = None) -> Build:
    frontend_wheelhouse()
    return Build(
        tag=image_name("frontend"),
        dockerfile="docker/frontend.Dockerfile",
        paths=["pyproject.toml", "wire_contract", "frontend", "var/wheelhouse/frontend"],
        build_args={"BASE_IMAGE": base_image or (LOCAL_BASE if base == "local" else SLIM_BASE),
                    "VERSION": version()},
    )


def prometheus_build() -> Build:
    prometheus_debs()
    return Build(
        tag=image_name("prometheus"),
        dockerfile="docker/prometheus.Dockerfile",
        paths=["monitoring/prometheus/rules", "var/docker/debs"],
        build_args={"BASE_IMAGE": LOCAL_BASE, "VERSION": version()},
    )


def build_images(base: str = "local", prometheus: bool = False, force: bool = False,
                 triton_base: str | None = None, frontend_base: str | None = None) -> dict[str, float]:
    """Everything the images need, from the engine up; returns seconds spent per image."""
    ensure_engine()
    if base == "local":
        ensure_base_image()
    builds = [frontend_build(base, frontend_base), triton_build(base, triton_base)]
    if prometheus:
        builds.append(prometheus_build())
    return {build.tag: build.run(force) for build in builds}


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the platform's container images.")
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="build the Triton and frontend images")
    images.add_argument("--base", choices=("local", "ngc"), default="local",
                        help="local: Debian bookworm made here + Triton from the nvidia-pytriton wheel; "
                             "ngc: nvcr.io tritonserver 24.10 and python:3.11-slim (needs a registry)")
    images.add_argument("--triton-base", help="BASE_IMAGE of the Triton image (overrides --base)")
    images.add_argument("--frontend-base", help="BASE_IMAGE of the frontend image (overrides --base)")
    images.add_argument("--prometheus", action="store_true", help="also the Prometheus image the tests use")
    images.add_argument("--force", action="store_true", help="build even when the inputs did not change")
    sub.add_parser("engine", help="start dockerd when no engine answers (root)")
    args = parser.parse_args()
    try:
        if args.command == "engine":
            ensure_engine()
        else:
            build_images(args.base, args.prometheus, args.force, args.triton_base, args.frontend_base)
    except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
