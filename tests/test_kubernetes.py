"""deploy/kubernetes and deploy/systemd: valid, consistent with each other and with the worker.

The manifests are validated offline against Kubernetes' own schemas (kubernetes-validate);
KEDA's CRDs have no built-in schema, so their fields are checked by hand. The systemd units
go through `systemd-analyze verify` where systemd is installed.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tagging_worker.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"

# The oldest Kubernetes the guide promises, and the newest schema the package carries.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
KEDA_API = "keda.sh/v1alpha1"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
NAME_LABEL = "app.kubernetes.io/name"
METRICS_PORT = 9808
NOT_APPLIED = {"secret.example.yaml"}
SECRET_WORDS = ("ACCESS_KEY", "SECRET", "PASSWORD", "TOKEN", "DSN", "BROKER_URL")

MANIFEST_FILES = sorted(
    path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml"
)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@cache
def _objects() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes by kind (each kind appears once)."""
    found: dict[str, dict[str, Any]] = {}
    for name in MANIFEST_FILES:
        for doc in _documents(K8S / name):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def _deployment() -> dict[str, Any]:
    return _objects()["Deployment"]


def _pod_spec() -> dict[str, Any]:
    return _deployment()["spec"]["template"]["spec"]


def _container() -> dict[str, Any]:
    (container,) = _pod_spec()["containers"]
    return container


def _config() -> dict[str, str]:
    return _objects()["ConfigMap"]["data"]


def _secret() -> dict[str, str]:
    return _objects()["Secret"]["stringData"]


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / "tagging-worker.env.example").read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return dict(pairs)


def _named_in_env_example_header() -> set[str]:
    """Settings the env example names in its comments (credentials, Sentry) without a default."""
    text = (DEPLOY / "tagging-worker.env.example").read_text(encoding="utf-8")
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    return set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", comments))


def _setting(name: str) -> str:
    """What the pods run with: the ConfigMap's value, else the default."""
    return _config().get(name, _env_example()[name])


# --- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", MANIFEST_FILES)
def test_every_manifest_is_valid_for_kubernetes_or_a_known_keda_kind(filename: str) -> None:
    documents = _documents(K8S / filename)
    assert documents, f"{filename} holds no object"
    for doc in documents:
        if doc.get("apiVersion") == KEDA_API:
            assert doc["kind"] in KEDA_KINDS, doc["kind"]
            continue  # CRDs: checked field by field below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                pytest.fail(f"{filename} {doc['kind']} for {version}: {where}: {exc.message}")


def test_every_object_carries_the_name_label_prometheus_keeps() -> None:
    for kind, obj in _objects().items():
        assert obj["metadata"]["labels"][NAME_LABEL] == "tagging-worker", kind


# --- kustomization ----------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_except_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(MANIFEST_FILES) - NOT_APPLIED
    assert "Secret" not in {doc["kind"] for name in resources for doc in _documents(K8S / name)}, (
        "a Secret with placeholder values would be applied"
    )
    # the Secret is created by hand in the namespace the kustomization deploys into
    assert _objects()["Secret"]["metadata"]["namespace"] == kustomization["namespace"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_set_into_one_namespace() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    kinds = {doc["kind"] for doc in objects}
    assert kinds == set(_objects()) - {"Secret"}
    namespaced = [doc for doc in objects if doc["kind"] != "Namespace"]
    assert {doc["metadata"]["namespace"] for doc in namespaced} == {"tagging-worker"}


# --- the Deployment -------------------------------------------------------------------------


def test_the_metrics_port_is_named_metrics_and_is_the_configured_port() -> None:
    ports = {port["name"]: port["containerPort"] for port in _container()["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert int(_setting("TAGGING_METRICS_PORT")) == METRICS_PORT
    # The default is loopback; the kubelet's probes and Prometheus come in on the pod's IP.
    assert _config()["TAGGING_METRICS_HOST"] == "0.0.0.0"


def test_probes_ask_livez_and_readyz_on_the_metrics_port() -> None:
    container = _container()
    expected = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/livez"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert http["port"] in ("metrics", METRICS_PORT), probe


def test_the_grace_period_outlasts_one_api_call_and_a_wait_for_a_rate_slot() -> None:
    one_call = (
        int(_setting("TAGGING_API_CONNECT_TIMEOUT_MS")) / 1000
        + int(_setting("TAGGING_API_READ_TIMEOUT_MS")) / 1000
        + float(_setting("TAGGING_API_RATE_MAX_WAIT_SECONDS"))
    )
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= 45
    assert grace >= 2 * one_call


def test_the_pod_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    pod = _pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = _container()["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container.get("runAsUser", pod["runAsUser"]) == 10001
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container["capabilities"]
    assert container.get("privileged", False) is False


def test_only_emptydirs_are_writable_tmp_and_the_prometheus_multiprocess_dir() -> None:
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in _container()["volumeMounts"]}
    env = {item["name"]: item.get("value") for item in _container()["env"]}
    assert set(mounts) == {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]}
    for path, mount in mounts.items():
        assert "emptyDir" in volumes[mount["name"]], f"{path} is not an emptyDir"
        assert not mount.get("readOnly", False), f"{path} must be writable"


def test_settings_come_from_the_configmap_and_the_secret() -> None:
    sources = _container()["envFrom"]
    assert {"configMapRef": {"name": _objects()["ConfigMap"]["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": _objects()["Secret"]["metadata"]["name"]}} in sources
    # Service links would inject e.g. TAGGING_METRICS_PORT=tcp://... from a Service's name.
    assert _pod_spec()["enableServiceLinks"] is False


def test_prometheus_annotations_name_the_metrics_port() -> None:
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # deploy/prometheus/prometheus.yml's pod job keeps exactly these pods
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job]
    keep = {
        tuple(rule["source_labels"]): rule["regex"]
        for rule in job["relabel_configs"]
        if rule.get("action") == "keep"
    }
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == pod_labels[NAME_LABEL]


def test_pods_spread_over_zones_and_hosts_without_blocking_scheduling() -> None:
    constraints = _pod_spec()["topologySpreadConstraints"]
    keys = {constraint["topologyKey"] for constraint in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = _deployment()["spec"]["selector"]["matchLabels"]
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"] == selector


def test_the_deployment_leaves_the_replica_count_to_keda() -> None:
    assert "replicas" not in _deployment()["spec"]
    selector = _deployment()["spec"]["selector"]["matchLabels"]
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_resources_are_requested_and_limited() -> None:
    resources = _container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_the_pdb_lets_one_worker_go_at_a_time() -> None:
    pdb = _objects()["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == _deployment()["spec"]["selector"]["matchLabels"]


# --- ConfigMap and Secret ---------------------------------------------------------------------


def test_every_configmap_key_is_a_real_setting() -> None:
    known = set(_env_example()) | _named_in_env_example_header()
    unknown = set(_config()) - known
    assert not unknown, f"not settings of the worker: {sorted(unknown)}"


def test_the_configmap_holds_no_secret() -> None:
    for key in _config():
        assert not any(word in key for word in SECRET_WORDS), f"{key} belongs in the Secret"


def test_the_configmap_values_are_accepted_by_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in _config().items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.queue == _config()["TAGGING_QUEUE"]
    assert settings.metrics_port == METRICS_PORT
    assert settings.log_format.value == "json"


def test_the_secret_example_holds_placeholders_for_every_secret() -> None:
    secret = _secret()
    assert set(secret) >= {
        "TAGGING_BROKER_URL",
        "ACCESS_KEY_ID",
        "ACCESS_KEY_SECRET",
        "SENTRY_DSN",
        "REDIS_ADDRESS",
        "REDIS_PASSWORD",
    }
    for key in ("ACCESS_KEY_ID", "ACCESS_KEY_SECRET", "REDIS_PASSWORD", "SENTRY_DSN"):
        assert "REPLACE_ME" in secret[key], f"{key} is not an obvious placeholder"
    assert "example" in (K8S / "secret.example.yaml").read_text().splitlines()[0].lower()


# --- KEDA -----------------------------------------------------------------------------------


def test_the_scaledobject_scales_the_deployment_on_the_queue_list() -> None:
    scaled = _objects()["ScaledObject"]
    assert scaled["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == _deployment()["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    # KEDA's trigger metadata is a map of strings: a YAML number is rejected by the CRD
    assert all(isinstance(value, str) for value in metadata.values()), metadata
    assert metadata["listName"] == _config()["TAGGING_QUEUE"]
    assert int(metadata["listLength"]) > 0


def test_keda_reads_the_same_redis_database_as_the_workers() -> None:
    broker = urlsplit(_secret()["TAGGING_BROKER_URL"])
    (trigger,) = _objects()["ScaledObject"]["spec"]["triggers"]
    database = broker.path.lstrip("/") or "0"
    assert trigger["metadata"].get("databaseIndex", "0") == database
    assert _secret()["REDIS_ADDRESS"] == f"{broker.hostname}:{broker.port}"
    assert _secret()["REDIS_PASSWORD"] == broker.password
    tls = trigger["metadata"].get("enableTLS", "false") == "true"
    assert tls == (broker.scheme == "rediss")


def test_the_trigger_authentication_takes_address_and_password_from_the_secret() -> None:
    auth = _objects()["TriggerAuthentication"]
    assert auth["apiVersion"] == KEDA_API
    (trigger,) = _objects()["ScaledObject"]["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    secret_name = _objects()["Secret"]["metadata"]["name"]
    for ref in refs.values():
        assert ref["name"] == secret_name
        assert ref["key"] in _secret()
    assert refs["address"]["key"] == "REDIS_ADDRESS"
    assert refs["password"]["key"] == "REDIS_PASSWORD"


# --- systemd --------------------------------------------------------------------------------

UNITS = ("tagging-worker.service", "tagging-worker@.service")
BINARY = "/opt/tagging-worker/.venv/bin/tagging-worker"
SANDBOX = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    parser.read_string((SYSTEMD / name).read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_starts_the_worker_after_the_network_with_the_env_file(name: str) -> None:
    unit = _unit(name)
    assert {"network-online.target", "redis-server.service"} <= set(unit["Unit"]["After"].split())
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/tagging-worker/tagging-worker.env"
    command = service["ExecStart"].split()
    assert command[command.index(BINARY) + 1] == "worker"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_restarts_on_failure_and_stops_warmly(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 45
    assert int(service["TimeoutStopSec"]) >= _pod_spec()["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_runs_unprivileged_in_a_sandbox(name: str) -> None:
    service = _unit(name)["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "", "root")
    for key, value in SANDBOX.items():
        assert service.get(key) == value, f"{key}={service.get(key)!r}, expected {value!r}"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_template_instances_get_their_own_metrics_port_and_node_name() -> None:
    service = _unit("tagging-worker@.service")["Service"]
    assert "TAGGING_METRICS_PORT=%i" in service["ExecStart"].split()
    assert any(
        arg.startswith("--hostname=") and "%i" in arg for arg in service["ExecStart"].split()
    )
    assert "%i" in service["RuntimeDirectory"]
    assert "%i" in service["Environment"]  # PROMETHEUS_MULTIPROC_DIR per instance


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    """The worker is not installed here: the copy runs /bin/true in its place, so the only
    complaint verify could make about a missing executable cannot arise."""
    copy = tmp_path / name
    copy.write_text((SYSTEMD / name).read_text(encoding="utf-8").replace(BINARY, "/bin/true"))
    loaded = tmp_path / name.replace("@.", "@9808.")  # a template is verified as an instance
    result = subprocess.run(
        ["systemd-analyze", "verify", str(loaded)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    # verify exits 0 even for unknown keys or bad values; it reports them as lines naming
    # the file, so any line about our unit is a failure.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(tmp_path) in line or name.split("@")[0] in line
    ]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
