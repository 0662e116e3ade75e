"""Every Redis key the worker owns, built in one place under one prefix.

Tests and several deployments can share one Redis because nothing is written outside
the prefix (and the queue, which Celery names).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def dead_all(self) -> str:
        """Sorted set of dead-letter ids by time of death (ms)."""
        return self._k("dead", "all")

    def dead_record(self, record_id: str) -> str:
        return self._k("dead", "rec", record_id)

    def dead_by_reason(self, reason: str) -> str:
        return self._k("dead", "reason", reason)

    def dead_by_call(self, call_id: str) -> str:
        return self._k("dead", "call", call_id)

    @property
    def retry_due(self) -> str:
        """Sorted set of task messages waiting for their retry time (score: due, ms)."""
        return self._k("retry", "due")

    @property
    def outcomes(self) -> str:
        """Hash of outcome counters."""
        return self._k("outcomes")
