"""Every Redis key the worker owns, built in one place under one prefix.

Tests and several deployments can share one Redis because nothing of ours is written outside
the prefix: reliable fetch's keys live there too (`<prefix>:fetch:<queue>:consumers` and
`<prefix>:fetch:<queue>:held:<consumer id>`, named in `state/fetch.py`). Besides it: the
queue (a list named after it), and kombu's own bookkeeping: `_kombu.binding*` keys for its
exchanges, and the `unacked`, `unacked_index` and `unacked_mutex` keys its Redis transport
shares between every queue of the database (only messages kombu itself fetched enter them).
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

    def dead_by_code(self, code: str) -> str:
        """By the error code of the last attempt (records that never reached the API: none)."""
        return self._k("dead", "code", code)

    def dead_by_call(self, call_id: str) -> str:
        return self._k("dead", "call", call_id)

    @property
    def fetch(self) -> str:
        """What reliable fetch's keys start with (its `fetch_key_prefix`)."""
        return self._k("fetch")

    @property
    def retry_due(self) -> str:
        """Sorted set of task messages waiting for their retry time (score: due, ms)."""
        return self._k("retry", "due")

    def applied(self, call_id: str) -> str:
        """Highest version applied to the call."""
        return self._k("call", call_id, "applied")

    def pending(self, call_id: str) -> str:
        """Sorted set of event ids published for the call and not finished, by version."""
        return self._k("call", call_id, "pending")

    def parked(self, call_id: str) -> str:
        """Sorted set of the ids of older events held back while a newer one is pending, by
        version; one entry per event however often it is delivered."""
        return self._k("call", call_id, "parked")

    def parked_messages(self, call_id: str) -> str:
        """Hash: the message of each parked event, by event id."""
        return self._k("call", call_id, "parked", "msg")

    def tags(self, call_id: str) -> str:
        """The tags (as sent to the API) of the call's applied version, for repairs."""
        return self._k("call", call_id, "tags")

    def unsettled(self, call_id: str) -> str:
        """Sorted set of versions whose write may still land late (an unknown outcome), by the
        time after which the API can no longer apply them (ms)."""
        return self._k("call", call_id, "unsettled")

    def clock(self, call_id: str) -> str:
        """The last default version given to an event of the call, so defaults never tie."""
        return self._k("call", call_id, "clock")

    def received(self, call_id: str) -> str:
        """Hash: the version given at first receipt to each of the call's events that came
        without one, by event id."""
        return self._k("call", call_id, "received")

    def lease(self, call_id: str) -> str:
        """The one-writer-at-a-time lock of the call (value: the holder's token)."""
        return self._k("call", call_id, "lease")

    def fates(self, call_id: str | None, event_id: str) -> str:
        """Hash: how events ended (`applied`, `stale`, `superseded` or `dead`), by event id, set
        once each. One per call holds the fates of all its events, so the scripts that hold a
        call's keys hold every fate they look at, and a finished event costs a hash field, not a
        key. An event without a call (too broken to name one) has a hash of its own."""
        return self._k("call", call_id, "fates") if call_id else self._k("fate", event_id)

    @property
    def settle_index(self) -> str:
        """Sorted set of calls with writes of unknown outcome, by when the next one can no
        longer land (ms): when to check whether a repair is needed."""
        return self._k("settle")

    @property
    def writable(self) -> str:
        """String: rewritten by every housekeeping tick and scrape to learn whether Redis takes
        writes now; expires in a minute."""
        return self._k("writable")

    @property
    def circuit(self) -> str:
        """Hash: the API circuit's state, cool-down end, probe, failures in a row and cause."""
        return self._k("flow", "circuit")

    @property
    def limiter(self) -> str:
        """Hash: the shared pace (current rate, next free slot, when it last changed)."""
        return self._k("flow", "limiter")

    @property
    def outcomes(self) -> str:
        """Hash of outcome counters."""
        return self._k("outcomes")

    @property
    def outcome_history(self) -> str:
        """Sorted set of timed copies of the outcome counters (score: ms), for recent rates."""
        return self._k("outcomes", "history")
