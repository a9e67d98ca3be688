"""Every file in configs/ loads through the settings model, vLLM's own parser takes its engine arguments, and
the tool-call parser fits how the model's chat template writes tools:

- `tools_in_template: false`: the template ignores `tools`, so the agent writes its own tool block into the
  system prompt, in the Hermes convention (agent/prompts.py): only vLLM's `hermes` parser reads those calls.
- `tools_in_template: true`: the template renders `tools` in the model family's own syntax, and only that
  family's parser reads them (Mistral's [TOOL_CALLS] -> `mistral`; Qwen2.5's <tool_call> -> `hermes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.prompts import TOOLS_PROMPTED
from personaagent.settings import Settings, load_settings
from serving import vllm_compat
from serving.engine import build_engine_cli_args, parse_vllm_args
from tests import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
MISTRAL_FORMAT = ("tokenizer_mode", "config_format", "load_format")


@dataclass(frozen=True)
class Family:
    parser: str
    tools_in_template: bool
    mistral_format: bool  # consolidated weights + params.json + tekken.json, read by mistral_common


# Keyed by a part of the model's name. A config for a model of another family fails until its row is here.
FAMILIES = {
    "mistral": Family(parser="mistral", tools_in_template=True, mistral_format=True),
    "qwen2.5": Family(parser="hermes", tools_in_template=True, mistral_format=False),
    "smollm2": Family(parser="hermes", tools_in_template=False, mistral_format=False),
}


def family_of(settings: Settings) -> str | None:
    name = f"{settings.engine.model} {settings.engine.served_model_name}".lower()
    found = [key for key in FAMILIES if key in name]
    return found[0] if len(found) == 1 else None


def pairing_problems(settings: Settings) -> list[str]:
    engine = settings.engine
    problems = []
    if not engine.tools_in_template and engine.tool_call_parser != "hermes":
        problems.append(f"the agent writes a Hermes tool block, parsed by `{engine.tool_call_parser}`")
    key = family_of(settings)
    if key is None:
        return [*problems, f"no known model family in {engine.model!r}: add it to FAMILIES"]
    family = FAMILIES[key]
    if (engine.tool_call_parser, engine.tools_in_template) != (family.parser, family.tools_in_template):
        problems.append(
            f"{key}: tool_call_parser {engine.tool_call_parser!r} / tools_in_template {engine.tools_in_template}"
            f", expected {family.parser!r} / {family.tools_in_template}"
        )
    formats = {name: engine.extra_engine_args.get(name) for name in MISTRAL_FORMAT}
    if family.mistral_format != all(value == "mistral" for value in formats.values()) or (
        not family.mistral_format and "mistral" in formats.values()
    ):
        problems.append(f"{key}: {formats} (Mistral's own format: all three `mistral`)")
    return problems


@pytest.fixture(autouse=True)
def _store_url_as_deployed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config of several memory replicas (gpu-mistral-small-postgres.yaml) loads only with a database,
    whose URL its pods get from a Secret; no test here connects to it."""
    monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://app:secret@db.invalid:5432/app")


def test_the_configs_folder_is_what_these_tests_cover() -> None:
    assert {p.name for p in CONFIGS} >= {"cpu.yaml", "cpu-qwen1.5b.yaml", "gpu-mistral-small.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_config_loads_and_vllm_parses_its_engine_arguments(config: Path) -> None:
    settings = load_settings(config)
    args = parse_vllm_args(build_engine_cli_args(settings, settings.engine.model))
    assert args.served_model_name == [settings.engine.served_model_name]
    assert args.tool_call_parser == settings.engine.tool_call_parser
    assert settings.engine.tool_call_parser in vllm_compat.load("ToolParserManager").list_registered()
    for key, value in settings.engine.extra_engine_args.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_config_pairs_its_tool_parser_with_its_chat_template(config: Path) -> None:
    assert pairing_problems(load_settings(config)) == []


def test_the_agents_own_tool_block_is_the_hermes_convention() -> None:
    assert "<tool_call>" in TOOLS_PROMPTED.text and "</tool_call>" in TOOLS_PROMPTED.text


def test_a_mispaired_config_is_caught(tmp_path: Path) -> None:
    gpu = (REPO_ROOT / "configs" / "gpu-mistral-small.yaml").read_text()
    for change, expected in [
        (("tool_call_parser: mistral", "tool_call_parser: hermes"), "tool_call_parser 'hermes'"),
        (("tools_in_template: true", "tools_in_template: false"), "Hermes tool block"),
        (("    load_format: mistral\n", ""), "Mistral's own format"),
    ]:
        broken = tmp_path / "broken.yaml"
        broken.write_text(gpu.replace(*change))
        assert gpu != broken.read_text()
        problems = pairing_problems(load_settings(broken))
        assert any(expected in p for p in problems), (change, problems)
    smollm2 = load_settings(REPO_ROOT / "configs" / "cpu.yaml", engine={"tool_call_parser": "mistral"})
    assert pairing_problems(smollm2)
