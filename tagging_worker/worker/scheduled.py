"""`celery inspect scheduled` (and Flower's "Scheduled" tab) lists delayed retries.

Celery answers `scheduled` from the ETA tasks a worker holds in memory. Delayed retries here
wait in Redis instead (`state/retry_schedule.py`), where a crash cannot lose them, so Celery
alone would list none. Each worker adds the retries its own node deferred, recognised by the
`origin` header of their messages (`messages.ORIGIN`), in Celery's own reply format: a
retry is listed once, by the node that deferred it, among the soonest `SCAN_LIMIT`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from celery.worker.control import Panel, inspect_command

from tagging_worker.messages import ORIGIN, TASK_NAME, read_task_message
from tagging_worker.worker.wiring import PerProcess, Services

SCAN_LIMIT = 10_000
"""How many of the soonest retries one answer looks through: an answer stays well under a
second and a megabyte however long the schedule is; `status` counts them all."""

_CELERY_SCHEDULED = Panel.data["scheduled"]


def install_scheduled_listing(services: PerProcess[Services]) -> None:
    """Replaces Celery's `scheduled` inspect command with one that also lists these retries."""

    @inspect_command(alias="dump_schedule")
    def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """List of scheduled ETA/countdown tasks, delayed retries in Redis included."""
        listed = list(_CELERY_SCHEDULED(state, **kwargs))
        sv = services.get()
        for raw, due in sv.stores.retries.soonest(SCAN_LIMIT):
            entry = deferred_here(raw, due, hostname=state.hostname, queue=sv.settings.queue)
            if entry is not None:
                listed.append(entry)
        return listed


def deferred_here(raw: bytes, due: float, *, hostname: str, queue: str) -> dict[str, Any] | None:
    """One retry as Celery lists a scheduled task, when this process's node deferred it."""
    message = json.loads(raw)
    headers = message.get("headers", {})
    if headers.get("origin") != ORIGIN:
        return None
    task = read_task_message(raw)
    return {
        "eta": datetime.fromtimestamp(due, tz=timezone.utc).isoformat(),
        "priority": 0,
        "request": {
            "id": task.task_id,
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
