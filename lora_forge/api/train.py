"""HTTP routes for training (api.ROUTES): start a run from a config, read its progress, stop it,
list runs and LoRA files — so cloud users can train without the browser. Each route reads its
inputs, calls one app.train function and returns its result as JSON.

The host says whether they answer (`Host.api_enabled`: inside the WebUI only with --api or
--nowebui) and checks credentials (`Host.api_access`: the WebUI's --api-auth, which it applies to
its own /sdapi routes only, not to routes an extension adds in on_app_started —
webui-internals.md §1.7).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime, and
the request model is defined inside routes() (pydantic is not imported at WebUI start-up).
"""

import base64
from typing import Any

from lora_forge.api import ApiContext


def _guard(ctx: ApiContext, authorization: str | None) -> None:
    from fastapi import HTTPException

    host = ctx.host()
    if not host.api_enabled():
        raise HTTPException(status_code=404, detail="start the WebUI with --api to use the training API")
    user = password = None
    if authorization and authorization.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode("utf-8").partition(":")
        except ValueError:
            user = None
    if not host.api_access(user, password):
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )


def routes(ctx: ApiContext) -> Any:
    from fastapi import APIRouter, Depends, Header
    from pydantic import BaseModel, Field

    from lora_forge.app import train
    from lora_forge.safety import ReadPath, WritePath

    def guard(authorization: str | None = Header(default=None)) -> None:
        _guard(ctx, authorization)

    router = APIRouter(prefix="/train", dependencies=[Depends(guard)])

    class StartRequest(BaseModel):
        data_dir: WritePath  # path-typed fields: the API's boundary holds them to the path policy
        preset: str = "custom"
        config: dict[str, Any] = Field(default_factory=dict, description="kohya-named keys, e.g. network_dim")
        resume: ReadPath = ReadPath("")

    @router.post("")
    def start(req: StartRequest) -> dict[str, Any]:
        return train.start(ctx.host(), req.data_dir, req.preset, req.config, req.resume).as_dict()

    @router.get("/runs")
    def runs() -> list[dict[str, Any]]:
        return [r.as_dict(with_losses=False) for r in train.runs()]

    @router.get("/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        return train.get(run_id).as_dict()

    @router.post("/runs/{run_id}/stop")
    def stop(run_id: str) -> dict[str, Any]:
        return train.stop(run_id).as_dict(with_losses=False)

    @router.get("/files")
    def files() -> list[dict[str, Any]]:
        return train.lora_files(ctx.host())

    return router
