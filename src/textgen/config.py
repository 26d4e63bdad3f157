"""Service settings, read from environment variables (and an optional `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_OPEN_PATHS = ("/health", "/livez", "/readyz", "/healthz", "/metrics")


def _split_csv(value: object) -> object:
    """`A,B,C` in an environment variable becomes a list (JSON lists are accepted too)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def effective_open_paths(entries: list[str]) -> list[str]:
    """DEFAULT_OPEN_PATHS plus the `/path` entries, minus the `-/path` ones.

    Additive because users read AUTH_OPEN_PATHS=/docs as "also /docs": replacing the defaults put
    /health and /readyz behind the key and broke healthchecks. A removal that names no open path
    is refused: a typo such as `-/metric` would otherwise leave /metrics open without a word.
    """
    removed = [e[1:] for e in entries if e.startswith("-")]
    paths = list(dict.fromkeys([*DEFAULT_OPEN_PATHS, *(e for e in entries if not e.startswith("-"))]))
    if unknown := [p for p in removed if p not in paths]:
        raise ValueError(f"cannot close {', '.join(unknown)}: not an open path (open: {', '.join(paths)})")
    return [p for p in paths if p not in removed]


class Settings(BaseSettings):
    """Every knob of the service. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Model
    model_tag: str = Field("distilgpt2:latest", description="BentoML model store tag to serve.")
    model_device: Literal["auto", "cpu", "cuda"] = "auto"
    model_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")

    # LoRA adapters
    lora_adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Store tags of LoRA adapters to load at start-up (comma-separated)."
    )
    max_loras: int = Field(4, ge=0, le=64, description="Adapters loaded at once (start-up and runtime loads).")

    # Auth
    api_key: SecretStr | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = Field(None, description="One key per line; re-read when the file changes.")
    auth_disabled: bool = False
    auth_open_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Paths open without a key, in addition to " + ",".join(DEFAULT_OPEN_PATHS) + "; an entry ending in `*` "
            "is a prefix, one starting with `-` closes a path (`/docs,-/metrics`). See open_paths()."
        ),
    )

    # Admission and batching
    max_concurrency: int = Field(5, ge=1, description="Generations admitted to the model at once.")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; more get 429.")
    queue_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a slot before 503.")
    max_batch_size: int | None = Field(None, ge=1, description="Rows per forward pass (default: max_concurrency).")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="An idle engine waits this long for a burst.")

    # HTTP
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413.")

    # Logs
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line.")
    log_prompts: bool = Field(False, description="Debug only: log each request's prompt and completion.")

    # Testing
    fault_injection_marker: str = Field(
        "", description="Tests and soak runs only: requests whose prompt starts with this fail mid-generation."
    )

    @field_validator("api_keys", "auth_open_paths", "lora_adapters", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("auth_open_paths")
    @classmethod
    def _open_paths_valid(cls, value: list[str]) -> list[str]:
        effective_open_paths(value)  # refuses a bad `-` entry at start, not at the first request
        return value

    @model_validator(mode="after")
    def _adapters_fit(self) -> Settings:
        if len(self.lora_adapters) > self.max_loras:
            raise ValueError(f"LORA_ADAPTERS names {len(self.lora_adapters)} adapters; MAX_LORAS is {self.max_loras}")
        return self

    @model_validator(mode="after")
    def _batch_defaults_to_limit(self) -> Settings:
        if self.max_batch_size is None:
            self.max_batch_size = self.max_concurrency
        return self

    def static_keys(self) -> list[str]:
        """Keys given directly in settings (the keys file is read by the auth module)."""
        keys = [self.api_key] if self.api_key else []
        return [k.get_secret_value() for k in [*keys, *self.api_keys] if k.get_secret_value()]

    def open_paths(self) -> list[str]:
        """The paths that need no key: the defaults changed by AUTH_OPEN_PATHS."""
        return effective_open_paths(self.auth_open_paths)

    def auth_configured(self) -> bool:
        return self.auth_disabled or bool(self.static_keys()) or self.api_keys_file is not None


@lru_cache
def get_settings() -> Settings:
    return Settings()
