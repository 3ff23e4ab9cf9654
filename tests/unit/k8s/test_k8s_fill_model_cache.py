"""The init container's fill script: fill an empty cache once, never refill a warm one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_manifests import K8S, REPO

pytestmark = pytest.mark.unit

SCRIPT = K8S / "base" / "fill-model-cache.sh"
# Stands in for `hf download`: writes a config file and counts how often it ran.
FAKE_DOWNLOAD = 'echo run >> "$RUNS" && echo "{}" > "$MODEL_PATH/config.json"'


def fill(model_path: Path, command: str | None, runs: Path,
         artifacts: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "MODEL_PATH": str(model_path), "RUNS": str(runs)}
    if command is not None:
        env["MODEL_FILL_COMMAND"] = command
    if artifacts is not None:
        env["COMPILE_ARTIFACTS_DIR"] = str(artifacts)
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_empty_cache_is_filled_then_reused(tmp_path: Path) -> None:
    model, runs = tmp_path / "models" / "m", tmp_path / "runs"
    first = fill(model, FAKE_DOWNLOAD, runs)
    assert first.returncode == 0, first.stderr
    assert (model / "config.json").is_file()
    assert not (model / ".fill-in-progress").exists()
    second = fill(model, FAKE_DOWNLOAD, runs)
    assert second.returncode == 0
    assert "model cache warm" in second.stdout
    assert runs.read_text().count("run") == 1


def test_interrupted_fill_is_redone(tmp_path: Path) -> None:
    model, runs = tmp_path / "models" / "m", tmp_path / "runs"
    failed = fill(model, 'echo partial > "$MODEL_PATH/part-1.safetensors"; exit 7', runs)
    assert failed.returncode == 7
    assert (model / ".fill-in-progress").exists()
    retried = fill(model, FAKE_DOWNLOAD, runs)
    assert retried.returncode == 0, retried.stderr
    assert not (model / "part-1.safetensors").exists(), "the half-written download is discarded"
    assert (model / "config.json").is_file()


def test_a_cache_filled_by_hand_is_kept(tmp_path: Path) -> None:
    model, runs = tmp_path / "models" / "m", tmp_path / "runs"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    result = fill(model, FAKE_DOWNLOAD, runs)
    assert result.returncode == 0
    assert not runs.exists()


# Stands in for a download of weights published with their compile artifacts.
DOWNLOAD_WITH_ARTIFACTS = (FAKE_DOWNLOAD + ' && mkdir -p "$MODEL_PATH/compile-artifacts"'
                           ' && echo h100 > "$MODEL_PATH/compile-artifacts/compile-nvidia-h100-1.zip"')


def test_compile_artifacts_published_with_the_model_reach_the_node(tmp_path: Path) -> None:
    model, artifacts = tmp_path / "models" / "m", tmp_path / "compile-cache" / "artifacts"
    result = fill(model, DOWNLOAD_WITH_ARTIFACTS, tmp_path / "runs", artifacts)
    assert result.returncode == 0, result.stderr
    assert (artifacts / "compile-nvidia-h100-1.zip").read_text() == "h100\n"
    assert sorted(p.name for p in artifacts.iterdir()) == ["compile-nvidia-h100-1.zip"]


def test_artifacts_reach_a_node_whose_model_cache_is_warm_and_its_own_are_kept(tmp_path: Path) -> None:
    model, artifacts, runs = tmp_path / "models" / "m", tmp_path / "compile-cache" / "artifacts", tmp_path / "runs"
    assert fill(model, DOWNLOAD_WITH_ARTIFACTS, runs).returncode == 0  # filled before artifacts were asked for
    artifacts.mkdir(parents=True)
    (artifacts / "compile-nvidia-h100-1.zip").write_text("written on this node")
    (model / "compile-artifacts" / "compile-nvidia-h200-2.zip").write_text("h200")
    result = fill(model, DOWNLOAD_WITH_ARTIFACTS, runs, artifacts)
    assert result.returncode == 0 and "model cache warm" in result.stdout
    assert (artifacts / "compile-nvidia-h100-1.zip").read_text() == "written on this node"
    assert (artifacts / "compile-nvidia-h200-2.zip").read_text() == "h200"


def test_without_an_artifacts_folder_nothing_is_copied(tmp_path: Path) -> None:
    result = fill(tmp_path / "models" / "m", DOWNLOAD_WITH_ARTIFACTS, tmp_path / "runs")
    assert result.returncode == 0 and "compile artifacts" not in result.stdout


def test_a_fill_command_that_writes_nothing_fails_the_pod(tmp_path: Path) -> None:
    result = fill(tmp_path / "models" / "m", "true", tmp_path / "runs")
    assert result.returncode == 1
    assert "wrote nothing" in result.stderr


def test_missing_configuration_is_a_clear_error(tmp_path: Path) -> None:
    result = fill(tmp_path / "models" / "m", None, tmp_path / "runs")
    assert result.returncode != 0
    assert "MODEL_FILL_COMMAND must say how to fill MODEL_PATH" in result.stderr


def test_dev_fill_command_builds_the_tiny_checkpoint(rendered, tmp_path: Path) -> None:
    """The dev overlay's own MODEL_FILL_COMMAND, run for real with this interpreter."""
    source = next(
        o["data"] for o in rendered["dev"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("model-source")
    )
    model = tmp_path / "models" / Path(source["MODEL_PATH"]).name
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "MODEL_PATH": str(model),
        "MODEL_FILL_COMMAND": source["MODEL_FILL_COMMAND"],
    }
    result = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (model / "config.json").is_file()
    assert list(model.glob("*.safetensors"))
