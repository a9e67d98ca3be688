"""Background engine requests (alignment) step aside while foreground ones (chat) run on the same engine.

vLLM's priority scheduling orders only the *waiting* queue: alignment sequences that are already running
share every engine step with chat, and on a compute-bound engine (a CPU, or a saturated GPU) each extra
sequence makes every step slower. Nor does it preempt for a sequence slot: with `max_num_seqs` running,
an arriving chat waits until one of them ends. So the engine replica itself admits background requests:
at most `idle_limit` while the engine has no foreground work (fewer than its slots, so chat always finds
one), at most `busy_limit` while foreground requests run and for `quiet_s` after the last one ended (a
user's next turn usually follows within seconds). Running background requests finish; only new ones
wait. No framework in here: the engine deployment wraps it.
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
    background_waiting: int = Field(description="background requests held back")
    background_limit: int = Field(description="how many background requests may run now")


class BackgroundGate:
    def __init__(
        self, busy_limit: int, idle_limit: int, quiet_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 1 <= busy_limit <= idle_limit:
            # 0 would stall alignment for as long as chat never pauses; 1 keeps it moving.
            raise ValueError("need 1 <= busy_limit <= idle_limit")
        self._busy_limit = busy_limit
        self._idle_limit = idle_limit
        self._quiet_s = quiet_s
        self._clock = clock
        self._foreground = 0
        self._background = 0
        self._waiting = 0
        self._last_foreground_end = -math.inf
        self._changed = asyncio.Condition()

    def _quiet_left(self) -> float:
        return self._quiet_s - (self._clock() - self._last_foreground_end)

    def limit(self) -> int:
        """How many background requests may run now."""
        if self._foreground or self._quiet_left() > 0:
            return self._busy_limit
        return self._idle_limit

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
                while self._background >= self.limit():
                    # In the quiet period, wait until it ends; otherwise for a request to end or start.
                    quiet_left = self._quiet_left()
                    timeout = quiet_left if not self._foreground and quiet_left > 0 else None
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
