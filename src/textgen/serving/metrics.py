"""Prometheus metrics of generation, served by BentoML's `/metrics`."""

from __future__ import annotations

from functools import lru_cache

from .admission import AdmissionGate
from .outputs import GenerationOutput

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class GenerationMetrics:
    def __init__(self) -> None:
        # Imported here: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker after the service module is imported.
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("textgen_requests", "Generation requests by outcome.", ["outcome"])
        self.queue_wait = Histogram(
            "textgen_queue_wait_seconds", "Wait for a slot and a batch.", buckets=LATENCY_BUCKETS
        )
        self.latency = Histogram("textgen_generation_seconds", "Prefill to last token.", buckets=LATENCY_BUCKETS)
        self.running = Gauge("textgen_generations_running", "Admitted generations.", multiprocess_mode="livesum")
        self.waiting = Gauge("textgen_generations_waiting", "Requests waiting for a slot.", multiprocess_mode="livesum")
        self.time_to_first_token = Histogram(
            "textgen_time_to_first_token_seconds", "Arrival to first generated token.", buckets=LATENCY_BUCKETS
        )
        self.inter_token_latency = Histogram(
            "textgen_inter_token_latency_seconds", "Mean gap between a request's tokens.", buckets=ITL_BUCKETS
        )
        self.tokens_per_second = Histogram(
            "textgen_generation_tokens_per_second",
            "A request's generated tokens over its generation time.",
            buckets=RATE_BUCKETS,
        )
        self.batch_size = Histogram("textgen_batch_size", "Rows per forward pass.", buckets=BATCH_BUCKETS)
        self.prompt_tokens = Counter("textgen_prompt_tokens", "Prompt tokens of finished generations.")
        self.generated_tokens = Counter("textgen_generated_tokens", "Tokens generated.")
        # By adapter name (store names, chosen by the operator: a bounded set, at most MAX_LORAS at a time).
        self.adapter_requests = Counter("textgen_adapter_requests", "Finished rows that used an adapter.", ["adapter"])
        self.adapter_prompt_tokens = Counter("textgen_adapter_prompt_tokens", "Their prompt tokens.", ["adapter"])
        self.adapter_generated_tokens = Counter("textgen_adapter_generated_tokens", "Their tokens.", ["adapter"])
        self.model_loaded = Gauge("textgen_model_loaded", "1 once the model is loaded.", multiprocess_mode="livemax")

    def observe_load(self, gate: AdmissionGate) -> None:
        self.running.set(gate.running)
        self.waiting.set(gate.waiting)

    def observe_output(self, output: GenerationOutput, adapter: str | None = None) -> None:
        """A finished generation (one row; the request's outcome is counted once, on admission's exit)."""
        t = output.timings
        generated = output.completion_tokens
        self.queue_wait.observe(t.queue_s)
        self.latency.observe(t.inference_s)
        if t.inference_s > 0:
            self.tokens_per_second.observe(generated / t.inference_s)
        self.time_to_first_token.observe(t.time_to_first_token_s)
        if generated > 1:
            decode_s = t.inference_s - (t.time_to_first_token_s - t.queue_s)  # first token to last
            self.inter_token_latency.observe(decode_s / (generated - 1))
        self.prompt_tokens.inc(output.prompt_tokens)
        self.generated_tokens.inc(generated)
        if adapter is not None:
            self.adapter_requests.labels(adapter).inc()
            self.adapter_prompt_tokens.labels(adapter).inc(output.prompt_tokens)
            self.adapter_generated_tokens.labels(adapter).inc(generated)


@lru_cache
def get_metrics() -> GenerationMetrics:
    return GenerationMetrics()
