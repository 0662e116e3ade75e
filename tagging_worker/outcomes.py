"""Counters of how events ended, so every published event can be accounted for."""

from __future__ import annotations

from enum import Enum

import redis

from tagging_worker.keys import Keys


class Outcome(str, Enum):
    """The four fates (every event ends in exactly one) and two counts of work done."""

    APPLIED = "applied"
    STALE = "stale"
    SUPERSEDED = "superseded"
    DEAD = "dead"
    RETRIED = "retried"
    REPLAYED = "replayed"


FATES = (Outcome.APPLIED, Outcome.STALE, Outcome.SUPERSEDED, Outcome.DEAD)


class OutcomeCounters:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._key = keys.outcomes

    def add(self, outcome: Outcome, n: int = 1) -> None:
        self._redis.hincrby(self._key, outcome.value, n)

    def snapshot(self) -> dict[str, int]:
        raw = self._redis.hgetall(self._key)
        counts = {outcome.value: 0 for outcome in Outcome}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts
