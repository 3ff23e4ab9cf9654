"""Objects that name each other agree: what a live cluster would only reveal as a silent no-op."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml
from k8s_manifests import NAMESPACE, OVERLAYS, REPO, find

pytestmark = pytest.mark.unit

BUILDS = [*OVERLAYS, "gpu+ingress"]
WORKLOAD_KINDS = {"Deployment", "DaemonSet"}
RULES_DIR = REPO / "monitoring" / "prometheus" / "rules"
COUNTERS_CSV = REPO / "monitoring" / "dcgm" / "counters.csv"
# docs/contracts.md: which metric type KEDA uses for each namespace-level rule.
CONTRACT_METRIC_TYPES = {
    "qwen3vl:queue_time_per_request_seconds:avg1m:namespace": "Value",
    "qwen3vl:requests_waiting:namespace": "AverageValue",
    "qwen3vl:occupancy:namespace": "AverageValue",
    "qwen3vl:gpu_utilization_while_waiting:namespace": "AverageValue",
}
QUERY = re.compile(r'^(?P<rule>[a-zA-Z_:][a-zA-Z0-9_:]*)\{namespace="(?P<namespace>[^"]+)"\}$')
ENV_REFERENCE = re.compile(r"\$\((?P<name>[A-Z0-9_]+)\)")


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selected(objects: list[dict], match_labels: dict[str, str]) -> list[dict]:
    return [w for w in workloads(objects) if match_labels.items() <= pod_labels(w).items()]


def container_ports(workload: dict) -> dict[str | int, int]:
    """Every port of every container, by name and by number."""
    ports: dict[str | int, int] = {}
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def resolved_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def expand(argument: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command arguments."""
    return ENV_REFERENCE.sub(lambda m: env[m.group("name")], argument)


def recording_rules() -> dict[str, str]:
    rules: dict[str, str] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    rules[rule["record"]] = rule["expr"]
    return rules


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that can be metric or rule names."""
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))


def dcgm_fields_behind(rule: str, rules: dict[str, str]) -> set[str]:
    """The DCGM fields a recording rule reads, following rules that read other rules."""
    fields: set[str] = set()
    pending, seen = [rule], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for ident in metric_names(rules[name]):
            if ident.startswith("DCGM_FI_"):
                fields.add(ident)
            elif ident in rules:
                pending.append(ident)
    return fields


def enabled_counters(text: str) -> set[str]:
    rows = csv.reader(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {row[0].strip() for row in rows}


@pytest.mark.parametrize("build", BUILDS)
def test_workload_selectors_match_their_own_pod_labels(rendered, build: str) -> None:
    for workload in workloads(rendered[build]):
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels(workload).items()


@pytest.mark.parametrize("build", BUILDS)
def test_services_select_one_workload_and_target_its_container_ports(rendered, build: str) -> None:
    for service in (o for o in rendered[build] if o["kind"] == "Service"):
        targets = selected(rendered[build], service["spec"]["selector"])
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} workloads"
        ports = container_ports(targets[0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']} port {port['name']}"


@pytest.mark.parametrize("build", BUILDS)
def test_probes_hit_ports_their_container_declares(rendered, build: str) -> None:
    for workload in workloads(rendered[build]):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            names = {p.get("name") for p in container.get("ports", [])}
            numbers = {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    port = container[probe]["httpGet"]["port"]
                    assert port in names | numbers, f"{container['name']} {probe} port {port}"
            assert "readinessProbe" in container and "livenessProbe" in container, container["name"]


def test_triton_probes_use_the_kserve_health_endpoints(rendered) -> None:
    for build in OVERLAYS:
        pod = find(rendered[build], "Deployment", "triton")["spec"]["template"]["spec"]
        triton = next(c for c in pod["containers"] if c["name"] == "triton")
        assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        startup = triton["startupProbe"]
        # Model load from the cache volume can take minutes; liveness must not kill it first.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("build", BUILDS)
def test_volume_mounts_config_maps_and_secrets_exist(rendered, build: str) -> None:
    objects = rendered[build]
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "Secret"}
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod.get("initContainers", []) + pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']} mounts {mount['name']}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in config_maps[ref["name"]], f"{env['name']} -> {ref}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    for auth in (o for o in objects if o["kind"] == "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]], f"TriggerAuthentication -> {ref}"


@pytest.mark.parametrize("build", BUILDS)
def test_disruption_budgets_and_autoscalers_point_at_real_workloads(rendered, build: str) -> None:
    objects = rendered[build]
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert len(selected(objects, pdb["spec"]["selector"]["matchLabels"])) == 1, pdb["metadata"]["name"]
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = find(objects, ref["kind"], ref["name"])
        requests = target["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert "cpu" in requests, "CPU utilization is measured against the request"


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_scaled_object_targets_the_triton_deployment(rendered, build: str) -> None:
    objects = rendered[build]
    spec = find(objects, "ScaledObject", "triton")["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref.get("kind", "Deployment"), ref["name"]) == ("Deployment", "triton")
    assert "replicas" not in find(objects, "Deployment", "triton")["spec"], "KEDA's HPA owns the count"
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert all(h["spec"]["scaleTargetRef"]["name"] != "triton" for h in hpas), "two autoscalers would fight"
    auth = {o["metadata"]["name"] for o in objects if o["kind"] == "TriggerAuthentication"}
    for trigger in spec["triggers"]:
        assert trigger["authenticationRef"]["name"] in auth


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_scaled_object_queries_are_the_namespace_recording_rules(rendered, build: str) -> None:
    rules = recording_rules()
    scaled = find(rendered[build], "ScaledObject", "triton")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        match = QUERY.match(trigger["metadata"]["query"])
        assert match, f"trigger {trigger['name']}: query is not `rule{{namespace=...}}`"
        assert match["rule"] in rules, f"{match['rule']} is not recorded in monitoring/prometheus/rules"
        assert match["namespace"] == scaled["metadata"]["namespace"] == NAMESPACE
        assert trigger["metricType"] == CONTRACT_METRIC_TYPES[match["rule"]], trigger["name"]
        assert float(trigger["metadata"]["activationThreshold"]) < float(trigger["metadata"]["threshold"])
        # An empty result is an error (fallback, KedaScalerErrors), never a 0 that scales to the minimum.
        assert trigger["metadata"]["ignoreNullValues"] == "false", trigger["name"]


def alerts() -> list[dict]:
    return [rule for path in sorted(RULES_DIR.glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_absent_alerts_watch_exactly_the_rules_every_overlay_reads(rendered) -> None:
    """A rule read by some overlays only (GPU utilization: MIG slices report none) must not fire
    ScalerMetricMissing where it is absent by design; KedaScalerErrors covers it where it is read."""
    read = [
        {QUERY.match(t["metadata"]["query"])["rule"] for t in find(rendered[build], "ScaledObject", "triton")["spec"]["triggers"]}
        for build in ("gpu", "gpu-shared")
    ]
    watched = {re.fullmatch(r"absent\((.+)\)", a["expr"])[1] for a in alerts() if a["alert"] == "ScalerMetricMissing"}
    assert watched == set.intersection(*read)
    assert "KedaScalerErrors" in {a["alert"] for a in alerts()}


def test_gpu_trigger_reads_a_dcgm_field_the_exporter_collects(rendered) -> None:
    rules = recording_rules()
    objects = rendered["gpu"]
    query = next(
        t["metadata"]["query"] for t in find(objects, "ScaledObject", "triton")["spec"]["triggers"]
        if t["name"] == "gpu-utilization"
    )
    fields = dcgm_fields_behind(QUERY.match(query)["rule"], rules)
    assert fields == {"DCGM_FI_DEV_GPU_UTIL"}
    assert fields <= enabled_counters(COUNTERS_CSV.read_text())
    deployed = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("dcgm-exporter-counters")
    )
    assert fields <= enabled_counters(deployed["data"]["counters.csv"])


def test_dcgm_exporter_maps_gpus_to_pods(rendered) -> None:
    daemonset = find(rendered["gpu"], "DaemonSet", "dcgm-exporter")
    pod = daemonset["spec"]["template"]["spec"]
    exporter = pod["containers"][0]
    assert resolved_env(exporter)["DCGM_EXPORTER_KUBERNETES"] == "true"
    mounts = {m["mountPath"]: m["name"] for m in exporter["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/var/lib/kubelet/pod-resources"])
    assert volume["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    counters_path = exporter["args"][exporter["args"].index("-f") + 1]
    assert counters_path in mounts
    monitor = find(rendered["gpu"], "PodMonitor", "dcgm-exporter")
    assert all(e["honorLabels"] for e in monitor["spec"]["podMetricsEndpoints"]), (
        "without honorLabels the exporter's pod label becomes exported_pod and the GPU rule joins nothing"
    )


@pytest.mark.parametrize("build", OVERLAYS)
def test_grace_period_covers_prestop_and_triton_exit_timeout(rendered, build: str) -> None:
    pod = find(rendered[build], "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    env = resolved_env(triton)
    args = [expand(a, env) for a in triton["args"]]
    timeout = [int(a.split("=", 1)[1]) for a in args if a.startswith("--exit-timeout-secs=")]
    assert len(timeout) == 1
    pre_stop = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + timeout[0]


@pytest.mark.parametrize("build", OVERLAYS)
def test_triton_command_line_resolves_to_an_existing_model_config(rendered, build: str) -> None:
    pod = find(rendered[build], "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    args = [expand(a, resolved_env(triton)) for a in triton["args"]]
    flags = dict(a.split("=", 1) for a in args)
    assert flags["--model-repository"] == "/opt/platform/model_repository"
    name = flags["--model-config-name"]
    assert name == {"dev": "cpu", "gpu": "gpu", "gpu-shared": "gpu-shared"}[build]
    model_dir = REPO / "model_repository" / "qwen3_vl"
    # Measured with tritonserver 2.51: a name without configs/<name>.pbtxt falls back to config.pbtxt.
    chosen = model_dir / "configs" / f"{name}.pbtxt"
    if build != "dev":
        assert chosen.is_file(), f"{chosen} is what Triton loads on GPUs"
    assert chosen.is_file() or (model_dir / "config.pbtxt").is_file()
    assert {int(flags["--http-port"]), int(flags["--grpc-port"]), int(flags["--metrics-port"])} == set(
        container_ports(find(rendered[build], "Deployment", "triton")).values()
    )


@pytest.mark.parametrize("build", BUILDS)
def test_network_policies_admit_only_the_intended_peers(rendered, build: str) -> None:
    objects = rendered[build]
    triton = find(objects, "NetworkPolicy", "triton")
    triton_ports = container_ports(find(objects, "Deployment", "triton"))
    admitted: dict[int, list[dict]] = {}
    for rule in triton["spec"]["ingress"]:
        for port in rule["ports"]:
            admitted.setdefault(triton_ports[port["port"]], []).extend(rule["from"])
    frontend_only = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "frontend"}}}]
    assert admitted[8001] == frontend_only and admitted[8000] == frontend_only
    # The frontend routes on each pod's occupancy, read from its metrics port.
    assert [p["podSelector"]["matchLabels"] for p in admitted[8002]] == [
        {"app.kubernetes.io/name": "frontend"}, {"app.kubernetes.io/name": "prometheus"}]
    assert "namespaceSelector" in admitted[8002][1]
    default_deny = find(objects, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert default_deny["podSelector"] == {} and "ingress" not in default_deny
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"]):
        for workload in selected(objects, policy["spec"]["podSelector"]["matchLabels"]):
            ports = container_ports(workload)
            for rule in policy["spec"].get("ingress", []):
                for port in rule["ports"]:
                    assert port["port"] in ports, f"NetworkPolicy {policy['metadata']['name']} port {port['port']}"


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_monitors_scrape_ports_that_exist(rendered, build: str) -> None:
    objects = rendered[build]
    services = [o for o in objects if o["kind"] == "Service"]
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        matching = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(matching) == 1, monitor["metadata"]["name"]
        names = {p["name"] for p in matching[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        for workload in selected(objects, monitor["spec"]["selector"]["matchLabels"]):
            assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(container_ports(workload))


@pytest.mark.parametrize("build", OVERLAYS)
def test_scrape_annotations_name_a_declared_port(rendered, build: str) -> None:
    for workload in workloads(rendered[build]):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", workload["metadata"]["name"]
        assert int(annotations["prometheus.io/port"]) in container_ports(workload).values()


@pytest.mark.parametrize("build", OVERLAYS)
def test_frontend_resolves_every_ready_triton_pod_through_a_headless_service(rendered, build: str) -> None:
    from frontend.discovery import Targets

    objects = rendered[build]
    frontend = find(objects, "Deployment", "frontend")["spec"]["template"]["spec"]["containers"][0]
    env = resolved_env(frontend)
    targets = Targets.parse(env["FRONTEND_TRITON_GRPC_URL"])
    service = find(objects, "Service", targets.dns_name)["spec"]
    assert service["clusterIP"] == "None" and not service.get("publishNotReadyAddresses"), "ready pods only"
    assert [w["metadata"]["name"] for w in selected(objects, service["selector"])] == ["triton"]
    triton_ports = container_ports(find(objects, "Deployment", "triton"))
    grpc = next(p for p in service["ports"] if p["port"] == targets.port)
    assert grpc["name"] == "grpc" and triton_ports[grpc["targetPort"]] == targets.port, "pod IP:port is the gRPC port"
    assert triton_ports["metrics"] == int(env.get("FRONTEND_TRITON_METRICS_PORT", "8002"))


def test_frontend_environment_is_accepted_by_its_settings(rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables the manifest sets are the ones frontend/settings.py reads, with valid values."""
    from frontend.settings import Settings

    frontend = find(rendered["gpu"], "Deployment", "frontend")["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in resolved_env(frontend).items() if k.startswith("FRONTEND_")}
    fields = {f"FRONTEND_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"unknown frontend settings: {set(env) - fields}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.triton_grpc_url == "dns:///triton-headless:8001"
    assert settings.model_name == "qwen3_vl"


def test_fill_script_in_the_config_map_is_the_file_in_the_tree(rendered) -> None:
    script = next(
        o for o in rendered["gpu"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("model-cache-fill")
    )
    assert script["data"]["fill-model-cache.sh"] == (Path(REPO) / "k8s" / "base" / "fill-model-cache.sh").read_text()


def sanitized(label: str) -> str:
    """Prometheus' service discovery name for a Kubernetes label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


@pytest.mark.parametrize("job", ["triton", "frontend", "dcgm-exporter"])
def test_plain_prometheus_scrape_jobs_find_each_workload_on_its_metrics_port(rendered, job: str) -> None:
    """monitoring/prometheus/prometheus.yml keeps pods by label and port name: those must exist here."""
    config = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    keeps = [
        (r["source_labels"][0], r["regex"])
        for r in next(j for j in config["scrape_configs"] if j["job_name"] == job)["relabel_configs"]
        if r.get("action") == "keep"
    ]
    scraped = []
    for workload in workloads(rendered["gpu"]):
        labels = {f"__meta_kubernetes_pod_label_{sanitized(k)}": v for k, v in pod_labels(workload).items()}
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                meta = {**labels, "__meta_kubernetes_pod_container_port_name": port.get("name", "")}
                if all(re.fullmatch(regex, meta.get(source, "")) for source, regex in keeps):
                    scraped.append((workload["metadata"]["name"], port["containerPort"]))
    expected = {"triton": [("triton", 8002)], "frontend": [("frontend", 8080)], "dcgm-exporter": [("dcgm-exporter", 9400)]}
    assert scraped == expected[job]


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_scaled_object_passes_keda_admission_rules(rendered, build: str) -> None:
    """The checks KEDA 2.17's admission webhook applies, which no schema expresses."""
    spec = find(rendered[build], "ScaledObject", "triton")["spec"]
    assert 0 < spec["minReplicaCount"] <= spec["maxReplicaCount"]
    names = [t["name"] for t in spec["triggers"]]
    assert len(names) == len(set(names))
    fallback = spec["fallback"]
    assert fallback["failureThreshold"] > 0
    assert spec["minReplicaCount"] <= fallback["replicas"] <= spec["maxReplicaCount"]
    # KEDA 2.17 refuses a fallback unless some trigger other than cpu/memory is AverageValue.
    assert any(
        t.get("metricType", "AverageValue") == "AverageValue" and t["type"] not in {"cpu", "memory"}
        for t in spec["triggers"]
    )


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_scale_up_is_immediate_and_scale_down_is_stabilized(rendered, build: str) -> None:
    spec = find(rendered[build], "ScaledObject", "triton")["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    pods_per_period = [
        p["value"] / p["periodSeconds"] for p in behavior["scaleDown"]["policies"] if p["type"] == "Pods"
    ]
    assert pods_per_period and max(pods_per_period) <= 1 / 60, "at most one pod a minute goes"
    assert spec["pollingInterval"] <= 30


# The frontend's limits and the model parameters of the config Triton loads that they must equal.
FRONTEND_LIMITS = {"max_prompt_tokens": "max_prompt_tokens", "max_tokens_limit": "max_new_tokens",
                   "max_images_per_request": "max_images", "max_videos_per_request": "max_videos"}


@pytest.mark.parametrize("build", OVERLAYS)
@pytest.mark.parametrize("setting", FRONTEND_LIMITS)
def test_frontend_limits_are_those_of_the_config_triton_loads(rendered, build: str, setting: str) -> None:
    """A lower frontend limit would refuse requests the model serves; a higher one lets doomed ones through
    (and, for text, the frontend bounds the characters it accepts by the prompt limit)."""
    from frontend.settings import Settings

    objects = rendered[build]
    triton = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    frontend = find(objects, "Deployment", "frontend")["spec"]["template"]["spec"]["containers"][0]
    model_dir = REPO / "model_repository" / "qwen3_vl"
    config = model_dir / "configs" / f"{resolved_env(triton)['TRITON_MODEL_CONFIG']}.pbtxt"
    config = config if config.is_file() else model_dir / "config.pbtxt"  # Triton's fallback
    parameter = FRONTEND_LIMITS[setting]
    limit = re.search(r'\{ key: "%s", value: \{ string_value: "(\d+)" \} \}' % parameter, config.read_text())
    frontend_limit = resolved_env(frontend).get(f"FRONTEND_{setting.upper()}", Settings.model_fields[setting].default)
    assert int(frontend_limit) == int(limit[1]), f"{config.name}: {parameter}"


def test_frontend_command_starts_the_app_factory_on_its_container_port(rendered) -> None:
    import importlib

    frontend = find(rendered["gpu"], "Deployment", "frontend")["spec"]["template"]["spec"]["containers"][0]
    command = frontend["command"]
    assert command[0] == "uvicorn" and "--factory" in command
    module, attribute = next(a for a in command[1:] if ":" in a and not a.startswith("-")).split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    port = int(command[command.index("--port") + 1])
    assert port == container_ports(find(rendered["gpu"], "Deployment", "frontend"))["http"]
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_keda_operator_is_scraped_with_its_own_namespace_label(rendered) -> None:
    """KedaScalerErrors and the KEDA panel select namespace="qwen3-vl": KEDA's label, not its pod's."""
    monitor = find(rendered["gpu"], "PodMonitor", "keda-operator")["spec"]
    assert monitor["selector"]["matchLabels"] == {"app.kubernetes.io/name": "keda-operator"}
    assert [(e["port"], e["honorLabels"]) for e in monitor["podMetricsEndpoints"]] == [("metrics", True)]
    config = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "keda-operator")
    assert job["honor_labels"] is True
