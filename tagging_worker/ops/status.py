"""What an operator on call needs at a glance, read from Redis (and the workers) in one place."""

from __future__ import annotations

from typing import Any

from celery import Celery

from tagging_worker.state.connection import broker_transport_options
from tagging_worker.state.fetch import held_messages
from tagging_worker.state.stores import Stores

INSPECT_COMMAND = "tagging"
"""What a worker answers with its queue, key prefix, consumption and running tasks."""


def gather(stores: Stores) -> dict[str, Any]:
    """Counts are read one after another, not in one transaction: a busy system moves
    between them, which is fine for a view. Redis only: metrics scrapes use it too.

    `unfinished_events` counts the task messages still to run: queued, held by workers
    (taken, not acknowledged) and waiting to retry, settle checks included. Events parked
    behind a newer version of their call are not counted: they sit in per-call keys that no
    index lists, and most of them end superseded without running."""
    outcomes = stores.outcomes.snapshot()
    queued = int(stores.redis.llen(stores.settings.queue))
    delayed = stores.retries.pending()
    held = held_messages(stores.redis, stores.keys.fetch, stores.settings.queue)
    return {
        "queue": stores.settings.queue,
        "queued": queued,
        "delayed_retries": delayed,
        "unfinished_events": queued + held + delayed,
        "dead_letters": stores.dead_letters.count(),
        "dead_letters_by_reason": stores.dead_letters.count_by_reason(),
        "dead_letters_by_code": stores.dead_letters.count_by_code(),
        "outcomes": outcomes,
        "rates_per_second": {
            "last_minute": stores.outcomes.rates(60, current=outcomes),
            "last_5_minutes": stores.outcomes.rates(300, current=outcomes),
        },
        "api": stores.flow.snapshot(),
        "redis_refuses_writes": stores.write_refusal(),
    }


def live_workers(stores: Stores, *, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Workers of this deployment (its queue and key prefix) that answer Celery's broadcast:
    each says whether it takes messages now (not while the open circuit pauses it) and how
    many tasks it runs (the `tagging` inspect command, `worker/inspection.py`). Nodes of other
    queues on the same broker are not listed."""
    control = Celery(
        broker=stores.settings.broker_url,
        broker_transport_options=broker_transport_options(stores.settings),
    ).control
    replies = control.broadcast(INSPECT_COMMAND, reply=True, timeout=timeout) or []
    found = []
    for reply in replies:
        for name, answer in reply.items():
            if not isinstance(answer, dict):
                continue
            ours = (answer.get("queue"), answer.get("key_prefix")) == (
                stores.settings.queue,
                stores.settings.key_prefix,
            )
            if ours:
                found.append(
                    {
                        "name": name,
                        "active_tasks": int(answer.get("active_tasks", 0)),
                        "consuming": bool(answer.get("consuming")),
                    }
                )
    return sorted(found, key=lambda worker: worker["name"])
