"""SSE coalescing of engine output: order and content preserved, dicts and errors pass through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serving.engine import coalesce_sse


async def _source(items: list[Any], delay_every: int = 0) -> AsyncIterator[Any]:
    for n, item in enumerate(items):
        if isinstance(item, Exception):
            raise item
        if delay_every and n % delay_every == 0:
            await asyncio.sleep(0.01)
        yield item


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


async def test_coalesced_stream_keeps_every_byte_in_order() -> None:
    chunks = [f"data: {i}\n\n" for i in range(50)]
    out = await _collect(coalesce_sse(_source(chunks, delay_every=7)))
    assert "".join(out) == "".join(chunks)
    assert len(out) < len(chunks)


async def test_dict_passes_through() -> None:
    out = await _collect(coalesce_sse(_source([{"id": "x"}])))
    assert out == [{"id": "x"}]


async def test_errors_propagate() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await _collect(coalesce_sse(_source(["data: 1\n\n", RuntimeError("boom")])))
