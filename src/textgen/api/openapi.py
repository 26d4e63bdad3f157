"""The served OpenAPI document (`/docs.json`, which Swagger UI reads), completed in one place.

BentoML generates it from the `@bentoml.api` methods and knows nothing of our authentication or of the GET
routes of the mounted Starlette app. This middleware rewrites the document as it is served: it declares the
two schemes the auth middleware accepts (`x-api-key` and HTTP bearer), applies them to every operation that is
not on an open path (so Swagger's Authorize button sends the key), and adds the GET routes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .middleware.auth import is_open_path
from .middleware.rewrite import rewriting_send

DOCUMENT_PATH = "/docs.json"
REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "x-api-key: KEY"},
    "BearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
}
SECURITY = [{"ApiKeyAuth": []}, {"BearerAuth": []}]  # either one
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
UNAUTHORIZED_RESPONSE = {"description": "missing or wrong API key (error type `unauthorized`)"}
RATE_LIMITED_RESPONSE = {"description": "over this key's limits (error type `rate_limited`); see Retry-After"}


@dataclass(frozen=True)
class GetRoute:
    """A GET route of the mounted app, for the document."""

    path: str
    summary: str
    model: type[BaseModel]
    admin: bool = False

    def path_item(self, schemas: dict[str, Any]) -> dict[str, Any]:
        """Its path item; the definitions its schema refers to go into `schemas`."""
        schema = self.model.model_json_schema(ref_template=REF_TEMPLATE)
        schemas.update(schema.pop("$defs", {}))
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}
        if self.admin:
            responses["403"] = {"description": "the key is not an admin key (error type `forbidden`)"}
        return {"get": {"summary": self.summary, "tags": ["Service APIs"], "responses": responses}}


def secured(document: dict[str, Any], open_paths: list[str], routes: list[GetRoute]) -> dict[str, Any]:
    """`document` with the security schemes, applied to the protected operations, and `routes` added."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    paths = doc.setdefault("paths", {})
    for route in routes:
        paths.setdefault(route.path, route.path_item(components.setdefault("schemas", {})))
    for path, item in paths.items():
        protected = not is_open_path(path, open_paths)
        for method in METHODS:
            if (operation := item.get(method)) is None:
                continue
            operation["security"] = SECURITY if protected else []
            if protected:
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", UNAUTHORIZED_RESPONSE)
                responses.setdefault("429", RATE_LIMITED_RESPONSE)
    return doc


class SecuredOpenAPI:
    """Serves `/docs.json` as `secured()` makes it."""

    def __init__(self, app: ASGIApp, open_paths: list[str], routes: list[GetRoute]) -> None:
        self.app = app
        self.open_paths = open_paths
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != DOCUMENT_PATH:
            await self.app(scope, receive, send)
            return

        def is_ok(start: Message) -> bool:
            return start["status"] == 200

        def completed(_: Message, body: bytes) -> bytes:
            return json.dumps(secured(json.loads(body), self.open_paths, self.routes)).encode()

        await self.app(scope, receive, rewriting_send(send, is_ok, completed))
