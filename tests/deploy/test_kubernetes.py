"""deploy/k8s: `kubectl kustomize` renders the base and the K3s edge overlay, and every
rendered object validates, strictly (no unknown fields), against the Kubernetes
OpenAPI schemas of `kubernetes-validate`, offline; then the wiring between objects.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_kit import DEPLOY, run, tool

from potluck.core.config import ServerConfig

K8S = DEPLOY / "k8s"
TARGETS = {"base": K8S / "base", "k3s-edge": K8S / "overlays" / "k3s-edge"}
# The newest schemas the package ships, and an older release still common on K3s.
VERSIONS = (kubernetes_validate.latest_version(), "1.29.0")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def render(target: Path) -> list[dict]:
    out = run([tool("kubectl", "kubectl"), "kustomize", str(target)]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=list(TARGETS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(TARGETS[request.param])


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates_strictly(rendered, version):
    _, docs = rendered
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_an_unknown_field(rendered):
    """The check above is live: a misspelt field fails strict validation."""
    _, docs = rendered
    server = yaml.safe_load(yaml.safe_dump(one(docs, "Deployment", "potluck-server")))
    pod_spec(server)["containers"][0]["readOnlyRootFileSystem"] = True  # the real one is ...Filesystem
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(server, VERSIONS[0], strict=True)


def test_base_holds_server_nodes_config_and_tls():
    docs = render(TARGETS["base"])
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "ConfigMap", "Secret", "Secret", "Service", "Service",
                            "PersistentVolumeClaim", "Deployment", "StatefulSet"])
    nodes = one(docs, "StatefulSet", "potluck-node")
    ids = [f"potluck-node-{i}" for i in range(nodes["spec"]["replicas"])]
    secret = [s for s in find(docs, "Secret") if "node" in s["metadata"]["name"]][0]
    assert sorted(secret["data"]) == sorted(["ca.crt", *(f"{i}.{ext}" for i in ids for ext in ("crt", "key"))])
    config = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("potluck-server")][0]
    assert ServerConfig.from_mapping(_toml(config["data"]["server.toml"])).allow == ids


def test_edge_overlay_runs_nodes_as_a_daemonset_on_labelled_devices():
    docs = render(TARGETS["k3s-edge"])
    assert not find(docs, "StatefulSet") and not [s for s in find(docs, "Secret") if "node" in s["metadata"]["name"]]
    spec = pod_spec(one(docs, "DaemonSet", "potluck-node"))
    assert spec["nodeSelector"] == {"potluck.io/edge": "true"}
    assert {t["key"] for t in spec["tolerations"]} >= {"potluck.io/edge"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in spec["containers"][0]["env"] if "fieldRef" in e.get("valueFrom", {})}
    assert env == {"NODE_NAME": "spec.nodeName"}  # a device's node id is its Kubernetes node name
    assert {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v} == {
        "tls": "/etc/potluck/tls", "data": "/var/lib/potluck/data", "state": "/var/lib/potluck/state"}
    server = pod_spec(one(docs, "Deployment", "potluck-server"))
    assert server["nodeSelector"] == {"node-role.kubernetes.io/control-plane": "true"}
    config = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("potluck-server")][0]
    ServerConfig.from_mapping(_toml(config["data"]["server.toml"]))


def test_every_container_is_locked_down_and_sized(rendered):
    _, docs = rendered
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload['kind']}/{c['name']}"
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}, where
            assert set(c["resources"]) == {"requests", "limits"}, where
            assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}, where
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{workload['kind']}/{c['name']} has no probes"


def test_pods_are_annotated_for_prometheus_on_the_port_they_serve_metrics(rendered):
    _, docs = rendered
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        port = annotations["prometheus.io/port"]
        container = pod_spec(workload)["containers"][0]
        assert f"--metrics-port={port}" in container["args"] and "--metrics-host=0.0.0.0" in container["args"]
        assert {"name": "metrics", "containerPort": int(port)} in container["ports"]


def test_server_probes_its_grpc_port_and_the_service_exposes_it(rendered):
    _, docs = rendered
    server = pod_spec(one(docs, "Deployment", "potluck-server"))["containers"][0]
    assert {"name": "grpc", "containerPort": 7450} in server["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["tcpSocket"] == {"port": "grpc"}
    service = one(docs, "Service", "potluck-server")
    assert service["spec"]["ports"][0]["port"] == 7450
    bind = [a for a in server["args"] if a.startswith("--bind=")]
    assert bind == ["--bind=0.0.0.0:7450"]


def test_every_object_is_in_the_namespace_and_every_reference_resolves(rendered):
    """kustomize renames generated ConfigMaps and Secrets (hash suffix) only where it
    knows the referrer: a reference it missed would leave a pod waiting forever."""
    _, docs = rendered
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"potluck"}
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        wanted = set()
        for v in spec.get("volumes", []):
            if "configMap" in v:
                wanted.add(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                wanted.add(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                wanted.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in spec["containers"]:
            wanted |= {("ConfigMap", s["configMapRef"]["name"]) for s in c.get("envFrom", [])}
        assert wanted <= names, f"{workload['kind']}/{workload['metadata']['name']} refers to missing {wanted - names}"


def test_signing_keys_are_kept_on_writable_volumes_that_outlive_the_pod(rendered):
    """The server makes its ledger key in --tls-dir and a node its key in --key-dir; a
    key lost with a pod would make the server refuse the node (or a new ledger key)."""
    _, docs = rendered
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        container = spec["containers"][0]
        role = container["args"][0]
        flag = "--tls-dir=" if role == "server" else "--key-dir="
        folder = [a.split("=", 1)[1] for a in container["args"] if a.startswith(flag)][0]
        mounts = [m for m in container["volumeMounts"] if folder.startswith(m["mountPath"])]
        assert len(mounts) == 1 and not mounts[0].get("readOnly"), (workload["kind"], folder, mounts)
        volume = [v for v in spec["volumes"] if v["name"] == mounts[0]["name"]]
        claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
        assert mounts[0]["name"] in claims or "persistentVolumeClaim" in volume[0] or "hostPath" in volume[0], volume


def test_every_variable_in_node_args_is_defined(rendered):
    """Kubernetes leaves an undefined $(VAR) in args as it is: catch that here."""
    _, docs = rendered
    configmaps = {c["metadata"]["name"]: c["data"] for c in find(docs, "ConfigMap")}
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        for c in pod_spec(workload)["containers"]:
            defined = {e["name"] for e in c.get("env", [])}
            for source in c.get("envFrom", []):
                defined |= set(configmaps[source["configMapRef"]["name"]])
            used = {v for a in c.get("args", []) for v in re.findall(r"\$\(([A-Z_]+)\)", a)}
            assert used <= defined, f"{workload['kind']}/{c['name']}: {sorted(used - defined)} undefined"


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)
