"""The generation core: a continuous-batching engine on a Hugging Face causal LM.

Internal types in, internal results out. It imports torch and transformers and nothing of the
HTTP world (no BentoML, Starlette or API schemas); tests/unit/test_layers.py keeps it that way.

- `types`: GenerationParams (what a request asks), GenerationResult (what it gets), FinishReason
- `batch_engine`: BatchEngine, the thread that owns the model, and Job, one request's run in it
- `kv_cache`: row operations on the batch's KV cache, so rows can join and leave between steps
- `sampling`: per-row token selection; `stopping`: when a generation is done (EOS, stop strings, length)
- `detokenizer`: token ids to text pieces for streaming
"""

from .batch_engine import BatchEngine, Job
from .detokenizer import IncrementalDetokenizer
from .sampling import SamplingParams
from .types import EngineStopped, FinishReason, GenerationParams, GenerationResult, JobCancelled

__all__ = [
    "BatchEngine",
    "EngineStopped",
    "FinishReason",
    "GenerationParams",
    "GenerationResult",
    "IncrementalDetokenizer",
    "Job",
    "JobCancelled",
    "SamplingParams",
]
