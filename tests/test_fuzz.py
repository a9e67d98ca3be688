"""schemathesis against the live stack's OpenAPI document: every route, a fixed example budget.

Checks: no server errors (5xx), every status is one the document declares, and responses match their
declared schemas. Generated chat requests get `max_tokens` of at most 16, so a fuzzed request cannot ask
the CPU model for thousands of tokens; everything else is as generated.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Stack

EXAMPLES_PER_ROUTE = 15


def test_api_conforms_and_never_errors(stack: Stack) -> None:
    # Operations are driven with Hypothesis directly: schemathesis' pytest plugin reaches into pytest
    # internals that this pytest no longer has.
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            if case.path == "/v1/chat/completions" and isinstance(case.body, dict):
                tokens = case.body.get("max_tokens")
                case.body["max_tokens"] = min(tokens, 16) if isinstance(tokens, int) and tokens > 0 else 16
                case.body.pop("max_completion_tokens", None)
            response = case.call(headers=headers, timeout=120)
            assert response.status_code < 500, (
                case.method,
                case.path,
                response.status_code,
                response.text[:500],
            )
            case.validate_response(response, checks=checks, headers=headers)

        fuzz()
