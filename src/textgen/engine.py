"""Iteration-level (continuous) batching on a Hugging Face causal LM.

One background thread owns the model. Before every decoding step, waiting jobs
are prefilled and join the batch; a job that finishes leaves it at once, so a
short request never waits for a long one and finished rows cost nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .kv_cache import PaddedBatch
from .sampling import SamplingParams, make_generator, select_tokens
from .schemas import FinishReason

logger = logging.getLogger(__name__)


class EngineStopped(RuntimeError):
    """The engine shut down before the job finished."""


class JobCancelled(RuntimeError):
    """The job was cancelled (its client went away) before it finished."""


@dataclass
class JobResult:
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    started_at: float  # time.perf_counter() at prefill
    first_token_at: float
    finished_at: float


@dataclass(eq=False)
class Job:
    """One request's generation, as the engine sees it."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    on_done: Callable[[JobResult | BaseException], None] = lambda _: None
    on_token: Callable[[int], None] | None = None  # for streaming; called from the engine thread
    # Set by the engine thread.
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    started_at: float = 0.0
    first_token_at: float = 0.0
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # tokens seen so far, for the repetition penalty


class BatchEngine:
    """Runs submitted jobs in shared forward passes, at most `max_batch_size` rows at a time."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int,
        on_step: Callable[[int], None] | None = None,
        join_window_s: float = 0.0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.join_window_s = join_window_s
        self.eos_token_id = model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self.device = model.device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self._on_step = on_step or (lambda _: None)
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._batch: PaddedBatch | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batch-engine", daemon=True)

    # --- API for the event loop -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise EngineStopped("the engine is shutting down")
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop the job at the next step (its client went away)."""
        job.cancelled = True

    @property
    def active_rows(self) -> int:
        return len(self._active)

    # --- engine thread ------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._pending or self._active):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._gather_arrivals()
                    joiners = self._take_joiners()
                self._step(joiners)
        self._fail(self._active + list(self._pending), EngineStopped("the engine shut down"))

    def _gather_arrivals(self) -> None:
        """An idle engine waits `join_window_s` for more requests, so requests arriving together share one prefill.

        Without it, the first of a burst starts alone and the others join one step later with prefills of their
        own: the batch then stays out of step and pays a prefill for every request.
        """
        deadline = time.monotonic() + self.join_window_s
        while not self._active and not self._stopping and len(self._pending) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take_joiners(self) -> list[Job]:
        joiners: list[Job] = []
        while self._pending and len(self._active) + len(joiners) < self.max_batch_size:
            job = self._pending.popleft()
            if job.cancelled:
                job.on_done(JobCancelled("cancelled while waiting"))
            else:
                joiners.append(job)
        return joiners

    def _step(self, joiners: list[Job]) -> None:
        if joiners:
            try:
                self._prefill(joiners)
            except Exception as exc:  # a bad prompt fails its own joiners, never the running batch
                logger.exception("prefill failed for %d job(s)", len(joiners))
                self._fail(joiners, exc)
        if self._active:
            try:
                self._decode()
            except Exception as exc:
                logger.exception("decode step failed; failing %d running job(s)", len(self._active))
                self._fail(self._active, exc)
                self._active, self._batch = [], None

    def _prefill(self, jobs: list[Job]) -> None:
        now = time.perf_counter()
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
            job.started_at = now
            job.generator = make_generator(job.sampling.seed)
            if job.sampling.repetition_penalty != 1.0:
                job.seen = torch.zeros(self.vocab_size, dtype=torch.bool)
                job.seen[job.prompt_ids] = True
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        batch = PaddedBatch(out.past_key_values, mask.to(self.device))
        self._on_step(len(jobs))
        survivors = self._advance(jobs, out.logits[:, -1])
        batch.keep(survivors)
        if not survivors:
            return
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.extend(batch)
        self._active.extend(jobs[i] for i in survivors)

    def _decode(self) -> None:
        batch = self._batch
        assert batch is not None
        positions = batch.next_positions()
        ids = torch.tensor([[job.output_ids[-1]] for job in self._active], device=self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=batch.grow(),
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
        )
        self._on_step(len(self._active))
        survivors = self._advance(self._active, out.logits[:, -1])
        if len(survivors) < len(self._active):
            self._active = [self._active[i] for i in survivors]
            if survivors:
                batch.keep(survivors)
            else:
                self._batch = None

    def _advance(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """Pick each job's next token; finish jobs that are done. Returns the rows still running."""
        seen = None
        if any(job.seen is not None for job in jobs):
            seen = torch.stack([job.seen if job.seen is not None else self._no_tokens() for job in jobs])
        tokens = select_tokens(
            logits.float().cpu(), [j.sampling for j in jobs], [j.generator for j in jobs], seen
        ).tolist()
        survivors = []
        for row, (job, token) in enumerate(zip(jobs, tokens, strict=True)):
            job.output_ids.append(token)
            if len(job.output_ids) == 1:
                job.first_token_at = time.perf_counter()
            if job.seen is not None:
                job.seen[token] = True
            if job.cancelled:
                job.on_done(JobCancelled("cancelled"))
                continue
            result = self._finished(job, token)
            if result is not None:
                job.on_done(result)  # the last token arrives with the final (stop-cut) text, not on its own
                continue
            survivors.append(row)
            if job.on_token is not None:
                job.on_token(token)
        return survivors

    def _no_tokens(self) -> torch.Tensor:
        return torch.zeros(self.vocab_size, dtype=torch.bool)

    def _finished(self, job: Job, token: int) -> JobResult | None:
        reason: FinishReason | None = None
        text: str | None = None
        if token == self.eos_token_id and not job.ignore_eos:
            reason = "eos"
        elif job.stop:
            text = self._decode_text(job.output_ids)
            cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
            if cut >= 0:
                reason, text = "stop", text[:cut]
        if reason is None and len(job.output_ids) >= job.max_new_tokens:
            reason = "length"
        if reason is None:
            return None
        if text is None:
            text = self._decode_text(job.output_ids)
        return JobResult(job.output_ids, text, reason, job.started_at, job.first_token_at, time.perf_counter())

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _fail(self, jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            job.on_done(exc)
