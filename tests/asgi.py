"""Requests through a FastAPI app's real ASGI stack, from sync tests.

starlette 0.26's TestClient predates httpx 0.28, so tests use httpx's ASGITransport. The request
runs in a thread of its own: once a browser test has started Playwright's sync API, an event loop
keeps running in the main thread and asyncio.run refuses to start there.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run(coro: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def request(app: Any, method: str, path: str, **kw: Any) -> Any:
    import httpx

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webui") as client:
            return await client.request(method, path, **kw)

    return run(go())
