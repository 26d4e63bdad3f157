"""Iteration-level (continuous) batching on a Hugging Face causal LM.

One background thread owns the model. Before every decoding step, waiting jobs
are prefilled and join the batch; a job that finishes leaves it at once, so a
short request never waits for a long one and finished rows cost nothing.

A failure fails only the job that causes it: when a shared forward pass raises,
the batch is thrown away and every job is recomputed alone from its tokens so
far (recompute, as vLLM does on preemption); the ones that fail alone fail.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .constraints import ConstraintError
from .decoders import Decoder, WrittenOutDecoder, decoder_for
from .grammar import GrammarMatcher
from .greedy_screen import GreedyScreen
from .kv_cache import SlotBatch
from .logprobs import TokenLogprob, prompt_logprobs, token_logprobs
from .lora import BatchedLora
from .masking import mask_logits
from .sampling import make_generator, select_tokens
from .stopping import StopRules
from .types import EngineStopped, FinishReason, GenerationParams, GenerationResult, JobCancelled

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request's generation as the engine runs it: its input, where its outcome goes, and its state.

    A job that fails is finished with the exception; the caller, which knows the request, logs it.
    """

    prompt_ids: list[int]
    params: GenerationParams
    on_done: Callable[[GenerationResult | BaseException], None] = lambda _: None
    on_token: Callable[[int, TokenLogprob | None], None] | None = None  # streaming; called from the engine thread
    # Set by the engine thread.
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False  # on_done has been called
    started_at: float = 0.0
    first_token_at: float = 0.0
    generator: random.Random | None = None
    seen: torch.Tensor | None = None  # tokens seen so far, for the repetition penalty
    matcher: GrammarMatcher | None = None  # the job's own grammar state, when its output is constrained
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def takes_argmax(self) -> bool:
        """Its next token is the argmax of the raw logits (greedy; no penalty, grammar or logprobs)."""
        return self.params.sampling.greedy and self.seen is None and self.matcher is None and self.logprobs is None

    @property
    def scores_prompt(self) -> bool:
        """Its prefill must keep the logits of every prompt position (only before its first token)."""
        return self.params.prompt_logprobs is not None and not self.output_ids and self.prompt_logprobs is None


class BatchEngine:
    """Runs submitted jobs in shared forward passes, at most `max_batch_size` rows at a time."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int,
        on_step: Callable[[int], None] | None = None,
        join_window_s: float = 0.0,
        before_forward: Callable[[Sequence[Job]], None] | None = None,
        decoder: Decoder | None = None,
        greedy_screen: GreedyScreen | None = None,
    ) -> None:
        self.model = model
        self.decoder = decoder or decoder_for(model)  # decoding steps; prefills are the model's forward pass
        # Greedy rows' tokens without the LM head's full product: it screens a written-out step's hidden states.
        self._screening = (
            _Screening(self.decoder, greedy_screen)
            if greedy_screen is not None and isinstance(self.decoder, WrittenOutDecoder)
            else None
        )
        logger.info("decoding steps: %s%s", self.decoder.name, " with the greedy screen" if self._screening else "")
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.join_window_s = join_window_s
        eos_token_id = model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.stop_rules = StopRules(tokenizer, eos_token_id)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
        self.device = model.device
        self.vocab_size = model.get_output_embeddings().out_features  # Linear, packed or int8: all say it
        self._on_step = on_step or (lambda _: None)
        self._before_forward = before_forward or (lambda _: None)  # fault injection hook (tests, soak runs)
        self.lora = BatchedLora(model)
        self._commands: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._batch = SlotBatch(self.device, max_batch_size)
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

    def call(self, command: Callable[[], object]) -> Future[object]:
        """Run `command` on the engine thread between steps (changes to the model, such as adapters)."""
        done: Future[object] = Future()
        with self._cond:
            if self._stopping:
                raise EngineStopped("the engine is shutting down")
            self._commands.append((command, done))
            self._cond.notify()
        return done

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
                    while not (self._stopping or self._pending or self._active or self._commands):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                    if not commands:
                        self._gather_arrivals()
                        joiners = self._take_joiners()
                if commands:  # run outside the lock, between steps; the next turn of the loop steps
                    for command, done in commands:
                        _run_command(command, done)
                    continue
                self._step(joiners)
        self._fail(self._active + list(self._pending), EngineStopped("the engine shut down"))
        for _, done in self._commands:
            done.set_exception(EngineStopped("the engine shut down"))

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
                self._finish(job, JobCancelled("cancelled while waiting"))
            else:
                joiners.append(job)
        return joiners

    def _step(self, joiners: list[Job]) -> None:
        try:
            # A job that scores its prompt needs the logits of every position: it prefills alone, so the
            # others keep paying for one position each.
            plain = [job for job in joiners if not job.scores_prompt]
            if plain:
                self._prefill(plain)
            for job in joiners:
                if job.scores_prompt:
                    self._prefill([job])
            if self._active:
                self._decode()
        except Exception:
            # The pass failed as a whole, so it cannot say whose fault it was: recompute each job alone.
            involved = [job for job in dict.fromkeys([*self._active, *joiners]) if not job.done]
            logger.exception("a batched forward pass failed; recomputing its %d job(s) one by one", len(involved))
            self._active = []
            self._batch.clear()
            for job in involved:
                try:
                    self._prefill([job])
                except Exception as exc:
                    self._finish(job, exc)

    def _prefill(self, jobs: list[Job]) -> None:
        """Prefill new jobs (and pick their first token), or rebuild the cache of running ones after a failure."""
        self._before_forward(jobs)
        now = time.perf_counter()
        # A running job's context is everything but its last token, which the next decode step feeds.
        contexts = [job.prompt_ids + job.output_ids[:-1] for job in jobs]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(jobs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, (job, context) in enumerate(zip(jobs, contexts, strict=True)):
            ids[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
            if not job.output_ids:
                self._begin(job, now)
        scoring = [job for job in jobs if job.scores_prompt]
        assert not scoring or len(jobs) == 1, "a job that scores its prompt prefills alone"
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with self.lora.rows([job.params.adapter for job in jobs], [len(c) for c in contexts]):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=0 if scoring else 1,  # 0: every position
            )
        self._on_step(len(jobs))
        for job in scoring:
            k = job.params.prompt_logprobs or 0
            job.prompt_logprobs = prompt_logprobs(out.logits[0].float().cpu(), job.prompt_ids, k)
        new = [row for row, job in enumerate(jobs) if not job.output_ids]
        finished = set(self._finish_unbudgeted([jobs[row] for row in new]))
        new = [row for row in new if jobs[row] not in finished]
        finished.update(self._advance([jobs[row] for row in new], out.logits[new, -1]))
        survivors = [row for row, job in enumerate(jobs) if job not in finished]
        self._batch.add(out.past_key_values, mask, survivors)
        self._active.extend(jobs[row] for row in survivors)

    def _begin(self, job: Job, now: float) -> None:
        """A job's per-request state, made at its first prefill."""
        params = job.params
        job.started_at = now
        job.generator = make_generator(params.sampling.seed)
        if params.sampling.repetition_penalty != 1.0:
            job.seen = torch.zeros(self.vocab_size, dtype=torch.bool)
            job.seen[job.prompt_ids] = True
        if params.grammar is not None:
            job.matcher = params.grammar.matcher()
        if params.logprobs is not None:
            job.logprobs = []

    def _finish_unbudgeted(self, jobs: list[Job]) -> list[Job]:
        """Jobs with no token budget (they only score their prompt) are done once prefilled."""
        done = [job for job in jobs if job.params.max_new_tokens == 0]
        for job in done:
            job.first_token_at = now = time.perf_counter()
            self._finish(job, self._result(job, "length", "", now))
        return done

    def _decode(self) -> None:
        self._before_forward(self._active)
        self._batch.begin_step()
        ids = torch.tensor([[job.output_ids[-1]] for job in self._active], device=self.device)
        screen = self._screen_for(self._active)
        with self.lora.rows([job.params.adapter for job in self._active], [1] * len(self._active)):
            if screen is not None:
                hidden = screen.decoder.hidden(ids, self._batch)
            else:
                logits = self.decoder(ids, self._batch)
        self._batch.end_step()
        self._on_step(len(self._active))
        if screen is not None:
            finished = set(self._accept(self._active, screen.screen(hidden[:, -1]).tolist(), {}))
        else:
            finished = set(self._advance(self._active, logits))
        if finished:
            order = self._batch.drop([row for row, job in enumerate(self._active) if job in finished])
            self._active = [self._active[row] for row in order]

    def _screen_for(self, jobs: list[Job]) -> _Screening | None:
        """How the step picks every row's token with the greedy screen, if all rows want only the logits' argmax."""
        screening = self._screening
        if screening is None or not screening.screen.usable or not all(job.takes_argmax for job in jobs):
            return None
        return screening

    def _advance(self, jobs: list[Job], logits: torch.Tensor) -> list[Job]:
        """Pick each job's next token from its logits and finish the jobs that are done (or fail)."""
        logits = logits.float().cpu()
        # Logprobs come from the raw logits: taken before _select masks them in place for grammars.
        scored = [row for row, job in enumerate(jobs) if job.logprobs is not None]
        raw_logprobs = dict(zip(scored, logits[scored].log_softmax(dim=-1), strict=True)) if scored else {}
        return self._accept(jobs, self._select(jobs, logits), raw_logprobs)

    def _accept(
        self, jobs: list[Job], picked: list[int | Exception], raw_logprobs: dict[int, torch.Tensor]
    ) -> list[Job]:
        """Give each job its picked token and finish the jobs that are done (or fail). Returns the finished jobs.

        Never raises: a job whose token selection or bookkeeping fails is finished with that error alone.
        """
        finished: list[Job] = []
        for row, (job, token) in enumerate(zip(jobs, picked, strict=True)):
            try:
                if isinstance(token, Exception):
                    raise token
                job.output_ids.append(token)
                if len(job.output_ids) == 1:
                    job.first_token_at = time.perf_counter()
                if job.seen is not None:
                    job.seen[token] = True
                if job.matcher is not None:
                    job.matcher.accept(token)
                entry = None
                if job.logprobs is not None:
                    k = job.params.logprobs or 0
                    entry = token_logprobs(raw_logprobs[row].unsqueeze(0), [token], [k])[0]
                    job.logprobs.append(entry)
                if job.cancelled:
                    raise JobCancelled("cancelled")
                result = self._finished(job)
                if result is None and job.on_token is not None:
                    job.on_token(token, entry)
            except Exception as exc:
                result = exc
            if result is not None:
                self._finish(job, result)  # the last token arrives with the final (stop-cut) text, not on its own
                finished.append(job)
        return finished

    def _select(self, jobs: list[Job], logits: torch.Tensor) -> list[int | Exception]:
        """Next token per row, in one batched call; if that fails, row by row so only the bad rows fail."""
        try:
            return self._select_rows(jobs, logits)
        except Exception:
            logger.warning("batched token selection failed; selecting row by row", exc_info=True)
        picked: list[int | Exception] = []
        for row, job in enumerate(jobs):
            try:
                picked.extend(self._select_rows([job], logits[row : row + 1]))
            except Exception as exc:
                picked.append(exc)
        return picked

    def _select_rows(self, jobs: list[Job], logits: torch.Tensor) -> list[int | Exception]:
        """Masks constrained rows to their grammars in place, then picks with each row's own sampling."""
        matchers: dict[int, GrammarMatcher] = {row: job.matcher for row, job in enumerate(jobs) if job.matcher}
        failed = []
        if matchers:
            failed = mask_logits(logits, list(matchers), list(matchers.values()), self.stop_rules.eos_token_id)
        seen = None
        if any(job.seen is not None for job in jobs):
            seen = torch.stack([job.seen if job.seen is not None else self._no_tokens() for job in jobs])
        picked: list[int | Exception] = select_tokens(
            logits, [j.params.sampling for j in jobs], [j.generator for j in jobs], seen
        ).tolist()
        for row in failed:  # the grammar library gave up on this row (a resource limit): it fails alone
            picked[row] = ConstraintError(f"the output grammar failed: {matchers[row].error()}")
        return picked

    def _no_tokens(self) -> torch.Tensor:
        return torch.zeros(self.vocab_size, dtype=torch.bool)

    def _finished(self, job: Job) -> GenerationResult | None:
        grammar_done = job.matcher is not None and job.matcher.is_terminated()
        done = self.stop_rules.check(job.params, job.output_ids, grammar_done)
        if done is None:
            return None
        reason, text = done
        return self._result(job, reason, text, time.perf_counter())

    def _result(self, job: Job, reason: FinishReason, text: str, now: float) -> GenerationResult:
        return GenerationResult(
            job.output_ids,
            text,
            reason,
            job.started_at,
            job.first_token_at,
            now,
            logprobs=job.logprobs,
            prompt_logprobs=job.prompt_logprobs,
        )

    def _finish(self, job: Job, outcome: GenerationResult | BaseException) -> None:
        job.done = True
        job.on_done(outcome)

    def _fail(self, jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            self._finish(job, exc)


@dataclass(frozen=True)
class _Screening:
    decoder: WrittenOutDecoder  # gives the hidden states
    screen: GreedyScreen  # turns them into tokens


def _run_command(command: Callable[[], object], done: Future[object]) -> None:
    try:
        done.set_result(command())
    except Exception as exc:
        done.set_exception(exc)
