"""The per-call protocol checked against an oracle, with Hypothesis's rule-based state machine.

The real Lua scripts run on a real Redis; workers, the queue's redelivery and the API are
simulated step by step so that any interleaving can be drawn: publishes (registered or not,
with or without a version, duplicated), deliveries, crashes between any two steps, API answers
(success, refusal, transient, unknown with or without a late apply), leases running out,
settle checks and replays of dead letters. After the run is driven to rest, every event has
exactly one fate, the right one, and the API holds the tags of the newest live version.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state import ordering as ordering_module
from tagging_worker.state.dead_letters import DeadLetterStore
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Begin, Ordering, Repair, Settle
from tagging_worker.state.outcomes import FATES
from tests.conftest import REDIS_URL

CALL = "call-1"
LEASE_MS = 1_000
SETTLE_MS = 1_000
ANSWERS = (
    "ok",
    "refused",
    "transient",
    "lost",
    "applied_unseen",
    "late",
    "crash_before_send",
    "paused",
)


@dataclass
class Request:
    """A write the API received whose answer the worker has not acted on yet."""

    event_id: str | None  # None: a repair
    version: int
    tags: str
    token: str
    answer: str
    message: str


@dataclass
class LateApply:
    tags: str
    land_by: int


@dataclass
class World:
    clock: int = field(default_factory=lambda: int(time.time() * 1000))
    api_tags: str | None = None
    late: list[LateApply] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    paused: list[Request] = field(default_factory=list)
    """Workers stopped between taking the lease and sending (a long GC pause, SIGSTOP)."""
    events: dict[str, dict] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    landed: list[tuple[int, str | None]] = field(default_factory=list)
    """Writes the API applied as they were sent: (version, event id; None for a repair)."""


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.prefix = f"tw-model-{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.w = World()
        ordering_module._now_ms = lambda: self.w.clock
        self.ordering = Ordering(
            self.redis,
            self.keys,
            queue=self.prefix,
            version_ttl=600,
            fate_ttl=600,
            settle_ms=SETTLE_MS,
        )
        self.dead_letters = DeadLetterStore(self.redis, self.keys, max_records=1000)

    # producers ------------------------------------------------------------------------

    @rule(
        version=st.one_of(st.none(), st.integers(0, 5)),
        registered=st.booleans(),
        copies=st.integers(1, 2),
    )
    def publish(self, version: int | None, registered: bool, copies: int) -> None:
        event_id = uuid.uuid4().hex[:8]
        event = {"call_id": CALL, "tags": [f"t-{event_id}"], "event_id": event_id}
        if version is not None:
            event["version"] = version
        self.w.events[event_id] = event
        message = build_task_message(event, queue=self.prefix)
        for _ in range(copies):  # a producer's retried publish: the same event again
            if registered and version is not None:
                self.ordering.publish(CALL, version, event_id, message)
            else:
                self.redis.lpush(self.prefix, message)

    @rule(data=st.data())
    def replay_a_dead_letter(self, data: st.DataObject) -> None:
        ids = [r.id for r in self.dead_letters.list(limit=100)]
        if ids:
            record_id = data.draw(st.sampled_from(sorted(ids)))
            self.dead_letters.replay(
                record_id,
                queue=self.prefix,
                build_message=lambda event: build_task_message(event, queue=self.prefix),
            )

    # workers --------------------------------------------------------------------------

    @rule(answer=st.sampled_from(ANSWERS))
    def deliver(self, answer: str) -> None:
        """A worker takes the oldest message and runs it up to its API answer."""
        raw = self.redis.rpop(self.prefix)
        if raw is None:
            return
        message = raw.decode()
        args, kwargs, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
        token = uuid.uuid4().hex
        if "settle" in kwargs:
            step, repair = self.ordering.settle(CALL, token=token, lease_ms=LEASE_MS)
            if step is Settle.GO:
                assert repair is not None
                self._send(Request(None, repair.version, repair.tags_json, token, answer, message))
            return
        event = args[0]
        version = event.get("version")
        if version is None:
            version = self.ordering.version_at_receipt(CALL, event["event_id"])
        step = self.ordering.begin(
            CALL, version, event["event_id"], message, token=token, lease_ms=LEASE_MS
        )
        if step is Begin.BUSY:
            self.redis.lpush(self.prefix, message)
        elif step is Begin.GO:
            tags = json.dumps(event["tags"], separators=(",", ":"))
            self._send(Request(event["event_id"], version, tags, token, answer, message))

    def _send(self, request: Request, *, resumed: bool = False) -> None:
        if request.answer == "paused":
            self.w.paused.append(request)
            return
        if not resumed:
            self._never_behind_a_live_newer_write(request)
        if request.answer in ("ok", "applied_unseen"):
            self.w.landed.append((request.version, request.event_id))
            self.w.api_tags = request.tags
        elif request.answer == "late":
            self.w.late.append(LateApply(request.tags, self.w.clock + SETTLE_MS))
        self.w.requests.append(request)

    @precondition(lambda self: self.w.requests)
    @rule(data=st.data(), give_up=st.booleans())
    def record_an_answer(self, data: st.DataObject, give_up: bool) -> None:
        request = self.w.requests.pop(data.draw(st.integers(0, len(self.w.requests) - 1)))
        if request.answer == "crash_before_send":
            self._crash(request)
        elif request.event_id is None:
            self._record_repair(request)
        elif request.answer == "ok":
            self.ordering.applied(
                CALL, request.version, request.event_id, request.tags, token=request.token
            )
        elif request.answer == "refused" or give_up:
            if request.answer == "refused":
                self.w.refused.add(request.event_id)
            definite = request.answer in ("refused", "transient")
            self._bury(request, definite=definite)
        else:
            definite = request.answer == "transient"
            version = request.version if definite else None
            self.ordering.release(
                CALL, token=request.token, version=version, event_id=request.event_id
            )
            self.redis.lpush(self.prefix, request.message)

    def _record_repair(self, request: Request) -> None:
        repair = Repair(request.version, request.tags)
        if request.answer == "ok":
            self.ordering.repaired(CALL, repair, checked_ms=self.w.clock, token=request.token)
        elif request.answer == "refused":
            self.ordering.repaired(
                CALL, repair, checked_ms=self.w.clock, token=request.token, failed=True
            )
        else:
            definite = request.answer == "transient"
            version = request.version if definite else None
            self.ordering.release(CALL, token=request.token, version=version)

    def _bury(self, request: Request, *, definite: bool) -> None:
        event = self.w.events[request.event_id]
        record = self.dead_letters.prepare(
            record_id=request.event_id,
            reason=DeadReason.PERMANENT_ERROR,
            detail="refused",
            event=event,
            normalized={**event, "version": request.version},
            attempts=[],
            first_seen=0.0,
            task_id="t",
            applied_version=self.ordering.applied_version(CALL),
        )
        self.ordering.dead(
            CALL,
            request.event_id,
            record,
            token=request.token,
            version=request.version if definite else None,
        )

    @precondition(lambda self: self.w.requests)
    @rule(data=st.data())
    def crash_a_worker(self, data: st.DataObject) -> None:
        """The worker dies before acting on the answer; its message is delivered again."""
        self._crash(self.w.requests.pop(data.draw(st.integers(0, len(self.w.requests) - 1))))

    def _crash(self, request: Request) -> None:
        if request.event_id is not None:
            self.redis.lpush(self.prefix, request.message)

    @precondition(lambda self: self.w.paused)
    @rule(data=st.data())
    def a_paused_worker_sends_and_succeeds(self, data: st.DataObject) -> None:
        """Its lease may have run out meanwhile: the write lands whatever was applied since."""
        request = self.w.paused.pop(data.draw(st.integers(0, len(self.w.paused) - 1)))
        request.answer = "ok"
        self._send(request, resumed=True)

    def _never_behind_a_live_newer_write(self, request: Request) -> None:
        """A worker holding the lease never sends a version older than one that has landed,
        unless that one's event is dead (then the older is the newest live version). Only a
        worker whose lease ran out may (the repair undoes it)."""
        for version, event_id in self.w.landed:
            if version > request.version and (
                event_id is None or self.ordering.fate(CALL, event_id) != "dead"
            ):
                raise AssertionError(
                    f"sent v{request.version} after v{version} ({event_id}) had landed"
                )

    @rule()
    def a_lease_runs_out(self) -> None:
        self.redis.delete(self.keys.lease(CALL))

    # the API and time -----------------------------------------------------------------

    @precondition(lambda self: self.w.late)
    @rule(data=st.data())
    def a_late_write_lands(self, data: st.DataObject) -> None:
        late = self.w.late.pop(data.draw(st.integers(0, len(self.w.late) - 1)))
        if self.w.clock <= late.land_by:
            self.w.api_tags = late.tags

    @rule(ms=st.sampled_from((10, 600, 2_500)))
    def time_passes(self, ms: int) -> None:
        self.w.clock += ms
        self.w.late = [late for late in self.w.late if late.land_by >= self.w.clock]

    @rule()
    def housekeeper_queues_settle_checks(self) -> None:
        self.ordering.queue_due_settles(again_ms=1_000)

    # the oracle -------------------------------------------------------------------------

    @invariant()
    def no_event_has_two_fates(self) -> None:
        counts = {k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.outcomes).items()}
        fated = sum(counts.get(f.value, 0) for f in FATES)
        assert fated == sum(
            self.redis.hexists(self.keys.fates(CALL, event_id), event_id)
            for event_id in self.w.events
        )

    def teardown(self) -> None:
        try:
            self._come_to_rest()
            self._check_the_end()
        finally:
            doomed = list(self.redis.scan_iter(f"{self.prefix}*", count=1000))
            if doomed:
                self.redis.delete(*doomed)
            self.redis.close()

    def _come_to_rest(self) -> None:
        """Paused workers wake and succeed, the rest crash; a healthy API and patient workers
        then work through the queue, and only after that does every late write land, at the
        last moment it can; then time passes and everything due is settled."""
        for request in self.w.paused:
            request.answer = "ok"
            self._send(request, resumed=True)
        self.w.paused.clear()
        for request in [r for r in self.w.requests if r.answer != "ok"]:
            self.w.requests.remove(request)
            self._crash(request)
        self._work_through_the_queue()
        for late in self.w.late:
            self.w.api_tags = late.tags
        self.w.late.clear()
        for _ in range(100):
            self.w.clock += LEASE_MS + SETTLE_MS + 1
            self.housekeeper_queues_settle_checks()
            if not self.redis.llen(self.prefix) and not self.redis.zcard(self.keys.settle_index):
                return
            self._work_through_the_queue()
        raise AssertionError("the protocol did not come to rest")

    def _work_through_the_queue(self) -> None:
        """Until the queue is empty, or every message in it waits for time to pass (a newer
        version in doubt)."""
        waiting = 0
        for _ in range(1_000):
            for request in list(self.w.requests):
                self.w.requests.remove(request)
                request.answer = "ok"
                if request.event_id is None:
                    self._record_repair(request)
                else:
                    self.ordering.applied(
                        CALL, request.version, request.event_id, request.tags, token=request.token
                    )
            self.a_lease_runs_out()
            queued = self.redis.llen(self.prefix)
            if not queued or waiting > queued:
                return
            self.deliver("ok")
            waiting = waiting + 1 if self.redis.llen(self.prefix) == queued else 0
        raise AssertionError("the queue never emptied")

    def _check_the_end(self) -> None:
        fates = {eid: self.ordering.fate(CALL, eid) for eid in self.w.events}
        assert None not in fates.values(), fates
        dead = {eid for eid, fate in fates.items() if fate == "dead"}
        assert dead == {r.id for r in self.dead_letters.list(limit=1000)}
        versions = {eid: self._version_of(eid) for eid in self.w.events}
        live = {eid: v for eid, v in versions.items() if eid not in dead}
        if live:
            newest = max(live.values())
            winners = {
                json.dumps(self.w.events[eid]["tags"], separators=(",", ":"))
                for eid, v in live.items()
                if v == newest
            }
            assert self.w.api_tags in winners, (self.w.api_tags, winners, fates, versions)
            assert self.ordering.applied_version(CALL) == newest
        for eid, fate in fates.items():
            if fate in ("stale", "superseded"):
                assert versions[eid] <= self.ordering.applied_version(CALL)
        assert not self.redis.exists(self.keys.unsettled(CALL))
        assert not self.redis.zscore(self.keys.settle_index, CALL)

    def _version_of(self, event_id: str) -> int:
        version = self.w.events[event_id].get("version")
        if version is None:
            version = int(self.redis.hget(self.keys.received(CALL), event_id))
        return version


@pytest.fixture
def _redis_up() -> None:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need Redis at {REDIS_URL} ({exc})")


@pytest.mark.usefixtures("_redis_up")
def test_any_interleaving_ends_with_one_right_fate_per_event_and_the_newest_tags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ordering_module, "_now_ms", ordering_module._now_ms)
    ProtocolMachine.TestCase.settings = settings(
        max_examples=150,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    ProtocolMachine.TestCase().runTest()
