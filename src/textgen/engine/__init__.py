"""The generation core: a continuous-batching engine on a Hugging Face causal LM.

Internal types in, internal results out. It imports torch and transformers and nothing of the
HTTP world (no BentoML, Starlette or API schemas), besides llguidance for grammars; tests/unit/test_layers.py
keeps it that way.

- `types`: GenerationParams (what a request asks), GenerationResult (what it gets), FinishReason
- `batch_engine`: BatchEngine, the thread that owns the model, and Job, one request's run in it
- `kv_cache`: row operations on the batch's KV cache, so rows can join and leave between steps
- `decoders`: one decoding step of every row (GPT-2 and Llama written out, any other model's own forward pass)
- `packed_linear`, `greedy_screen`: oneDNN linear layers and the exact bfloat16 screen of greedy tokens; `timing`
  times their alternatives at load
- `sampling`: per-row token selection; `stopping`: when a generation is done (EOS, stop strings, length)
- `detokenizer`: token ids to text pieces for streaming
- `constraints`: OutputConstraint (a request's output shape: JSON schema or object, regex, choice), ConstraintError
- `grammar`: GrammarCompiler (constraint -> CompiledGrammar, cached) and the per-row GrammarMatcher (llguidance)
- `masking`: mask_logits / TokenMasker, a batch's logits masked to what each constrained row's grammar allows
- `logprobs`: token log-probabilities under the model's own distribution
"""

from .batch_engine import BatchEngine, Job
from .constraints import ConstraintError, OutputConstraint
from .detokenizer import IncrementalDetokenizer
from .grammar import CompiledGrammar, GrammarCompiler, GrammarMatcher
from .logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from .masking import TokenMasker, mask_logits
from .sampling import SamplingParams
from .types import EngineStopped, FinishReason, GenerationParams, GenerationResult, JobCancelled

__all__ = [
    "MAX_TOP_LOGPROBS",
    "BatchEngine",
    "CompiledGrammar",
    "ConstraintError",
    "EngineStopped",
    "FinishReason",
    "GenerationParams",
    "GenerationResult",
    "GrammarCompiler",
    "GrammarMatcher",
    "IncrementalDetokenizer",
    "Job",
    "JobCancelled",
    "OutputConstraint",
    "SamplingParams",
    "TokenLogprob",
    "TokenMasker",
    "mask_logits",
]
