"""Each overlay renders with `kubectl kustomize` and gives what its name promises."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
import yaml

from k8s_manifests import K8S, NAMESPACE, OVERLAYS, REPO, find, kustomize, write_kustomization

pytestmark = pytest.mark.unit

# Qwen3-VL-4B's KV cache in bf16: 36 layers x 8 KV heads x head_dim 128 x (K, V) x 2 bytes.
KV_BYTES_PER_TOKEN = 36 * 8 * 128 * 2 * 2

CLUSTER_SCOPED = {"Namespace"}


def triton_container(objects: list[dict]) -> dict:
    pod = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "triton")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def model_parameters(config_name: str) -> dict[str, str]:
    """The `parameters` block of model_repository/qwen3_vl/configs/<config_name>.pbtxt."""
    text = (REPO / "model_repository" / "qwen3_vl" / "configs" / f"{config_name}.pbtxt").read_text()
    return dict(re.findall(r'\{ key: "([^"]+)", value: \{ string_value: "([^"]*)" \} \}', text))


def config_map_data(objects: list[dict], prefix: str) -> dict[str, str]:
    matches = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix)]
    assert len(matches) == 1, f"expected one ConfigMap named {prefix}*"
    return matches[0]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_kubectl_kustomize(overlay: str) -> None:
    objects = kustomize(K8S / "overlays" / overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("build", [*OVERLAYS, "gpu+ingress"])
def test_every_object_lands_in_the_namespace_with_the_platform_label(rendered, build: str) -> None:
    for obj in rendered[build]:
        meta = obj["metadata"]
        if obj["kind"] not in CLUSTER_SCOPED:
            assert meta.get("namespace") == NAMESPACE, f"{obj['kind']}/{meta['name']}"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "qwen3-vl-platform", f"{obj['kind']}/{meta['name']}"


@pytest.mark.parametrize("build", [*OVERLAYS, "gpu+ingress"])
def test_parameters_are_substituted_and_never_applied(rendered, build: str) -> None:
    text = yaml.safe_dump_all(rendered[build])
    assert "PROMETHEUS_SERVER_ADDRESS" not in text
    assert "PROMETHEUS_NAMESPACE" not in text
    assert not [o for o in rendered[build] if o["metadata"]["name"] == "platform-params"]


def test_dev_is_one_cpu_replica_with_the_tiny_checkpoint_and_no_cluster_addons(rendered) -> None:
    objects = rendered["dev"]
    triton = find(objects, "Deployment", "triton")
    assert triton["spec"].get("replicas", 1) == 1
    container = triton_container(objects)
    assert env_of(container)["TRITON_MODEL_CONFIG"] == "cpu"
    assert not [k for k in container["resources"].get("limits", {}) if k.startswith("nvidia.com/")]
    assert config_map_data(objects, "model-source")["MODEL_PATH"] == "/models/tiny"
    assert "backend_python.checkpoint" in config_map_data(objects, "model-source")["MODEL_FILL_COMMAND"]
    # Nothing that needs CRDs or GPUs: plain kind/minikube can apply it.
    assert {o["apiVersion"].split("/")[0] for o in objects}.isdisjoint({"keda.sh", "monitoring.coreos.com"})
    assert not [o for o in objects if o["kind"] == "DaemonSet"]


def test_gpu_gives_each_pod_one_gpu_the_real_model_and_two_warm_replicas(rendered) -> None:
    objects = rendered["gpu"]
    container = triton_container(objects)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["TRITON_MODEL_CONFIG"] == "gpu"
    assert env_of(container)["TRITON_ALLOW_GPU_METRICS"] == "true"
    source = config_map_data(objects, "model-source")
    assert source["MODEL_PATH"] == "/models/Qwen3-VL-4B-Instruct"
    assert "Qwen/Qwen3-VL-4B-Instruct" in source["MODEL_FILL_COMMAND"]
    scaled = find(objects, "ScaledObject", "triton")["spec"]
    assert scaled["minReplicaCount"] >= 2
    assert scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    assert [t["name"] for t in scaled["triggers"]] == ["queue-time", "waiting-requests", "occupancy", "gpu-utilization"]


def test_gpu_cache_is_node_local_and_preferred_where_warm(rendered) -> None:
    pod = find(rendered["gpu"], "Deployment", "triton")["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert set(cache) == {"name", "hostPath"}, "the emptyDir of the base must be gone"
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for term in preferred for e in term["preference"]["matchExpressions"]}
    assert "qwen3-vl.io/model-cache" in keys
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["nodeAffinity"]
    init_names = [c["name"] for c in pod["initContainers"]]
    assert init_names == ["prepare-model-cache", "fill-model-cache"], "chown must run before the fill"


@pytest.mark.parametrize("overlay", ["gpu", "gpu-shared"])
def test_gpu_keeps_compiled_kernels_on_the_node_in_a_directory_triton_can_write(rendered, overlay: str) -> None:
    pod = find(rendered[overlay], "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    cache_dir = env_of(triton)["TORCHINDUCTOR_CACHE_DIR"]
    mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == cache_dir)
    assert env_of(triton)["TRITON_CACHE_DIR"].startswith(cache_dir + "/"), "attention kernels on the node too"
    assert not mount.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    prepare = next(c for c in pod["initContainers"] if c["name"] == "prepare-model-cache")
    assert any(m["name"] == mount["name"] for m in prepare["volumeMounts"]), "uid 1000 must own it"


def test_gpu_shared_takes_a_mig_slice_and_drops_the_gpu_utilization_trigger(rendered) -> None:
    objects = rendered["gpu-shared"]
    resources = triton_container(objects)["resources"]
    assert resources["requests"]["nvidia.com/mig-2g.20gb"] == 1
    assert resources["limits"]["nvidia.com/mig-2g.20gb"] == 1
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "nvidia.com/gpu" not in resources["limits"]
    triggers = find(objects, "ScaledObject", "triton")["spec"]["triggers"]
    assert [t["name"] for t in triggers] == ["queue-time", "waiting-requests", "occupancy"]


def test_gpu_shared_loads_a_model_config_whose_kv_budget_fits_the_slice(rendered) -> None:
    """configs/gpu-shared.pbtxt sizes the KV cache in GiB: weights, cache and activations fit 2g.20gb.

    The GPU config's 128 sequences of 2,048 tokens (about 50 GiB in use) ran out of memory at load there.
    """
    name = env_of(triton_container(rendered["gpu-shared"]))["TRITON_MODEL_CONFIG"]
    parameters = model_parameters(name)
    slice_gib, weights_gib, activations_gib = 19.5, 8.3, 2.5  # 2g.20gb; bf16 Qwen3-VL-4B; a step + vision + context
    kv_gib = float(parameters["kv_cache_budget_gib"])
    assert 0 < kv_gib and weights_gib + kv_gib + activations_gib <= slice_gib
    kv_tokens = kv_gib * 2**30 / KV_BYTES_PER_TOKEN
    # Every sequence the engine may run holds an image prompt and a 512-token answer (~730 tokens) at once.
    assert int(parameters["max_num_seqs"]) * 730 <= kv_tokens
    assert int(parameters["max_model_len"]) <= kv_tokens
    assert int(parameters["max_prompt_tokens"]) < int(parameters["max_model_len"])


def test_ingress_component_routes_to_the_frontend_service(rendered) -> None:
    objects = rendered["gpu+ingress"]
    ingress = find(objects, "Ingress", "frontend")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(objects, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_a_cluster_overlay_on_top_of_gpu_overrides_every_parameter(tmp_path: Path) -> None:
    """The README's own-overlay recipe: each parameter changes everywhere it is used."""
    (tmp_path / "prometheus-credentials.env").write_text("bearerToken=cluster-token\n")
    write_kustomization(
        tmp_path,
        {
            "resources": [os.path.relpath(K8S / "overlays" / "gpu", tmp_path)],
            "components": [os.path.relpath(K8S / "components" / "params", tmp_path)],
            "configMapGenerator": [
                {
                    "name": "platform-params",
                    "behavior": "merge",
                    "literals": [
                        "PROMETHEUS_SERVER_ADDRESS=https://thanos.example:9091",
                        "PROMETHEUS_NAMESPACE=observability",
                    ],
                },
                {
                    "name": "model-source",
                    "behavior": "merge",
                    "literals": ['MODEL_FILL_COMMAND=cp -a /mnt/mirror/. "$MODEL_PATH"'],
                },
            ],
            "secretGenerator": [
                {"name": "prometheus-credentials", "behavior": "replace", "envs": ["prometheus-credentials.env"]}
            ],
        },
    )
    objects = kustomize(tmp_path)
    addresses = {t["metadata"]["serverAddress"] for t in find(objects, "ScaledObject", "triton")["spec"]["triggers"]}
    assert addresses == {"https://thanos.example:9091"}
    for name in ("triton", "dcgm-exporter"):
        policy = find(objects, "NetworkPolicy", name)
        selectors = [
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in policy["spec"]["ingress"]
            for peer in rule.get("from", [])
            if "namespaceSelector" in peer
        ]
        assert selectors == ["observability"], name
    source = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("model-source")]
    assert len(source) == 1
    assert source[0]["data"]["MODEL_FILL_COMMAND"] == 'cp -a /mnt/mirror/. "$MODEL_PATH"'
    assert source[0]["data"]["MODEL_PATH"] == "/models/Qwen3-VL-4B-Instruct"
    pod = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    fill = next(c for c in pod["initContainers"] if c["name"] == "fill-model-cache")
    refs = {e["valueFrom"]["configMapKeyRef"]["name"] for e in fill["env"] if "valueFrom" in e}
    assert refs == {source[0]["metadata"]["name"]}, "the pods follow the renamed (re-hashed) ConfigMap"
    secret_name = find(objects, "TriggerAuthentication", "prometheus")["spec"]["secretTargetRef"][0]["name"]
    secret = find(objects, "Secret", secret_name)
    assert base64.b64decode(secret["data"]["bearerToken"]) == b"cluster-token"


def test_default_prometheus_address_comes_from_params_env(rendered) -> None:
    params = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "params.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for build in ("gpu", "gpu-shared"):
        triggers = find(rendered[build], "ScaledObject", "triton")["spec"]["triggers"]
        assert {t["metadata"]["serverAddress"] for t in triggers} == {params["PROMETHEUS_SERVER_ADDRESS"]}


@pytest.mark.parametrize("build", OVERLAYS)
def test_platform_pods_run_the_release_images_unprivileged_on_a_read_only_root(rendered, build: str) -> None:
    images = {"triton": "qwen3-vl-platform/triton:0.1.0", "frontend": "qwen3-vl-platform/frontend:0.1.0"}
    for name, image in images.items():
        pod = find(rendered[build], "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["image"] == image
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    triton_pod = find(rendered[build], "Deployment", "triton")["spec"]["template"]["spec"]
    shm = next(v for v in triton_pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    root_steps = [
        c["name"] for c in triton_pod.get("initContainers", []) if c["securityContext"].get("runAsUser") == 0
    ]
    assert root_steps == ([] if build == "dev" else ["prepare-model-cache"])
