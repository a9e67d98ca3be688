"""When a user's new ground truth makes them due for alignment, they are queued: the rule in one place."""

from __future__ import annotations

from alignment.jobs import AlignmentJob
from serving.ports import AlignmentPort, MemoryPort


async def enqueue_if_due(
    memory: MemoryPort, alignment: AlignmentPort, user_id: str, reason: str
) -> AlignmentJob | None:
    """The one rule: a user who became due (K new ground truths since the last alignment) is queued."""
    if await memory.take_alignment_due(user_id):
        return await alignment.enqueue(user_id, reason)
    return None
