"""Delayed retries kept in Redis, not in worker memory.

A retry is the full task message parked in a sorted set scored by its due time. A mover
that runs beside every worker pushes due messages onto the queue in one script, so a
message is moved exactly once however many workers run, and a killed worker loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from tagging_worker.state.keys import Keys

log = logging.getLogger(__name__)

# KEYS: due set, queue; ARGV: now_ms, batch
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, message in ipairs(due) do
  redis.call('LPUSH', KEYS[2], message)
  redis.call('ZREM', KEYS[1], message)
end
return #due
"""


class RetrySchedule:
    def __init__(self, client: redis.Redis, keys: Keys, *, queue: str) -> None:
        self._redis = client
        self._keys = keys
        self._queue = queue
        self._move_due = client.register_script(_MOVE_DUE)

    def schedule(self, message: str, *, delay: float) -> None:
        due_ms = int((time.time() + max(delay, 0.0)) * 1000)
        self._redis.zadd(self._keys.retry_due, {message: due_ms})

    def pending(self) -> int:
        return int(self._redis.zcard(self._keys.retry_due))

    def move_due(self, *, batch: int = 500) -> int:
        """Move what is due now; returns how many messages went back on the queue."""
        return int(
            self._move_due(
                keys=[self._keys.retry_due, self._queue],
                args=[int(time.time() * 1000), batch],
            )
        )


class Housekeeper(threading.Thread):
    """Beside every worker: moves due retries to the queue, queues the settle checks of calls
    whose writes of unknown outcome can no longer land, and runs `watch` each `interval`.
    Redis errors are logged and retried on the next tick: the worker outlives a Redis restart.
    """

    def __init__(
        self,
        schedule: RetrySchedule,
        watch: Callable[[], None],
        *,
        settle: Callable[[], int],
        interval: float,
    ) -> None:
        super().__init__(name="tagging-housekeeper", daemon=True)
        self._schedule = schedule
        self._settle = settle
        self._watch = watch
        self._interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._watch()
                while self._schedule.move_due() and not self._stopped.is_set():
                    pass
                self._settle()
            except redis.RedisError as exc:
                log.warning("housekeeping: Redis unavailable (%s); trying again", exc)
            self._stopped.wait(self._interval)

    def stop(self) -> None:
        self._stopped.set()
