"""The in-flight limiter: 429 with Retry-After beyond the bound, slots held by streams, freed after."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from serving.backpressure import InflightLimiter


def limited_app(limit: int) -> tuple[FastAPI, InflightLimiter, asyncio.Event]:
    app = FastAPI()
    limiter = InflightLimiter(limit, retry_after_s=3)
    release = asyncio.Event()
    app.middleware("http")(limiter)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app, limiter, release


async def test_requests_beyond_the_bound_get_429_with_retry_after() -> None:
    app, limiter, release = limited_app(limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        while limiter.inflight < 2:
            await asyncio.sleep(0.01)
        rejected = await client.get("/slow")
        assert rejected.status_code == 429 and rejected.headers["Retry-After"] == "3"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        assert (await client.get("/health")).status_code == 200  # probes are never turned away
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert limiter.inflight == 0
        assert (await client.get("/slow")).status_code == 200


async def test_a_stream_holds_its_slot_until_it_ends() -> None:
    # httpx's ASGI transport buffers whole bodies, so the middleware is driven directly here.
    limiter = InflightLimiter(1, retry_after_s=1)

    async def body():  # type: ignore[no-untyped-def]
        yield b"first"
        yield b"last"

    async def call_next(request: Request) -> StreamingResponse:
        return StreamingResponse(body())

    request = Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "query_string": b""})
    response = await limiter(request, call_next)
    chunks = response.body_iterator
    assert await anext(chunks) == b"first" and limiter.inflight == 1
    assert (await limiter(request, call_next)).status_code == 429
    assert [c async for c in chunks] == [b"last"]
    assert limiter.inflight == 0
