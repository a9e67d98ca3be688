"""Settings: YAML file, environment overrides, and the vLLM argument translation (vLLM's own parser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from personaagent.settings import REPO_ROOT, load_settings
from serving.engine import build_engine_cli_args, parse_vllm_args


def test_cpu_yaml_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:

    settings = load_settings()
    assert settings.engine.device == "cpu"
    assert settings.engine.enable_prefix_caching is True
    assert settings.server.port == 8000


def test_gpu_config_differs_only_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(REPO_ROOT / "configs" / "gpu-mistral-small.yaml")
    assert settings.engine.device == "gpu"
    assert "Mistral-Small" in settings.engine.model
    args = parse_vllm_args(build_engine_cli_args(settings, settings.engine.model))
    assert args.gpu_memory_utilization == pytest.approx(0.90)
    assert args.max_model_len == 32768
    assert args.tensor_parallel_size == 1
    assert args.enable_prefix_caching is True
    assert args.tokenizer_mode == "mistral"


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAAGENT_ENGINE__MAX_MODEL_LEN", "2048")
    monkeypatch.setenv("PERSONAAGENT_SERVER__PORT", "9001")
    settings = load_settings(REPO_ROOT / "configs" / "cpu.yaml")
    assert settings.engine.max_model_len == 2048
    assert settings.server.port == 9001


def test_invalid_settings_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  max_model_len: 10\n")
    with pytest.raises(ValidationError):
        load_settings(bad)
    bad.write_text("no_such_key: 1\n")
    with pytest.raises(ValidationError):
        load_settings(bad)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_cpu_engine_args_enable_prefix_caching_and_priority(monkeypatch: pytest.MonkeyPatch) -> None:

    settings = load_settings()
    args = parse_vllm_args(build_engine_cli_args(settings, "/some/model"))
    assert args.model == "/some/model"
    assert args.enable_prefix_caching is True
    assert args.scheduling_policy == "priority"
    assert args.served_model_name == [settings.engine.served_model_name]
