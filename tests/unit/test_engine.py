"""The batching engine on a real (tiny) model: its tokens must match transformers' own generate()."""

from __future__ import annotations

import threading
import time

import pytest

from textgen.engine import BatchEngine, GenerationParams, GenerationResult, Job, SamplingParams
from textgen.engine import batch_engine as engine_module
from textgen.serving.faults import FaultInjector, InjectedFault

from .tiny_serving import reference_greedy

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = [
    "Hello, my name is",
    "The quick brown fox jumps over the lazy dog and then",
    "A",
    "In 1492 Columbus sailed the ocean blue, and later",
]


@pytest.fixture(scope="module")
def engine(tiny_model):
    model, tokenizer = tiny_model
    engine = BatchEngine(model, tokenizer, max_batch_size=8)
    engine.start()
    yield engine
    engine.stop()


def run_outcomes(engine: BatchEngine, jobs: list[Job], timeout: float = 60) -> list[GenerationResult | BaseException]:
    """Submit the jobs together (they share forward passes) and wait for each one's result or error."""
    done = [threading.Event() for _ in jobs]
    results: list[GenerationResult | BaseException | None] = [None] * len(jobs)
    for i, job in enumerate(jobs):

        def deliver(outcome, i=i):
            results[i] = outcome
            done[i].set()

        job.on_done = deliver
        engine.submit(job)
    for event in done:
        assert event.wait(timeout), "a job never finished"
    return results  # type: ignore[return-value]


def run_jobs(engine: BatchEngine, jobs: list[Job], timeout: float = 60) -> list[GenerationResult]:
    results = run_outcomes(engine, jobs, timeout)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def job(tokenizer, prompt: str, new_tokens: int, sampling: SamplingParams = GREEDY, **kw) -> Job:
    return Job(tokenizer(prompt).input_ids, GenerationParams(new_tokens, sampling, ignore_eos=True, **kw))


def test_greedy_alone_matches_transformers_generate(engine, tiny_model):
    tokenizer = tiny_model[1]
    for prompt in PROMPTS:
        (result,) = run_jobs(engine, [job(tokenizer, prompt, 16)])
        assert result.token_ids == reference_greedy(tiny_model, prompt, 16)
        assert result.finish_reason == "length"


def test_greedy_inside_mixed_batch_matches_alone(engine, tiny_model):
    tokenizer = tiny_model[1]
    sampled = SamplingParams(temperature=0.9, top_p=0.8, top_k=40, repetition_penalty=1.3, seed=3)
    jobs = [job(tokenizer, p, 16 if i % 2 else 6) for i, p in enumerate(PROMPTS)]
    jobs += [job(tokenizer, "noise maker", 12, sampled), job(tokenizer, "more noise, longer prompt here", 9, sampled)]
    results = run_jobs(engine, jobs)
    for i, prompt in enumerate(PROMPTS):
        expected = reference_greedy(tiny_model, prompt, 16)[: len(results[i].token_ids)]
        assert results[i].token_ids == expected
        assert len(results[i].token_ids) == (16 if i % 2 else 6)  # each row keeps its own max_new_tokens


def test_requests_joining_a_running_batch_get_the_same_tokens(engine, tiny_model):
    tokenizer = tiny_model[1]
    first = job(tokenizer, PROMPTS[1], 40)
    done = threading.Event()
    first.on_done = lambda _: done.set()
    engine.submit(first)
    late = run_jobs(engine, [job(tokenizer, p, 10) for p in PROMPTS])  # join while `first` is decoding
    assert done.wait(60)
    assert first.output_ids == reference_greedy(tiny_model, PROMPTS[1], 40)
    for result, prompt in zip(late, PROMPTS, strict=True):
        assert result.token_ids == reference_greedy(tiny_model, prompt, 10)


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine, tiny_model):
    tokenizer = tiny_model[1]
    params = SamplingParams(temperature=1.0, top_k=50, seed=1234)
    a = run_jobs(engine, [job(tokenizer, "Once upon a time", 24, params)])[0].token_ids
    b = run_jobs(engine, [job(tokenizer, "Once upon a time", 24, params), job(tokenizer, "other", 5)])[0].token_ids
    c = run_jobs(engine, [job(tokenizer, "Once upon a time", 24, SamplingParams(temperature=1.0, top_k=50, seed=99))])
    assert a == b
    assert a != c[0].token_ids


def test_stop_string_ends_generation_and_is_cut(engine, tiny_model):
    tokenizer = tiny_model[1]
    full = run_jobs(engine, [job(tokenizer, PROMPTS[0], 20)])[0]
    stop = full.text[len(full.text) // 2 :][:3]  # a piece of the text greedy decoding will produce
    assert stop.strip()
    result = run_jobs(engine, [job(tokenizer, PROMPTS[0], 20, stop=(stop,))])[0]
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.find(stop)]
    assert len(result.token_ids) < 20


def test_eos_finishes_unless_ignored(tiny_model):
    model, tokenizer = tiny_model
    engine = BatchEngine(model, tokenizer, max_batch_size=4)
    first = reference_greedy(tiny_model, "Hi", 1)[0]
    engine.stop_rules.eos_token_id = first  # make the model's first greedy token the end of sequence
    engine.start()
    try:
        stops, goes_on = run_jobs(
            engine,
            [
                Job(tokenizer("Hi").input_ids, GenerationParams(8, GREEDY)),
                Job(tokenizer("Hi").input_ids, GenerationParams(8, GREEDY, ignore_eos=True)),
            ],
        )
    finally:
        engine.stop()
    assert (stops.finish_reason, len(stops.token_ids)) == ("eos", 1)
    assert (goes_on.finish_reason, len(goes_on.token_ids)) == ("length", 8)


def test_cancelled_job_leaves_the_batch(engine, tiny_model):
    tokenizer = tiny_model[1]
    doomed = job(tokenizer, PROMPTS[0], 900)
    outcome: list[object] = []
    finished = threading.Event()
    doomed.on_done = lambda o: (outcome.append(o), finished.set())
    engine.submit(doomed)
    survivor = job(tokenizer, PROMPTS[2], 30)
    result_holder: list[GenerationResult] = []
    t = threading.Thread(target=lambda: result_holder.extend(run_jobs(engine, [survivor])))
    t.start()
    engine.cancel(doomed)
    assert finished.wait(30)
    t.join(60)
    assert isinstance(outcome[0], Exception)
    assert len(doomed.output_ids) < 900
    assert result_holder[0].token_ids == reference_greedy(tiny_model, PROMPTS[2], 30)
    assert engine.active_rows == 0


@pytest.fixture
def faulty_engine(tiny_model):
    """An engine that fails any forward pass holding a job whose prompt starts with MARKER, after 3 tokens."""
    model, tokenizer = tiny_model
    steps: list[int] = []
    injector = FaultInjector.for_marker(MARKER, tokenizer)
    engine = BatchEngine(
        model, tokenizer, max_batch_size=8, on_step=steps.append, join_window_s=0.3, before_forward=injector
    )
    engine.start()
    yield engine, steps, injector
    engine.stop()


MARKER = "__inject_fault__"


def test_a_failing_decode_step_fails_only_the_faulty_job(faulty_engine, tiny_model):
    engine, steps, injector = faulty_engine
    tokenizer = tiny_model[1]
    seeded = SamplingParams(temperature=1.0, top_k=50, repetition_penalty=1.2, seed=7)
    alone = run_jobs(engine, [job(tokenizer, "Once upon a time", 12, seeded)])[0].token_ids
    steps.clear()
    faulty = job(tokenizer, MARKER + " hello", 20)
    jobs = [*(job(tokenizer, p, 12) for p in PROMPTS), faulty, job(tokenizer, "Once upon a time", 12, seeded)]
    outcomes = run_outcomes(engine, jobs)
    assert steps[0] == len(jobs)  # they did share the batch the fault broke
    assert isinstance(outcomes[4], InjectedFault)
    assert len(faulty.output_ids) == injector.after_tokens
    for outcome, prompt in zip(outcomes[:4], PROMPTS, strict=True):  # recomputed rows lose nothing
        assert outcome.token_ids == reference_greedy(tiny_model, prompt, 12)
    assert outcomes[5].token_ids == alone  # a seeded sample survives the recompute unchanged
    assert engine.active_rows == 0


def test_a_failing_prefill_fails_only_its_own_job(faulty_engine, tiny_model, caplog):
    engine, _, _ = faulty_engine
    tokenizer = tiny_model[1]
    bad = Job([10**9], GenerationParams(4, GREEDY))  # token id outside the vocabulary: the forward pass raises
    outcomes = run_outcomes(engine, [job(tokenizer, PROMPTS[0], 8), bad, job(tokenizer, PROMPTS[1], 8)])
    assert "recomputing its 3 job(s)" in caplog.text  # they shared the prefill that failed
    assert isinstance(outcomes[1], IndexError)
    assert outcomes[0].token_ids == reference_greedy(tiny_model, PROMPTS[0], 8)
    assert outcomes[2].token_ids == reference_greedy(tiny_model, PROMPTS[1], 8)


def test_a_failing_token_selection_or_callback_fails_only_its_row(engine, tiny_model, monkeypatch):
    tokenizer = tiny_model[1]
    real_select = engine_module.select_tokens

    def select_failing_for_seed_13(logits, params, generators, seen):
        if any(p.seed == 13 for p in params):
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_select(logits, params, generators, seen)

    monkeypatch.setattr(engine_module, "select_tokens", select_failing_for_seed_13)
    bad_sampling = job(tokenizer, PROMPTS[0], 8, SamplingParams(seed=13))
    bad_callback = job(tokenizer, PROMPTS[1], 8)
    bad_callback.on_token = lambda _token, _logprob: 1 / 0  # e.g. a streaming consumer that fails
    outcomes = run_outcomes(engine, [bad_sampling, job(tokenizer, PROMPTS[2], 8), bad_callback])
    assert isinstance(outcomes[0], RuntimeError)
    assert isinstance(outcomes[2], ZeroDivisionError)
    assert outcomes[1].token_ids == reference_greedy(tiny_model, PROMPTS[2], 8)


def test_a_burst_reaching_an_idle_engine_shares_one_prefill(tiny_model):
    model, tokenizer = tiny_model
    steps: list[int] = []
    engine = BatchEngine(model, tokenizer, max_batch_size=5, on_step=steps.append, join_window_s=0.5)
    engine.start()
    try:
        jobs = [job(tokenizer, p, 3) for p in [*PROMPTS, "one more"]]
        done = threading.Semaphore(0)
        for j in jobs:
            j.on_done = lambda _: done.release()
            engine.submit(j)
            time.sleep(0.01)  # arrivals a few ms apart, as closed-loop clients send them
        for _ in jobs:
            assert done.acquire(timeout=60)
    finally:
        engine.stop()
    assert steps[0] == 5  # one prefill for all five, not 1 + 4
