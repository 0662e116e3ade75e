"""A message that kills every worker that takes it is dead-lettered after a few deaths, instead
of taking worker after worker down for ever (Sidekiq Pro's poison-pill rule)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tests.conftest import WorkerProcess, settled, wait_for

KILLER = {"call_id": "call-killer", "tags": ["boom"], "event_id": "killer"}


def _one_dead_letter(stores: Stores) -> DeadLetter:
    wait_for(settled(stores, 1), timeout=60, what="the killer message dead-lettered")
    [record] = stores.dead_letters.list(limit=10)
    assert isinstance(record, DeadLetter), record
    return record


@pytest.mark.e2e
def test_a_message_whose_worker_keeps_dying_is_dead_lettered_as_poison_and_workers_carry_on(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    queue = stores.settings.queue
    redis_client.lpush(queue, build_task_message(KILLER, queue=queue))
    env = {
        "TAGGING_FAILPOINTS": "before_begin",
        "TAGGING_FETCH_HEARTBEAT_TTL_SECONDS": "5",
        "TAGGING_POISON_AFTER_CRASHES": "2",
    }
    workers = [start_worker(**env)]
    deadline = time.monotonic() + 90
    while not stores.dead_letters.count() and time.monotonic() < deadline:
        if workers[-1].proc.poll() is not None:
            workers.append(start_worker(**env))  # a supervisor restarting it
        time.sleep(0.1)

    record = _one_dead_letter(stores)
    assert record.reason is DeadReason.POISON_MESSAGE
    assert "2 times" in record.detail
    assert (record.id, record.event) == ("killer", KILLER)  # replays as it is
    assert [w.proc.returncode for w in workers[:-1]] == [-9, -9]
    assert workers[-1].proc.poll() is None
    assert fake_api.calls() == []


@pytest.mark.e2e
def test_a_message_whose_prefork_child_keeps_dying_is_dead_lettered_as_poison(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    queue = stores.settings.queue
    redis_client.lpush(queue, build_task_message(KILLER, queue=queue))
    worker = start_worker(
        "prefork", 2, TAGGING_FAILPOINTS="before_begin", TAGGING_POISON_AFTER_CRASHES="3"
    )

    record = _one_dead_letter(stores)

    assert record.reason is DeadReason.POISON_MESSAGE
    assert "3 times" in record.detail
    assert record.event == KILLER
    assert worker.proc.poll() is None
    assert stores.outcomes.snapshot()["dead"] == 1
