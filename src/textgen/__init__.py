"""textgen: a Hugging Face causal LM behind a batched, secured BentoML HTTP API.

Three layers, each importing only those below it: `api` (HTTP: schemas, handlers, middlewares, the error
catalogue) over `serving` (admission, the asyncio front of the engine, metrics, model loading) over `engine`
(continuous batching on torch and transformers). `config` and `bentoml_compat` serve them all.
"""
