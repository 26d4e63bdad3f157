"""The asyncio front of the engine on the tiny model: results, streaming, refusals, disconnects and failures.

Real AsyncEngine, AdmissionGate, BatchEngine thread and event loop; the model is the tiny GPT-2 of conftest.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from textgen.engine import EngineStopped
from textgen.serving.errors import ContextTooLong, GenerationFailed, Overloaded, QueueTimedOut, ShuttingDown
from textgen.serving.faults import InjectedFault
from textgen.serving.outputs import Admitted, GenerationOutput, TextDelta

from .tiny_serving import (
    drained,
    forward_passes_counted,
    greedy,
    make_async_engine,
    reference_greedy,
    requests_counted,
    running_engine,
    wait_until,
)

PROMPT = "Hello, my name is"
VARIED = "The quick brown fox jumps over the lazy dog and then"  # the tiny model's greedy text changes token on it
FAULT = "__fault__"


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = make_async_engine(tiny_model)
    yield engine
    engine.stop()


def a_later_token_as_stop_string(engine, prompt: str, new_tokens: int) -> tuple[str, str]:
    """A stop string that greedy decoding of `prompt` reaches after a few tokens, and the text before it."""
    full = asyncio.run(engine.generate(prompt, greedy(new_tokens)))
    ids = full.token_ids
    first_new = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])
    assert first_new >= 2, "the test needs a few tokens before the stop string"
    stop = engine.tokenizer.decode(ids[first_new : first_new + 1])
    return stop, full.text[: full.text.find(stop)]


async def collect(stream) -> list:
    return [event async for event in stream]


async def admitted(stream) -> None:
    """Take the stream's first event, which must be Admitted: the request then holds a slot."""
    assert isinstance(await anext(stream), Admitted)


def test_greedy_generate_returns_the_models_own_tokens_with_counts_and_timings(engine, tiny_model):
    tokenizer = tiny_model[1]
    ok_before = requests_counted("ok")

    output = asyncio.run(engine.generate(PROMPT, greedy(12)))

    assert output.token_ids == reference_greedy(tiny_model, PROMPT, 12)
    assert output.text == tokenizer.decode(output.token_ids)
    assert (output.prompt_tokens, output.completion_tokens) == (len(tokenizer.encode(PROMPT)), 12)
    assert output.finish_reason == "length"
    assert output.model == engine.model_tag
    t = output.timings
    assert 0 <= t.queue_s <= t.time_to_first_token_s <= t.total_s
    assert 0 < t.inference_s <= t.total_s < 5
    assert requests_counted("ok") == ok_before + 1


def test_a_stop_string_ends_the_output_before_it(engine):
    stop, before = a_later_token_as_stop_string(engine, VARIED, 20)
    assert before

    output = asyncio.run(engine.generate(VARIED, greedy(20, stop=(stop,))))

    assert (output.finish_reason, output.text) == ("stop", before)
    assert output.completion_tokens < 20


@pytest.mark.parametrize("use_stop", [False, True], ids=["no-stop", "stop-string"])
def test_stream_yields_admitted_then_pieces_that_add_up_to_the_final_text(engine, use_stop):
    stop = (a_later_token_as_stop_string(engine, VARIED, 24)[0],) if use_stop else ()

    events = asyncio.run(collect(engine.stream(VARIED, greedy(24, stop=stop))))

    assert isinstance(events[0], Admitted)
    assert isinstance(events[-1], GenerationOutput)
    pieces = events[1:-1]
    assert all(isinstance(p, TextDelta) and p.text for p in pieces)
    assert len(pieces) > 1  # streamed as it went, not in one piece at the end
    assert "".join(p.text for p in pieces) == events[-1].text
    assert events[-1].finish_reason == ("stop" if use_stop else "length")


def test_generate_and_stream_agree_on_the_output(engine):
    whole = asyncio.run(engine.generate(PROMPT, greedy(10)))
    streamed = asyncio.run(collect(engine.stream(PROMPT, greedy(10))))[-1]
    assert (streamed.token_ids, streamed.text, streamed.prompt_tokens) == (
        whole.token_ids,
        whole.text,
        whole.prompt_tokens,
    )


def test_max_new_tokens_filling_the_context_is_refused_before_admission(engine):
    passes = forward_passes_counted()

    async def scenario():
        stream = engine.stream(PROMPT, greedy(engine.loaded.context_length))
        with pytest.raises(ContextTooLong) as refused:
            await anext(stream)
        return refused.value

    error = asyncio.run(scenario())
    assert error.part == "max_new_tokens"
    assert str(engine.loaded.context_length) in error.message
    assert engine.gate.running == 0
    assert forward_passes_counted() == passes  # a refused request never reaches the engine


def test_a_prompt_too_long_for_the_context_is_refused_before_admission(engine, tiny_model):
    tokenizer = tiny_model[1]
    context = engine.loaded.context_length
    prompt = " hello" * 1000
    assert len(tokenizer.encode(prompt)) == 1000
    passes = forward_passes_counted()

    with pytest.raises(ContextTooLong) as refused:
        asyncio.run(engine.generate(prompt, greedy(context - 1000 + 1)))

    assert refused.value.part == "prompt"
    assert f"prompt has 1000 tokens and max_new_tokens is {context - 1000 + 1}" in refused.value.message
    assert forward_passes_counted() == passes
    assert engine.gate.running == 0


def test_a_huge_prompt_is_refused_on_its_length_alone(engine):
    prompt = "x" * (engine._max_token_chars * (engine.loaded.context_length + 1))
    with pytest.raises(ContextTooLong, match="at least") as refused:
        asyncio.run(engine.generate(prompt, greedy(1)))
    assert refused.value.part == "prompt"


def test_a_prompt_that_exactly_fills_the_context_is_served(engine):
    context = engine.loaded.context_length
    output = asyncio.run(engine.generate(" hello" * 1000, greedy(context - 1000)))
    assert (output.prompt_tokens, output.completion_tokens) == (1000, context - 1000)


def test_full_slots_and_queue_refuse_with_overloaded_and_a_retry_time(tiny_model):
    rejected_before = requests_counted("rejected_queue_full")

    async def scenario(engine):
        long = engine.stream(PROMPT, greedy(1000))
        await admitted(long)
        try:
            with pytest.raises(Overloaded) as refused:
                await engine.generate(PROMPT, greedy(4))
            assert (engine.gate.running, engine.gate.waiting) == (1, 0)
            gate_estimate = engine.gate.retry_after_s()
        finally:
            await long.aclose()
        await drained(engine)
        return refused.value, gate_estimate

    with running_engine(tiny_model, limit=1, max_queue=0) as engine:
        error, gate_estimate = asyncio.run(scenario(engine))
    assert error.retry_after_s == gate_estimate >= 1
    assert "all 1 generation slots are busy and 0 requests are waiting" in error.message
    assert requests_counted("rejected_queue_full") == rejected_before + 1


def test_a_request_that_waits_too_long_for_a_slot_gets_queue_timed_out(tiny_model):
    timed_out_before = requests_counted("rejected_queue_timeout")

    async def scenario(engine):
        long = engine.stream(PROMPT, greedy(1000))
        await admitted(long)
        try:
            with pytest.raises(QueueTimedOut) as refused:
                await engine.generate(PROMPT, greedy(4))
            waiting_after = engine.gate.waiting
        finally:
            await long.aclose()
        await drained(engine)
        return refused.value, waiting_after

    with running_engine(tiny_model, limit=1, max_queue=1, timeout_s=0.05) as engine:
        error, waiting_after = asyncio.run(scenario(engine))
    assert error.retry_after_s is not None and error.retry_after_s >= 1
    assert "within 0.05 s" in error.message
    assert waiting_after == 0
    assert requests_counted("rejected_queue_timeout") == timed_out_before + 1


def test_a_waiting_request_gets_the_slot_a_finished_one_frees(tiny_model):
    async def scenario(engine):
        first = asyncio.create_task(engine.generate(PROMPT, greedy(100)))
        assert await wait_until(lambda: engine.gate.running == 1)
        second = asyncio.create_task(engine.generate("A", greedy(5)))
        assert await wait_until(lambda: engine.gate.waiting == 1)
        assert not first.done()
        return await first, await second

    with running_engine(tiny_model, limit=1, max_queue=1) as engine:
        first, second = asyncio.run(scenario(engine))
        assert (engine.gate.running, engine.gate.waiting) == (0, 0)
    assert first.completion_tokens == 100
    assert second.token_ids == reference_greedy(tiny_model, "A", 5)
    assert second.timings.queue_s > 0


def test_closing_a_stream_early_frees_its_slot_and_its_batch_row(engine):
    disconnected_before = requests_counted("disconnected")

    async def scenario():
        stream = engine.stream(PROMPT, greedy(1000))
        await admitted(stream)
        assert isinstance(await anext(stream), TextDelta)
        assert await wait_until(lambda: engine.engine.active_rows == 1)  # (the first token comes during prefill)
        await stream.aclose()
        running_after_close = engine.gate.running
        rows_gone = await wait_until(lambda: engine.engine.active_rows == 0, timeout_s=2)
        return running_after_close, rows_gone

    running_after_close, rows_gone = asyncio.run(scenario())
    assert running_after_close == 0
    assert rows_gone
    assert requests_counted("disconnected") == disconnected_before + 1


def test_a_cancelled_generate_frees_its_slot_and_its_batch_row(engine):
    cancelled_before = requests_counted("cancelled")

    async def scenario():
        task = asyncio.create_task(engine.generate(PROMPT, greedy(1000)))
        assert await wait_until(lambda: engine.engine.active_rows == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return engine.gate.running, await wait_until(lambda: engine.engine.active_rows == 0, timeout_s=2)

    assert asyncio.run(scenario()) == (0, True)
    assert requests_counted("cancelled") == cancelled_before + 1


def test_a_job_failing_in_the_engine_raises_generation_failed_and_logs_the_cause(tiny_model, caplog):
    async def scenario(engine):
        return await asyncio.gather(
            engine.generate(FAULT + " hello", greedy(20)), engine.generate(PROMPT, greedy(12)), return_exceptions=True
        )

    caplog.set_level(logging.ERROR)
    with running_engine(tiny_model, limit=2, batch_wait_s=1.0, fault_marker=FAULT) as engine:  # both in one batch
        failed, neighbour = asyncio.run(scenario(engine))
        assert engine.gate.running == 0

    assert isinstance(failed, GenerationFailed)
    assert "Injected" not in failed.message  # no internals for the client
    assert neighbour.token_ids == reference_greedy(tiny_model, PROMPT, 12)  # the rest of its batch carries on
    assert "recomputing its 2 job(s)" in caplog.text  # the fault broke a pass the two shared
    (record,) = [r for r in caplog.records if r.name == "textgen.serving.async_engine"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("generation failed")
    assert isinstance(record.exc_info[1], InjectedFault)


def test_stopping_the_engine_mid_request_raises_shutting_down(tiny_model):
    async def scenario(engine):
        stream = engine.stream(PROMPT, greedy(1000))
        await admitted(stream)
        assert isinstance(await anext(stream), TextDelta)
        await asyncio.to_thread(engine.stop)
        with pytest.raises(ShuttingDown) as stopped:
            async for _ in stream:
                pass
        return stopped.value

    with running_engine(tiny_model) as engine:
        error = asyncio.run(scenario(engine))
        assert engine.gate.running == 0
    assert isinstance(error.__cause__, EngineStopped)


def test_a_request_waiting_for_a_slot_when_the_engine_stops_is_refused_with_shutting_down(tiny_model):
    async def scenario(engine):
        running = asyncio.create_task(engine.generate(PROMPT, greedy(1000)))
        assert await wait_until(lambda: engine.engine.active_rows == 1)
        waiting = asyncio.create_task(engine.generate(PROMPT, greedy(4)))
        assert await wait_until(lambda: engine.gate.waiting == 1)
        await asyncio.to_thread(engine.stop)
        with pytest.raises(ShuttingDown):
            await running
        await waiting

    with running_engine(tiny_model, limit=1, max_queue=1) as engine, pytest.raises(ShuttingDown):
        asyncio.run(scenario(engine))
