"""Tool calls on `/v1/chat/completions`: `tools` with `tool_choice` "required" or a named function.

The output is constrained to one call: a JSON object `{"name": ..., "arguments": {...}}` whose name is one of
the offered functions and whose arguments are valid under that function's parameters schema. The grammar
guarantees the shape, so parsing it back into OpenAI's `tool_calls` cannot fail on a finished output.
`"none"` ignores the tools. `"auto"` (the model decides whether to call) needs a parser per model family
for the model's own tool-call syntax; none is built, so it is refused with 400 rather than guessed.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from textgen.engine import OutputConstraint

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = Field(None, description="Accepted; the arguments always follow the schema.")


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: call this function."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class StreamedToolCall(ToolCall):
    index: int = 0  # the position of the call in the message (streamed deltas carry it)


def callable_functions(tools: list[Tool], choice: ToolChoice | None) -> list[FunctionDefinition] | None:
    """The functions the output must call one of; None when the tools do not constrain it ("none").

    Raises ValueError (a 400 naming tool_choice) for "auto", and for a named function not among the tools.
    """
    if choice == "none":
        return None
    if choice is None or choice == "auto":
        raise ValueError(
            'tool_choice "auto" (the default with tools) needs a tool-call parser for this model family, '
            'which this server does not have: use "required" or name a function'
        )
    functions = [tool.function for tool in tools]
    if choice == "required":
        return functions
    named = [f for f in functions if f.name == choice.function.name]
    if not named:
        raise ValueError(f"tool_choice names {choice.function.name!r}, which is not among the tools")
    return named


def tool_call_constraint(functions: list[FunctionDefinition]) -> OutputConstraint:
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": f.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return OutputConstraint.json_schema(calls[0] if len(calls) == 1 else {"anyOf": calls})


def parse_tool_call(text: str) -> ToolCall:
    """The call a finished, grammar-constrained output makes."""
    call = json.loads(text)
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    return ToolCall(id=f"call_{secrets.token_hex(12)}", function=FunctionCall(name=call["name"], arguments=arguments))
