"""Text-generation server parts: settings, schemas, auth, batching engine, metrics."""
