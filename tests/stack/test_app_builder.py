"""The serveConfigV2 import path builds the application from each variant's config (Ray imported, nothing started)."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

from tests.unit.test_k8s import K8S, VARIANTS, rayservice, render


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_serve_config_import_path_builds_the_application(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve import Application

    from serving.app import OpenServerRefused

    docs = render(K8S / variant)
    serve_config = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    assert app["args"]["config"] == VARIANTS[variant]
    if variant == "gpu-postgres":  # what its pods get from Secrets (nothing connects to the database here)
        monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://app:secret@db.invalid:5432/app")
        monkeypatch.setenv("PERSONAAGENT_AUTH__CACHE_SALT_SECRET", "0" * 64)
    module, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    with pytest.raises(OpenServerRefused, match=r"auth\.allow_open"):  # no keys: refuses to serve openly
        builder(app["args"])
    key = {"name": "ops", "sha256": "0" * 64}
    monkeypatch.setenv("PERSONAAGENT_AUTH__API_KEYS", json.dumps([key]))  # as the pods get it
    built = builder(app["args"])
    assert isinstance(built, Application)
    monkeypatch.delenv("PERSONAAGENT_AUTH__API_KEYS")
    monkeypatch.setenv("PERSONAAGENT_AUTH__ALLOW_OPEN", "true")  # open on purpose
    assert isinstance(builder(app["args"]), Application)

    from personaagent.settings import load_settings
    from serving.app import data_actor_options, engine_scaling_options

    settings = load_settings(app["args"]["config"])
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    resource = settings.memory.placement_resource
    if variant == "gpu":
        # Serve autoscales the engine; the memory deployment lands on the pod that mounts the data volume.
        assert "autoscaling_config" in engine_scaling_options(settings)
        assert settings.engine.autoscaling is not None
        assert settings.engine.autoscaling.max_replicas <= cluster["workerGroupSpecs"][0]["maxReplicas"]
        head_resources = json.loads(json.loads(cluster["headGroupSpec"]["rayStartParams"]["resources"]))
        assert resource in head_resources
        assert data_actor_options(settings, 0.5)["resources"] == {resource: 0.01}
    else:
        assert resource is None and "resources" not in data_actor_options(settings, 0.5)


def test_request_router_classes_import_and_are_ray_routers() -> None:
    """Offline, but it imports Ray: it lives with the stack tests."""
    from ray._common.utils import import_attr
    from ray.serve.request_router import RequestRouter

    from personaagent.settings import REQUEST_ROUTER_CLASSES

    for path in REQUEST_ROUTER_CLASSES.values():
        assert issubclass(import_attr(path), RequestRouter), path
