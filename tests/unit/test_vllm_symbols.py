"""Every vLLM internal the project uses comes from the installed vLLM through `serving.vllm_compat`, from
the place the compat table names for this release; the table covers every supported release; and no other
module imports vLLM itself. An upgrade that moves a symbol fails here, not in production."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from serving import vllm_compat
from serving.vllm_compat import CANDIDATES, SUPPORTED_RELEASES, Candidate
from tests import REPO_ROOT
from tests.unit.test_layers import PACKAGES, imports

# One release per minor version in the supported range: what the table was checked against.
RELEASES = [Version(f"0.{minor}") for minor in range(26, 34)]
COMPAT = "serving/vllm_compat.py"
# This file checks the table against vLLM's own classes, so it may name them.
MAY_IMPORT_VLLM = {COMPAT, "tests/unit/test_vllm_symbols.py"}


def project_files() -> list[Path]:
    files = [p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")]
    return [*files, *(REPO_ROOT / "tests").rglob("*.py")]


def installed() -> Version:
    return Version(Version(vllm_compat.installed_version()).base_version)


# Loading vLLM's engine classes imports Ray, which the unit half must not import (tests/conftest.py checks
# it): the symbols are resolved once in a child interpreter.
_RESOLVE_ALL = """
import json
from serving import vllm_compat
out = {}
for symbol in sorted(vllm_compat.CANDIDATES):
    candidate, found = vllm_compat.resolve(symbol)
    out[symbol] = [candidate.module, candidate.releases, found is not None]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def resolved() -> dict[str, list[Any]]:
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE_ALL], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("symbol", sorted(CANDIDATES))
def test_each_symbol_loads_from_where_the_table_says_this_release_keeps_it(
    symbol: str, resolved: dict[str, list[Any]]
) -> None:
    module, releases, found = resolved[symbol]
    assert found
    assert installed() in SpecifierSet(releases), (
        f"vLLM {installed()} has {symbol} at {module}, which the table gives to releases {releases}"
    )


def test_the_installed_vllm_is_a_supported_release() -> None:
    assert installed() in SpecifierSet(SUPPORTED_RELEASES)


@pytest.mark.parametrize("symbol", sorted(CANDIDATES))
def test_the_table_places_each_symbol_for_every_supported_release(symbol: str) -> None:
    candidates = CANDIDATES[symbol]
    for release in RELEASES:
        assert release in SpecifierSet(SUPPORTED_RELEASES)
        places = [c.module for c in candidates if release in SpecifierSet(c.releases)]
        assert len(places) == 1, f"{symbol} in vLLM {release}: {places or 'nowhere'}"
    # Newest first: `load` takes the first that exists, and an old path may linger as an alias.
    firsts = [min(r for r in RELEASES if r in SpecifierSet(c.releases)) for c in candidates]
    assert firsts == sorted(firsts, reverse=True)


def test_every_symbol_the_project_loads_is_in_the_table() -> None:
    used: set[str] = set()
    for path in project_files():
        if path.relative_to(REPO_ROOT).as_posix() in MAY_IMPORT_VLLM:
            continue  # this file loads made-up symbols on purpose
        used |= set(re.findall(r"vllm_compat\.(?:load|resolve)\(\"(\w+)\"\)", path.read_text()))
    assert used, "the pattern no longer finds the calls"
    assert used <= set(CANDIDATES), sorted(used - set(CANDIDATES))


def test_only_the_compat_module_imports_vllm() -> None:
    direct = []
    for path in project_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in MAY_IMPORT_VLLM:
            continue
        direct += [
            f"{rel}:{line} imports {module}"
            for line, module in imports(path)
            if module.split(".")[0] == "vllm"
        ]
    assert not direct, "import vLLM internals through serving.vllm_compat:\n" + "\n".join(direct)


def test_a_missing_symbol_names_the_vllm_version(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = (Candidate("vllm.entrypoints.nowhere", "make_arg_parser", ">=0.26"),)
    monkeypatch.setitem(CANDIDATES, "make_arg_parser", moved)
    with pytest.raises(
        ImportError, match=rf"vLLM {re.escape(vllm_compat.installed_version())} has no make_arg_parser"
    ):
        vllm_compat.load("make_arg_parser")


def test_a_module_that_fails_inside_is_not_taken_for_a_missing_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The module exists, but something it imports does not: that error is what the operator must see.
    (tmp_path / "compat_probe_broken.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(CANDIDATES, "broken", (Candidate("compat_probe_broken", "x", ">=0.26"),))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        vllm_compat.load("broken")


def test_client_errors_are_the_4xx_classes() -> None:
    from vllm.exceptions import VLLMNotFoundError, VLLMValidationError  # the classes the table must find

    types = vllm_compat.client_error_types()
    assert all(isinstance(t, type) and issubclass(t, Exception) for t in types)
    for cls in (VLLMNotFoundError, VLLMValidationError):
        assert issubclass(cls, types), cls


def test_engine_flags_the_release_lacks_are_dropped_and_others_kept() -> None:
    parser = vllm_compat.arg_parser()
    args = ["--model", "m", "--tool-strict-level", "parameter", "--no-such-flag", "1"]
    assert vllm_compat.drop_unsupported_flags(args, parser) == args  # 0.31+ parse it: nothing dropped
    del parser._option_string_actions["--tool-strict-level"]  # as 0.26-0.30
    assert vllm_compat.drop_unsupported_flags(args, parser) == ["--model", "m", "--no-such-flag", "1"]
    assert vllm_compat.drop_unsupported_flags(["--tool-strict-level=auto", "--x"], parser) == ["--x"]


def test_a_module_without_the_name_falls_through_to_the_next_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0.26's vllm.exceptions has no VLLMClientError: the next candidate is taken, not an AttributeError.
    real = CANDIDATES["VLLMNotFoundError"][0]
    absent = Candidate(real.module, "VLLMNoSuchError", ">=0.34")
    monkeypatch.setitem(CANDIDATES, "VLLMNotFoundError", (absent, real))
    assert vllm_compat.resolve("VLLMNotFoundError")[0] == real


def test_releases_without_a_client_error_base_get_its_three_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.exceptions import VLLMNotFoundError, VLLMUnprocessableEntityError, VLLMValidationError

    [before_027] = [c for c in CANDIDATES["VLLMClientError"] if Version("0.26") in SpecifierSet(c.releases)]
    monkeypatch.setitem(CANDIDATES, "VLLMClientError", (before_027,))
    assert vllm_compat.client_error_types() == (
        VLLMValidationError,
        VLLMUnprocessableEntityError,
        VLLMNotFoundError,
    )


@pytest.mark.parametrize("release", ["installed", "0.26"])
def test_vllm_request_errors_are_4xx_on_every_release(monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from vllm.exceptions import VLLMNotFoundError, VLLMValidationError

    from serving.errors import install_error_handlers

    if release == "0.26":
        fallback = [c for c in CANDIDATES["VLLMClientError"] if Version("0.26") in SpecifierSet(c.releases)]
        monkeypatch.setitem(CANDIDATES, "VLLMClientError", tuple(fallback))
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/invalid")
    async def invalid() -> None:
        raise VLLMValidationError("top_logprobs needs logprobs", parameter="top_logprobs")

    @app.get("/missing")
    async def missing() -> None:
        raise VLLMNotFoundError("no such adapter")

    client = TestClient(app, raise_server_exceptions=False)
    invalid_error = client.get("/invalid").json()["error"]
    assert (invalid_error["code"], invalid_error["param"]) == (400, "top_logprobs")
    assert client.get("/missing").json()["error"]["code"] == 404
