"""The HTTP face: routes under /lora_forge/v1 on the WebUI's FastAPI app (added in on_app_started).

Each stage that offers routes names a module in ROUTES; that module provides
`routes(ctx: ApiContext) -> fastapi.APIRouter`. A module that is not there is skipped, so the
list can name stages before they land. ForgeError becomes HTTP 400 with {"error": message}.
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
from lora_forge.safety import PathPolicy, check_request_values
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

    from fastapi import APIRouter, Depends, Request
    from fastapi.responses import JSONResponse

    ctx = ApiContext(host=host, settings=settings, paths=paths)

    async def check_paths(request: Request) -> None:
        """Every path-like field of the query and the JSON body through the path policy (safety.py)."""
        values: dict[str, Any] = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                values["body"] = await request.json()  # FastAPI has read and cached the body already
            except ValueError:
                pass
        check_request_values(paths(), values)

    check_paths.__annotations__ = {"request": Request, "return": None}  # a string under __future__

    router = APIRouter(prefix=PREFIX, dependencies=[Depends(check_paths)])

    @router.get("/version")
    def version() -> dict[str, Any]:
        return {"name": "lora_forge", "version": __version__, "routes": [m for m in ROUTES if module_exists(m)]}

    for name in ROUTES:
        if module_exists(name):
            router.include_router(importlib.import_module(name).routes(ctx))

    def forge_error(_request: Request, exc: ForgeError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    app.add_exception_handler(ForgeError, forge_error)
    app.include_router(router)
    return [route.path for route in router.routes]
