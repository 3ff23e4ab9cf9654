"""The rendered overlays, built once per test session."""

from __future__ import annotations

import pytest
from k8s_manifests import K8S, OVERLAYS, Manifest, copy_overlay, kustomize


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    """Every overlay, plus one that adds every optional component (the Ingress)."""
    builds = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    everything = tmp_path_factory.mktemp("gpu-ingress")
    copy_overlay("gpu", everything, extra_components=("ingress",))
    builds["gpu+ingress"] = kustomize(everything)
    return builds
