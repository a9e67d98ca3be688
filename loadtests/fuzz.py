"""Fuzz the live stack's OpenAPI document with schemathesis, with an admin key and a user-scoped key.

    python -m loadtests.fuzz [--cases 5000] [--url URL --admin-key K --user-key K]

Without `--url` it starts its own stack (README line 1's config, two API keys) and stops it after. Every
route is driven with generated cases, half with each key; it prints per-key counts of status classes,
5xx and timeouts (target: 0 and 0) and writes them to `loadtests/results/fuzz.json`. Generated chat and
completion requests get `max_tokens` of at most 16, so a case cannot ask the CPU model for thousands of tokens.
The suite's `tests/stack/test_fuzz.py` runs the same driver with a small budget.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
RESULTS = Path(__file__).parent / "results"


@dataclass
class FuzzTally:
    cases: int = 0
    operations: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "operations": self.operations,
            "statuses": dict(sorted(self.statuses.items())),
            "5xx": len(self.server_errors),
            "timeouts": len(self.timeouts),
            "nonconforming": len(self.nonconforming),
            "examples": {
                "5xx": self.server_errors[:5],
                "timeouts": self.timeouts[:5],
                "nonconforming": self.nonconforming[:5],
            },
        }


def _bounded(case: schemathesis.Case) -> None:
    if case.path in {"/v1/chat/completions", "/v1/completions"} and isinstance(case.body, dict):
        tokens = case.body.get("max_tokens")
        case.body["max_tokens"] = min(tokens, 16) if isinstance(tokens, int) and tokens > 0 else 16
        case.body.pop("max_completion_tokens", None)
    if case.path == "/v1/responses" and isinstance(case.body, dict):
        tokens = case.body.get("max_output_tokens")
        case.body["max_output_tokens"] = min(tokens, 16) if isinstance(tokens, int) and tokens > 0 else 16
        case.body.pop("ignore_eos", None)


def _shape(body: Any) -> str:
    """What a timed-out request asked for, without its text: field -> value for numbers and flags, size else."""
    if not isinstance(body, dict):
        return type(body).__name__
    parts = []
    for key, value in body.items():
        if isinstance(value, bool | int | float) or value is None:
            parts.append(f"{key}={value}")
        elif isinstance(value, str):
            parts.append(f"{key}=str[{len(value)}]")
        elif isinstance(value, list | dict):
            parts.append(f"{key}={type(value).__name__}[{len(value)}]")
    return "{" + ", ".join(parts) + "}"


def fuzz(
    base_url: str,
    api_key: str,
    examples_per_route: int,
    timeout_s: float = 60,
    user_id: str | None = None,
    seed: int | None = None,
    tally: FuzzTally | None = None,
) -> FuzzTally:
    """Drive every operation with `examples_per_route` generated cases; tally, never raise on a case.

    `user_id`: the key's own user, put into every `{user_id}` path (else ids are generated: mostly 403/404
    for a scoped key), so a user-scoped key reaches the handlers behind the scope check too."""
    headers = {"Authorization": f"Bearer {api_key}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    tally = tally if tally is not None else FuzzTally()
    for result in schema.get_all_operations():
        operation = result.ok()
        tally.operations += 1

        # Hypothesis directly: schemathesis' pytest plugin reaches into pytest internals this pytest lacks.
        @settings(max_examples=examples_per_route, deadline=None, derandomize=seed is None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        @hypothesis_seed(seed if seed is not None else 0)
        def run(case: schemathesis.Case) -> None:
            _bounded(case)
            if user_id is not None and case.path_parameters and "user_id" in case.path_parameters:
                case.path_parameters["user_id"] = user_id
            label = f"{case.method} {case.formatted_path}"
            tally.cases += 1
            try:
                response = case.call(headers=headers, timeout=timeout_s)
            except requests.Timeout:
                tally.timeouts.append(f"{label} {_shape(case.body)}")
                return
            tally.statuses[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"{label}: {response.status_code} {response.text[:300]}")
                return
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except Exception as exc:  # a conformance failure is counted, and the run goes on
                tally.nonconforming.append(f"{label}: {str(exc)[:300]}")

        run()
    return tally


def operation_count(base_url: str, api_key: str) -> int:
    headers = {"Authorization": f"Bearer {api_key}"}
    return sum(1 for _ in schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
               .get_all_operations())  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=5000, help="total, split over routes and the two keys")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--admin-key")
    parser.add_argument("--user-key", help="a key scoped to one user")
    parser.add_argument("--user-id", default="fuzz-user", help="the user --user-key is scoped to")
    parser.add_argument("--timeout-s", type=float, default=60)
    args = parser.parse_args(argv)
    # A SIGTERM ends the run through `finally` below, so the stack it started goes with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    server = None
    if args.url:
        base_url, keys = args.url.rstrip("/"), {"admin": args.admin_key, "user": args.user_key}
    else:
        from loadtests.servers import start_our_stack
        from personaagent.settings import load_settings
        from serving.auth import hash_key, new_key

        keys = {"admin": new_key(), "user": new_key()}
        entries = [{"name": "fuzz-admin", "sha256": hash_key(keys["admin"])},
                   {"name": "fuzz-user", "sha256": hash_key(keys["user"]), "user_id": args.user_id}]  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix="fuzz-"))
        server = start_our_stack(
            load_settings(None), work / "logs", work / "data",
            {"PERSONAAGENT_AUTH__API_KEYS": json.dumps(entries),
             "PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false"},
        )  # fmt: skip
        print(f"starting the stack (log: {server.log_path}) ...", flush=True)
        print(f"ready after {server.wait_ready():.0f} s", flush=True)
        base_url = server.base_url
    try:
        per_route = max(1, args.cases // (2 * operation_count(base_url, keys["admin"])))
        report: dict[str, Any] = {"examples_per_route": per_route}
        for name, key in keys.items():
            started = time.monotonic()
            own_user = args.user_id if name == "user" else None
            tally = FuzzTally()
            passes = 0
            while tally.cases < args.cases // 2 and passes < 20:  # fewer distinct inputs on some routes
                fuzz(base_url, key, per_route, args.timeout_s, own_user, seed=passes, tally=tally)
                passes += 1
                print(f"  {name} key, pass {passes}: {tally.cases} cases so far", flush=True)
            report[name] = tally.summary() | {"seconds": round(time.monotonic() - started, 1)}
            print(f"{name} key: {tally.cases} cases, {report[name]['statuses']}, 5xx {len(tally.server_errors)}, "
                  f"timeouts {len(tally.timeouts)}, nonconforming {len(tally.nonconforming)}", flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(report, indent=1) + "\n")
    failed = sum(report[k]["5xx"] + report[k]["timeouts"] for k in keys)
    print(f"total: {sum(report[k]['cases'] for k in keys)} cases, 5xx + timeouts = {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
