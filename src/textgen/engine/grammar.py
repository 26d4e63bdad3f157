"""Compiling output constraints into token-level grammars, and following one generation with a matcher.

Built on llguidance (scripts/compare_grammar_libs.py says why it and not xgrammar). The interface:

    compiler = GrammarCompiler(tokenizer, vocab_size)        # once per model: builds the token trie (~0.3 s)
    compiled = compiler.compile(constraint)                   # thread-safe, LRU-cached; raises ConstraintError
    matcher = compiled.matcher()                              # one per request (row)
    ... each step: masking.mask_logits(logits, rows, matchers, eos) -> sample -> matcher.accept(token)
    matcher.is_terminated()                                   # the row must finish now ("stop")

A matcher belongs to one row and is advanced by one thread at a time (the engine's); compiling and creating
matchers may happen on any thread.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

import llguidance
import llguidance.hf
import torch
from transformers import PreTrainedTokenizerBase

from .constraints import ConstraintError, OutputConstraint, excerpt

# Whitespace between JSON tokens: any kind, but at most 20 characters per gap. Enough for pretty-printing a few
# levels deep, and it stops a model that likes newlines from spending its whole budget on them.
JSON_WHITESPACE = r"[\x20\x0A\x0D\x09]{0,20}"
_JSON_OPTIONS: dict[str, str] = {"whitespace_pattern": JSON_WHITESPACE}
# Terse errors: the verbose ones quote the grammar and parser state, which may be large and are not for clients.
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)


def grammar_text(constraint: OutputConstraint) -> str:
    """The llguidance grammar for a constraint (not yet checked)."""
    if constraint.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if constraint.kind == "json_schema":
        assert isinstance(constraint.spec, str)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(constraint.spec, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise ConstraintError(f"invalid JSON schema: {excerpt(str(exc), 300)}") from None
    if constraint.kind == "regex":
        assert isinstance(constraint.spec, str)
        return llguidance.LLMatcher.grammar_from_regex(constraint.spec)
    # choice: Lark string literals take JSON escapes, so json.dumps quotes any option safely.
    return "start: " + " | ".join(json.dumps(option) for option in constraint.spec)


class GrammarMatcher:
    """One generation's position in its grammar."""

    __slots__ = ("_inner",)

    def __init__(self, inner: llguidance.LLMatcher) -> None:
        self._inner = inner

    def accept(self, token_id: int) -> None:
        """Advance past `token_id` (EOS included, once the grammar is complete). A token the mask did not allow
        raises, and leaves the matcher failed."""
        if not self._inner.consume_token(token_id):
            raise ConstraintError(f"token {token_id} is not allowed here: {excerpt(self._inner.get_error(), 300)}")

    def is_complete(self) -> bool:
        """The output so far is a whole match: the row may end here (EOS is allowed), or may go on."""
        return self._inner.is_accepting()

    def is_terminated(self) -> bool:
        """Nothing more can follow (the grammar ended, or EOS was accepted): the row must finish, reason "stop"."""
        return self._inner.is_stopped() and not self._inner.is_error()

    def error(self) -> str:
        """Why the matcher failed (a rejected token, a resource limit hit while masking); "" while it is fine."""
        return self._inner.get_error()

    @property
    def inner(self) -> llguidance.LLMatcher:
        return self._inner


class CompiledGrammar:
    """A checked grammar, shared by every request with the same constraint."""

    def __init__(self, constraint: OutputConstraint, template: llguidance.LLMatcher) -> None:
        self.constraint = constraint
        self._template = template  # never advanced: fresh matchers are copies of it
        self._lock = threading.Lock()  # copying reads the template; keep concurrent copies apart

    def matcher(self) -> GrammarMatcher:
        with self._lock:
            return GrammarMatcher(self._template.deep_copy())


class GrammarCompiler:
    """Compiles constraints for one tokenizer; keeps the last `cache_size` compiled grammars (LRU)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        cache_size: int = 128,
        *,
        eos_token_id: int | None = None,
    ) -> None:
        """`vocab_size` is the model's logits width (may exceed len(tokenizer): ids past the tokenizer are never
        allowed). `eos_token_id` defaults to the tokenizer's; it is the token that ends a complete output."""
        if vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.vocab_size = vocab_size
        self.eos_token_id: int = eos
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self._cache: OrderedDict[OutputConstraint, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, constraint: OutputConstraint) -> CompiledGrammar:
        """The compiled grammar for `constraint`, from the cache when it is there. Raises ConstraintError."""
        with self._lock:
            if (hit := self._cache.get(constraint)) is not None:
                self._cache.move_to_end(constraint)
                return hit
        compiled = self._build(constraint)  # outside the lock: a slow schema must not hold up cached ones
        with self._lock:
            compiled = self._cache.setdefault(constraint, compiled)  # a racing twin may have stored one first
            self._cache.move_to_end(constraint)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _build(self, constraint: OutputConstraint) -> CompiledGrammar:
        # Building the matcher checks the grammar (schema keywords, regex syntax) and builds its lexer; it
        # releases the GIL meanwhile, so compiling off the engine thread does not stall it.
        template = llguidance.LLMatcher(self._tokenizer, grammar_text(constraint), log_level=0, limits=_LIMITS)
        if template.is_error():
            what = {"json_object": "JSON object grammar", "json_schema": "JSON schema", "regex": "regex"}
            raise ConstraintError(
                f"invalid or unsupported {what.get(constraint.kind, constraint.kind)}: "
                f"{excerpt(template.get_error(), 300)}"
            )
        return CompiledGrammar(constraint, template)


def fill_bitmask(bitmask: torch.Tensor, matchers: Sequence[GrammarMatcher], executor: llguidance.LLExecutor) -> None:
    """Write matcher i's allowed-token bits into bitmask[i] (int32 [rows, ceil(vocab / 32)], CPU, contiguous),
    in parallel across matchers and without the GIL."""
    assert bitmask.dtype == torch.int32 and bitmask.is_contiguous() and not bitmask.is_cuda
    pairs = [(m.inner, i) for i, m in enumerate(matchers)]
    executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), bitmask.shape[1] * 4, bitmask.shape[0])
