"""Celery's own ways of dropping a task (revoked, expired) end in a dead letter with a reason,
and options this task cannot honour are refused the same way; a countdown is honoured."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import TASK_NAME
from tagging_worker.state.stores import Stores
from tests.conftest import REDIS_URL, WorkerProcess, settled, wait_for


@pytest.fixture
def producer() -> Iterator[Celery]:
    app = Celery(broker=REDIS_URL, set_as_current=False)
    yield app
    app.close()


def _started(start_worker: Callable[..., WorkerProcess], producer: Celery) -> None:
    start_worker()
    wait_for(lambda: producer.control.ping(timeout=0.5), what="the worker answering control")


def _reasons(stores: Stores) -> dict[str, str | None]:
    return {r.id: r.reason for r in stores.dead_letters.list(limit=100)}


@pytest.mark.e2e
def test_revoked_tasks_are_dead_lettered_whether_revoked_before_or_after_receipt(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    producer: Celery,
) -> None:
    queue = stores.settings.queue
    _started(start_worker, producer)
    waiting = producer.send_task(
        TASK_NAME, args=[{"call_id": "call-a", "tags": ["a"]}], queue=queue, countdown=3
    )
    time.sleep(1)  # received, waiting for its countdown inside the worker
    producer.control.revoke(waiting.id)
    producer.control.revoke("revoked-first")
    time.sleep(0.5)
    producer.send_task(
        TASK_NAME,
        args=[{"call_id": "call-b", "tags": ["b"]}],
        queue=queue,
        task_id="revoked-first",
    )

    wait_for(settled(stores, 2), what="both revoked tasks dead-lettered")
    assert _reasons(stores) == {waiting.id: "revoked", "revoked-first": "revoked"}
    assert fake_api.calls() == []


@pytest.mark.e2e
def test_expired_tasks_and_options_the_task_cannot_honour_are_dead_lettered_with_a_reason(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    producer: Celery,
) -> None:
    queue = stores.settings.queue
    event = {"call_id": "call-c", "tags": ["c"]}
    send = producer.send_task
    send(TASK_NAME, args=[event], queue=queue, task_id="expired", expires=-60)
    send(TASK_NAME, args=[event], queue=queue, task_id="far", countdown=400 * 86_400)
    send(
        TASK_NAME,
        args=[event],
        queue=queue,
        task_id="linked",
        link=producer.signature("celery.ping"),
    )
    start_worker()

    wait_for(settled(stores, 3), what="three dead letters")
    assert _reasons(stores) == {
        "expired": "expired",
        "far": "unsupported_option",
        "linked": "unsupported_option",
    }
    assert stores.redis.llen(queue) == 0  # no callback was sent anywhere


@pytest.mark.e2e
def test_a_countdown_is_honoured_and_an_unexpired_task_runs_even_if_it_expires_while_waiting(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    producer: Celery,
) -> None:
    queue = stores.settings.queue
    _started(start_worker, producer)
    sent = time.monotonic()
    # Unexpired when the worker takes it (a task expired on receipt is dead-lettered, even on
    # a loaded machine 3 s is ample), expired by the time its countdown ends.
    producer.send_task(
        TASK_NAME,
        args=[{"call_id": "call-d", "tags": ["d"]}],
        queue=queue,
        countdown=6,
        expires=3,
    )

    wait_for(lambda: fake_api.tags_of("call-d") == ["d"], what="the delayed task applied")
    assert time.monotonic() - sent >= 5.5
    assert stores.dead_letters.count() == 0
