"""Newest wins, and every event gets exactly one fate: the per-call state in Redis.

The API replaces a call's whole tag list, so an older version must never be written after a
newer one, and a write whose outcome is unknown may still land later. Per call, Redis keeps:

- `applied` and `tags`: the highest version applied and the tags it wrote (for repairs). They
  never expire while the call has a dead letter, so a replay cannot regress a forgotten call;
- `pending`: versions published but not finished (publishers register them), so an event
  older than one still on its way is *parked* instead of calling the API (coalescing);
- `parked` and its messages: those older events, one entry per event id, kept so that if the
  newer one dies the best of them is put back on the queue (the API must end with the highest
  version that was not dead-lettered);
- `lease`: one writer at a time, with an owner token and an expiry;
- `unsettled`: versions written with an unknown outcome (a timeout, a dropped connection), each
  until the API can no longer apply it; when that time has passed and the call's applied
  version is another one, the applied tags are written again (a *repair*). A success that finds
  a newer version already applied (its lease had run out) asks for a repair at once;
- `clock`: the last default version handed out, so default versions never tie, and
  `received`: the version each event that came without one was given at its first receipt;
- `fates`: how each of its events ended, set once per event id, so a redelivered or
  duplicated message is recognised and the outcome counters count every event exactly once.
  Kept with the call rather than a key per event: a finished event costs a hash field, and the
  fates a step looks at (the parked events a success supersedes, the events of in-doubt
  entries) are all in a key the script was given. A dead letter is stored in the same step as
  its fate.

Each step is one Lua script (`lua/ordering_*.lua`) and one call; nothing is read in one round
trip and written in another. Every key a script touches arrives in KEYS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from tagging_worker.messages import build_settle_message
from tagging_worker.state import scripts
from tagging_worker.state.dead_letters import DeadLetterStore, DeadRecord
from tagging_worker.state.keys import Keys
from tagging_worker.state.outcomes import Outcome


class Begin(str, Enum):
    GO = "go"
    """This worker holds the call's lease: call the API."""
    STALE = "stale"
    """A version at least as new was applied: finished, no API call."""
    PARKED = "parked"
    """A newer version is on its way: kept aside, no API call."""
    BUSY = "busy"
    """Another worker is writing this call: wait a moment and come back."""
    DUPLICATE = "duplicate"
    """This event already has its fate (a redelivered or duplicated message)."""


class Settle(str, Enum):
    SETTLED = "settled"
    """Nothing that may still land can regress the call: no write needed."""
    GO = "go"
    """A write of unknown outcome may have landed over the applied version: write it again."""
    BUSY = "busy"
    """Another worker is writing the call: check again shortly."""
    WAIT = "wait"
    """An unknown outcome can still land: check again when it no longer can."""


@dataclass(frozen=True)
class Repair:
    """What a repair writes: the call's applied version and its tags."""

    version: int
    tags_json: str


def _settle_reply(reply: list[bytes]) -> tuple[Settle, Repair | None]:
    """The reply of `ordering_settle.lua`."""
    step = Settle(reply[0].decode())
    if step is Settle.GO:
        return step, Repair(version=int(reply[1]), tags_json=reply[2].decode())
    return step, None


@dataclass(frozen=True)
class Recorded:
    """The answer to recording a success."""

    fate: Outcome | None
    """The fate given to the event, or None if another copy of it had finished first."""
    repair: bool
    """An older write landed on a newer one (this worker had lost its lease): repair now."""

    @classmethod
    def parse(cls, reply: list[Any]) -> Recorded:
        """The reply of `ordering_applied.lua`: the fate given ('' for none), 1 to repair."""
        fate, repair = reply
        return cls(fate=Outcome(fate.decode()) if fate else None, repair=bool(repair))


class Death(str, Enum):
    """What recording an event's death did (a `str`, so it compares equal to its value)."""

    DEAD = "dead"
    """The event is dead and its dead letter stored."""
    RESURRECTED = "resurrected"
    """As DEAD, and the best parked older event of the call was put back on the queue."""
    DUPLICATE = "duplicate"
    """The event already had its fate: no dead letter was stored."""


class Ordering:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        queue: str,
        version_ttl: int,
        fate_ttl: int,
        settle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.queue = queue
        self.version_ttl = version_ttl
        self.fate_ttl = fate_ttl
        self.settle_ms = settle_ms
        self._default_versions = scripts.register(client, "ordering_default_versions")
        self._receive = scripts.register(client, "ordering_receive")
        self._register = scripts.register(client, "ordering_register")
        self._begin = scripts.register(client, "ordering_begin")
        self._applied = scripts.register(client, "ordering_applied")
        self._settle = scripts.register(client, "ordering_settle")
        self._repaired = scripts.register(client, "ordering_repaired")
        self._claim_settles = scripts.register(client, "ordering_claim_settles")
        self._dead = scripts.register(client, "ordering_dead")
        self._finish = scripts.register(client, "ordering_finish")
        self._release = scripts.register(client, "ordering_release")

    def default_versions(self, call_ids: Sequence[str]) -> list[int]:
        """One default version per call id given (in order), each above every default the call
        had before, from Redis's clock: publishers on many hosts never tie, nor do events
        published in the same millisecond."""
        if not call_ids:
            return []
        answer = self._default_versions(
            keys=[self.keys.clock(call_id) for call_id in call_ids], args=[self.version_ttl]
        )
        return [int(v) for v in answer]

    def version_at_receipt(self, call_id: str, event_id: str) -> int:
        """The version of an event that came without one: given at its first receipt from the
        call's clock and remembered, so a redelivered or retried copy keeps its place."""
        return int(
            self._receive(
                keys=[self.keys.received(call_id), self.keys.clock(call_id)],
                args=[self.fate_ttl, self.version_ttl, event_id],
            )
        )

    def publish(
        self,
        call_id: str,
        version: int,
        event_id: str,
        message: str,
        *,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Queue a message and register its version as pending, in one step."""
        self._register(
            keys=[self.keys.pending(call_id), self.queue],
            args=[version, event_id, message, self.version_ttl],
            client=pipe or self.client,
        )

    def begin(
        self,
        call_id: str,
        version: int,
        event_id: str,
        parked_message: str,
        *,
        token: str,
        lease_ms: int,
    ) -> Begin:
        """See `ordering_begin.lua`."""
        k = self.keys
        now = _now_ms()
        reply = self._begin(
            keys=[
                k.applied(call_id),
                k.pending(call_id),
                k.parked(call_id),
                k.parked_messages(call_id),
                k.lease(call_id),
                k.fates(call_id, event_id),
                k.outcomes,
                k.unsettled(call_id),
                k.settle_index,
            ],
            args=[
                version,
                event_id,
                parked_message,
                token,
                lease_ms,
                self.version_ttl,
                self.fate_ttl,
                in_doubt(version, token, event_id),
                now + lease_ms + self.settle_ms,
                call_id,
            ],
        )
        return Begin(reply.decode())

    def applied(
        self, call_id: str, version: int, event_id: str, tags_json: str, *, token: str
    ) -> Recorded:
        """Record a success; its fate is `stale` when a newer version was already applied
        (this write landed on top of it, and a repair is asked for at once); the parked events
        it supersedes get theirs (see `ordering_applied.lua`)."""
        k = self.keys
        reply = self._applied(
            keys=[
                *self._event_keys(call_id, event_id),
                k.unsettled(call_id),
                k.dead_by_call(call_id),
                k.settle_index,
            ],
            args=[
                version,
                event_id,
                token,
                tags_json,
                self.version_ttl,
                self.fate_ttl,
                _now_ms(),
                call_id,
                in_doubt(version, token, event_id),
            ],
        )
        return Recorded.parse(reply)

    def settle(self, call_id: str, *, token: str, lease_ms: int) -> tuple[Settle, Repair | None]:
        """Whether a write of unknown outcome may have regressed the call; GO holds the lease
        and says what to write (itself written down as in doubt until it is answered)."""
        k = self.keys
        now = _now_ms()
        reply = self._settle(
            keys=[
                k.applied(call_id),
                k.tags(call_id),
                k.unsettled(call_id),
                k.lease(call_id),
                k.settle_index,
                k.fates(call_id, ""),
            ],
            args=[now, token, lease_ms, call_id, self.version_ttl, now + lease_ms + self.settle_ms],
        )
        return _settle_reply(reply)

    def repaired(
        self, call_id: str, repair: Repair, *, checked_ms: int, token: str, failed: bool = False
    ) -> None:
        """The applied tags were written again (or the API refused them for good, `failed`):
        what could land before `checked_ms` needs no further repair."""
        k = self.keys
        self._repaired(
            keys=[
                k.unsettled(call_id),
                k.lease(call_id),
                k.outcomes,
                k.settle_index,
                k.applied(call_id),
                k.fates(call_id, ""),
            ],
            args=[
                checked_ms,
                token,
                call_id,
                repair.version,
                "repair_failed" if failed else "repaired",
            ],
        )

    def queue_due_settles(self, *, again_ms: int = 5_000, batch: int = 100) -> int:
        """Queue a settle check for each call whose writes of unknown outcome can no longer
        land; returns how many. A call is claimed again only after `again_ms`, so a check lost
        with its worker is sent again and a call whose check is waiting is not sent twice."""
        now = _now_ms()
        due = self.client.zrangebyscore(self.keys.settle_index, "-inf", now, start=0, num=batch)
        if not due:
            return 0
        args: list[str | int] = [now, now + again_ms]
        for raw in due:
            call_id = raw.decode()
            args += [call_id, build_settle_message(call_id, queue=self.queue)]
        return int(self._claim_settles(keys=[self.keys.settle_index, self.queue], args=args))

    def dead(
        self,
        call_id: str,
        event_id: str,
        record: DeadRecord,
        *,
        token: str,
        version: int | None = None,
    ) -> Death:
        """Record the event's death and its dead letter in one step; puts the best parked older
        event back if there is one. `version` is given when the event's last request had a
        definite answer (it can no longer land)."""
        k = self.keys
        reply = self._dead(
            keys=[
                *self._event_keys(call_id, event_id),
                self.queue,
                k.unsettled(call_id),
                k.settle_index,
                *DeadLetterStore.record_keys(k, record),
            ],
            args=[
                event_id,
                token,
                self.fate_ttl,
                self.version_ttl,
                call_id,
                in_doubt(version, token, event_id) if version is not None and token else "",
                *record.script_args(),
            ],
        )
        return Death(reply.decode())

    def finish(self, event_id: str, outcome: Outcome, record: DeadRecord | None = None) -> bool:
        """A fate outside any call's ordering (an event too broken to have a call), with its
        dead letter when it has one; False if the event already had a fate. The fate goes
        where a replay of the record looks for it: with the record's call, if it names one."""
        k = self.keys
        keys = [k.fates(record.letter.call_id if record else None, event_id), k.outcomes]
        args: list[str | int] = [outcome.value, self.fate_ttl, event_id]
        if record is not None:
            keys += DeadLetterStore.record_keys(k, record)
            args += record.script_args()
        return bool(self._finish(keys=keys, args=args))

    def release(
        self, call_id: str, *, token: str, version: int | None = None, event_id: str = ""
    ) -> None:
        """Give up the call's lease. `version` (and the `event_id` it was written for, none for
        a repair) is given when no request is in doubt any more (none was sent, or it had a
        definite answer); without it the request stays in doubt."""
        k = self.keys
        member = in_doubt(version, token, event_id) if version is not None else ""
        self._release(
            keys=[k.lease(call_id), k.unsettled(call_id), k.settle_index],
            args=[token, member, call_id],
        )

    def _event_keys(self, call_id: str, event_id: str) -> list[str]:
        """What recording an event's end touches first, in the order its scripts number them."""
        k = self.keys
        return [
            k.applied(call_id),
            k.tags(call_id),
            k.pending(call_id),
            k.parked(call_id),
            k.parked_messages(call_id),
            k.lease(call_id),
            k.fates(call_id, event_id),
            k.outcomes,
        ]

    def applied_version(self, call_id: str) -> int | None:
        raw = self.client.get(self.keys.applied(call_id))
        return int(raw) if raw is not None else None

    def fate(self, call_id: str | None, event_id: str) -> str | None:
        raw = self.client.hget(self.keys.fates(call_id, event_id), event_id)
        return raw.decode() if raw is not None else None


def in_doubt(version: int, token: str, event_id: str = "") -> str:
    """How a request is written down while its outcome is unknown: its version, its writer and
    its event (none for a repair)."""
    return f"{version}:{token}:{event_id}"


def lease_ms_for(connect_timeout_ms: int, read_timeout_ms: int, wait_ms: int = 0) -> int:
    """A lease must outlive the longest wait for a turn plus the longest API call it guards,
    or two writers could overlap."""
    return wait_ms + connect_timeout_ms + read_timeout_ms + 5_000


def _now_ms() -> int:
    return int(time.time() * 1000)
