"""What shape a request's output must have: the constraint spec, validated and canonical, free of any library.

`OutputConstraint` is what a request asks for and the cache key of its compiled grammar: build it with one of
the class methods, which check the input and canonicalise it (a JSON schema becomes its compact JSON text, so
equal schemas share one compiled grammar; key order is kept, not sorted, because the generated object lists its
properties in the schema's order, as OpenAI's structured outputs do).

`ConstraintError` is an invalid or unsupported spec; the API turns it into a 400 naming the request field.
Inputs are bounded (MAX_SPEC_BYTES, MAX_CHOICES) because compiling costs grow with them and compilation runs
before the request is admitted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ConstraintKind = Literal["json_object", "json_schema", "regex", "choice"]
KINDS: tuple[ConstraintKind, ...] = ("json_object", "json_schema", "regex", "choice")

MAX_SPEC_BYTES = 64 * 1024  # a schema's canonical text, a regex, or all choices together (UTF-8)
MAX_CHOICES = 256
_QUOTE_CHARS = 80  # how much of the user's input an error message may repeat


class ConstraintError(ValueError):
    """An invalid or unsupported constraint; the message says what is wrong and never repeats large input."""


def excerpt(text: str, limit: int = _QUOTE_CHARS) -> str:
    """`text` cut for an error message."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _check_size(what: str, text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise ConstraintError(f"{what} is {size} bytes; at most {MAX_SPEC_BYTES} are accepted")


@dataclass(frozen=True)
class OutputConstraint:
    """A request's output constraint. Hashable: the compiler caches compiled grammars by it.

    spec: "" for json_object, the compact JSON text of the schema (key order kept) for json_schema, the pattern
    for regex (the whole output must match it), the options for choice (the output is exactly one of them).
    """

    kind: ConstraintKind
    spec: str | tuple[str, ...] = ""

    def __post_init__(self) -> None:
        # Checked here too, so that a constraint built directly is as safe as one from the class methods.
        if self.kind not in KINDS:
            raise ConstraintError(f"unknown constraint kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "choice":
            if not isinstance(self.spec, tuple) or not all(isinstance(c, str) for c in self.spec):
                raise ConstraintError("choice needs a tuple of strings")
            if not self.spec:
                raise ConstraintError("choice needs at least one option")
            if len(self.spec) > MAX_CHOICES:
                raise ConstraintError(f"choice has {len(self.spec)} options; at most {MAX_CHOICES} are accepted")
            if "" in self.spec:
                raise ConstraintError("choice options must be non-empty strings")
            _check_size("the choice list", "".join(self.spec))
        elif not isinstance(self.spec, str):
            raise ConstraintError(f"{self.kind} needs a string spec")
        elif self.kind == "json_object" and self.spec:
            raise ConstraintError("json_object takes no spec")
        elif self.kind in ("regex", "json_schema"):
            if not self.spec:
                raise ConstraintError(f"{self.kind} needs a non-empty spec")
            _check_size("the regex" if self.kind == "regex" else "the JSON schema", self.spec)

    @classmethod
    def json_object(cls) -> OutputConstraint:
        """Any JSON object."""
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any]) -> OutputConstraint:
        """JSON valid against `schema`: the `schema` member of OpenAI's response_format.json_schema."""
        if not isinstance(schema, Mapping):
            raise ConstraintError(f"a JSON schema must be an object, not {type(schema).__name__}")
        try:
            text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConstraintError(f"the JSON schema is not serialisable as JSON: {excerpt(str(exc))}") from None
        return cls("json_schema", text)

    @classmethod
    def regex(cls, pattern: str) -> OutputConstraint:
        """Text the pattern matches in full (Rust regex syntax, close to Python's for common patterns)."""
        if not isinstance(pattern, str):
            raise ConstraintError(f"a regex must be a string, not {type(pattern).__name__}")
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: Sequence[str]) -> OutputConstraint:
        """Exactly one of `options` (duplicates dropped, order kept)."""
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise ConstraintError("choice needs a list of strings")
        if len(options) > MAX_CHOICES:  # before dict.fromkeys touches a huge list
            raise ConstraintError(f"choice has {len(options)} options; at most {MAX_CHOICES} are accepted")
        if not all(isinstance(o, str) for o in options):
            raise ConstraintError("choice options must be strings")
        return cls("choice", tuple(dict.fromkeys(options)))
