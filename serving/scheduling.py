"""When a user's new ground truth makes them due for alignment, they are queued: the rule in one place."""

from __future__ import annotations

from typing import Any

from alignment.jobs import AlignmentJob


async def enqueue_if_due(memory: Any, alignment: Any, user_id: str, reason: str) -> AlignmentJob | None:
    """The one rule: a user who became due (K new ground truths since the last alignment) is queued."""
    if await memory.take_alignment_due.remote(user_id):
        return await alignment.enqueue.remote(user_id, reason)
    return None
