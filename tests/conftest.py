"""Suite-wide options. Markers are registered in pyproject.toml."""

import shutil

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker",
        choices=("run", "skip"),
        default="run",
        help="'skip' skips the Docker tests explicitly (reported as skipped); "
        "'run' (default) fails them when no Docker engine can be started.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--docker") != "skip":
        return
    skip = pytest.mark.skip(reason="--docker=skip given on the command line")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_available() -> bool:
    return shutil.which("docker") is not None
