"""Version, lease and coalescing decisions against a real Redis, with concurrent clients."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict

import pytest
import redis

from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import (
    DeadLetter,
    DeadLetterStore,
    DeadRecord,
    Restored,
    read_record,
)
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Begin, Ordering, Recorded, Repair, Settle
from tagging_worker.state.outcomes import Outcome, OutcomeCounters
from tests.conftest import queued_event_ids


@pytest.fixture
def ordering(redis_client: redis.Redis, namespace: str) -> Ordering:
    return Ordering(redis_client, Keys(namespace), queue=namespace, version_ttl=600, fate_ttl=600)


@pytest.fixture
def counters(redis_client: redis.Redis, namespace: str) -> OutcomeCounters:
    return OutcomeCounters(redis_client, Keys(namespace))


def _message(event_id: str) -> str:
    return build_task_message({"call_id": "call-1", "event_id": event_id}, queue="q")


def _begin(ordering: Ordering, version: int, event_id: str, token: str = "t") -> Begin:
    return ordering.begin(
        "call-1", version, event_id, _message(event_id), token=token, lease_ms=10_000
    )


def _applied(ordering: Ordering, version: int, event_id: str, token: str = "t") -> bool:
    """Record a success of `version` on call-1; True if it gave the event its fate."""
    recorded = ordering.applied("call-1", version, event_id, f'["v{version}"]', token=token)
    return recorded.fate is not None


def _record(ordering: Ordering, event: dict, *, applied_version: int | None = None) -> DeadRecord:
    """The dead letter of a refused event of call-1."""
    store = DeadLetterStore(ordering.client, ordering.keys, max_records=100)
    return store.prepare(
        record_id=event["event_id"],
        reason=DeadReason.PERMANENT_ERROR,
        detail="InvalidParameter: no",
        event=event,
        normalized=event if "version" in event else None,
        attempts=[],
        first_seen=0.0,
        task_id="t",
        applied_version=applied_version,
    )


def _dead(ordering: Ordering, event_id: str, token: str) -> str:
    record = _record(ordering, {"call_id": "call-1", "tags": ["x"], "event_id": event_id})
    return ordering.dead("call-1", event_id, record, token=token)


def test_older_version_never_overwrites_newer(
    ordering: Ordering, counters: OutcomeCounters
) -> None:
    assert _begin(ordering, 6, "e6") is Begin.GO
    assert _applied(ordering, 6, "e6", token="t")

    assert _begin(ordering, 5, "e5") is Begin.STALE
    assert _begin(ordering, 6, "e6-again") is Begin.STALE
    assert ordering.applied_version("call-1") == 6
    assert ordering.fate("call-1", "e5") == "stale"
    assert counters.snapshot()["stale"] == 2


def test_a_second_writer_waits_while_the_lease_is_held(ordering: Ordering) -> None:
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    assert _begin(ordering, 2, "e2", token="b") is Begin.BUSY

    ordering.release("call-1", token="b")  # not the holder: no effect
    assert _begin(ordering, 2, "e2", token="b") is Begin.BUSY
    ordering.release("call-1", token="a")
    assert _begin(ordering, 2, "e2", token="b") is Begin.GO


def test_a_redelivered_event_is_recognised_as_a_duplicate(ordering: Ordering) -> None:
    assert _begin(ordering, 1, "e1") is Begin.GO
    assert _applied(ordering, 1, "e1", token="t")

    assert _begin(ordering, 1, "e1") is Begin.DUPLICATE
    assert not _applied(ordering, 1, "e1", token="t")


def test_an_event_older_than_a_pending_one_is_parked_then_superseded_when_that_applies(
    ordering: Ordering, counters: OutcomeCounters, redis_client: redis.Redis
) -> None:
    ordering.publish("call-1", 9, "e9", _message("e9"))
    assert _begin(ordering, 4, "e4") is Begin.PARKED

    assert _begin(ordering, 9, "e9") is Begin.GO
    _applied(ordering, 9, "e9", token="t")

    assert ordering.fate("call-1", "e4") == "superseded"
    assert counters.snapshot()["superseded"] == 1
    assert redis_client.zcard(ordering.keys.parked("call-1")) == 0


def test_when_the_newer_event_dies_the_best_parked_one_is_requeued(
    ordering: Ordering, counters: OutcomeCounters, redis_client: redis.Redis, namespace: str
) -> None:
    ordering.publish("call-1", 9, "e9", _message("e9"))
    assert _begin(ordering, 4, "e4") is Begin.PARKED
    assert _begin(ordering, 7, "e7") is Begin.PARKED
    redis_client.delete(namespace)  # the queue: only what the ordering puts back matters here

    assert _begin(ordering, 9, "e9", token="x") is Begin.GO
    assert _dead(ordering, "e9", "x") == "resurrected"

    assert queued_event_ids(redis_client, namespace) == ["e7"]
    assert _begin(ordering, 7, "e7") is Begin.GO  # e4 is still parked behind it
    _applied(ordering, 7, "e7", token="t")
    fates = [ordering.fate("call-1", e) for e in ("e4", "e7", "e9")]
    assert fates == ["superseded", "applied", "dead"]
    assert {k: v for k, v in counters.snapshot().items() if v} == {
        "applied": 1,
        "superseded": 1,
        "dead": 1,
    }


def test_a_redelivered_death_requeues_the_parked_event_only_once(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    ordering.publish("call-1", 9, "e9", _message("e9"))
    ordering.publish("call-1", 8, "e8", _message("e8"))
    redis_client.delete(namespace)
    assert _begin(ordering, 8, "e8", token="a") is Begin.PARKED
    assert _begin(ordering, 9, "e9", token="b") is Begin.GO

    assert _dead(ordering, "e9", "b") == "resurrected"
    assert _dead(ordering, "e9", "b") == "duplicate"
    assert queued_event_ids(redis_client, namespace) == ["e8"]


def test_finish_records_a_fate_once(ordering: Ordering, counters: OutcomeCounters) -> None:
    assert ordering.finish("task-1", Outcome.DEAD)
    assert not ordering.finish("task-1", Outcome.DEAD)
    assert counters.snapshot()["dead"] == 1


def test_concurrent_workers_never_apply_an_older_version_after_a_newer_one(
    ordering: Ordering, counters: OutcomeCounters
) -> None:
    """Eight threads work through shuffled events for ten calls, retrying on BUSY, against a
    fake 'API' that records every write; each call must end with its highest version and
    its write log must never go backwards."""
    events = [(f"call-{c}", v, uuid.uuid4().hex) for c in range(10) for v in range(1, 31)]
    random.Random(3).shuffle(events)
    for call_id, version, event_id in events:
        ordering.publish(call_id, version, event_id, _message(event_id))
    writes: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    work = list(events)

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                call_id, version, event_id = work.pop()
            token = uuid.uuid4().hex
            step = ordering.begin(
                call_id, version, event_id, _message(event_id), token=token, lease_ms=10_000
            )
            if step is Begin.BUSY:
                with lock:
                    work.insert(0, (call_id, version, event_id))
                continue
            if step is Begin.GO:
                with lock:
                    writes[call_id].append(version)
                ordering.applied(call_id, version, event_id, f'["v{version}"]', token=token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for c in range(10):
        log = writes[f"call-{c}"]
        assert log == sorted(log) and len(set(log)) == len(log)
        assert log[-1] == 30 and ordering.applied_version(f"call-{c}") == 30
    counts = counters.snapshot()
    assert counts["applied"] + counts["stale"] + counts["superseded"] == len(events)
    assert counts["applied"] == sum(len(log) for log in writes.values())


def _in_doubt_until(ordering: Ordering, call_id: str = "call-1") -> list[tuple[str, float]]:
    raw = ordering.client.zrange(ordering.keys.unsettled(call_id), 0, -1, withscores=True)
    return [(member.decode(), score) for member, score in raw]


def test_a_write_of_unknown_outcome_is_repaired_once_it_can_no_longer_land(
    ordering: Ordering, redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 times out (the API may apply it later); v2 is applied and v1's retry ends stale.
    When v1 can no longer land, the check writes v2's tags again; before that it waits."""
    clock = [int(time.time() * 1000)]
    monkeypatch.setattr("tagging_worker.state.ordering._now_ms", lambda: clock[0])
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    ordering.release("call-1", token="a")  # no version: the request stays in doubt
    assert _begin(ordering, 2, "e2", token="b") is Begin.GO
    assert _applied(ordering, 2, "e2", token="b")
    assert _begin(ordering, 1, "e1", token="a2") is Begin.STALE  # v1's retry

    assert ordering.settle("call-1", token="c", lease_ms=1000) == (Settle.WAIT, None)
    assert ordering.queue_due_settles() == 0
    clock[0] += 10_000 + 60_000 + 1
    assert ordering.queue_due_settles() == 1
    step, repair = ordering.settle("call-1", token="c", lease_ms=1000)
    assert step is Settle.GO and repair == Repair(version=2, tags_json='["v2"]')
    assert _begin(ordering, 3, "e3", token="d") is Begin.BUSY  # the repair holds the lease
    ordering.repaired("call-1", repair, checked_ms=clock[0], token="c")

    assert _in_doubt_until(ordering) == []
    assert redis_client.zscore(ordering.keys.settle_index, "call-1") is None
    assert OutcomeCounters(redis_client, ordering.keys).snapshot()["repaired"] == 1


def test_a_definite_answer_leaves_nothing_in_doubt_and_needs_no_repair(
    ordering: Ordering, redis_client: redis.Redis
) -> None:
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    ordering.release("call-1", token="a", version=1, event_id="e1")  # a refusal: it will never land
    assert _begin(ordering, 1, "e1", token="b") is Begin.GO
    assert _applied(ordering, 1, "e1", token="b")
    assert _begin(ordering, 2, "e2", token="c") is Begin.GO
    assert _applied(ordering, 2, "e2", token="c")

    assert _in_doubt_until(ordering) == []
    assert redis_client.zscore(ordering.keys.settle_index, "call-1") is None


def test_a_success_that_lands_on_a_newer_version_is_stale_and_asks_for_a_repair_at_once(
    ordering: Ordering, redis_client: redis.Redis
) -> None:
    """The lease of v1's worker ran out mid-call; v2 was applied; then v1's write landed."""
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    redis_client.delete(ordering.keys.lease("call-1"))
    assert _begin(ordering, 2, "e2", token="b") is Begin.GO
    assert _applied(ordering, 2, "e2", token="b")

    recorded = ordering.applied("call-1", 1, "e1", '["v1"]', token="a")

    assert recorded == Recorded(fate=Outcome.STALE, repair=True)
    assert ordering.applied_version("call-1") == 2
    step, repair = ordering.settle("call-1", token="c", lease_ms=1000)
    assert step is Settle.GO and repair == Repair(version=2, tags_json='["v2"]')


def test_a_duplicate_of_a_parked_event_is_parked_once_and_ends_applied_when_put_back(
    ordering: Ordering, counters: OutcomeCounters, redis_client: redis.Redis, namespace: str
) -> None:
    for version in (2, 3, 5):
        ordering.publish("call-1", version, f"e{version}", _message(f"e{version}"))
    redis_client.delete(namespace)
    assert _begin(ordering, 2, "e2") is Begin.PARKED
    assert _begin(ordering, 3, "e3") is Begin.PARKED
    assert _begin(ordering, 3, "e3") is Begin.PARKED  # the producer published it twice
    assert redis_client.zcard(ordering.keys.parked("call-1")) == 2

    assert _begin(ordering, 5, "e5", token="x") is Begin.GO
    assert _dead(ordering, "e5", "x") == "resurrected"
    assert queued_event_ids(redis_client, namespace) == ["e3"]
    assert _begin(ordering, 3, "e3", token="y") is Begin.GO
    assert _applied(ordering, 3, "e3", token="y")

    assert [ordering.fate("call-1", e) for e in ("e2", "e3", "e5")] == [
        "superseded",
        "applied",
        "dead",
    ]
    assert {k: v for k, v in counters.snapshot().items() if v} == {
        "applied": 1,
        "superseded": 1,
        "dead": 1,
    }


def test_default_versions_never_tie_within_a_batch_or_across_publishers(
    ordering: Ordering,
) -> None:
    first = ordering.default_versions(["call-1"] * 500 + ["call-2"])
    second = ordering.default_versions(["call-1"])
    assert first[:500] == sorted(set(first[:500]))
    assert second[0] > first[499]
    assert abs(first[0] - time.time() * 1000) < 60_000  # still the clock, in milliseconds


def test_a_version_given_at_receipt_is_kept_for_every_later_copy(ordering: Ordering) -> None:
    first = ordering.version_at_receipt("call-1", "e1")
    later = ordering.version_at_receipt("call-1", "e2")
    assert ordering.version_at_receipt("call-1", "e1") == first < later


def test_versions_given_at_receipt_are_fields_of_one_hash_per_call(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    first = ordering.version_at_receipt("call-1", "e1")
    second = ordering.version_at_receipt("call-1", "e2")

    received = ordering.keys.received("call-1")
    assert redis_client.hgetall(received) == {
        b"e1": str(first).encode(),
        b"e2": str(second).encode(),
    }
    assert [k for k in redis_client.scan_iter(f"{namespace}*") if b"received" in k] == [
        received.encode()
    ]
    assert 0 < redis_client.ttl(received) <= ordering.fate_ttl


def test_a_calls_version_outlives_its_dead_letters_and_then_expires_again(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    store = DeadLetterStore(redis_client, Keys(namespace), max_records=100, version_ttl=600)
    assert _begin(ordering, 5, "e5") is Begin.GO
    assert _applied(ordering, 5, "e5")
    assert redis_client.ttl(ordering.keys.applied("call-1")) > 0
    assert _begin(ordering, 6, "e6", token="x") is Begin.GO
    assert _dead(ordering, "e6", "x") == "dead"
    assert redis_client.ttl(ordering.keys.applied("call-1")) == -1  # kept while e6 is dead

    assert store.delete("e6")
    assert redis_client.ttl(ordering.keys.applied("call-1")) > 0


def test_a_replay_after_redis_forgot_the_calls_version_cannot_regress_it(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    """v3 died while v5 was applied; Redis then lost v5 (a restore from an old backup, an
    import into a new environment): the replayed v3 ends stale, not applied."""
    store = DeadLetterStore(redis_client, Keys(namespace), max_records=100)
    assert _begin(ordering, 5, "e5") is Begin.GO
    assert _applied(ordering, 5, "e5")
    assert _begin(ordering, 3, "e3", token="x") is Begin.STALE
    event = {"call_id": "call-1", "tags": ["v3"], "version": 3, "event_id": "e3b"}
    record = _record(ordering, event, applied_version=ordering.applied_version("call-1"))
    assert ordering.finish("e3b", Outcome.DEAD, record)
    redis_client.delete(ordering.keys.applied("call-1"), ordering.keys.tags("call-1"))

    ordering.client.set(ordering.keys.applied("call-1"), 4)  # a newer event wrote v4 since
    ordering.client.set(ordering.keys.tags("call-1"), '["v4"]')
    assert store.replay("e3b", queue=namespace, build_message=lambda e: _message(e["event_id"]))
    assert ordering.applied_version("call-1") == 5
    assert ordering.client.get(ordering.keys.tags("call-1")) is None  # not v5's: never repaired
    assert _begin(ordering, 3, "e3b") is Begin.STALE


def test_an_import_of_a_record_whose_event_finished_since_is_refused(
    ordering: Ordering, redis_client: redis.Redis, namespace: str, counters: OutcomeCounters
) -> None:
    store = DeadLetterStore(redis_client, Keys(namespace), max_records=100)
    assert _begin(ordering, 6, "e6", token="x") is Begin.GO
    assert _dead(ordering, "e6", "x") == "dead"
    exported = store.get("e6")
    assert isinstance(exported, DeadLetter)
    assert store.replay("e6", queue=namespace, build_message=lambda e: _message("e6"))
    assert _begin(ordering, 6, "e6", token="y") is Begin.GO
    assert _applied(ordering, 6, "e6", token="y")

    assert store.restore(exported, replace=False) is Restored.SETTLED
    assert store.count() == 0
    assert counters.snapshot()["applied"] == 1 and counters.snapshot()["dead"] == 0


def test_an_imported_record_counts_its_event_once(
    redis_client: redis.Redis, namespace: str, counters: OutcomeCounters
) -> None:
    store = DeadLetterStore(redis_client, Keys(namespace), max_records=100)
    record = read_record(
        {
            "id": "e9",
            "reason": "permanent_error",
            "detail": "",
            "call_id": "call-1",
            "event": {},
            "attempts": [],
            "died_at": 1.0,
        },
        store.rules,
    )
    assert isinstance(record, DeadLetter), record
    assert store.restore(record, replace=False) is Restored.STORED
    assert store.restore(record, replace=True) is Restored.STORED
    assert counters.snapshot()["dead"] == 1


def test_an_older_event_waits_parked_while_a_newer_write_of_an_unfinished_event_is_in_doubt(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    """e5's worker died right after sending it (the write may have landed): e3 must not be
    written over it. If e5 is applied, e3 is superseded; if e5 dies, e3 is put back."""
    assert _begin(ordering, 5, "e5", token="dead-worker") is Begin.GO
    redis_client.delete(ordering.keys.lease("call-1"))
    assert _begin(ordering, 3, "e3", token="b") is Begin.PARKED

    assert _begin(ordering, 5, "e5", token="redelivered") is Begin.GO
    assert _dead(ordering, "e5", "redelivered") == "resurrected"
    assert queued_event_ids(redis_client, namespace) == ["e3"]
    assert _begin(ordering, 3, "e3", token="c") is Begin.GO


def test_a_success_of_an_event_dead_lettered_meanwhile_is_undone_by_a_repair(
    ordering: Ordering, redis_client: redis.Redis
) -> None:
    """Two copies of e5: one was refused (dead), the other's write landed anyway."""
    assert _begin(ordering, 3, "e3", token="a") is Begin.GO
    assert _applied(ordering, 3, "e3", token="a")
    assert _begin(ordering, 5, "e5", token="b") is Begin.GO
    redis_client.delete(ordering.keys.lease("call-1"))
    assert _begin(ordering, 5, "e5", token="c") is Begin.GO
    assert _dead(ordering, "e5", "c") == "dead"

    assert ordering.applied("call-1", 5, "e5", '["v5"]', token="b") == Recorded(None, True)
    assert ordering.applied_version("call-1") == 3
    step, repair = ordering.settle("call-1", token="d", lease_ms=1000)
    assert step is Settle.GO and repair == Repair(version=3, tags_json='["v3"]')


def test_finished_events_are_fields_of_their_calls_fates_hash_not_keys_of_their_own(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    for version in (1, 2, 3):
        assert _begin(ordering, version, f"e{version}") is Begin.GO
        assert _applied(ordering, version, f"e{version}", token="t")
    assert _begin(ordering, 2, "e2-late") is Begin.STALE

    fates = ordering.keys.fates("call-1", "")
    keys = {key.decode() for key in redis_client.scan_iter(f"{namespace}*")}
    assert [key for key in keys if "fate" in key] == [fates]
    assert redis_client.hgetall(fates) == {
        b"e1": b"applied",
        b"e2": b"applied",
        b"e3": b"applied",
        b"e2-late": b"stale",
    }
    assert 0 < redis_client.ttl(fates) <= ordering.fate_ttl
