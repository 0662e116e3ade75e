"""Version, lease and coalescing decisions against a real Redis, with concurrent clients."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import defaultdict

import pytest
import redis

from tagging_worker.keys import Keys
from tagging_worker.messages import build_task_message
from tagging_worker.ordering import Begin, Ordering
from tagging_worker.outcomes import Outcome, OutcomeCounters
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


def test_older_version_never_overwrites_newer(
    ordering: Ordering, counters: OutcomeCounters
) -> None:
    assert _begin(ordering, 6, "e6") is Begin.GO
    assert ordering.applied("call-1", 6, "e6", token="t")

    assert _begin(ordering, 5, "e5") is Begin.STALE
    assert _begin(ordering, 6, "e6-again") is Begin.STALE
    assert ordering.applied_version("call-1") == 6
    assert ordering.fate("e5") == "stale"
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
    assert ordering.applied("call-1", 1, "e1", token="t")

    assert _begin(ordering, 1, "e1") is Begin.DUPLICATE
    assert not ordering.applied("call-1", 1, "e1", token="t")


def test_an_event_older_than_a_pending_one_is_parked_then_superseded_when_that_applies(
    ordering: Ordering, counters: OutcomeCounters, redis_client: redis.Redis
) -> None:
    ordering.publish("call-1", 9, "e9", _message("e9"))
    assert _begin(ordering, 4, "e4") is Begin.PARKED

    assert _begin(ordering, 9, "e9") is Begin.GO
    ordering.applied("call-1", 9, "e9", token="t")

    assert ordering.fate("e4") == "superseded"
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
    assert ordering.dead("call-1", "e9", token="x") == "resurrected"

    assert queued_event_ids(redis_client, namespace) == ["e7"]
    assert _begin(ordering, 7, "e7") is Begin.GO  # e4 is still parked behind it
    ordering.applied("call-1", 7, "e7", token="t")
    assert (ordering.fate("e4"), ordering.fate("e7"), ordering.fate("e9")) == (
        "superseded",
        "applied",
        "dead",
    )
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

    assert ordering.dead("call-1", "e9", token="b") == "resurrected"
    assert ordering.dead("call-1", "e9", token="b") == "duplicate"
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
                ordering.applied(call_id, version, event_id, token=token)

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


def test_a_message_lost_between_redis_and_a_dying_worker_is_sent_again(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    ordering.publish("call-1", 1, "e1", _message("e1"))
    time.sleep(0.01)
    ordering.publish("call-1", 2, "e2", _message("e2"))
    redis_client.rpop(namespace)  # e1 taken by a worker that died before kombu recorded it

    assert ordering.recover_lost(grace_ms=0) == 1

    assert queued_event_ids(redis_client, namespace) == ["e2", "e1"]
    first, again = json.loads(_message("e1")), json.loads(redis_client.lindex(namespace, 0))
    assert again["properties"]["delivery_tag"] != first["properties"]["delivery_tag"]
    assert ordering.recover_lost(grace_ms=0) == 0


def test_messages_on_the_queue_held_by_a_worker_or_finished_are_not_sent_again(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    messages = {}
    for event_id, version in (("held", 1), ("done", 3), ("queued", 2)):
        messages[event_id] = _message(event_id)
        ordering.publish("call-1", version, event_id, messages[event_id])
        time.sleep(0.01)
    redis_client.rpop(namespace)
    redis_client.rpop(namespace)
    tag = json.loads(messages["held"])["properties"]["delivery_tag"]
    redis_client.hset("unacked", tag, "[]")
    try:
        assert _begin(ordering, 3, "done") is Begin.GO
        ordering.applied("call-1", 3, "done", token="t")

        assert ordering.recover_lost(grace_ms=0) == 0
        assert queued_event_ids(redis_client, namespace) == ["queued"]
    finally:
        redis_client.hdel("unacked", tag)
