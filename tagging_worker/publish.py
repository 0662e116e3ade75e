"""Producing tag-update events from Python.

Events are checked here first, so a producer hears about a bad event at once instead of
finding it in the dead letters; defaults (`version`, `event_id`) are fixed at publish time,
as the contract says, so redeliveries and retries of one event agree on them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from tagging_worker.event import EventLimits, validate_event
from tagging_worker.messages import build_task_message
from tagging_worker.settings import Settings, load_settings


class Publisher:
    def __init__(self, client: redis.Redis, *, queue: str, limits: EventLimits) -> None:
        self._redis = client
        self._queue = queue
        self._limits = limits

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        return cls(
            redis.Redis.from_url(settings.broker_url),
            queue=settings.queue,
            limits=settings.event_limits,
        )

    def prepare(self, event: Mapping[str, Any], *, validate: bool = True) -> tuple[str, str]:
        """Fill the defaults and build the message; returns (event_id, message).

        `validate=False` lets tools put a deliberately bad event on the queue (the demo, tests
        of the dead-letter path); a normal producer never needs it.
        """
        full = dict(event)
        full.setdefault("version", int(time.time() * 1000))
        full.setdefault("event_id", str(uuid.uuid4()))
        if validate:
            validate_event(
                full,
                limits=self._limits,
                default_version=full["version"],
                default_event_id=full["event_id"],
            )
        return str(full["event_id"]), build_task_message(full, queue=self._queue)

    def publish(self, event: Mapping[str, Any], *, validate: bool = True) -> str:
        event_id, message = self.prepare(event, validate=validate)
        self._redis.lpush(self._queue, message)
        return event_id

    def publish_many(self, events: Iterable[Mapping[str, Any]], *, chunk: int = 1000) -> list[str]:
        """Bulk publishing: every event is validated before any is sent, then pipelined."""
        prepared = [self.prepare(event) for event in events]
        for start in range(0, len(prepared), chunk):
            messages = [message for _, message in prepared[start : start + chunk]]
            self._redis.lpush(self._queue, *messages)
        return [event_id for event_id, _ in prepared]


def publish_tag_update(
    call_id: str,
    tags: Sequence[str] | str,
    *,
    version: int | None = None,
    event_id: str | None = None,
    occurred_at: str | None = None,
    source: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Publish one event with the settings from the environment; returns its `event_id`."""
    event: dict[str, Any] = {
        "call_id": call_id,
        "tags": tags if isinstance(tags, str) else list(tags),
    }
    optional = {
        "version": version,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "source": source,
    }
    event.update({k: v for k, v in optional.items() if v is not None})
    return Publisher.from_settings(settings or load_settings()).publish(event)
