"""Delayed retries kept in Redis, not in worker memory.

A retry is the full task message parked in a sorted set scored by its due time. Every
worker's housekeeping (`worker/lifecycle.py`) pushes due messages onto the queue in one
script, so a message is moved exactly once however many workers run, and a killed worker
loses nothing.
"""

from __future__ import annotations

import time

import redis

from tagging_worker.state import scripts
from tagging_worker.state.keys import Keys


class RetrySchedule:
    def __init__(self, client: redis.Redis, keys: Keys, *, queue: str) -> None:
        self._redis = client
        self._keys = keys
        self._queue = queue
        self._move_due = scripts.register(client, "move_due")

    def schedule(self, message: str, *, delay: float) -> None:
        due_ms = int((time.time() + max(delay, 0.0)) * 1000)
        self._redis.zadd(self._keys.retry_due, {message: due_ms})

    def pending(self) -> int:
        return int(self._redis.zcard(self._keys.retry_due))

    def soonest(self, count: int) -> list[tuple[bytes, float]]:
        """The first `count` retries to come due: each message and its due time (epoch s)."""
        found = self._redis.zrange(self._keys.retry_due, 0, count - 1, withscores=True)
        return [(message, due_ms / 1000) for message, due_ms in found]

    def move_due(self, *, batch: int = 500, now: float | None = None) -> int:
        """Move what is due by `now` (epoch seconds; the present by default); returns how many
        messages went back on the queue."""
        due_by = time.time() if now is None else now
        return int(
            self._move_due(
                keys=[self._keys.retry_due, self._queue],
                args=["+inf" if due_by == float("inf") else int(due_by * 1000), batch],
            )
        )
