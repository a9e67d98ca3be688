"""Admission (plain ASGI, no Ray): 429 beyond the bound and beyond a key's share, slots released on every
path (a cancelled request that never read its body included), chunked bodies cut off while read."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from personaagent.settings import APIKeySetting, AuthSettings, ServerSettings
from serving.auth import Authenticator
from serving.backpressure import AdmissionMiddleware, InflightCounts

KEYS = {"alice-key": "alice", "bob-key": "bob"}


def _auth(keys: bool) -> Authenticator:
    entries = [APIKeySetting(name=n, sha256=hashlib.sha256(k.encode()).hexdigest()) for k, n in KEYS.items()]
    return Authenticator(AuthSettings(api_keys=entries if keys else []))


def limited_app(limit: int, share: float = 1.0, keys: bool = False, max_body: int = 10_000) -> tuple[
    FastAPI, InflightCounts, asyncio.Event
]:  # fmt: skip
    app = FastAPI()
    counts = InflightCounts()
    release = asyncio.Event()
    limits = ServerSettings(
        max_inflight_requests=limit,
        retry_after_s=3,
        max_inflight_share_per_key=share,
        max_body_bytes=max_body,
    )
    app.add_middleware(AdmissionMiddleware, authenticator=_auth(keys), limits=limits, counts=counts)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            yield b"first"
            await release.wait()
            yield b"last"

        return StreamingResponse(body())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app, counts, release


def _client(app: FastAPI, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers)


async def _until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_requests_beyond_the_bound_get_429_with_retry_after() -> None:
    app, counts, release = limited_app(limit=2)
    async with _client(app) as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        await _until(lambda: counts.total == 2)
        rejected = await client.get("/slow")
        assert rejected.status_code == 429 and rejected.headers["Retry-After"] == "3"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        assert (await client.get("/health")).status_code == 200  # probes are never turned away
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert counts.total == 0
        assert (await client.get("/slow")).status_code == 200


async def test_one_key_cannot_take_every_slot() -> None:
    app, counts, release = limited_app(limit=4, share=0.5, keys=True)
    async with _client(app, "alice-key") as alice, _client(app, "bob-key") as bob:
        held = [asyncio.create_task(alice.get("/slow")) for _ in range(2)]
        await _until(lambda: counts.by_key["alice"] == 2)
        refused = await alice.get("/slow")
        assert refused.status_code == 429 and "its share" in refused.json()["error"]["message"]
        bobs = [asyncio.create_task(bob.get("/slow")) for _ in range(2)]  # the other key still gets in
        await _until(lambda: counts.total == 4)
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held, *bobs)] == [200] * 4
        assert counts.total == 0 and not counts.by_key


async def test_a_stream_holds_its_slot_until_it_ends_or_breaks() -> None:
    # httpx's ASGI transport buffers whole bodies, so the middleware is driven directly here.
    app, counts, _ = limited_app(limit=1)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never sends anything more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": [], "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("t", 80), "root_path": ""}  # fmt: skip
    task = asyncio.create_task(app(scope, receive, send))
    await _until(lambda: any(m.get("body") == b"first" for m in sent))
    assert counts.total == 1  # mid-stream: still held
    task.cancel()  # the connection breaks mid-stream
    await asyncio.gather(task, return_exceptions=True)
    assert counts.total == 0


async def test_a_request_cancelled_before_its_body_is_read_frees_its_slot() -> None:
    app, counts, _ = limited_app(limit=1)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the body never arrives
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"10")],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80), "root_path": ""}  # fmt: skip
    task = asyncio.create_task(app(scope, receive, send))
    await _until(lambda: counts.total == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert counts.total == 0


async def test_a_chunked_body_is_cut_off_at_the_limit_while_it_is_read() -> None:
    app, counts, _ = limited_app(limit=1, max_body=5_000)
    read = 0
    sent: list[dict[str, Any]] = []

    async def endless_chunks() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * 1_000, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [], "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("t", 80), "root_path": ""}  # fmt: skip
    await asyncio.wait_for(app(scope, endless_chunks, send), timeout=5)
    assert sent[0]["status"] == 413 and read == 6  # stopped at the first chunk past 5,000 bytes
    assert counts.total == 0

    async with _client(app) as client:  # a chunked body within the limit reaches the route whole

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(4):
                yield b"y" * 1_000

        response = await client.post("/echo", content=chunks())
        assert response.status_code == 200 and response.json() == {"bytes": 4_000}


async def test_keys_are_checked_before_anything_else() -> None:
    app, counts, _ = limited_app(limit=1, keys=True)
    async with _client(app, "wrong") as client:
        assert (await client.get("/slow")).status_code == 401
    assert counts.total == 0
