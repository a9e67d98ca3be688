"""Kubernetes manifests validated offline, and the Dockerfiles agree (the import path builds: tests/stack/test_app_builder.py)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import REPO_ROOT

K8S = REPO_ROOT / "k8s"
K8S_VERSION = "1.33.0"
RAYSERVICE_SCHEMA = json.loads((K8S / "schemas" / "rayservice-ray.io-v1.json").read_text())
VARIANTS = {"gpu": "configs/gpu-mistral-small.yaml", "cpu": "configs/cpu.yaml"}


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` applies: the listed resources, recursively (we use no patches)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "patches would need a real kustomize"
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = folder / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def validate(doc: dict[str, Any]) -> None:
    """Kubernetes kinds against the official schemas; RayService against KubeRay's, its pods against Kubernetes'."""
    if doc["kind"] != "RayService":
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    jsonschema.validate(doc, RAYSERVICE_SCHEMA)
    cluster = doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for n, group in enumerate(groups):
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"group-{n}"},
                        "template": group["template"]}  # fmt: skip
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [service] = [d for d in docs if d["kind"] == "RayService"]
    return service


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_validates(variant: str) -> None:
    docs = render(K8S / variant)
    assert {d["kind"] for d in docs} == {"RayService", "Service", "PersistentVolumeClaim", "NetworkPolicy"}
    for doc in docs:
        validate(doc)
    validate(yaml.safe_load((K8S / "optional" / "ingress.yaml").read_text()))


def test_the_validator_rejects_broken_manifests() -> None:
    good = rayservice(render(K8S / "gpu"))
    unquoted = copy.deepcopy(good)
    unquoted["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = (
        0  # must be a string
    )
    typo = copy.deepcopy(good)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    bad_pod = copy.deepcopy(good)
    bad_pod["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["port"] = 8000
    for broken in (unquoted, typo):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad_pod)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": "8000"}}
        )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_are_consistent_with_each_other(variant: str) -> None:
    docs = render(K8S / variant)
    service = next(d for d in docs if d["kind"] == "Service")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]
    serve_config = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])
    port = serve_config["http_options"]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == port
    # The Service's own label is on the pods (KubeRay adds ray.io/serve).
    own = {k: v for k, v in service["spec"]["selector"].items() if not k.startswith("ray.io/")}
    assert own.items() <= head["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    container = head["spec"]["containers"][0]
    assert {"name": "PERSONAAGENT_DATA_DIR", "value": "/data"} in container["env"]
    # API keys come from a Secret on every pod that may run the ingress; never inline.
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert "secretKeyRef" in env["PERSONAAGENT_AUTH__API_KEYS"]["valueFrom"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port}
    assert container["image"] == f"personaagent-serve:{variant}"
    for group in cluster.get("workerGroupSpecs", []):
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["requests"] == worker["resources"]["limits"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def _dockerfile_runs(path: Path) -> str:
    return " ".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfiles_agree_with_pyproject(flavor: str) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    text = _dockerfile_runs(REPO_ROOT / "docker" / f"Dockerfile.{flavor}")
    # The one install script, with the extra that pyproject defines for this flavor.
    assert f"scripts/setup.sh {flavor}" in text and flavor in pyproject["project"]["optional-dependencies"]
    python = re.search(r"python:?(3\.\d+)", text)
    assert python is not None and f">={python.group(1)}" in pyproject["project"]["requires-python"]
    # Every package the build installs is copied into the image.
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    for package in packages:
        assert re.search(rf"COPY (--chown=\S+ )?{package}/ {package}/", text), package
    # The image runs as the unprivileged uid the manifests' runAsUser expects.
    users = re.findall(r"\bUSER (\S+)", text)
    assert users and users[-1].split(":")[0] == "1000"
    config = re.search(r"PERSONAAGENT_CONFIG=/app/(\S+)", text)
    assert config is not None and (REPO_ROOT / config.group(1)).is_file()
    if flavor == "cpu":
        assert "prepare-model" in text  # the embedded model is converted at build time, not at start


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    return [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pods_run_non_root_with_a_read_only_root(variant: str) -> None:
    for pod in _pod_specs(render(K8S / variant)):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v or "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in writable  # Ray's session directory needs somewhere to write
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HOME"].startswith("/tmp/")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_only_the_serve_port_is_reachable_from_outside_the_ray_pods(variant: str) -> None:
    docs = render(K8S / variant)
    serve_port = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])["http_options"]["port"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert [p["port"] for s in services for p in s["spec"]["ports"]] == [serve_port]
    for pod in _pod_specs(docs):
        for container in pod["containers"]:
            assert 10001 not in {p["containerPort"] for p in container.get("ports", [])}  # no Ray client
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    labels = rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        peers = rule.get("from")
        ports = {p["port"] for p in rule.get("ports", [])}
        if not peers:  # open to any source: the serve port only
            assert ports == {serve_port}
        elif any("namespaceSelector" in peer for peer in peers):  # the operator: the dashboard only
            assert ports == {8265}
        else:  # otherwise only the cluster's own pods
            assert all(peer["podSelector"]["matchLabels"].items() <= labels.items() for peer in peers)


def test_the_ingress_serves_tls_only() -> None:
    ingress = yaml.safe_load((K8S / "optional" / "ingress.yaml").read_text())
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert ingress["spec"]["tls"] and hosts <= {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
