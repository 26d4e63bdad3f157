"""What MODEL_QUANTIZATION=int8 costs in quality: the served fp32 model against the int8 one, both loaded by the
server's own loader, on fixed prompts and a fixed text.

- Greedy-token agreement over PROMPTS: teacher-forced (both models score the fp32 model's greedy continuation; the
  share of positions where the int8 model's top token is the same), and whole continuations (the share of prompts
  whose greedy `new_tokens` are identical).
- Perplexity of data/perplexity.txt (an original text, a few hundred tokens) under each model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import BaseModel

from textgen.serving.model_store import LoadedModel

TEXT = Path(__file__).parent / "data" / "perplexity.txt"
PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The three primary colors are",
    "To make a cup of tea, you first",
    "The largest planet in our solar system is",
    "Photosynthesis is the process by which",
    "A good way to learn a new language is",
    "The French Revolution began in",
    "In Python, a list comprehension",
    "The main difference between a virus and a bacterium is",
    "Once upon a time, in a small village,",
    "The best advice I ever received was",
    "def add(a, b):",
    "SELECT name FROM users WHERE",
    "The human heart has four chambers:",
    "Shakespeare wrote the play",
    "The speed of light in a vacuum is",
    "Rain forms when",
    "My favourite season is autumn because",
    "To change a flat tyre, start by",
    "The theory of evolution was proposed by",
    "A healthy breakfast might include",
    "The Great Wall of China was built to",
    "An apple a day",
    "The stock market is",
    "Machine learning models learn from",
    "The first person to walk on the Moon was",
    "When writing an email to a colleague,",
    "The chemical symbol for gold is",
    "Dogs are often called man's best friend because",
    "The Pacific Ocean is",
    "In mathematics, a prime number is",
    "The recipe calls for two cups of flour and",
    "Climate change is caused mainly by",
    "The museum was closed on Monday, so we",
    "A haiku is a short poem with",
    "The train to London leaves at",
    "Exercise is important for",
    "The word 'serendipity' means",
    "Mount Everest is located in",
    "Dear hiring manager, I am writing to",
    "The internet was originally developed",
    "Bees are important to agriculture because",
    "The sum of the angles in a triangle is",
    "She opened the door and saw",
    "Translate to French: good morning ->",
    "The Roman Empire fell in",
    "A balanced diet contains",
    "The most spoken language in the world is",
    "Solar panels convert sunlight into",
    "Here is a list of three fruits: apple,",
    "The moral of the story is",
]


class QualityReport(BaseModel):
    model_tag: str
    prompts: int
    new_tokens: int
    teacher_forced_agreement: float  # share of positions where both models' top tokens agree
    identical_continuations: float  # share of prompts with identical greedy continuations
    mean_agreeing_prefix: float  # tokens the continuations share before the first difference, on average
    text_tokens: int
    perplexity_fp32: float
    perplexity_int8: float


@torch.inference_mode()
def greedy(loaded: LoadedModel, prompt: str, new_tokens: int) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=loaded.tokenizer.eos_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


@torch.inference_mode()
def top_tokens(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The model's top next token at every position of `ids`."""
    return loaded.model(input_ids=torch.tensor([ids])).logits[0].argmax(dim=-1)


@torch.inference_mode()
def perplexity(loaded: LoadedModel, text: str) -> tuple[float, int]:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[:, : loaded.context_length]
    logits = loaded.model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return math.exp(float(nll)), ids.shape[1]


def compare(fp32: LoadedModel, int8: LoadedModel, new_tokens: int) -> QualityReport:
    agree = positions = identical = prefix = 0
    for prompt in PROMPTS:
        reference = greedy(fp32, prompt, new_tokens)
        quantized = greedy(int8, prompt, new_tokens)
        identical += reference == quantized
        prefix += next((i for i, (a, b) in enumerate(zip(reference, quantized, strict=True)) if a != b), new_tokens)
        # Teacher-forced: both score the same sequence, so one early difference does not count many times.
        prompt_ids = fp32.tokenizer(prompt).input_ids
        sequence = prompt_ids + reference
        scored = slice(len(prompt_ids) - 1, len(sequence) - 1)
        agree += int((top_tokens(fp32, sequence)[scored] == top_tokens(int8, sequence)[scored]).sum())
        positions += len(reference)
    text = TEXT.read_text()
    ppl_fp32, tokens = perplexity(fp32, text)
    ppl_int8, _ = perplexity(int8, text)
    return QualityReport(
        model_tag=fp32.info.tag,
        prompts=len(PROMPTS),
        new_tokens=new_tokens,
        teacher_forced_agreement=agree / positions,
        identical_continuations=identical / len(PROMPTS),
        mean_agreeing_prefix=prefix / len(PROMPTS),
        text_tokens=tokens,
        perplexity_fp32=ppl_fp32,
        perplexity_int8=ppl_int8,
    )


def format_quality(report: QualityReport) -> str:
    return "\n".join(
        [
            f"## int8 against fp32: {report.model_tag}",
            "| measure | value |",
            "|---|---|",
            f"| greedy top-token agreement, teacher-forced ({report.prompts} prompts x {report.new_tokens} tokens) | "
            f"{report.teacher_forced_agreement:.1%} |",
            f"| identical greedy continuations | {report.identical_continuations:.1%} |",
            f"| mean tokens before the first difference | {report.mean_agreeing_prefix:.1f} of {report.new_tokens} |",
            f"| perplexity, fp32 ({report.text_tokens}-token text) | {report.perplexity_fp32:.3f} |",
            f"| perplexity, int8 | {report.perplexity_int8:.3f} "
            f"({report.perplexity_int8 / report.perplexity_fp32 - 1:+.1%}) |",
        ]
    )
