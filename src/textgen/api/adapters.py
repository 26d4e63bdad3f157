"""Loading and unloading LoRA adapters at runtime, as vLLM names the routes: admin keys only, store tags only.

`POST /v1/load_lora_adapter {"lora_name": TAG}` and `POST /v1/unload_lora_adapter {"lora_name": NAME}`. An
adapter comes from the BentoML model store, never from a path the client names: `lora_name` is a store tag.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from textgen.serving.runtime import ModelRuntime

from .keys import require_admin


class LoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(
        ..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="A store tag."
    )


class LoraAdapterResponse(BaseModel):
    lora_name: str = Field(description="The name requests choose it by (`model` on /v1, `adapter` on /generate).")
    tag: str = Field(description="The store tag it was loaded from.")
    status: Literal["loaded", "unloaded"]


class AdapterHandlers:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    async def load(self, request: LoraAdapterRequest, scope: dict[str, Any]) -> LoraAdapterResponse:
        require_admin(scope)
        # Shielded: a client that hangs up must not leave an adapter half installed.
        adapter = await asyncio.shield(self.runtime.engine().adapters.load(request.lora_name))
        return LoraAdapterResponse(lora_name=adapter.name, tag=adapter.tag, status="loaded")

    async def unload(self, request: LoraAdapterRequest, scope: dict[str, Any]) -> LoraAdapterResponse:
        require_admin(scope)
        adapters = self.runtime.engine().adapters
        tag = adapters.loaded[request.lora_name].tag if request.lora_name in adapters.loaded else request.lora_name
        await asyncio.shield(adapters.unload(request.lora_name))  # returns once its running requests finished
        return LoraAdapterResponse(lora_name=request.lora_name, tag=tag, status="unloaded")
