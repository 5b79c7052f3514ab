"""HTTP routes for training (api.ROUTES): start a run from a config, read its progress, stop it,
list runs and LoRA files — so cloud users can train without the browser.

Inside the WebUI they answer only when it runs with --api (or --nowebui), and they check
--api-auth themselves: the WebUI applies it to its own /sdapi routes only, not to routes an
extension adds in on_app_started (webui-internals.md §1.7).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime, and
the request model is defined inside routes() (pydantic is not imported at WebUI start-up).
"""

import base64
from typing import Any

from lora_forge.api import ApiContext


def _guard(ctx: ApiContext, authorization: str | None) -> None:
    from fastapi import HTTPException

    host = ctx.host()
    if getattr(host, "name", "") != "webui":
        return
    from lora_forge.host import webui_train

    if not webui_train.api_enabled():
        raise HTTPException(status_code=404, detail="start the WebUI with --api to use the training API")
    user = password = None
    if authorization and authorization.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode("utf-8").partition(":")
        except ValueError:
            user = None
    if not webui_train.check_api_access(user, password):
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )


def routes(ctx: ApiContext) -> Any:
    from fastapi import APIRouter, Depends, Header
    from pydantic import BaseModel, Field

    from lora_forge.host.train_jobs import RUNS

    def guard(authorization: str | None = Header(default=None)) -> None:
        _guard(ctx, authorization)

    router = APIRouter(prefix="/train", dependencies=[Depends(guard)])

    class StartRequest(BaseModel):
        data_dir: str
        preset: str = "custom"
        config: dict[str, Any] = Field(default_factory=dict, description="kohya-named keys, e.g. network_dim")
        resume: str = ""

    @router.post("")
    def start(req: StartRequest) -> dict[str, Any]:
        status = RUNS.start(ctx.host(), req.data_dir, req.preset, req.config, req.resume)
        return status.as_dict()

    @router.get("/runs")
    def runs() -> list[dict[str, Any]]:
        return [r.as_dict(with_losses=False) for r in RUNS.list()]

    @router.get("/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        return RUNS.get(run_id).as_dict()

    @router.post("/runs/{run_id}/stop")
    def stop(run_id: str) -> dict[str, Any]:
        return RUNS.stop(run_id).as_dict(with_losses=False)

    @router.get("/files")
    def files() -> list[dict[str, Any]]:
        folder = ctx.host().lora_dir()
        found = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
        return [
            {
                "name": p.stem,
                "path": str(p),
                "bytes": p.stat().st_size,
                "preview": p.with_suffix(".preview.png").is_file(),
            }
            for p in found
        ]

    return router
