"""The HTTP face: routes under /lora_forge/v1 on the WebUI's FastAPI app (added in on_app_started).

Each stage that offers routes names a module in ROUTES; that module provides
`routes(ctx: ApiContext) -> fastapi.APIRouter`. A module that is not there is skipped, so the
list can name stages before they land. ForgeError becomes HTTP 400 with {"error": message}, and
every parsed value passes the path policy first (guard_route).
Note: the WebUI's --api-auth does not cover routes added this way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_forge import __version__
from lora_forge.cli import module_exists
from lora_forge.errors import ForgeError
from lora_forge.host.base import Host
from lora_forge.safety import PathPolicy, check_request
from lora_forge.settings import Settings

PREFIX = "/lora_forge/v1"
# module names, in the order of the user's path; each has routes(ctx) -> APIRouter
ROUTES: list[str] = ["lora_forge.api.train"]


@dataclass
class ApiContext:
    host: Callable[[], Host]  # called per request that needs it; never at registration
    settings: Callable[[], Settings]
    paths: Callable[[], PathPolicy] = PathPolicy


def register(
    app: Any,
    host: Callable[[], Host],
    settings: Callable[[], Settings],
    paths: Callable[[], PathPolicy] = PathPolicy,
) -> list[str]:
    """Mount our routes on `app`; returns the paths added (the tests and the start-up log use it)."""
    import importlib

    from fastapi import APIRouter

    ctx = ApiContext(host=host, settings=settings, paths=paths)
    router = APIRouter(prefix=PREFIX)

    @router.get("/version")
    def version() -> dict[str, Any]:
        return {"name": "lora_forge", "version": __version__, "routes": [m for m in ROUTES if module_exists(m)]}

    for name in ROUTES:
        if module_exists(name):
            router.include_router(importlib.import_module(name).routes(ctx))
    before = len(app.router.routes)
    app.include_router(router)
    for route in app.router.routes[before:]:  # the app's own copies of the routes are what run
        guard_route(route, paths)
    return [route.path for route in router.routes]


def guard_route(route: Any, paths: Callable[[], PathPolicy]) -> None:
    """The API's boundary, on each route itself: the values FastAPI parsed for the endpoint (query,
    path, form, and the body whatever its Content-Type was spelled) go through the path policy
    (safety.check_request: ReadPath/WritePath fields, declared config keys) before it runs, and a
    ForgeError raised anywhere in the route (its dependencies too) answers 400 with its message.
    Done in the route, not with app.add_exception_handler: a running app (the WebUI's, whose stack
    was built when gradio checked its own URL) ignores handlers added later: every refusal was a 500."""
    import asyncio
    import functools

    dependant = getattr(route, "dependant", None)
    if dependant is None or dependant.call is None or getattr(route.app, "_lora_forge", False):
        return
    from lora_forge.train.config import path_keys

    call = dependant.call
    declared = path_keys()
    if asyncio.iscoroutinefunction(call):

        @functools.wraps(call)
        async def endpoint(**values: Any) -> Any:
            check_request(paths(), values, declared)
            return await call(**values)

    else:

        @functools.wraps(call)
        def endpoint(**values: Any) -> Any:
            check_request(paths(), values, declared)
            return call(**values)

    dependant.call = endpoint
    route.app = _answer_forge_errors(route.app)


def _answer_forge_errors(inner: Any) -> Any:
    """An ASGI app answering 400 {"error": message} for a ForgeError raised before the response."""
    import json

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await inner(scope, receive, tracked)
        except ForgeError as e:
            if started:
                raise
            body = json.dumps({"error": str(e)}, ensure_ascii=False).encode("utf-8")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    app._lora_forge = True  # type: ignore[attr-defined]
    return app
