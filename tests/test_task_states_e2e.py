"""What Flower and `celery events` see: task states that mean what they say.

A real worker sends its task events (on by default); the test listens to them the way Flower
does, with Celery's event receiver on the same broker. A dead letter is a FAILURE whose message
is acked (not redelivered), a retried event is one task going through RETRY under one id, and
a delayed retry is listed by `celery inspect scheduled`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from celery import Celery

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import read_task_message
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.connection import broker_transport_options
from tagging_worker.state.stores import Stores
from tests.conftest import WorkerProcess, settled, wait_for

pytestmark = pytest.mark.e2e


class TaskEvents:
    """Celery's task events as Flower receives them, kept per task id."""

    def __init__(self, stores: Stores) -> None:
        self.app = Celery(
            broker=stores.settings.broker_url,
            broker_transport_options=broker_transport_options(stores.settings),
        )
        self.by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"

    def _listen(self) -> None:
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self._keep})
            self._ready.set()
            while not self._stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    def _keep(self, event: dict[str, Any]) -> None:
        if event["type"].startswith("task-"):
            with self._lock:
                self.by_task[event["uuid"]].append(event)

    def types(self, task_id: str) -> list[str]:
        with self._lock:
            return [e["type"] for e in self.by_task.get(task_id, [])]

    def tasks_about(self, call_id: str) -> set[str]:
        """Tasks received for the call (other tests' workers share the event channel)."""
        with self._lock:
            return {
                task
                for task, events in self.by_task.items()
                if any(call_id in str(e.get("args", "")) for e in events)
            }

    def of(self, task_id: str, kind: str) -> dict[str, Any]:
        with self._lock:
            return next(e for e in self.by_task[task_id] if e["type"] == kind)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def task_events(stores: Stores) -> Iterator[TaskEvents]:
    events = TaskEvents(stores)
    yield events
    events.close()


def _publish_one(stores: Stores, call_id: str) -> tuple[str, str]:
    """Publishes one event before any worker runs; its message's task id, and its event id."""
    [event_id] = Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": call_id, "tags": ["x"], "version": 1}]
    )
    [raw] = stores.redis.lrange(stores.settings.queue, 0, -1)
    return read_task_message(raw).task_id, event_id


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_dead_lettered_event_is_a_failure_and_its_message_is_not_redelivered(
    pool: str,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    task_events: TaskEvents,
) -> None:
    fake_api.add_fault("error", code="InvalidParameter.Tags", http_status=400, message="bad tag")
    task_id, event_id = _publish_one(stores, "call-flower-dead")
    worker = start_worker(pool, TAGGING_LOG_FORMAT="json")
    wait_for(settled(stores, 1), what="the event dead-lettered")
    wait_for(lambda: "task-failed" in task_events.types(task_id), what="a task-failed event")

    failed = task_events.of(task_id, "task-failed")
    assert "DeadLettered" in failed["exception"] and "permanent_error" in failed["exception"]
    assert "task-succeeded" not in task_events.types(task_id)
    assert stores.dead_letters.count() == 1
    wait_for(lambda: stores.redis.llen(stores.settings.queue) == 0, what="an empty queue")
    assert stores.ordering.fate("call-flower-dead", event_id) == "dead"
    # Acked, so nothing comes back: exactly one delivery ran. Celery logs it as expected,
    # not as an error with a traceback: the dead letter's own line says what happened.
    assert task_events.types(task_id).count("task-started") == 1
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert not [r for r in records if r["logger"] == "celery.app.trace" and r["level"] != "info"]


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_retried_event_is_one_task_that_retries_then_succeeds(
    pool: str,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    task_events: TaskEvents,
) -> None:
    fake_api.add_fault("error", code="ServiceUnavailable", http_status=503, times=2)
    task_id, event_id = _publish_one(stores, "call-flower-retry")
    start_worker(pool)
    wait_for(settled(stores, 1), what="the event applied")
    wait_for(lambda: "task-succeeded" in task_events.types(task_id), what="a task-succeeded event")

    kinds = task_events.types(task_id)
    assert kinds.count("task-retried") == 2
    assert kinds.count("task-started") == 3
    assert kinds[-1] == "task-succeeded"
    assert "ServiceUnavailable" in task_events.of(task_id, "task-retried")["exception"]
    # No other task ran for this event: the retries kept its task id.
    assert task_events.tasks_about("call-flower-retry") == {task_id}
    assert stores.ordering.fate("call-flower-retry", event_id) == "applied"


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_delayed_retries_are_listed_by_celery_inspect_scheduled(
    pool: str,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    task_events: TaskEvents,
) -> None:
    # The API's retry-after decides the delay (backoff's full jitter could make it short).
    fake_api.add_fault(
        "error", code="ServiceUnavailable", http_status=503, times=1, retry_after_ms=600_000
    )
    task_id, _ = _publish_one(stores, "call-flower-scheduled")
    start_worker(pool)
    wait_for(lambda: stores.retries.pending() == 1, what="the retry scheduled")

    inspect = task_events.app.control.inspect(timeout=2.0)
    replies = wait_for(lambda: inspect.scheduled(), what="a reply to inspect scheduled")
    # Other tests' workers share the broadcast: keep what is about this test's call.
    listed = [
        entry
        for entries in replies.values()
        for entry in entries
        if "call-flower-scheduled" in entry["request"]["args"]
    ]
    assert [entry["request"]["id"] for entry in listed] == [task_id], "listed once, by its node"
    [entry] = listed
    assert datetime.fromisoformat(entry["eta"]).timestamp() > time.time() + 60
    assert entry["request"]["name"] == "tagging_worker.update_call_tags"
