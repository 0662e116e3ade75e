"""Replaying a dead letter: the one way the CLI and the demo put a record back on the queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tagging_worker.errors import ReplayConflict
from tagging_worker.messages import build_task_message
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores


def replay_dead_letter(
    stores: Stores, record_id: str, *, revise: Callable[[DeadLetter], Any] | None = None
) -> bool:
    """Move one record back onto the queue with a fresh attempt budget, as it was or as
    `revise(record)` makes it.

    False when the record is gone, or changed between reading and moving it (then it stays);
    ReplayRefused when it is damaged or cannot be sent (it stays too).
    """
    queue = stores.settings.queue
    try:
        return stores.dead_letters.replay(
            record_id,
            queue=queue,
            build_message=lambda event: build_task_message(event, queue=queue),
            revise=revise,
        )
    except ReplayConflict:
        return False


def known_version(stores: Stores, record: DeadLetter) -> int | None:
    """The newest version the record's call is known to have applied: what Redis holds, or
    what the record saw when the event died, whichever is higher (Redis may have forgotten,
    or the record may come from another environment)."""
    seen = [
        None if record.call_id is None else stores.ordering.applied_version(record.call_id),
        record.applied_version,
    ]
    known = [v for v in seen if v is not None]
    return max(known) if known else None


def winning_version(version: int, applied: int | None) -> int | None:
    """For a forced replay: the version that beats what the call has applied, or None when
    the event's own version already does."""
    if applied is None or version > applied:
        return None
    return applied + 1
