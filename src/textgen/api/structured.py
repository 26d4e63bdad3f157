"""Structured output on the wire: the request fields that constrain a completion, as the engine's constraint.

`/generate` takes `json_schema`, `regex` or `choice`; the OpenAI routes take OpenAI's `response_format` and
vLLM's `structured_outputs` object (the current form of its older `guided_*` fields). At most one constraint
per request. Compiling it (a bad one is a 400 naming the field) is `rows.compile_constraint`'s job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from textgen.engine.constraints import OutputConstraint

Choices = list[str]
CHOICE_DESCRIPTION = "The completion is exactly one of these strings."


def _only_one(fields: dict[str, Any], where: str) -> None:
    given = [name for name, value in fields.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"{where}: give at most one of {', '.join(given)}")


class StructuredOutputFields(BaseModel):
    """The constraint fields of `/generate` and `/generate/batch`."""

    json_schema: dict[str, Any] | None = Field(None, description="The completion is JSON valid under this schema.")
    regex: str | None = Field(None, min_length=1, description="The completion matches this regular expression.")
    choice: Choices | None = Field(None, min_length=1, description=CHOICE_DESCRIPTION)

    @model_validator(mode="after")
    def _one_constraint(self) -> StructuredOutputFields:
        _only_one({"json_schema": self.json_schema, "regex": self.regex, "choice": self.choice}, "constraints")
        return self

    def constraint_field(self) -> str | None:
        """The field that asks for a constraint (the one to name if it is refused)."""
        return next((f for f in ("json_schema", "regex", "choice") if getattr(self, f) is not None), None)

    def constraint(self) -> OutputConstraint | None:
        if self.json_schema is not None:
            return OutputConstraint.json_schema(self.json_schema)
        if self.regex is not None:
            return OutputConstraint.regex(self.regex)
        if self.choice is not None:
            return OutputConstraint.choice(self.choice)
        return None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = Field(None, description="Accepted; the output always follows the schema.")


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self

    def constraint(self) -> OutputConstraint | None:
        if self.type == "json_object":
            return OutputConstraint.json_object()
        if self.json_schema is not None:
            return OutputConstraint.json_schema(self.json_schema.schema_)
        return None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extension: exactly one of its fields."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | None = Field(None, alias="json", description="A JSON schema.")
    json_object: StrictBool | None = None
    regex: str | None = Field(None, min_length=1)
    choice: Choices | None = Field(None, min_length=1, description=CHOICE_DESCRIPTION)

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        fields = {"json": self.json_, "json_object": self.json_object or None, "regex": self.regex}
        _only_one({**fields, "choice": self.choice}, "structured_outputs")
        if not any(v is not None for v in (*fields.values(), self.choice)):
            raise ValueError("structured_outputs: give one of json, json_object, regex, choice")
        return self

    def constraint(self) -> OutputConstraint:
        if self.json_ is not None:
            return OutputConstraint.json_schema(self.json_)
        if self.regex is not None:
            return OutputConstraint.regex(self.regex)
        if self.choice is not None:
            return OutputConstraint.choice(self.choice)
        return OutputConstraint.json_object()


class OpenAIStructuredFields(BaseModel):
    """The constraint fields of both OpenAI routes."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM's extension.")

    @model_validator(mode="after")
    def _one_constraint(self) -> OpenAIStructuredFields:
        wants_format = self.response_format is not None and self.response_format.type != "text"
        if wants_format and self.structured_outputs is not None:
            raise ValueError("give response_format or structured_outputs, not both")
        return self

    def constraint_field(self) -> str | None:
        if self.structured_outputs is not None:
            return "structured_outputs"
        return "response_format" if self.response_format is not None else None

    def constraint(self) -> OutputConstraint | None:
        if self.structured_outputs is not None:
            return self.structured_outputs.constraint()
        return self.response_format.constraint() if self.response_format is not None else None
