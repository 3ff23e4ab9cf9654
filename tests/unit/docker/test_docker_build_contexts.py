"""The build contexts stack.docker sends match what the Dockerfiles copy, and the images match k8s/."""

import re
from pathlib import Path

import pytest
import yaml

from stack import docker as platform_docker

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def _copy_sources(dockerfile: str, build_args: dict[str, str] | None = None) -> list[str]:
    """Sources of COPY instructions that read the build context (not --from=stage), ARGs expanded."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    values = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M)) | (build_args or {})
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], w)
                        for w in words[1:-1] if not w.startswith("--")]
    return sources


@pytest.fixture
def builds(monkeypatch) -> list[platform_docker.Build]:
    """The three builds, without filling wheelhouses (that needs the registry)."""
    monkeypatch.setattr(platform_docker, "_fill_wheelhouse", lambda *args, **kwargs: None)
    monkeypatch.setattr(platform_docker, "prometheus_debs", lambda: None)
    return [platform_docker.triton_build(), platform_docker.frontend_build(), platform_docker.prometheus_build()]


def test_every_copied_path_is_in_the_build_context(builds):
    for build in builds:
        sources = _copy_sources(build.dockerfile, build.build_args)
        assert sources, build.dockerfile
        for source in sources:
            assert source.rstrip("/") in build.paths, f"{build.dockerfile} copies {source}, not sent by stack.docker"


def test_dockerignore_lets_every_copied_path_through():
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for dockerfile in ("docker/triton.Dockerfile", "docker/frontend.Dockerfile", "docker/prometheus.Dockerfile"):
        for source in _copy_sources(dockerfile):
            source = source.rstrip("/")
            assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is ignored"


def test_the_context_leaves_out_bytecode_and_the_digest_follows_the_sources(builds, tmp_path, monkeypatch):
    triton = builds[0]
    sources = platform_docker.Build(triton.tag, triton.dockerfile, [p for p in triton.paths if not p.startswith("var/")])
    files = [p.relative_to(ROOT).as_posix() for p in sources.files()]
    assert "backend_python/engine.py" in files and "model_repository/qwen3_vl/1/model.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]

    tree = tmp_path / "repo"
    (tree / "src").mkdir(parents=True)
    (tree / "Dockerfile").write_text("FROM scratch\n")
    (tree / "src" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(platform_docker, "ROOT", tree)
    build = platform_docker.Build(tag="t:1", dockerfile="Dockerfile", paths=["src"], build_args={"A": "1"})
    first = build.inputs_digest()
    assert build.inputs_digest() == first
    (tree / "src" / "a.py").write_text("x = 2\n")
    assert build.inputs_digest() != first, "a changed source must rebuild the image"
    changed_source = build.inputs_digest()
    build.build_args["A"] = "2"
    assert build.inputs_digest() != changed_source, "a changed build argument must rebuild the image"
    with pytest.raises(FileNotFoundError, match="missing"):
        platform_docker.Build(tag="t:1", dockerfile="Dockerfile", paths=["nowhere"]).files()


def test_image_names_users_and_ports_match_the_k8s_manifests():
    for component, port in (("triton", 8000), ("frontend", 8080)):
        manifest = yaml.safe_load((ROOT / "k8s" / "base" / f"deployment-{component}.yaml").read_text())
        pod = manifest["spec"]["template"]["spec"]
        images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
        assert images == {platform_docker.image_name(component)}
        dockerfile = (ROOT / "docker" / f"{component}.Dockerfile").read_text()
        assert re.search(r"^USER 1000:1000$", dockerfile, re.M)
        assert pod["securityContext"]["runAsUser"] == 1000
        assert re.search(rf"^EXPOSE .*\b{port}\b", dockerfile, re.M)
        probe = pod["containers"][0]["readinessProbe"]["httpGet"]["path"] if component == "triton" else "/healthz"
        assert f"127.0.0.1:{port}{probe}" in dockerfile, "the HEALTHCHECK asks what the probe asks"


def test_no_engine_is_a_clear_error_not_a_skip(monkeypatch):
    monkeypatch.setattr(platform_docker, "engine_answers", lambda: False)
    monkeypatch.setattr(platform_docker.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="docker.io.*--docker=skip"):
        platform_docker.ensure_engine()
    monkeypatch.setattr(platform_docker.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(platform_docker.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="only root can start dockerd"):
        platform_docker.ensure_engine()
