"""Grammar-constrained decoding (engine/constraints, grammar, masking) on GPT-2's real 50257-token vocabulary.

The grammar, not the weights, guarantees the shape: a random-weight model sampling at temperature 1 must still
produce only valid outputs."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textgen.engine.constraints import MAX_CHOICES, MAX_SPEC_BYTES, ConstraintError, OutputConstraint
from textgen.engine.grammar import GrammarCompiler, GrammarMatcher
from textgen.engine.masking import TokenMasker, mask_logits

VOCAB = 50257
EOS = 50256
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
    return tiny_model[1]


@pytest.fixture(scope="module")
def compiler(tokenizer: PreTrainedTokenizerBase) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, VOCAB)


def walk(matcher: GrammarMatcher, tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    for token in tokenizer.encode(text):
        matcher.accept(token)


def allowed(matcher: GrammarMatcher) -> torch.Tensor:
    """The tokens the matcher allows next, as a bool [vocab] tensor."""
    logits = torch.zeros(1, VOCAB)
    assert mask_logits(logits, [0], [matcher], EOS) == []
    return torch.isfinite(logits[0])


# ---------------------------------------------------------------------------------------------- the spec


def test_a_schema_is_canonical_json_with_its_key_order_kept():
    a = OutputConstraint.json_schema({"type": "object", "properties": {"b": {}, "a": {}}})
    assert a == OutputConstraint.json_schema(json.loads('{"type" : "object", "properties": {"b": {}, "a": {}}}'))
    assert a.spec == '{"type":"object","properties":{"b":{},"a":{}}}'  # property order decides output order
    assert hash(a) != hash(OutputConstraint.json_schema({"type": "object", "properties": {"a": {}, "b": {}}}))
    assert OutputConstraint.choice(["x", "y", "x"]).spec == ("x", "y")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OutputConstraint.json_schema({"enum": ["x" * MAX_SPEC_BYTES]}), "at most 65536"),
        (lambda: OutputConstraint.json_schema(["not", "an", "object"]), "must be an object"),
        (lambda: OutputConstraint.json_schema({"x": float("nan")}), "not serialisable"),
        (lambda: OutputConstraint.regex(""), "non-empty"),
        (lambda: OutputConstraint.regex("a" * (MAX_SPEC_BYTES + 1)), "at most 65536"),
        (lambda: OutputConstraint.choice([]), "at least one"),
        (lambda: OutputConstraint.choice(["a", ""]), "non-empty"),
        (lambda: OutputConstraint.choice("abc"), "list of strings"),
        (lambda: OutputConstraint.choice([1, 2]), "must be strings"),
        (lambda: OutputConstraint.choice([str(i) for i in range(MAX_CHOICES + 1)]), f"at most {MAX_CHOICES}"),
        (lambda: OutputConstraint("grammar", "x"), "unknown constraint kind"),  # type: ignore[arg-type]
    ],
)
def test_invalid_or_oversized_specs_are_refused_with_a_short_reason(make, message):
    with pytest.raises(ConstraintError, match=message) as caught:
        make()
    assert len(str(caught.value)) < 300


# ---------------------------------------------------------------------------------------------- compiling


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (OutputConstraint.json_schema({"type": "objekt"}), "objekt"),
        (OutputConstraint.json_schema({"type": "string", "format": "made-up"}), "made-up"),
        (OutputConstraint.json_schema({"properties": {"a": {"$ref": "#/$defs/missing"}}}), "missing"),
        (OutputConstraint.json_schema({"type": "string", "pattern": "(unclosed"}), "unclosed"),
        (OutputConstraint.regex("(ab"), "unclosed"),
    ],
)
def test_an_invalid_or_unsupported_grammar_raises_constraint_error(compiler, constraint, message):
    with pytest.raises(ConstraintError, match=message):
        compiler.compile(constraint)


def test_an_error_message_does_not_repeat_a_large_schema(compiler):
    huge = {"type": "objekt", "description": "y" * 50_000}
    with pytest.raises(ConstraintError) as caught:
        compiler.compile(OutputConstraint.json_schema(huge))
    assert len(str(caught.value)) < 500


def test_compiled_grammars_are_cached_per_constraint_lru(tokenizer, compiler):
    person = OutputConstraint.json_schema(PERSON)
    assert compiler.compile(person) is compiler.compile(OutputConstraint.json_schema(json.loads(json.dumps(PERSON))))
    assert compiler.compile(OutputConstraint.json_object()) is not compiler.compile(person)

    small = GrammarCompiler(tokenizer, VOCAB, cache_size=2)
    a, b, c = (OutputConstraint.choice([x]) for x in "abc")
    first_a, first_b = small.compile(a), small.compile(b)
    assert small.compile(a) is first_a  # a hit: a is now the most recent
    small.compile(c)  # evicts b, the least recent
    assert small.compile(a) is first_a
    assert small.compile(b) is not first_b  # compiled again


def test_compiling_from_many_threads_gives_one_grammar(compiler):
    constraint = OutputConstraint.regex(r"[0-9]{4}-[0-9]{2}")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(compiler.compile(constraint))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)


# ---------------------------------------------------------------------------------------------- matching, EOS


def test_eos_is_allowed_only_where_the_grammar_is_complete(tokenizer, compiler):
    matcher = compiler.compile(OutputConstraint.regex(r"[0-9]{2,3}")).matcher()
    assert not allowed(matcher)[EOS] and not matcher.is_complete()
    walk(matcher, tokenizer, "12")
    assert matcher.is_complete() and not matcher.is_terminated()
    assert allowed(matcher)[EOS]  # "12" may end, or go on to "123"
    matcher.accept(EOS)
    assert matcher.is_terminated()


def test_a_grammar_that_can_accept_nothing_more_is_terminated(tokenizer, compiler):
    matcher = compiler.compile(OutputConstraint.choice(["yes", "no"])).matcher()
    walk(matcher, tokenizer, "yes")
    assert matcher.is_terminated()
    assert allowed(matcher).nonzero().flatten().tolist() == [EOS]


def test_each_matcher_is_independent_and_a_rejected_token_fails_only_its_row(tokenizer, compiler):
    compiled = compiler.compile(OutputConstraint.choice(["yes", "no"]))
    good, bad = compiled.matcher(), compiled.matcher()
    walk(good, tokenizer, "no")
    with pytest.raises(ConstraintError, match="not allowed"):
        bad.accept(tokenizer.encode("maybe")[0])
    assert good.is_terminated() and bad.error()
    logits = torch.zeros(2, VOCAB)
    assert mask_logits(logits, [0, 1], [good, bad], EOS) == [1]
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [EOS]  # the failed row can only end


def test_unconstrained_rows_are_left_untouched_bit_for_bit(tokenizer, compiler):
    person = compiler.compile(OutputConstraint.json_schema(PERSON)).matcher()
    choice = compiler.compile(OutputConstraint.choice(["red", "green"])).matcher()
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    assert mask_logits(logits, [1, 3], [person, choice], EOS) == []
    for row in (0, 2, 4):
        assert torch.equal(logits[row], before[row])
    first = tokenizer.encode('{"')[0]
    assert torch.isfinite(logits[1, first]) and torch.isinf(logits[1, tokenizer.encode("x")[0]])
    finite = torch.isfinite(logits[3])
    assert finite.sum() < 20 and finite[tokenizer.encode("red")[0]] and not finite[EOS]
    assert torch.equal(logits[1][torch.isfinite(logits[1])], before[1][torch.isfinite(logits[1])])


def test_ids_past_the_tokenizer_are_never_allowed_in_a_padded_vocabulary(tokenizer):
    padded = 50304  # a model whose embedding rows are rounded up to a multiple of 64
    compiler = GrammarCompiler(tokenizer, padded)
    matcher = compiler.compile(OutputConstraint.json_object()).matcher()
    logits = torch.zeros(1, padded)
    TokenMasker(padded)(logits, [0], [matcher], EOS)
    assert torch.isinf(logits[0, VOCAB:]).all() and torch.isfinite(logits[0, :VOCAB]).any()


# ---------------------------------------------------------------------------------------------- random weights


def sample(
    model, tokenizer, compiled, seeds: int = 30, max_new_tokens: int = 48, bias: torch.Tensor | None = None
) -> list[tuple[str, bool]]:
    """Each seed's output and whether its grammar terminated: temperature 1 over the masked softmax, one batch.
    `bias` [vocab] is added to the logits first (the random weights know no JSON, and would never close a key)."""
    matchers = [compiled.matcher() for _ in range(seeds)]
    generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
    outputs: list[list[int]] = [[] for _ in range(seeds)]
    done = [False] * seeds
    inputs, past = torch.tensor([tokenizer.encode("Answer:")] * seeds), None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            result = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past, logits = result.past_key_values, result.logits[:, -1].float()
            if bias is not None:
                logits += bias
            rows = [i for i in range(seeds) if not done[i]]
            if not rows:
                break
            assert mask_logits(logits, rows, [matchers[i] for i in rows], EOS) == []
            picked = [EOS] * seeds  # finished rows feed a filler token that nobody reads
            for i in rows:
                picked[i] = int(torch.multinomial(logits[i].softmax(-1), 1, generator=generators[i]))
                matchers[i].accept(picked[i])  # raises if the mask let a wrong token through
                outputs[i].append(picked[i])
                done[i] = matchers[i].is_terminated()
            inputs = torch.tensor(picked).unsqueeze(1)
    return [(tokenizer.decode(o, skip_special_tokens=True), d) for o, d in zip(outputs, done, strict=True)]


def test_a_random_model_writes_only_valid_json_for_a_schema(tiny_model, compiler):
    results = sample(*tiny_model, compiler.compile(OutputConstraint.json_schema(PERSON)))
    finished = [text for text, terminated in results if terminated]
    assert len(finished) >= 25, results
    for text in finished:
        jsonschema.validate(json.loads(text), PERSON)
    assert all(text.startswith("{") for text, _ in results)  # capped ones are valid prefixes (accept() checked)


def test_a_random_model_writes_only_valid_json_objects(tiny_model, compiler):
    model, tokenizer = tiny_model
    # Favour JSON punctuation (the 88 tokens spelled only with it), so that strings close and objects end.
    punctuation = [i for i in range(VOCAB - 1) if set(tokenizer.decode([i])) <= set('{}[]",: ')]
    bias = torch.zeros(VOCAB)
    bias[punctuation] = 8.0
    results = sample(model, tokenizer, compiler.compile(OutputConstraint.json_object()), bias=bias)
    finished = [text for text, terminated in results if terminated]
    assert len(finished) >= 10, results
    for text in finished:
        assert isinstance(json.loads(text), dict)
    assert all(text.startswith("{") for text, _ in results)


def test_a_random_model_matches_a_regex_and_picks_a_choice(tiny_model, compiler):
    pattern = r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)"
    for text, terminated in sample(*tiny_model, compiler.compile(OutputConstraint.regex(pattern)), seeds=16):
        assert terminated and re.fullmatch(pattern, text), text
    options = ["yes", "no", "yes, but", 'ünïcødé "quoted"\n', "{}"]
    results = sample(*tiny_model, compiler.compile(OutputConstraint.choice(options)), seeds=16)
    assert all(terminated and text in options for text, terminated in results), results
