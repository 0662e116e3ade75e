"""Delayed retries live in Redis and move to the queue exactly once when due."""

from __future__ import annotations

import threading

import redis

from tagging_worker.state.keys import Keys
from tagging_worker.state.retry_schedule import RetrySchedule


def test_a_retry_stays_parked_until_due_then_moves_to_the_queue(
    redis_client: redis.Redis, namespace: str
) -> None:
    schedule = RetrySchedule(redis_client, Keys(namespace), queue=namespace)
    schedule.schedule("later", delay=3600)
    schedule.schedule("now", delay=0)

    assert schedule.move_due() == 1
    assert redis_client.lrange(namespace, 0, -1) == [b"now"]
    assert schedule.pending() == 1


def test_many_movers_move_each_due_retry_exactly_once(
    redis_client: redis.Redis, namespace: str
) -> None:
    schedule = RetrySchedule(redis_client, Keys(namespace), queue=namespace)
    for n in range(2000):
        schedule.schedule(f"m{n}", delay=0)

    def drain() -> None:
        while schedule.move_due(batch=50):
            pass

    movers = [threading.Thread(target=drain) for _ in range(4)]
    for t in movers:
        t.start()
    for t in movers:
        t.join()

    moved = [m.decode() for m in redis_client.lrange(namespace, 0, -1)]
    assert sorted(moved) == sorted(f"m{n}" for n in range(2000))
    assert schedule.pending() == 0
