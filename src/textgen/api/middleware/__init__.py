"""ASGI middlewares: they see every request before BentoML does, and every response after."""
