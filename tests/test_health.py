"""Liveness and readiness decisions (pure: heartbeats in, verdict out)."""

from __future__ import annotations

import redis

from tagging_worker.ops.health import LIVENESS_STALE_AFTER, STARTUP_GRACE, Heartbeats, assess
from tagging_worker.state.connection import write_refusal_cause

READY_WITHIN = 5.0


def _beats(**at: float | None) -> Heartbeats:
    beats = Heartbeats(started_at=0.0)
    for name, value in at.items():
        setattr(beats, name, value)
    return beats


def test_a_worker_whose_loops_turn_and_whose_redis_answers_is_live_and_ready() -> None:
    health = assess(
        _beats(housekeeping_at=99.0, redis_ok_at=99.0, consumer_at=99.5), 100.0, ready_within=5
    )
    assert health.live and health.ready and health.problems == ()


def test_unreachable_redis_makes_it_unready_but_not_dead() -> None:
    health = assess(
        _beats(housekeeping_at=99.0, redis_ok_at=80.0, consumer_at=99.0), 100.0, ready_within=5
    )
    assert health.live and not health.ready
    assert health.problems == ("Redis is not answering",)


def test_a_consumer_that_stopped_taking_messages_makes_it_unready() -> None:
    health = assess(
        _beats(housekeeping_at=99.0, redis_ok_at=99.0, consumer_at=50.0), 100.0, ready_within=5
    )
    assert not health.ready
    assert health.problems == ("the consumer is not taking messages",)


def test_a_hung_process_is_not_live() -> None:
    now = 1000.0
    stale = now - LIVENESS_STALE_AFTER - 1
    health = assess(
        _beats(housekeeping_at=stale, redis_ok_at=stale, consumer_at=stale), now, ready_within=5
    )
    assert not health.live and not health.ready


def test_a_starting_worker_is_live_but_not_ready_until_its_loops_turn() -> None:
    starting = assess(_beats(), STARTUP_GRACE - 1, ready_within=5)
    assert starting.live and not starting.ready
    assert not assess(_beats(), STARTUP_GRACE + 1, ready_within=5).live


def test_a_worker_paused_by_the_open_circuit_is_still_ready_and_says_so() -> None:
    beats = _beats(housekeeping_at=99.0, redis_ok_at=99.0, consumer_at=99.0, paused=True)
    health = assess(beats, 100.0, ready_within=5)
    assert health.ready and health.as_dict()["paused_by_circuit"] is True


def test_redis_refusing_writes_makes_it_unready_naming_why_but_not_dead() -> None:
    beats = _beats(housekeeping_at=99.0, redis_ok_at=99.0, consumer_at=99.0)
    beats.writes_refused = "Redis is full"
    health = assess(beats, 100.0, ready_within=5)
    assert health.live and not health.ready
    assert health.problems == ("Redis refuses writes: Redis is full",)
    assert health.as_dict()["redis_refuses_writes"] == "Redis is full"


def test_each_write_refusal_is_named_for_its_fix_and_other_errors_are_not_refusals() -> None:
    full = write_refusal_cause(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    replica = write_refusal_cause(redis.exceptions.ReadOnlyError("You can't write"))
    assert full is not None and "maxmemory" in full
    assert replica is not None and "read-only replica" in replica
    no_replicas = write_refusal_cause(redis.exceptions.ResponseError("NOREPLICAS Not enough"))
    assert no_replicas is not None and "min-replicas-to-write" in no_replicas
    assert write_refusal_cause(redis.exceptions.ConnectionError("refused")) is None
