"""The HTTP face of the service: protocols, their schemas and handlers, and the middlewares.

Each protocol converts its wire request into the engine's `GenerationParams` at its own edge, and the
serving layer's `GenerationOutput` back into its wire response. Imports serving and engine, never the reverse.

- `schemas`, `generate`: the service's own `/generate` and `/generate_stream`
- `openai/`: `/v1/completions`, `/v1/chat/completions`, `/v1/models`
- `errors`: the error catalogue (every error type, its status and headers) and the one error shape
- `endpoints`, `disconnect`, `sse`: how the BentoML methods answer, cancel and stream
- `routes`: the GET routes; `logs`: structured logs
- `middleware/`: API-key auth, body guard, error envelope, first-byte timeout
"""
