"""Background engine requests (alignment) step aside while foreground ones (chat) run on the same engine.

vLLM's priority scheduling orders only the *waiting* queue: alignment sequences that are already running
share every engine step with chat, and on a compute-bound engine (a CPU, or a saturated GPU) each extra
sequence makes every step slower. So the engine replica itself admits background requests: any number
while the engine has no foreground work, at most `busy_limit` while foreground requests run and for
`quiet_s` after the last one ended (a user's next turn usually follows within seconds). Running
background requests finish; only new ones wait. No framework in here: the engine deployment wraps it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from pydantic import BaseModel, Field


class BackgroundGateStats(BaseModel):
    foreground_running: int = Field(description="foreground (chat) requests in the engine now")
    background_running: int = Field(description="background (alignment) requests admitted and running")
    background_waiting: int = Field(description="background requests held back for foreground work")
    background_limit: int | None = Field(description="admission limit now; None: unlimited")


class BackgroundGate:
    def __init__(self, busy_limit: int, quiet_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if busy_limit < 1:
            # 0 would stall alignment for as long as chat never pauses; 1 keeps it moving.
            raise ValueError("busy_limit must be at least 1")
        self._busy_limit = busy_limit
        self._quiet_s = quiet_s
        self._clock = clock
        self._foreground = 0
        self._background = 0
        self._waiting = 0
        self._last_foreground_end = -math.inf
        self._changed = asyncio.Condition()

    def _quiet_left(self) -> float:
        return self._quiet_s - (self._clock() - self._last_foreground_end)

    def limit(self) -> int | None:
        """How many background requests may run now (None: no limit)."""
        if self._foreground or self._quiet_left() > 0:
            return self._busy_limit
        return None

    def stats(self) -> BackgroundGateStats:
        return BackgroundGateStats(
            foreground_running=self._foreground,
            background_running=self._background,
            background_waiting=self._waiting,
            background_limit=self.limit(),
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def foreground(self) -> AsyncIterator[None]:
        self._foreground += 1
        try:
            yield
        finally:
            self._foreground -= 1
            self._last_foreground_end = self._clock()
            # Waiters blocked "until foreground ends" now wait for the quiet period instead.
            await self._notify()

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            async with self._changed:
                while (limit := self.limit()) is not None and self._background >= limit:
                    # With foreground running, wait for a change; otherwise until the quiet period ends.
                    timeout = None if self._foreground else max(0.0, self._quiet_left())
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout)
                    except TimeoutError:
                        pass
                self._background += 1
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._background -= 1
            await self._notify()
