"""What Celery's remote inspection (`celery inspect`, Flower, `tagging-worker status`) is told.

- `scheduled` also lists delayed retries. Celery answers it from the ETA tasks a worker holds
  in memory; delayed retries here wait in Redis instead (`state/retry_schedule.py`), where a
  crash cannot lose them, so Celery alone would list none. Each worker lists the retries its
  own process deferred, known by the `origin` header of their messages (`messages.ORIGIN`),
  and the first live worker of the queue (by origin) also lists those whose worker is gone,
  so a restart hides none. Among the soonest `SCAN_LIMIT`, in Celery's own reply format.
- `tagging` says which queue and key prefix a worker serves, whether it takes messages now
  (not while the open circuit pauses it) and how many of its tasks run: `status` lists the
  workers of its own deployment from this, not every node that answers on the broker.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import Panel, inspect_command

from tagging_worker.messages import ORIGIN, TASK_NAME
from tagging_worker.ops.status import INSPECT_COMMAND
from tagging_worker.state.fetch import FetchLedger, consumer_origin
from tagging_worker.worker.wiring import PerProcess, Services

SCAN_LIMIT = 10_000
"""How many of the soonest retries one answer looks through: an answer stays well under a
second and a megabyte however long the schedule is; `status` counts them all."""

_CELERY_SCHEDULED = Panel.data["scheduled"]


def install_inspection(services: PerProcess[Services]) -> None:
    """Replaces Celery's `scheduled` inspect command with one that also lists these retries,
    and adds `tagging`."""

    @inspect_command(alias="dump_schedule")
    def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """List of scheduled ETA/countdown tasks, delayed retries in Redis included."""
        listed = list(_CELERY_SCHEDULED(state, **kwargs))
        sv = services.get()
        queue = sv.settings.queue
        live = FetchLedger(sv.stores.redis, sv.stores.keys.fetch, queue).live_consumers()
        origins = sorted({consumer_origin(c) for c in live})
        adopts = origins[:1] == [ORIGIN]
        for raw, due in sv.stores.retries.soonest(SCAN_LIMIT):
            headers = json.loads(raw).get("headers", {})
            origin = headers.get("origin")
            if origin == ORIGIN or (adopts and origin not in origins):
                listed.append(as_scheduled(headers, due, hostname=state.hostname, queue=queue))
        return listed

    @inspect_command(name=INSPECT_COMMAND)
    def tagging(state: Any, **kwargs: Any) -> dict[str, Any]:
        """This worker's queue and key prefix, whether it takes messages, its running tasks."""
        settings = services.get().settings
        consumer = state.consumer.task_consumer
        taking = consumer is not None and any(q.name == settings.queue for q in consumer.queues)
        running = sum(
            1
            for request in worker_state.active_requests
            if request.delivery_info.get("routing_key") == settings.queue
        )
        return {
            "queue": settings.queue,
            "key_prefix": settings.key_prefix,
            "consuming": taking,
            "active_tasks": running,
        }


def as_scheduled(
    headers: dict[str, Any], due: float, *, hostname: str, queue: str
) -> dict[str, Any]:
    """One retry, by its message's headers, as Celery lists a scheduled task."""
    return {
        "eta": datetime.fromtimestamp(due, tz=timezone.utc).isoformat(),
        "priority": 0,
        "request": {
            "id": headers.get("id"),
            "name": headers.get("task", TASK_NAME),
            "args": headers.get("argsrepr", ""),
            "kwargs": headers.get("kwargsrepr", ""),
            "type": headers.get("task", TASK_NAME),
            "hostname": hostname,
            "time_start": None,
            "acknowledged": False,
            "delivery_info": {"exchange": "", "routing_key": queue, "priority": 0},
            "worker_pid": None,
        },
    }
