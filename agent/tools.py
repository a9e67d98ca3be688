"""The action module's tools: built-in ones (memory, profile, documents) and the client's own."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

QUERY_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 200}},
    "required": ["query"],
    "additionalProperties": False,
}
NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolSpec(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]
    builtin: bool = True

    def openai(self) -> dict[str, Any]:
        """The OpenAI `tools` entry the engine gets (and the prompted tool block lists)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


BUILTIN_TOOLS = (
    ToolSpec(
        name="search_memory", description="search the user's own past interactions", parameters=QUERY_PARAMS
    ),
    ToolSpec(name="get_profile", description="get the user's profile summary", parameters=NO_PARAMS),
    ToolSpec(
        name="search_documents", description="search the shared document collection", parameters=QUERY_PARAMS
    ),
)
BUILTIN_NAMES = frozenset(t.name for t in BUILTIN_TOOLS)


def client_tool_specs(tools: list[dict[str, Any]] | None) -> list[ToolSpec]:
    """OpenAI `tools` -> specs. Names that clash with built-ins are ignored (the client's call wins nothing)."""
    specs: list[ToolSpec] = []
    for tool in tools or []:
        fn = tool.get("function") or {}
        name = fn.get("name")
        if tool.get("type", "function") != "function" or not name or name in BUILTIN_NAMES:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        specs.append(
            ToolSpec(name=name, description=fn.get("description") or "", parameters=params, builtin=False)
        )
    return specs


class ToolStep(BaseModel):
    """One executed step of the action loop, as reported in `persona_agent.tool_calls`."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str = Field("", description="short result (clipped)")
    memory_ids: list[int] = Field(default_factory=list)
    error: str | None = None
    auto: bool = Field(False, description="run by the agent before the loop (memory priming), not chosen")
