"""The deployment files: image, kustomize overlays, Helm chart, Prometheus rules.

Every check runs the real tool: kubectl's kustomize, helm, promtool,
kubernetes-validate's 1.30 schemas, hadolint (or a container builder, when one
is available), and the agent itself for ``promtool check metrics`` and the
read-only root filesystem. scripts/install-test-deps installs the tools; a
missing tool fails the test instead of skipping it, so that CI cannot pass
without the checks.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from mesh.config import parse_config
from mesh.keys import generate_key_files
from mesh.metrics import AgentMetrics
from tests import pod_security
from tests.agent_processes import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "alarminati"
RULES = DEPLOY / "prometheus" / "alarminati-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alarminati-rules.test.yml"
TOOLS = REPO / ".cache" / "tools" / "bin"

CLUSTERS = ("seoul", "tokyo", "busan")
KUBERNETES_VERSION = "1.30.0"
# Environment the example configurations name with url_env.
RECEIVER_ENV = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/example",
    "OPS_WEBHOOK_URL": "https://alarms.example.com/alarminati",
}
# Labels and annotations only Helm adds: release bookkeeping, not behaviour.
HELM_ONLY_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
)
HELM_ONLY_ANNOTATIONS = ("checksum/config",)


def tool(name: str) -> str:
    """Return the path of a tool, from .cache/tools/bin first, or fail."""
    local = TOOLS / name
    if local.exists():
        return str(local)
    found = shutil.which(name) or shutil.which(
        name, path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail(f"{name} not found; run scripts/install-test-deps")
    return found


def run(*command: str, input: str | None = None) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, input=input, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(cluster: str) -> list[dict[str, Any]]:
    return load_all(
        run(tool("kubectl"), "kustomize", str(KUSTOMIZE / "overlays" / cluster))
    )


def helm_template(cluster: str, *extra: str) -> list[dict[str, Any]]:
    output = run(
        tool("helm"),
        "template",
        "alarminati",
        str(CHART),
        "--namespace",
        "alarminati",
        "--set",
        "namespace.create=true",
        "-f",
        str(CHART / "examples" / f"{cluster}.yaml"),
        "--set-file",
        f"config={KUSTOMIZE / 'overlays' / cluster / 'config.yaml'}",
        *extra,
    )
    return load_all(output)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def cluster_config(cluster: str) -> dict[str, Any]:
    return yaml.safe_load(
        (KUSTOMIZE / "overlays" / cluster / "config.yaml").read_text()
    )


# ----------------------------------------------------------------------
# kustomize and Helm render
# ----------------------------------------------------------------------

EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "Deployment",
    "Service",
}


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_kustomize_builds_overlay_with_every_object(cluster):
    objects = kustomize(cluster)

    kinds = {o["kind"] for o in objects}
    assert EXPECTED_KINDS <= kinds
    # Data on a claim, or on the node; never both.
    deployment = by_kind(objects, "Deployment")
    data = [
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "data"
    ]
    assert len(data) == 1
    assert ("PersistentVolumeClaim" in kinds) == ("persistentVolumeClaim" in data[0])
    assert all(
        o["metadata"].get("namespace", "alarminati") == "alarminati" for o in objects
    )


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_helm_lint_passes_with_cluster_values(cluster):
    output = run(
        tool("helm"),
        "lint",
        str(CHART),
        "--strict",
        "-f",
        str(CHART / "examples" / f"{cluster}.yaml"),
        "--set-file",
        f"config={KUSTOMIZE / 'overlays' / cluster / 'config.yaml'}",
    )
    assert "0 chart(s) failed" in output


def test_helm_template_fails_without_config():
    result = subprocess.run(
        [tool("helm"), "template", "alarminati", str(CHART)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "config: the agent's configuration is required" in result.stderr


def _normalise(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Drop what only one renderer adds: Helm's release labels and config
    checksum, kustomize's hash suffix on the generated ConfigMap's name."""
    normalised = {}
    for original in objects:
        obj = copy.deepcopy(original)
        metadatas = [obj["metadata"]]
        if obj["kind"] == "Deployment":
            metadatas.append(obj["spec"]["template"]["metadata"])
            # The order of volumes means nothing; a kustomize patch moves them.
            pod = obj["spec"]["template"]["spec"]
            pod["volumes"].sort(key=lambda volume: volume["name"])
            for volume in pod["volumes"]:
                if "configMap" in volume:
                    volume["configMap"]["name"] = re.sub(
                        r"-[a-z0-9]{10}$", "", volume["configMap"]["name"]
                    )
        for metadata in metadatas:
            for label in HELM_ONLY_LABELS:
                metadata.get("labels", {}).pop(label, None)
            for annotation in HELM_ONLY_ANNOTATIONS:
                metadata.get("annotations", {}).pop(annotation, None)
            if metadata.get("annotations") == {}:
                del metadata["annotations"]
        if obj["kind"] == "ConfigMap":
            obj["metadata"]["name"] = re.sub(
                r"-[a-z0-9]{10}$", "", obj["metadata"]["name"]
            )
            obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
        normalised[(obj["kind"], obj["metadata"]["name"])] = obj
    return normalised


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_helm_chart_renders_the_same_objects_as_the_overlay(cluster):
    from_kustomize = _normalise(kustomize(cluster))
    from_helm = _normalise(helm_template(cluster))

    assert sorted(from_helm) == sorted(from_kustomize)
    for key, obj in from_kustomize.items():
        assert from_helm[key] == obj, f"{key} differs between the chart and the overlay"


def test_helm_chart_changes_pod_annotation_when_config_changes():
    def checksum(*extra: str) -> str:
        deployment = by_kind(helm_template("seoul", *extra), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum() != checksum(
        "--set-file", f"config={KUSTOMIZE / 'overlays/tokyo/config.yaml'}"
    )


# ----------------------------------------------------------------------
# Kubernetes 1.30 schemas
# ----------------------------------------------------------------------


def _rendered_objects() -> list[tuple[str, dict[str, Any]]]:
    rendered = []
    for cluster in CLUSTERS:
        rendered += [(f"kustomize {cluster}", o) for o in kustomize(cluster)]
        rendered += [(f"helm {cluster}", o) for o in helm_template(cluster)]
    # Every optional object of the chart, the Secrets included.
    everything = helm_template(
        "seoul",
        "--set",
        "keySecret.create=true,keySecret.privateKey=example",
        "--set",
        "receiversSecret.create=true,receiversSecret.env.SLACK_WEBHOOK_URL=x",
        "--set",
        "persistence.storageClassName=local-path",
    )
    rendered += [("helm all options", o) for o in everything]
    example = load_all((KUSTOMIZE / "base" / "secret.example.yaml").read_text())
    rendered += [("secret.example.yaml", o) for o in example]
    return rendered


def test_every_rendered_object_validates_against_kubernetes_1_30():
    failures = []
    for source, obj in _rendered_objects():
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(
                f"{source} {obj['kind']}/{obj['metadata']['name']}: {exc.message}"
            )
    assert not failures, "\n".join(failures)


def test_schema_validation_rejects_a_misspelt_field():
    deployment = by_kind(kustomize("seoul"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_service_monitor_selects_the_service():
    objects = helm_template("seoul", "--set", "metrics.serviceMonitor.enabled=true")

    monitor = by_kind(objects, "ServiceMonitor")
    service = by_kind(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert (
        monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    )


# ----------------------------------------------------------------------
# Pod Security
# ----------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["seoul", "tokyo"])
def test_pod_passes_the_restricted_profile(cluster):
    template = by_kind(kustomize(cluster), "Deployment")["spec"]["template"]

    assert pod_security.violations(template, "restricted") == {}


def test_host_overlay_leaves_restricted_only_for_host_access():
    template = by_kind(kustomize("busan"), "Deployment")["spec"]["template"]

    failed = pod_security.violations(template, "restricted")
    # Host network and a host folder, and the init container that chowns it.
    assert set(failed) == {
        "host_namespaces",
        "hostPath_volumes",
        "restricted_volumes",
        "runAsNonRoot",
        "runAsUser",
        "capabilities_restricted",
    }
    assert failed["capabilities_restricted"] == [
        "initContainer 'chown-data' adds ['CHOWN']"
    ]
    main = {k: v for k, v in template["spec"].items() if k != "initContainers"}
    main["hostNetwork"] = False
    main["volumes"] = [v for v in main["volumes"] if v["name"] != "data"]
    assert pod_security.violations({"spec": main}, "restricted") == {}


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_namespace_enforces_the_level_the_pod_needs(cluster):
    objects = kustomize(cluster)
    template = by_kind(objects, "Deployment")["spec"]["template"]
    labels = by_kind(objects, "Namespace")["metadata"]["labels"]

    assert labels["pod-security.kubernetes.io/enforce"] == pod_security.lowest_level(
        template
    )
    assert labels["pod-security.kubernetes.io/enforce-version"] == "v1.30"


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda c, s: c["securityContext"].update(privileged=True), "privileged"),
        (
            lambda c, s: c["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation",
        ),
        (
            lambda c, s: c["securityContext"]["capabilities"].update(drop=[]),
            "capabilities_restricted",
        ),
        (lambda c, s: c["ports"][0].update(hostPort=7480), "hostPorts"),
        (lambda c, s: s["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda c, s: s["securityContext"].update(runAsUser=0), "runAsUser"),
        (
            lambda c, s: s["securityContext"].pop("seccompProfile"),
            "seccompProfile_restricted",
        ),
        (lambda c, s: s.update(hostPID=True), "host_namespaces"),
        (
            lambda c, s: s["volumes"].append(
                {"name": "x", "nfs": {"server": "a", "path": "/"}}
            ),
            "restricted_volumes",
        ),
    ],
)
def test_pod_security_check_catches_each_violation(change, check):
    template = copy.deepcopy(
        by_kind(kustomize("seoul"), "Deployment")["spec"]["template"]
    )
    spec = template["spec"]
    change(spec["containers"][0], spec)

    assert check in pod_security.violations(template, "restricted")


# ----------------------------------------------------------------------
# The configuration inside the manifests
# ----------------------------------------------------------------------


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_cluster_config_is_valid_and_matches_the_pod(cluster):
    raw = cluster_config(cluster)
    config = parse_config(
        raw, base=Path("/etc/alarminati/config"), environ=RECEIVER_ENV
    )
    deployment = by_kind(kustomize(cluster), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}

    assert config.name == cluster
    assert (
        int(config.listen.rpartition(":")[2]) == container["ports"][0]["containerPort"]
    )
    assert config.key_file == Path(mounts["key"]) / "agent.key"
    assert config.data_dir == Path(mounts["data"])
    assert Path(config.archive).is_relative_to(mounts["data"])
    assert "/etc/alarminati/config/config.yaml" in container["args"]


def test_cluster_configs_trust_and_dial_each_other():
    configs = {c: cluster_config(c) for c in CLUSTERS}
    for cluster, raw in configs.items():
        others = [c for c in CLUSTERS if c != cluster]
        assert sorted(raw["trusted_keys"]) == sorted(others)
        assert sorted(raw["peers"]) == sorted(configs[c]["advertise"] for c in others)
    # One key per cluster, the same in every config that trusts it.
    for cluster in CLUSTERS:
        keys = {
            raw["trusted_keys"][cluster] for c, raw in configs.items() if c != cluster
        }
        assert len(keys) == 1


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_advertised_port_is_where_the_exposure_listens(cluster):
    objects = kustomize(cluster)
    port = int(cluster_config(cluster)["advertise"].rpartition(":")[2])
    service = by_kind(objects, "Service")["spec"]
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]

    if pod.get("hostNetwork"):
        assert port == pod["containers"][0]["ports"][0]["containerPort"]
    elif service["type"] == "NodePort":
        assert port == service["ports"][0]["nodePort"]
        assert service["externalTrafficPolicy"] == "Local"
    else:
        assert service["type"] == "LoadBalancer"
        assert port == service["ports"][0]["port"]
        assert service["loadBalancerSourceRanges"]


# ----------------------------------------------------------------------
# The image
# ----------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _container_builder() -> list[str] | None:
    """Return a command that builds images here, or None."""
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if (
            path
            and subprocess.run(
                [path, "info"], capture_output=True, timeout=30
            ).returncode
            == 0
        ):
            return [path, "build"]
    return None


def test_image_builds_or_dockerfile_lints_clean():
    builder = _container_builder()
    if builder is not None:
        run(
            *builder,
            "-f",
            str(DEPLOY / "Dockerfile"),
            "-t",
            "alarminati:test",
            str(REPO),
        )
    # The lint runs either way: it is quick and catches what a build does not.
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_matches_the_pod():
    instructions = _dockerfile_instructions()
    final = instructions[
        max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :
    ]
    values = {}
    for keyword, rest in final:
        values.setdefault(keyword, []).append(rest)
    pod = by_kind(kustomize("seoul"), "Deployment")["spec"]["template"]["spec"]
    context = pod["securityContext"]

    assert values["USER"] == [f"{context['runAsUser']}:{context['runAsGroup']}"]
    assert values["EXPOSE"] == [str(pod["containers"][0]["ports"][0]["containerPort"])]
    # Exec form, so the agent is PID 1 and receives SIGTERM itself.
    assert values["ENTRYPOINT"] == ['["alarminati"]']
    assert values["STOPSIGNAL"] == ["SIGTERM"]
    env = " ".join(values["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_docker_context_holds_every_package():
    # The context is cut down by Dockerfile.dockerignore; a package that
    # setup.cfg installs but the context leaves out breaks the image build.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    setup = (REPO / "setup.cfg").read_text()
    include = re.search(
        r"\[options\.packages\.find\]\s*include\s*=((?:\n[ \t]+\S+)+)", setup
    )
    packages = {name.split(".")[0] for name in include.group(1).split()}

    assert packages <= allowed
    assert {"setup.cfg", "pyproject.toml"} <= allowed


# ----------------------------------------------------------------------
# A live agent: promtool check metrics, and a read-only root filesystem
# ----------------------------------------------------------------------


def _write_agent(root: Path, name: str = "solo") -> tuple[Path, str]:
    key = root / "keys" / f"{name}.key"
    generate_key_files(key)
    address = f"127.0.0.1:{free_port()}"
    config = {
        "name": name,
        "listen": address,
        "key_file": str(key),
        "profile": "local",
        "data_dir": str(root / "data"),
        "archive": str(root / "data" / "archive"),
        "sinks": [{"name": "stdout", "type": "log"}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    (root / "data").mkdir()
    return path, address


def _wait_healthy(
    address: str, process: subprocess.Popen, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"http://{address}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"agent at {address} not healthy after {timeout}s")


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def _agent_command(config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mesh.cli",
        "--log-format",
        "json",
        "agent",
        "--config",
        str(config),
    ]


@pytest.mark.slow
def test_promtool_check_metrics_passes_on_a_live_agent(tmp_path):
    config, address = _write_agent(tmp_path)
    process = subprocess.Popen(
        _agent_command(config),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(address, process)
        exposition = httpx.get(f"http://{address}/metrics", timeout=5).text
    finally:
        code, output = _stop(process)

    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), (
        result.stdout + result.stderr
    )
    assert code == 0, output
    assert "alarminati_build_info{" in exposition


@pytest.mark.slow
def test_agent_runs_on_a_read_only_root_filesystem(tmp_path):
    # As readOnlyRootFilesystem does: a private mount namespace where / is
    # read-only and only the data folder (a tmpfs, as a volume) is writable.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    config, address = _write_agent(tmp_path)
    data = tmp_path / "data"
    script = (
        "mount -o remount,bind,ro / "
        f'&& mount -t tmpfs -o size=64m tmpfs "{data}" && exec "$@"'
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    command = ["unshare", "--mount", "sh", "-c", script, "sh", *_agent_command(config)]
    process = subprocess.Popen(
        command,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_healthy(address, process)
        assert httpx.get(f"http://{address}/metrics", timeout=5).status_code == 200
        assert httpx.get(f"http://{address}/peers", timeout=5).status_code == 200
    finally:
        code, output = _stop(process)

    levels = [
        yaml.safe_load(line).get("level")
        for line in output.splitlines()
        if line.startswith("{")
    ]
    assert code == 0, output
    assert "error" not in levels and "warning" not in levels, output
    assert "Read-only file system" not in output
    # The host's own folder stayed empty: the agent wrote into the tmpfs.
    assert list(data.iterdir()) == []


# ----------------------------------------------------------------------
# Prometheus rules and dashboard
# ----------------------------------------------------------------------


def test_promtool_check_rules_passes():
    output = run(tool("promtool"), "check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_promtool_test_rules_passes():
    output = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output


def _exposed_metric_names() -> set[str]:
    """Return every sample name an agent can expose, before any event."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names = set()
    for family in AgentMetrics("probe").registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def _referenced_metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b((?:alarminati|process)_[a-z0-9_]+)", expression))


def test_rules_and_dashboard_use_only_exposed_metrics():
    import json

    exposed = _exposed_metric_names()
    rules = yaml.safe_load(RULES.read_text())
    expressions = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(
        (DEPLOY / "prometheus" / "grafana-dashboard.json").read_text()
    )
    expressions += [
        t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    expressions += [
        v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"
    ]

    unknown = set().union(*map(_referenced_metric_names, expressions)) - exposed
    assert not unknown


def test_every_alert_has_a_runbook_section_in_the_operations_guide():
    rules = yaml.safe_load(RULES.read_text())
    guide = (REPO / "docs" / "operations.md").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            anchor = rule["annotations"]["runbook_url"].rpartition("#")[2]
            assert f"### {rule['alert']}" in guide
            assert anchor == rule["alert"].lower()
