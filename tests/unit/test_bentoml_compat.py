"""The BentoML compatibility module: what it patches is checked first, and a missing internal stops the start."""

from __future__ import annotations

import importlib

import pytest

from textgen import bentoml_compat
from textgen.api.middleware.first_byte_timeout import FirstByteTimeout


def test_the_pinned_bentoml_has_every_internal_we_use():
    bentoml_compat.check()


def test_apply_puts_first_byte_timeout_in_bentomls_place(monkeypatch):
    traffic = importlib.import_module("bentoml._internal.server.http.traffic")
    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)  # restored after the test
    bentoml_compat.apply(FirstByteTimeout)
    assert traffic.TimeoutMiddleware is FirstByteTimeout


def test_a_renamed_internal_stops_with_a_message_naming_it_and_the_tested_version(monkeypatch):
    traffic = importlib.import_module("bentoml._internal.server.http.traffic")
    monkeypatch.delattr(traffic, "TimeoutMiddleware")  # as if a new BentoML renamed it
    with pytest.raises(bentoml_compat.IncompatibleBentoML) as refused:
        bentoml_compat.apply(FirstByteTimeout)
    message = str(refused.value)
    assert "TimeoutMiddleware" in message and bentoml_compat.TESTED_VERSION in message
    assert not hasattr(traffic, "TimeoutMiddleware")  # nothing was patched


def test_request_ids_outside_a_request_are_fresh_16_hex_digits():
    first, second = bentoml_compat.current_request_id(), bentoml_compat.current_request_id()
    assert first != second and len(first) == 16 and int(first, 16) >= 0
    assert bentoml_compat.current_trace_id() is None
