"""The asyncio front of the engine, and what a served model needs around it.

Takes a prompt and the engine's `GenerationParams`, returns `GenerationOutput`s; refuses with domain errors
(`errors`), whose HTTP meaning the API layer decides. Imports the engine, never the API.

- `runtime`: one worker's model: process settings, background loading, readiness, shutdown
- `async_engine`: tokenise, check the context, wait for a slot, run the job on the engine thread
- `admission`: the FIFO concurrency gate with its bounded queue
- `outputs`, `errors`: what it hands back, and why it refuses
- `metrics`, `faults`, `model_store`: Prometheus metrics, fault injection, the BentoML model store
"""
