"""Service settings, read from environment variables (and an optional `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FLOAT16S = ("float16", "bfloat16")
DEFAULT_OPEN_PATHS = ("/health", "/livez", "/readyz", "/healthz", "/metrics")
# Swagger UI and the documents it reads: open unless DOCS_OPEN=false (a browser cannot send a key to open a page).
DOCS_PATHS = ("/", "/docs", "/docs.json", "/schema.json", "/static_content/*")


def _split_csv(value: object) -> object:
    """`A,B,C` in an environment variable becomes a list (JSON lists are accepted too)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class KeyLimits(BaseModel):
    """Per-key limits; None is no limit. Written `rpm=60,tpm=20000,concurrency=2` in settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="Requests per minute (a sliding 60 s window).")
    tpm: int | None = Field(None, ge=1, description="Generated tokens per minute, charged when a generation ends.")
    concurrency: int | None = Field(None, ge=1, description="Requests in flight at once.")

    @classmethod
    def parse(cls, spec: str) -> KeyLimits:
        """`rpm=60,tpm=20000,concurrency=2` (any subset; empty: no limits)."""
        fields: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"'{item}' is not NAME=VALUE (rpm, tpm or concurrency)")
            fields[name.strip().lower()] = value.strip()
        return cls.model_validate(fields)

    def merged_over(self, default: KeyLimits) -> KeyLimits:
        """These limits, with `default`'s where these set none."""
        return KeyLimits.model_validate({**default.model_dump(), **self.model_dump(exclude_none=True)})


def parse_key_limits(spec: str) -> dict[str, KeyLimits]:
    """KEY_LIMITS: `name:rpm=10,tpm=1000;other:concurrency=1` (entries separated by `;`)."""
    limits: dict[str, KeyLimits] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, rest = entry.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"'{entry}' is not NAME:LIMITS (e.g. alice:rpm=60,concurrency=2)")
        limits[name.strip()] = KeyLimits.parse(rest)
    return limits


def effective_open_paths(entries: list[str], docs_open: bool = True) -> list[str]:
    """DEFAULT_OPEN_PATHS (and DOCS_PATHS if `docs_open`) plus the `/path` entries, minus the `-/path` ones.

    Additive because users read AUTH_OPEN_PATHS=/docs as "also /docs": replacing the defaults put
    /health and /readyz behind the key and broke healthchecks. A removal that names no open path
    is refused: a typo such as `-/metric` would otherwise leave /metrics open without a word.
    """
    removed = [e[1:] for e in entries if e.startswith("-")]
    defaults = [*DEFAULT_OPEN_PATHS, *(DOCS_PATHS if docs_open else ())]
    paths = list(dict.fromkeys([*defaults, *(e for e in entries if not e.startswith("-"))]))
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
    model_quantization: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 linear layers (CPU, float32 only; opt-in, some quality lost)."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")

    # LoRA adapters
    lora_adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Store tags of LoRA adapters to load at start-up (comma-separated)."
    )
    max_loras: int = Field(4, ge=0, le=64, description="Adapters loaded at once (start-up and runtime loads).")

    # Auth
    api_key: SecretStr | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = Field(
        None, description="One key per line: `KEY`, `NAME:KEY` or `NAME:sha256:HEX`; re-read when the file changes."
    )
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Keys that may also call the admin routes (/v1/usage); same entry formats."
    )
    auth_disabled: bool = False
    docs_open: bool = Field(True, description="Serve Swagger UI and the OpenAPI documents without a key.")
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

    # Per-key limits
    default_key_limits: Annotated[KeyLimits, NoDecode] = Field(
        default_factory=KeyLimits, description="Limits of every key without its own: `rpm=60,tpm=20000,concurrency=2`."
    )
    key_limits: Annotated[dict[str, KeyLimits], NoDecode] = Field(
        default_factory=dict, description="Per key name, over the defaults: `alice:rpm=10;bob:concurrency=1`."
    )

    # HTTP
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413.")
    body_timeout_s: float = Field(30.0, gt=0, description="Whole request body within this, from its headers; else 408.")
    header_timeout_s: float = Field(10.0, gt=0, description="Request head within this, from its first byte; else 408.")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="A connection with no request started closes after this.")
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576, description="Longer request heads get 400.")

    # Logs
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line.")
    log_prompts: bool = Field(False, description="Debug only: log each request's prompt and completion.")

    # Testing
    fault_injection_marker: str = Field(
        "", description="Tests and soak runs only: requests whose prompt starts with this fail mid-generation."
    )

    @field_validator("api_keys", "admin_api_keys", "auth_open_paths", "lora_adapters", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("default_key_limits", mode="before")
    @classmethod
    def _limits(cls, value: object) -> object:
        return KeyLimits.parse(value) if isinstance(value, str) else value

    @field_validator("key_limits", mode="before")
    @classmethod
    def _per_key_limits(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):  # JSON: {"alice": {"rpm": 10}} or {"alice": "rpm=10"}
                import json

                return {k: KeyLimits.parse(v) if isinstance(v, str) else v for k, v in json.loads(text).items()}
            return parse_key_limits(text)
        return value

    @model_validator(mode="after")
    def _open_paths_valid(self) -> Settings:
        self.open_paths()  # refuses a bad `-` entry at start, not at the first request
        return self

    @model_validator(mode="after")
    def _adapters_fit(self) -> Settings:
        if len(self.lora_adapters) > self.max_loras:
            raise ValueError(f"LORA_ADAPTERS names {len(self.lora_adapters)} adapters; MAX_LORAS is {self.max_loras}")
        return self

    @model_validator(mode="after")
    def _int8_on_cpu_float32(self) -> Settings:
        # MODEL_DEVICE=auto can still resolve to CUDA; the loader refuses that case when it knows the device.
        if self.model_quantization == "int8" and (self.model_device == "cuda" or self.model_dtype in FLOAT16S):
            raise ValueError(
                "MODEL_QUANTIZATION=int8 runs on the CPU in float32 only; it cannot be combined with "
                f"MODEL_DEVICE={self.model_device} and MODEL_DTYPE={self.model_dtype}"
            )
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
        return effective_open_paths(self.auth_open_paths, self.docs_open)

    def limits_for(self, key_name: str) -> KeyLimits:
        own = self.key_limits.get(key_name)
        return own.merged_over(self.default_key_limits) if own else self.default_key_limits

    def auth_configured(self) -> bool:
        return (
            self.auth_disabled
            or bool(self.static_keys())
            or bool(self.admin_api_keys)
            or self.api_keys_file is not None
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
