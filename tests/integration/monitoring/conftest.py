"""Debian's Prometheus and promtool for the monitoring tests, installed on first use."""

import os
import shutil
import subprocess

import pytest

APT_INSTALL = "apt-get update && apt-get install -y prometheus"


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    """Installs Debian's `prometheus` package (prometheus + promtool) when it is missing."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if os.geteuid() != 0:
        pytest.fail(f"prometheus/promtool missing and not root to install them: {APT_INSTALL}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    assert shutil.which("prometheus") and shutil.which("promtool")


@pytest.fixture(scope="session")
def promtool(prometheus_installed: None) -> str:
    return shutil.which("promtool")
