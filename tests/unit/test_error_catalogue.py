"""The error catalogue: every kind distinct, every domain error of the serving layer mapped, with its headers."""

from __future__ import annotations

import inspect
import json

import pytest
from pydantic import BaseModel, ValidationError

from textgen.api import errors as api_errors
from textgen.api.errors import REQUEST_ID_HEADER, ApiError, ErrorKind, as_api_error, kind_for_status
from textgen.serving import errors as serving_errors
from textgen.serving.errors import ContextTooLong, NotReady, Overloaded, QueueTimedOut, ServingError, ShuttingDown

KINDS = {name: kind for name, kind in vars(api_errors).items() if isinstance(kind, ErrorKind)}


def serving_error_classes() -> list[type[ServingError]]:
    """Every class the serving layer may refuse with: the subclasses of ServingError in its errors module."""
    return [
        cls
        for _, cls in inspect.getmembers(serving_errors, inspect.isclass)
        if issubclass(cls, ServingError) and cls is not ServingError
    ]


def an_instance(cls: type[ServingError]) -> ServingError:
    return cls("a message for the client")


def test_every_error_kind_has_its_own_type_name():
    assert len(KINDS) >= 20
    types = [kind.type for kind in KINDS.values()]
    assert len(set(types)) == len(types)
    assert all(kind.type.islower() and " " not in kind.type for kind in KINDS.values())
    assert all(400 <= kind.status < 600 for kind in KINDS.values())


def test_every_serving_error_maps_to_a_kind_of_the_catalogue():
    classes = serving_error_classes()
    assert {c.__name__ for c in classes} >= {"NotReady", "ContextTooLong", "Overloaded", "ShuttingDown"}
    mapped = {}
    for cls in classes:
        error = as_api_error(an_instance(cls))  # no KeyError
        assert error.kind in KINDS.values()
        assert error.message == "a message for the client"
        mapped[cls] = error.type
    assert len(set(mapped.values())) == len(mapped)  # no two domain errors look alike to a client


@pytest.mark.parametrize(
    ("cls", "status", "error_type"),
    [
        (NotReady, 503, "model_not_ready"),
        (ContextTooLong, 400, "context_length_exceeded"),
        (Overloaded, 429, "overloaded"),
        (QueueTimedOut, 503, "queue_timeout"),
        (ShuttingDown, 503, "shutting_down"),
        (serving_errors.GenerationFailed, 500, "generation_failed"),
    ],
)
def test_each_serving_error_has_its_status_and_type(cls, status, error_type):
    error = as_api_error(an_instance(cls))
    assert (error.status, error.type) == (status, error_type)


def test_not_ready_tells_when_to_retry():
    error = as_api_error(NotReady())
    assert error.headers["Retry-After"] == "2"
    assert error.message == NotReady.default_message


@pytest.mark.parametrize("cls", [Overloaded, QueueTimedOut])
def test_queue_refusals_carry_the_exceptions_retry_time(cls):
    error = as_api_error(cls("busy", retry_after_s=17))
    assert error.headers["Retry-After"] == "17"
    assert error.to_response().headers["Retry-After"] == "17"


def test_a_retry_time_of_the_exception_overrides_the_kinds_default():
    assert as_api_error(ShuttingDown()).headers["Retry-After"] == "5"
    assert as_api_error(ShuttingDown(retry_after_s=30)).headers["Retry-After"] == "30"


@pytest.mark.parametrize("part", ["prompt", "max_new_tokens"])
def test_context_too_long_names_the_part_to_shorten_as_the_field(part):
    response = as_api_error(ContextTooLong("too long", part=part)).to_response(request_id="abc")
    assert response.status_code == 400
    assert json.loads(response.body) == {
        "error": {"type": "context_length_exceeded", "message": "too long", "request_id": "abc", "field": part}
    }
    assert response.headers[REQUEST_ID_HEADER] == "abc"


def test_an_api_error_stays_as_it_is():
    error = ApiError(api_errors.MODEL_NOT_FOUND, "no such model", field="model")
    assert as_api_error(error) is error


def test_a_validation_error_lists_every_problem_and_names_the_first_field():
    class Body(BaseModel):
        prompt: str
        max_new_tokens: int

    with pytest.raises(ValidationError) as invalid:
        Body.model_validate({"max_new_tokens": "many"})
    error = as_api_error(invalid.value)
    assert (error.type, error.status) == ("validation_error", 400)
    assert error.field == "prompt"
    assert "prompt:" in error.message and "max_new_tokens:" in error.message
    assert "many" not in error.message  # the input itself is never echoed


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request"),
        (401, "unauthorized"),
        (404, "not_found"),
        (429, "overloaded"),
        (503, "service_unavailable"),
    ],
)
def test_a_known_status_gets_its_generic_kind(status, error_type):
    kind = kind_for_status(status)
    assert (kind.type, kind.status) == (error_type, status)


@pytest.mark.parametrize(
    ("status", "error_type"), [(418, "client_error"), (422, "client_error"), (502, "server_error")]
)
def test_an_unknown_status_gets_client_or_server_error(status, error_type):
    kind = kind_for_status(status)
    assert (kind.type, kind.status) == (error_type, status)
