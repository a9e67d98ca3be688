"""Kubernetes manifests validated offline, and the Dockerfiles agree (the import path builds: tests/stack/test_app_builder.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from personaagent.settings import load_settings
from tests import REPO_ROOT

K8S = REPO_ROOT / "k8s"
K8S_VERSION = "1.33.0"
RAYSERVICE_SCHEMA = json.loads((K8S / "schemas" / "rayservice-ray.io-v1.json").read_text())
VARIANTS = {
    "gpu": "configs/gpu-mistral-small.yaml",
    "cpu": "configs/cpu.yaml",
    "gpu-postgres": "configs/gpu-mistral-small-postgres.yaml",
}
SQLITE_VARIANTS = ("cpu", "gpu")  # the head mounts data_dir; memory and alignment are placed there
GPU_VARIANTS = ("gpu", "gpu-postgres")
CNPG_CLUSTER_SCHEMA = json.loads((K8S / "schemas" / "cluster-postgresql.cnpg.io-v1.json").read_text())
PYTHON_OF_FLAVOR = {"cpu": "3.11", "gpu": "3.12"}


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` applies: the listed resources, recursively, with the `images` entries
    applied (we use no patches)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    allowed = {"apiVersion", "kind", "resources", "images"}
    assert set(kustomization) <= allowed, "patches would need a real kustomize"
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = folder / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for image in kustomization.get("images", []):
        for doc in docs:
            set_image(doc, image)
    return docs


def image_name(ref: str) -> str:
    """An image reference without its tag or digest (a registry port's colon stays)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[: len(ref) - len(last)] + last.split(":", 1)[0]


def set_image(node: Any, image: dict[str, str]) -> None:
    """Kustomize's `images` transformer (its LegacyFilter): every `image` of a `containers` or
    `initContainers` list, at any depth of any kind (a RayService's pod templates too), whose name matches."""
    if isinstance(node, list):
        for item in node:
            set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in {"containers", "initContainers"} and isinstance(value, list):
            for container in value:
                if image_name(container.get("image", "")) == image["name"]:
                    tag = container["image"][len(image["name"]) :]
                    new_tag = f":{image['newTag']}" if "newTag" in image else tag
                    container["image"] = image.get("newName", image["name"]) + new_tag
        set_image(value, image)


def validate(doc: dict[str, Any]) -> None:
    """Kubernetes kinds against the official schemas; RayService against KubeRay's, its pods against
    Kubernetes'; a CloudNativePG Cluster against the operator's CRD."""
    if doc["kind"] == "Cluster":
        jsonschema.validate(doc, CNPG_CLUSTER_SCHEMA)
        return
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
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]
    serve_config = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])
    port = serve_config["http_options"]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == port
    # The Service's own label is on the pods (KubeRay adds ray.io/serve).
    own = {k: v for k, v in service["spec"]["selector"].items() if not k.startswith("ray.io/")}
    assert own.items() <= head["metadata"]["labels"].items()
    container = head["spec"]["containers"][0]
    if variant in SQLITE_VARIANTS:  # the head mounts data_dir (the PostgreSQL variant: test_postgres_*)
        [pvc] = [
            d
            for d in docs
            if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "personaagent-data"
        ]
        volumes = {v["name"]: v for v in head["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert {"name": "PERSONAAGENT_DATA_DIR", "value": "/data"} in container["env"]
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data"}
    # API keys come from a Secret on every pod that may run the ingress; never inline.
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert "secretKeyRef" in env["PERSONAAGENT_AUTH__API_KEYS"]["valueFrom"]
    # Ready when the engine answers; alive while the pod's own Ray process is: restarting the head restarts
    # the whole Ray cluster, and an engine loading a model on a fresh GPU node must not cause that.
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/gcs_healthz", "port": 8265}
    for group in cluster.get("workerGroupSpecs", []):
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["requests"] == worker["resources"]["limits"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert worker["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
        for probe in ("livenessProbe", "startupProbe"):
            assert worker[probe]["httpGet"] == {"path": "/api/local_raylet_healthz", "port": 52365}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_image_is_the_one_the_kustomization_names(variant: str) -> None:
    kustomization = yaml.safe_load((K8S / variant / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    raw = yaml.safe_load((K8S / variant / "rayservice.yaml").read_text())
    for spec in _pod_specs([raw]):
        assert image_name(spec["containers"][0]["image"]) == image["name"]  # what the entry matches
    for spec in _pod_specs(render(K8S / variant)):
        assert [c["image"] for c in spec["containers"]] == [expected]
    if variant in GPU_VARIANTS:  # autoscaled GPU nodes pull it: a registry host, not a local tag
        host = image["newName"].split("/", 1)[0]
        assert "/" in image["newName"] and ("." in host or ":" in host), image["newName"]


def test_the_image_transform_is_kustomizes() -> None:
    pod = {"spec": {"template": {"spec": {"containers": [{"image": "reg:5000/a/x:1"}, {"image": "y:1"}],
                                          "initContainers": [{"image": "x@sha256:00"}]}}}}  # fmt: skip
    set_image(pod, {"name": "reg:5000/a/x", "newName": "r.io/x", "newTag": "2"})
    set_image(pod, {"name": "x", "newTag": "3"})
    spec = pod["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["containers"]] == ["r.io/x:2", "y:1"]
    assert spec["initContainers"] == [{"image": "x:3"}]


@pytest.mark.parametrize("variant", GPU_VARIANTS)
def test_a_claim_that_several_gpu_nodes_mount_is_read_only_many(variant: str) -> None:
    docs = render(K8S / variant)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        assert group["maxReplicas"] > 1  # the autoscaler may put these pods on several nodes
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in spec["containers"][0]["volumeMounts"]:
            claim = volumes[mount["name"]].get("persistentVolumeClaim")
            if claim is None:
                continue
            assert claim["claimName"] in claims, f"{claim['claimName']} is not in the manifests"
            assert claims[claim["claimName"]]["spec"]["accessModes"] == ["ReadOnlyMany"]
            assert claim["readOnly"] is True and mount["readOnly"] is True


def _dockerfile_runs(path: Path) -> str:
    return " ".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfiles_agree_with_pyproject(flavor: str) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    text = _dockerfile_runs(REPO_ROOT / "docker" / f"Dockerfile.{flavor}")
    # The one install script, with the extra that pyproject defines for this flavor.
    assert f"scripts/setup.sh {flavor}" in text and flavor in pyproject["project"]["optional-dependencies"]
    # The CPU flavour stays on the Python its local torch build is for; the GPU one is on vLLM's images' 3.12.
    # setup.sh builds the venv with $PYTHON: the image's Python, which pyproject must accept.
    python = re.search(r"python:?(3\.\d+)", text)
    assert python is not None and python.group(1) == PYTHON_OF_FLAVOR[flavor]
    assert f"PYTHON=python{python.group(1)}" in text
    assert Version(python.group(1)) in SpecifierSet(pyproject["project"]["requires-python"])
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


# -- the PostgreSQL variant (k8s/gpu-postgres) and its example database (k8s/postgres) ----------------------

POSTGRES_VARIANT = "gpu-postgres"
POSTGRES_ENV = {"PERSONAAGENT_STORE__URL", "PGSSLMODE", "PGSSLROOTCERT"}
DATA_SETTINGS = {"data_dir", "memory", "alignment", "store"}  # all that the PostgreSQL config may change
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def _cnpg_cluster() -> dict[str, Any]:
    [cluster] = render(K8S / "postgres")
    return cluster


def _groups(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def _without_the_state(service: dict[str, Any]) -> dict[str, Any]:
    """A RayService less what says where the state lives: the config path, the data volume and the Ray
    resource that places deployments by it, the database's env and CA volume."""
    service = copy.deepcopy(service)
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    for app in serve_config["applications"]:
        app["args"].pop("config")
    service["spec"]["serveConfigV2"] = serve_config
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].pop("resources", None)
    state = {"data", "postgres-ca"}
    for group in _groups(service):
        spec = group["template"]["spec"]
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in state]
        for container in spec["containers"]:
            container["env"] = [
                e for e in container["env"] if e["name"] not in {*POSTGRES_ENV, "PERSONAAGENT_DATA_DIR"}
            ]
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] not in state]
    return service


def test_the_postgres_variant_is_the_gpu_one_but_for_the_state() -> None:
    """The variants are two complete files (no patches): whatever k8s/gpu changes, this one must too."""
    gpu, postgres = render(K8S / "gpu"), render(K8S / POSTGRES_VARIANT)
    assert _without_the_state(rayservice(postgres)) == _without_the_state(rayservice(gpu))
    others = [d for d in gpu if d["kind"] != "RayService" and d["metadata"]["name"] != "personaagent-data"]
    assert [d for d in postgres if d["kind"] != "RayService"] == others


def test_the_postgres_variant_mounts_no_data_and_takes_the_database_from_secrets() -> None:
    docs = render(K8S / POSTGRES_VARIANT)
    service = rayservice(docs)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"} == {
        "personaagent-models"
    }
    # No pod is special: nothing advertises a resource that would pin memory or alignment to it.
    assert "resources" not in service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    database = _cnpg_cluster()["metadata"]["name"]
    for group in _groups(service):  # every pod may run a memory or alignment replica
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        [container] = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "PERSONAAGENT_DATA_DIR" not in env
        # The URL holds a password: from the Secret CloudNativePG makes for the app user, never inline.
        assert env["PERSONAAGENT_STORE__URL"] == {
            "name": "PERSONAAGENT_STORE__URL",
            "valueFrom": {"secretKeyRef": {"name": f"{database}-app", "key": "uri"}},
        }
        # TLS with the server's certificate checked, against a CA file mounted from CloudNativePG's CA
        # Secret (its certificate only).
        assert env["PGSSLMODE"]["value"] == "verify-full"
        ca_file = PurePosixPath(env["PGSSLROOTCERT"]["value"])
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(ca_file.parent)]
        secret = volumes[mount["name"]]["secret"]
        assert mount["readOnly"] is True and secret["secretName"] == f"{database}-ca"
        assert secret["items"] == [{"key": "ca.crt", "path": ca_file.name}]
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] == "personaagent-models"


def test_the_postgres_config_is_the_gpu_config_but_for_the_data_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = yaml.safe_load((REPO_ROOT / VARIANTS["gpu"]).read_text())
    postgres = yaml.safe_load((REPO_ROOT / VARIANTS[POSTGRES_VARIANT]).read_text())
    assert {k: v for k, v in postgres.items() if k not in DATA_SETTINGS} == {
        k: v for k, v in gpu.items() if k not in DATA_SETTINGS
    }
    replicas = {"num_replicas", "max_replicas_per_node"}
    assert {k: v for k, v in postgres["alignment"].items() if k not in replicas} == gpu["alignment"]
    assert "url" not in postgres["store"]  # a secret: from the environment (a Kubernetes Secret) only
    monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://app:secret@personaagent-db-rw.ns:5432/app")
    settings = load_settings(VARIANTS[POSTGRES_VARIANT])
    assert settings.store.postgres
    assert settings.memory.placement_resource is None  # any pod runs memory and alignment
    assert settings.memory.num_replicas == 2
    assert settings.alignment.num_replicas == 2
    assert str(settings.data_dir).startswith("/tmp/")  # the pods' only writable volume
    # One replica per pod, so a pod that goes never takes both; the cluster always has that many pods.
    cluster = rayservice(render(K8S / POSTGRES_VARIANT))["spec"]["rayClusterConfig"]
    pods_at_least = 1 + sum(group["minReplicas"] for group in cluster["workerGroupSpecs"])
    for deployment in (settings.memory, settings.alignment):
        assert deployment.max_replicas_per_node == 1 and deployment.num_replicas <= pods_at_least


def test_the_cnpg_cluster_validates_against_cloudnativepgs_crd() -> None:
    cluster = _cnpg_cluster()
    validate(cluster)
    spec = cluster["spec"]
    assert re.fullmatch(DNS_LABEL, cluster["metadata"]["name"])
    # The CEL rules of the fields we write, which only an API server evaluates (the schema's $comment).
    assert not ("imageName" in spec and "imageCatalogRef" in spec)
    assert spec["postgresql"]["synchronous"]["number"] > 0
    # A commit waits for a standby, and keeps waiting rather than going asynchronous: a failover loses no
    # acknowledged write. Enough instances that one standby may go and writes still complete.
    assert spec["postgresql"]["synchronous"]["dataDurability"] == "required"
    assert spec["instances"] >= 2 + spec["postgresql"]["synchronous"]["number"]
    assert spec["affinity"]["podAntiAffinityType"] == "required"  # one copy per node


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "instances"), "3"),  # an integer
        (("spec", "instance"), 3),  # a typo: unknown fields are rejected
        (("spec", "postgresql", "synchronous", "method"), "all"),  # any | first
        (("spec", "postgresql", "parameters", "max_connections"), 100),  # parameters are strings
        (("spec", "storage", "sizes"), "50Gi"),
        (("spec", "resources", "limits", "cpu"), "two"),  # a quantity
        (("kind",), "Clusters"),
        (("apiVersion",), "postgresql.cnpg.io/v2"),
    ],
)
def test_the_cnpg_schema_rejects_broken_clusters(path: tuple[str, ...], value: Any) -> None:
    broken = copy.deepcopy(_cnpg_cluster())
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CNPG_CLUSTER_SCHEMA)


def test_max_connections_holds_every_pool_through_an_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each memory and each alignment replica has one pool of store.pool_max_size connections; a RayService
    upgrade runs the old and the new Ray cluster side by side until the new one is ready."""
    monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://app:secret@personaagent-db-rw.ns:5432/app")
    settings = load_settings(VARIANTS[POSTGRES_VARIANT])
    pools = settings.memory.num_replicas + settings.alignment.num_replicas
    clusters_during_an_upgrade = 2
    cli_pools = 1  # one `personaagent docs load` at a time
    reserved = 3  # PostgreSQL's superuser_reserved_connections
    needed = (clusters_during_an_upgrade * pools + cli_pools) * settings.store.pool_max_size + reserved
    max_connections = int(_cnpg_cluster()["spec"]["postgresql"]["parameters"]["max_connections"])
    assert needed <= max_connections


def _crd_converter() -> Any:
    path = K8S / "schemas" / "crd_to_json_schema.py"
    spec = importlib.util.spec_from_file_location("crd_to_json_schema", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_crd_converter_says_what_the_api_server_checks() -> None:
    """How k8s/schemas/cluster-postgresql.cnpg.io-v1.json was made, on a CRD small enough to read."""
    crd = yaml.safe_load("""
        spec:
          group: example.io
          names: {kind: Thing}
          versions:
            - name: v1
              schema:
                openAPIV3Schema:
                  type: object
                  properties:
                    apiVersion: {type: string}
                    kind: {type: string}
                    metadata: {type: object}
                    spec:
                      type: object
                      description: text, not a rule
                      required: [size]
                      properties:
                        size: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}
                        port: {type: integer, x-kubernetes-int-or-string: true}
                        note: {type: string, nullable: true}
                        free: {type: object, x-kubernetes-preserve-unknown-fields: true, properties: {a: {type: string}}}
                        count: {type: integer, x-kubernetes-validations: [{rule: self > 0, message: positive}]}
                        labels: {type: object, additionalProperties: {type: string}}
                    status: {type: object}
    """)
    schema = _crd_converter().crd_to_json_schema(crd, "v1", "a test CRD")
    good = {"apiVersion": "example.io/v1", "kind": "Thing", "metadata": {"name": "t"},
            "spec": {"size": "10Gi", "port": "http", "note": None, "free": {"a": "x", "b": 1}, "count": -1,
                     "labels": {"k": "v"}}}  # fmt: skip
    jsonschema.validate(good, schema)  # count -1: a CEL rule, not checked here...
    assert "spec.count: self > 0" in schema["$comment"]  # ...and said so
    assert "status" not in schema["properties"] and "description" not in schema["properties"]["spec"]
    for path, value in [
        (("spec", "typo"), 1),
        (("spec", "port"), 1.5),
        (("spec", "labels", "k"), 1),
        (("kind",), "Other"),
        (("apiVersion",), "example.io/v2"),
    ]:
        broken = copy.deepcopy(good)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "spec": {"port": 1}}, schema)  # `size` is required
