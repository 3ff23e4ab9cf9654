"""Every rendered object validates strictly; known-broken manifests prove the validators bite."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_manifests import CRD_MODELS, OVERLAYS, CrdValidationError, validate, validate_crd, validate_kubernetes

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
BUILDS = [*OVERLAYS, "gpu+ingress"]


def load(name: str) -> dict:
    return yaml.safe_load((DATA / name).read_text())


@pytest.mark.parametrize("build", BUILDS)
def test_every_object_validates_against_its_schema(rendered, build: str) -> None:
    for obj in rendered[build]:
        validate(obj)


def test_custom_resources_are_checked_by_crd_models_not_skipped(rendered) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in rendered["gpu"]}
    assert set(CRD_MODELS) <= kinds, "every CRD kind the validator knows is used and checked"


def test_kubernetes_validator_rejects_unknown_fields_and_wrong_types() -> None:
    broken = load("broken-deployment.yaml")
    with pytest.raises(kubernetes_validate.ValidationError, match="'8000' is not of type 'integer'"):
        validate_kubernetes(broken)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError, match="'replica' was unexpected"):
        validate_kubernetes(broken)
    broken["spec"]["replicas"] = broken["spec"].pop("replica")
    validate_kubernetes(broken)


def test_crd_validator_rejects_a_field_keda_does_not_define() -> None:
    broken = load("broken-scaledobject.yaml")
    with pytest.raises(CrdValidationError, match="minReplicas"):
        validate_crd(broken)
    broken["spec"]["minReplicaCount"] = broken["spec"].pop("minReplicas")
    validate_crd(broken)


def test_crd_validator_rejects_a_non_string_trigger_threshold() -> None:
    with pytest.raises(CrdValidationError, match="threshold"):
        validate_crd(load("broken-scaledobject-threshold.yaml"))


def test_crd_validator_rejects_a_misspelt_prometheus_operator_field() -> None:
    broken = load("broken-servicemonitor.yaml")
    with pytest.raises(CrdValidationError, match="endpoint"):
        validate_crd(broken)
    broken["spec"]["endpoints"] = broken["spec"].pop("endpoint")
    validate_crd(broken)


def test_crd_validator_refuses_a_kind_it_has_no_model_for() -> None:
    with pytest.raises(CrdValidationError, match="no CRD model"):
        validate_crd({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
