"""The dead-letter store against a real Redis: indexes, retention and atomic replay."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import replace

import pytest
import redis

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.errors import ReplayConflict, ReplayRefused
from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_filter import DeadFilter
from tagging_worker.state.dead_letters import (
    DamagedRecord,
    DeadLetter,
    DeadLetterStore,
    DeadRecord,
    Restored,
    export_line,
    import_lines,
    read_record,
)
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Ordering
from tagging_worker.state.outcomes import Outcome
from tagging_worker.worker.retry_state import RetryState
from tests.conftest import queued_event_ids


@pytest.fixture
def store(redis_client: redis.Redis, namespace: str) -> DeadLetterStore:
    return DeadLetterStore(redis_client, Keys(namespace), max_records=1000)


def _build(event: dict) -> str:
    return build_task_message(event, queue="q")


def _whole(store: DeadLetterStore, record_id: str) -> DeadLetter:
    record = store.get(record_id)
    assert isinstance(record, DeadLetter), record
    return record


def _add(
    store: DeadLetterStore,
    record_id: str,
    *,
    reason: DeadReason = DeadReason.PERMANENT_ERROR,
    call_id: str = "call-1",
    version: int = 1,
) -> None:
    event = {"call_id": call_id, "tags": ["a"], "version": version, "event_id": record_id}
    store.add(
        record_id=record_id,
        reason=reason,
        detail="InvalidParameter: bad",
        event=event,
        normalized=event,
        attempts=[],
        first_seen=0.0,
        task_id="t",
    )


def test_list_is_newest_first_and_filters_by_reason_and_call(store: DeadLetterStore) -> None:
    _add(store, "e1", reason=DeadReason.PERMANENT_ERROR, call_id="call-a")
    _add(store, "e2", reason=DeadReason.INVALID_EVENT, call_id="call-a")
    _add(store, "e3", reason=DeadReason.PERMANENT_ERROR, call_id="call-b")

    assert [r.id for r in store.list()] == ["e3", "e2", "e1"]
    assert [r.id for r in store.list(DeadFilter(reason="permanent_error"))] == ["e3", "e1"]
    assert [r.id for r in store.list(DeadFilter(call_id="call-a"))] == ["e2", "e1"]
    both = DeadFilter(call_id="call-a", reason="invalid_event")
    assert [r.id for r in store.list(both)] == ["e2"]
    assert [r.id for r in store.list(limit=1, offset=1)] == ["e2"]
    assert store.count() == 3 and store.count(DeadFilter(reason="permanent_error")) == 2


def test_same_id_replaces_the_record_instead_of_duplicating_it(store: DeadLetterStore) -> None:
    _add(store, "e1", reason=DeadReason.RETRIES_EXHAUSTED)
    _add(store, "e1", reason=DeadReason.PERMANENT_ERROR)

    assert store.count() == 1
    assert store.count(DeadFilter(reason="retries_exhausted")) == 0
    assert _whole(store, "e1").reason is DeadReason.PERMANENT_ERROR


def test_retention_limit_trims_the_oldest_records(
    redis_client: redis.Redis, namespace: str
) -> None:
    store = DeadLetterStore(redis_client, Keys(namespace), max_records=3)
    for n in range(5):
        _add(store, f"e{n}", call_id=f"call-{n}")

    assert [r.id for r in store.list()] == ["e4", "e3", "e2"]
    assert store.get("e0") is None
    assert store.count(DeadFilter(call_id="call-0")) == 0
    assert store.count(DeadFilter(reason="permanent_error")) == 3


def test_replay_moves_the_record_onto_the_queue_in_one_step(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    _add(store, "e1")

    assert store.replay("e1", queue=namespace, build_message=_build)

    assert store.get("e1") is None and store.count() == 0
    assert queued_event_ids(redis_client, namespace) == ["e1"]
    assert not store.replay("e1", queue=namespace, build_message=_build)
    assert redis_client.llen(namespace) == 1


def test_replay_refuses_a_record_that_changed_after_it_was_read(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    _add(store, "e1", version=1)

    def rewrite_meanwhile(event: dict) -> str:
        _add(store, "e1", version=2)
        return _build(event)

    with pytest.raises(ReplayConflict):
        store.replay("e1", queue=namespace, build_message=rewrite_meanwhile)
    assert _whole(store, "e1").version == 2
    assert redis_client.llen(namespace) == 0


def test_concurrent_replays_put_each_record_on_the_queue_exactly_once(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    for n in range(200):
        _add(store, f"e{n}")

    def replay_all() -> None:
        for record_id in store.iter_ids():
            with contextlib.suppress(ReplayConflict):
                store.replay(record_id, queue=namespace, build_message=_build)

    threads = [threading.Thread(target=replay_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(queued_event_ids(redis_client, namespace)) == sorted(f"e{n}" for n in range(200))
    assert store.count() == 0


def test_iter_ids_does_not_revisit_records_that_die_again_during_the_walk(
    store: DeadLetterStore,
) -> None:
    for n in range(3):
        _add(store, f"e{n}")
    seen = []
    for record_id in store.iter_ids():
        seen.append(record_id)
        store.delete(record_id)
        _add(store, record_id)  # replayed and dead again, newer than the walk's start

    assert sorted(seen) == ["e0", "e1", "e2"]


def test_delete_removes_the_record_from_every_index(store: DeadLetterStore) -> None:
    _add(store, "e1", call_id="call-x")

    assert store.delete("e1")
    assert not store.delete("e1")
    assert store.count() == store.count(DeadFilter(call_id="call-x")) == 0
    assert store.count(DeadFilter(reason="permanent_error")) == 0


def _add_failed(store: DeadLetterStore, record_id: str, code: str, call_id: str = "c") -> None:
    event = {"call_id": call_id, "tags": ["a"], "version": 1, "event_id": record_id}
    store.add(
        record_id=record_id,
        reason=DeadReason.PERMANENT_ERROR,
        detail=f"{code}: no",
        event=event,
        normalized=event,
        attempts=[{"code": "InternalError"}, {"code": code}],
        first_seen=0.0,
        task_id="t",
    )


def test_records_are_indexed_by_the_code_they_died_of(store: DeadLetterStore) -> None:
    _add_failed(store, "e1", "InvalidParameter.Tags")
    _add_failed(store, "e2", "InvalidParameter.Tags")
    _add_failed(store, "e3", "MissingTags")
    _add(store, "e4")  # never reached the API: no code

    assert store.count_by_code() == {"InvalidParameter.Tags": 2, "MissingTags": 1}
    assert [r.id for r in store.list(DeadFilter(code="InvalidParameter.Tags"))] == ["e2", "e1"]
    store.delete("e1")
    _add_failed(store, "e3", "InvalidParameter.Tags")  # the same id dies of another code
    assert store.count_by_code() == {"InvalidParameter.Tags": 2}


def test_filters_combine_with_a_time_range(store: DeadLetterStore) -> None:
    for n in range(5):
        _add_failed(store, f"e{n}", "X" if n % 2 else "Y", call_id=f"call-{n}")
        time.sleep(0.005)  # times of death are kept to the millisecond
    died = [_whole(store, f"e{n}").died_at for n in range(5)]
    where = DeadFilter(code="Y", since=died[1], until=died[4])
    assert [r.id for r in store.list(where)] == ["e2"]
    assert store.count(where) == 1
    assert list(store.iter_ids(DeadFilter(code="X"))) == ["e1", "e3"]
    assert [r.id for r in store.iter_records(DeadFilter(since=died[3]))] == ["e3", "e4"]


def test_restored_records_keep_their_id_and_time_and_do_not_overwrite_by_default(
    store: DeadLetterStore,
) -> None:
    _add_failed(store, "e1", "X")
    exported = _whole(store, "e1")
    assert store.restore(replace(exported, detail="changed"), replace=False) is Restored.EXISTS
    assert _whole(store, "e1").detail == "X: no"
    store.delete("e1")
    assert store.restore(exported, replace=False) is Restored.STORED
    assert store.get("e1") == exported
    assert store.count_by_code() == {"X": 1}
    assert isinstance(read_record({"reason": "x"}, store.rules), str), "none to restore"


def test_a_revised_replay_registers_the_revised_version(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    _add(store, "e1", version=3)
    assert store.replay(
        "e1",
        queue=namespace,
        build_message=_build,
        revise=lambda r: {**r.normalized, "version": 9},
    )
    [event_id] = queued_event_ids(redis_client, namespace)
    assert event_id == "e1"
    assert redis_client.zscore(Keys(namespace).pending("call-1"), "e1") == 9


def _worker_stores(redis_client: redis.Redis, namespace: str, record: DeadRecord) -> None:
    """Stored the way the worker stores a dead letter: with its fate, in the ordering script."""
    ordering = Ordering(redis_client, Keys(namespace), queue=namespace, version_ttl=60, fate_ttl=60)
    assert ordering.finish(record.id, Outcome.DEAD, record)


def test_lone_surrogates_and_unicode_line_breaks_are_stored_and_read_back_unchanged(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    """An event decoded from JSON `"\\ud800"` holds a lone surrogate, which UTF-8 cannot carry."""
    text = "\ud800 \udfff \u2028 \x85 \x1c 有意向"
    event = {"call_id": "\ud800", "tags": [text]}
    record = store.prepare(
        record_id="e1",
        reason=DeadReason.INVALID_EVENT,
        detail=text,
        event=event,
        normalized=None,
        attempts=[],
        first_seen=0.0,
        task_id="e1",
    )
    _worker_stores(redis_client, namespace, record)

    stored = _whole(store, "e1")
    assert stored == record.letter and export_line(stored) == record.json + "\n"
    assert stored.event == event and stored.detail == text
    assert [r.id for r in store.list()] == ["e1"]


def test_a_deeply_nested_or_huge_event_is_stored_bounded(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    for n, event in enumerate([nested, {"blob": "x" * 10_000_000}]):
        record = store.prepare(
            record_id=f"e{n}",
            reason=DeadReason.INVALID_EVENT,
            detail="x" * 1_000_000,
            event=event,
            normalized=None,
            attempts=[],
            first_seen=0.0,
            task_id=f"e{n}",
        )
        _worker_stores(redis_client, namespace, record)
        assert _whole(store, f"e{n}").event["truncated"] is True
        assert len(record.json.encode()) < 200_000


def _plant(redis_client: redis.Redis, namespace: str, record_id: str, stored: str | bytes) -> None:
    k = Keys(namespace)
    redis_client.hset(
        k.dead_record(record_id),
        mapping={"json": stored, "reason": "permanent_error", "call_id": "call-1", "code": ""},
    )
    for index in (k.dead_all, k.dead_by_reason("permanent_error"), k.dead_by_call("call-1")):
        redis_client.zadd(index, {record_id: 1_000})


@pytest.mark.parametrize(
    "stored",
    [
        '{"id": "bad", "reason": "permanent_error", "died_at": 1.0}',
        '{"id": "bad", "reason": "permanent_error", "detail": "x", "died_at": Infinity, '
        '"event": {}, "attempts": "abc"}',
        '{"id": "someone-else", "reason": "permanent_error", "detail": "x", "died_at": 1.0, '
        '"event": {}, "attempts": []}',
        "{not json",
        b'{"id": "bad\xff"}',
        '{"id": "bad", "reason": "operator_fix", "detail": "x", "died_at": 1.0, "event": {}, '
        '"attempts": []}',
    ],
    ids=["incomplete", "infinite", "other-id", "not-json", "not-utf8", "unknown-reason"],
)
def test_a_damaged_record_is_read_as_damaged_and_never_replayed(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str, stored: str | bytes
) -> None:
    _add(store, "e1")
    _plant(redis_client, namespace, "bad", stored)

    [bad] = [r for r in store.list() if r.id == "bad"]
    assert isinstance(bad, DamagedRecord)
    assert bad.problem and bad.reason == "permanent_error" and bad.died_at == 1.0
    assert store.get("bad") == bad
    assert [r.id for r in store.iter_records(DeadFilter(call_id="call-1"))] == ["bad", "e1"]
    with pytest.raises(ReplayRefused, match="bad"):
        store.replay("bad", queue=namespace, build_message=_build)
    assert store.replay("e1", queue=namespace, build_message=_build)
    assert queued_event_ids(redis_client, namespace) == ["e1"] and store.count() == 1


def test_a_stored_record_whose_reason_this_version_does_not_know_reads_as_damaged(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    whole = {"id": "bad", "detail": "x", "died_at": 1.0, "event": {}, "attempts": []}
    _plant(redis_client, namespace, "bad", json.dumps({**whole, "reason": "operator_fix"}))

    assert store.get("bad") == DamagedRecord(
        id="bad",
        problem="reason is not one this version knows",
        reason="permanent_error",  # what the indexes say
        call_id="call-1",
        died_at=1.0,
    )


def test_every_field_of_a_full_record_reads_back_as_stored_byte_for_byte(
    store: DeadLetterStore, redis_client: redis.Redis, namespace: str
) -> None:
    """`as_dict` is the one JSON form: what the worker stores, and what an import stores (with
    the fields only an imported record names), is what a read gives back, to the byte."""
    state = RetryState(received={"call_id": "call-1", "tags": ["a"]}, first_seen=1.25)
    failure = ApiFailure(FailureKind.TRANSIENT, "InternalError", "busy", 500, "REQ", 0.1, True)
    for n in range(12):  # more than are kept: the counts name the kinds left out
        state = state.after(failure, 2.0 + n, charged=n % 2 == 0)
    event = {"call_id": "call-1", "tags": ["有意向"], "version": 3, "event_id": "e1", "source": "s"}
    prepared = store.prepare(
        record_id="e1",
        reason=DeadReason.RETRIES_EXHAUSTED,
        detail="InternalError: busy",
        event=state.received,
        normalized=event,
        attempts=state.attempts,
        attempt_counts=state.counts,
        first_seen=state.first_seen,
        task_id="t1",
        applied_version=2,
    )
    _worker_stores(redis_client, namespace, prepared)
    written = _whole(store, "e1")
    fields = written.as_dict()
    assert None not in fields.values() and None not in fields["attempt_counts"].values()
    assert all(None not in a.values() for a in fields["attempts"])
    assert fields["attempt_counts"]["elided_kinds"] == {"transient": 1}
    stored = redis_client.hget(Keys(namespace).dead_record("e1"), "json")
    assert export_line(written).encode() == stored + b"\n"

    text = json.dumps(
        {**fields, "id": "e2", "queue": "q", "key_prefix": store.rules.key_prefix},
        ensure_ascii=False,
    )
    [(_, imported, problem)] = import_lines(text + "\n", store.rules)
    assert imported is not None, problem
    assert store.restore(imported, replace=False) is Restored.STORED
    assert redis_client.hget(Keys(namespace).dead_record("e2"), "json") == text.encode()
    assert export_line(_whole(store, "e2")) == text + "\n"


def test_short_ids_are_the_shortest_starts_no_other_id_shares(store: DeadLetterStore) -> None:
    for record_id in ("59c3ff05-aaaa", "59c3ff05-aabb", "7f00e1d2-0000"):
        _add(store, record_id)

    short = store.short_ids(["59c3ff05-aaaa", "59c3ff05-aabb", "7f00e1d2-0000"])

    assert short == {
        "59c3ff05-aaaa": "59c3ff05-aaa",
        "59c3ff05-aabb": "59c3ff05-aab",
        "7f00e1d2-0000": "7f00e1d2",
    }
    assert [store.ids_starting(s) for s in short.values()] == [[i] for i in short]


def test_past_the_read_limit_short_ids_are_the_whole_ids(store: DeadLetterStore) -> None:
    for record_id in ("59c3ff05-aaaa", "7f00e1d2-0000"):
        _add(store, record_id)

    short = store.short_ids(["59c3ff05-aaaa"], most_read=1)

    assert short == {"59c3ff05-aaaa": "59c3ff05-aaaa"}
