"""How a request becomes the engine's rows: its parameters with a compiled grammar, copies (`n`, `best_of`) of
each prompt, and a seed of its own for each copy."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol

from textgen.engine import GenerationParams
from textgen.engine.constraints import ConstraintError, OutputConstraint
from textgen.serving.async_engine import AsyncEngine, Row

from .errors import INVALID_REQUEST, MODEL_NOT_FOUND, ApiError


def check_row_count(engine: AsyncEngine, rows: int, field: str) -> None:
    """A request's rows run at once, so it may have no more than there are slots: more would wait forever."""
    if rows > engine.max_rows:
        raise ApiError(
            INVALID_REQUEST,
            f"{field}: this request needs {rows} sequences at once; at most {engine.max_rows} may run at once "
            "(MAX_CONCURRENCY and MAX_BATCH_SIZE)",
            field=field,
        )


def derived_seed(seed: int, copy: int) -> int:
    """The seed of a request's `copy`-th sequence: the first keeps the request's seed, so n=1 is unchanged."""
    if copy == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # within the schema's 0..2**63-1


def expand_rows(prompts: list[str], params: GenerationParams, copies: int = 1, adapter: str | None = None) -> list[Row]:
    """`copies` rows per prompt, prompt by prompt (row i * copies + j), each with its own derived seed."""
    seed = params.sampling.seed
    if seed is None:
        return [Row(prompt, params, adapter) for prompt in prompts for _ in range(copies)]
    seeded = [
        dataclasses.replace(params, sampling=dataclasses.replace(params.sampling, seed=derived_seed(seed, copy)))
        for copy in range(copies)
    ]
    return [Row(prompt, copy, adapter) for prompt in prompts for copy in seeded]


def check_adapter(engine: AsyncEngine, name: str | None, field: str) -> None:
    """A 404 naming the request's field for an adapter that is not loaded (OpenAI's model_not_found)."""
    if name is not None and name not in engine.adapters.names():
        served = ", ".join([engine.model_tag, *engine.adapters.names()])
        raise ApiError(MODEL_NOT_FOUND, f"'{name}' is not served here; served: {served}", field=field)


class Constrained(Protocol):
    def constraint(self) -> OutputConstraint | None: ...

    def constraint_field(self) -> str | None: ...


async def compile_constraint(engine: AsyncEngine, params: GenerationParams, request: Constrained) -> GenerationParams:
    """`params` with the compiled grammar of the request's constraint; a bad one is a 400 naming its field."""
    try:
        constraint = request.constraint()
        if constraint is None:
            return params
        grammar = await engine.compile_grammar(constraint)
    except ConstraintError as exc:
        field = request.constraint_field()
        raise ApiError(INVALID_REQUEST, f"{field}: {exc}", field=field) from None
    return dataclasses.replace(params, grammar=grammar)
