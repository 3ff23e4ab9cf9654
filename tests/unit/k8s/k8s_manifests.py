"""Rendering of the kustomize tree and schema validation, shared by the k8s tests.

Everything runs offline: `kubectl kustomize` renders, kubernetes-validate carries the
Kubernetes schemas, the cloudcoil models carry the KEDA and Prometheus Operator CRDs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "gpu", "gpu-shared")
# The Kubernetes minor version the manifests are validated against (kubectl here is 1.32).
KUBERNETES_VERSION = "1.32"
NAMESPACE = "qwen3-vl"

CRD_MODELS: dict[tuple[str, str], type] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prometheus_operator.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}

Manifest = dict[str, Any]


class CrdValidationError(ValueError):
    """A custom resource the CRD's schema rejects, or with fields the schema does not know."""


def kustomize(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize DIRECTORY` renders; a failed build fails loudly."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl (with built-in kustomize) is required by the k8s tests")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate_kubernetes(obj: Manifest) -> None:
    """Strict schema check (unknown fields rejected) against the pinned Kubernetes version."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def validate_crd(obj: Manifest) -> None:
    """Validate against the CRD model; a field the model drops on the round trip is unknown."""
    model = CRD_MODELS.get((obj.get("apiVersion"), obj.get("kind")))
    if model is None:
        raise CrdValidationError(f"no CRD model for {obj.get('apiVersion')} {obj.get('kind')}")
    try:
        parsed = model.model_validate(obj, strict=True)
    except Exception as exc:  # pydantic's ValidationError, reported with the object's name
        raise CrdValidationError(f"{obj['kind']}/{obj['metadata'].get('name')}: {exc}") from exc
    round_trip = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if round_trip != obj:
        raise CrdValidationError(
            f"{obj['kind']}/{obj['metadata'].get('name')} has fields its CRD does not define:\n"
            f"rendered:  {obj}\nCRD keeps: {round_trip}"
        )


def validate(obj: Manifest) -> None:
    """The validator that owns this object's kind."""
    if (obj.get("apiVersion"), obj.get("kind")) in CRD_MODELS:
        validate_crd(obj)
    else:
        validate_kubernetes(obj)


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind}/{name}, found {len(matches)}")
    return matches[0]


def copy_overlay(name: str, destination: Path, extra_components: tuple[str, ...] = ()) -> dict[str, Any]:
    """Copy overlay NAME to DESTINATION, as a user copies one to customise it.

    EXTRA_COMPONENTS are inserted before components/params, which must stay last.
    Returns the copied kustomization, to be changed and written back with write_kustomization.
    """
    source = K8S / "overlays" / name
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    components = [str(K8S / "components" / c) for c in extra_components]
    for field in ("resources", "components"):
        entries = [str((source / entry).resolve()) for entry in kustomization.get(field, [])]
        if field == "components":
            entries[-1:-1] = components
        # kustomize refuses absolute paths to other kustomizations.
        kustomization[field] = [os.path.relpath(entry, destination) for entry in entries]
    for patch in kustomization.get("patches", []):
        (destination / patch["path"]).write_text((source / patch["path"]).read_text())
    write_kustomization(destination, kustomization)
    return kustomization


def write_kustomization(directory: Path, kustomization: dict[str, Any]) -> None:
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
