"""Counters of how events ended, so every published event can be accounted for."""

from __future__ import annotations

import json
import time
from enum import Enum

import redis

from tagging_worker.state import scripts
from tagging_worker.state.keys import Keys


class Outcome(str, Enum):
    """The four fates (every event ends in exactly one) and counts of work done."""

    APPLIED = "applied"
    STALE = "stale"
    SUPERSEDED = "superseded"
    DEAD = "dead"
    RETRIED = "retried"
    REPLAYED = "replayed"
    HELD = "held"
    """Sent back to wait for the API budget or an open circuit, without using an attempt."""
    REPAIRED = "repaired"
    """A call's applied tags written again, because an older write may have landed late."""
    REPAIR_FAILED = "repair_failed"
    """A repair the API refused for good (its tags were accepted before): see the logs."""


FATES = (Outcome.APPLIED, Outcome.STALE, Outcome.SUPERSEDED, Outcome.DEAD)


SAMPLE_EVERY_MS = 10_000
KEEP_HISTORY_MS = 15 * 60_000


class OutcomeCounters:
    """Totals since the prefix was first used, and a short history of them (one sample per
    10 s, whichever worker takes it) so that recent rates can be told."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._key = keys.outcomes
        self._history = keys.outcome_history
        self._sample = scripts.register(client, "outcomes_sample")

    def add(self, outcome: Outcome, n: int = 1) -> None:
        self._redis.hincrby(self._key, outcome.value, n)

    def sample(self, now: float | None = None) -> bool:
        """Take the current 10 s slot's sample unless a worker did; True if this call did."""
        slot = int((now if now is not None else time.time()) * 1000) // SAMPLE_EVERY_MS
        return bool(
            self._sample(
                keys=[self._key, self._history], args=[slot * SAMPLE_EVERY_MS, KEEP_HISTORY_MS]
            )
        )

    def rates(
        self, window: float, now: float | None = None, current: dict[str, int] | None = None
    ) -> dict[str, float]:
        """Per second over about the last `window` seconds: from the oldest sample inside it
        to the counters now (`current`, when the caller has just read them). Empty until a
        sample that old exists."""
        now = now if now is not None else time.time()
        oldest = self._redis.zrangebyscore(
            self._history, (now - window) * 1000, "+inf", start=0, num=1
        )
        if not oldest:
            return {}
        at_ms, _, counts = oldest[0].decode().partition(" ")
        elapsed = now - int(at_ms) / 1000
        if elapsed <= 0:
            return {}
        then = json.loads(counts) if counts != "{}" else {}
        current = current if current is not None else self.snapshot()
        return {k: round((current[k] - then.get(k, 0)) / elapsed, 2) for k in current}

    def snapshot(self) -> dict[str, int]:
        raw = self._redis.hgetall(self._key)
        counts = {outcome.value: 0 for outcome in Outcome}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts
