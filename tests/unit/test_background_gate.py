"""The engine replica's background gate (alignment steps aside for chat), on its own.

The real engine path (alignment held back while a chat streams, visible in /metrics) is in
`test_alignment.py::test_alignment_yields_to_a_running_chat`.
"""

from __future__ import annotations

import asyncio

import pytest

from serving.background_gate import BackgroundGate


async def _hold(cm: object, started: list[str], name: str, release: asyncio.Event) -> None:
    async with cm:  # type: ignore[attr-defined]
        started.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_without_foreground_background_runs_up_to_the_idle_limit() -> None:
    async def scenario() -> None:
        gate = BackgroundGate(busy_limit=1, idle_limit=4, quiet_s=0.2)
        started: list[str] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate.background(), started, f"b{i}", release)) for i in range(6)]
        await _settle()
        # Slots stay free for chat: vLLM would not preempt a running request to give it one.
        assert len(started) == 4 and gate.limit() == 4
        assert gate.stats().background_waiting == 2
        release.set()
        await asyncio.gather(*tasks)
        assert len(started) == 6 and gate.stats().background_running == 0

    asyncio.run(scenario())


def test_foreground_limits_new_background_until_quiet_period_ends() -> None:
    async def scenario() -> None:
        gate = BackgroundGate(busy_limit=2, idle_limit=8, quiet_s=0.3)
        started: list[str] = []
        fg_release, bg_release = asyncio.Event(), asyncio.Event()
        chat = asyncio.create_task(_hold(gate.foreground(), started, "chat", fg_release))
        await _settle()
        background = [
            asyncio.create_task(_hold(gate.background(), started, f"b{i}", bg_release)) for i in range(5)
        ]
        await _settle()
        stats = gate.stats()
        assert (stats.foreground_running, stats.background_running, stats.background_waiting) == (1, 2, 3)
        # Chat ends: the limit still holds for the quiet period, then the rest are admitted.
        fg_release.set()
        await chat
        await asyncio.sleep(0.1)
        assert gate.stats().background_running == 2 and gate.limit() == 2
        await asyncio.sleep(0.4)
        assert gate.stats().background_running == 5 and gate.limit() == 8
        bg_release.set()
        await asyncio.gather(*background)

    asyncio.run(scenario())


def test_a_finished_background_request_lets_the_next_one_in_while_chat_runs() -> None:
    async def scenario() -> None:
        gate = BackgroundGate(busy_limit=1, idle_limit=8, quiet_s=10)
        started: list[str] = []
        chat_release = asyncio.Event()
        releases = [asyncio.Event() for _ in range(3)]
        chat = asyncio.create_task(_hold(gate.foreground(), started, "chat", chat_release))
        await _settle()
        tasks = [
            asyncio.create_task(_hold(gate.background(), started, f"b{i}", releases[i])) for i in range(3)
        ]
        await _settle()
        assert started == ["chat", "b0"]
        releases[0].set()
        await _settle()
        assert started == ["chat", "b0", "b1"]  # one out, one in: alignment keeps moving under chat
        releases[1].set()
        releases[2].set()
        chat_release.set()
        await asyncio.gather(chat, *tasks)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> None:
        gate = BackgroundGate(busy_limit=1, idle_limit=8, quiet_s=10)
        release = asyncio.Event()
        started: list[str] = []
        chat = asyncio.create_task(_hold(gate.foreground(), started, "chat", release))
        running = asyncio.create_task(_hold(gate.background(), started, "b0", release))
        waiting = asyncio.create_task(_hold(gate.background(), started, "b1", release))
        await _settle()
        assert gate.stats().background_waiting == 1
        waiting.cancel()
        await _settle()
        assert gate.stats().background_waiting == 0 and gate.stats().background_running == 1
        release.set()
        await asyncio.gather(chat, running)
        assert gate.stats().model_dump() == {
            "foreground_running": 0, "background_running": 0, "background_waiting": 0, "background_limit": 1,
        }  # fmt: skip

    asyncio.run(scenario())


def test_limits_must_let_alignment_move() -> None:
    with pytest.raises(ValueError):
        BackgroundGate(busy_limit=0, idle_limit=8, quiet_s=1)
    with pytest.raises(ValueError):
        BackgroundGate(busy_limit=4, idle_limit=2, quiet_s=1)
