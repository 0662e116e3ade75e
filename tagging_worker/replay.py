"""Replaying a dead letter: the one way the CLI and the demo put a record back on the queue."""

from __future__ import annotations

from tagging_worker.dead_letters import ReplayConflict, replay_event
from tagging_worker.messages import build_task_message
from tagging_worker.runtime import Runtime


def replay_dead_letter(rt: Runtime, record_id: str) -> bool:
    """Move one record back onto the queue with a fresh attempt budget.

    False when the record is gone, or changed between reading and moving it (then it stays).
    """
    queue = rt.settings.queue
    try:
        moved = rt.dead_letters.replay(
            record_id,
            queue=queue,
            build_message=lambda record: build_task_message(replay_event(record), queue=queue),
        )
    except ReplayConflict:
        return False
    return moved
