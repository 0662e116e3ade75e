"""Producing tag-update events from Python.

Events are checked here first, so a producer hears about a bad event at once instead of
finding it in the dead letters; defaults (`version`, `event_id`) are fixed at publish time,
as the contract says, so redeliveries and retries of one event agree on them; a default
version comes from the call's clock in Redis, so defaults never tie, whoever publishes. Each event's
version is registered as pending for its call as it is queued, which is what lets workers
skip older events that a newer one will overwrite anyway.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis

from tagging_worker.errors import InvalidEvent
from tagging_worker.event import EventLimits, TagUpdate, require_object, validate_event
from tagging_worker.messages import build_task_message
from tagging_worker.settings import Settings, load_settings
from tagging_worker.state.connection import WritesNotReplicated, WritesRefused, refused_writes
from tagging_worker.state.ordering import Ordering
from tagging_worker.state.stores import Stores


class Publisher:
    def __init__(
        self,
        ordering: Ordering,
        *,
        limits: EventLimits,
        replicas: int = 0,
        replica_timeout_ms: int = 2000,
    ) -> None:
        self._ordering = ordering
        self._limits = limits
        self._replicas = replicas
        self._replica_timeout_ms = replica_timeout_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        return cls(
            Stores.connect(settings).ordering,
            limits=settings.event_limits,
            replicas=settings.publish_replicas,
            replica_timeout_ms=settings.redis_publish_replica_timeout_ms,
        )

    def publish(self, event: Mapping[str, Any], *, validate: bool = True) -> str:
        """Queue one event; returns its `event_id`.

        `validate=False` lets tools put a deliberately bad event on the queue (the demo, tests
        of the dead-letter path); a normal producer never needs it. Even then the event must be
        an object that encodes as UTF-8 JSON, or it could not be queued at all.
        """
        return self.publish_many([event], validate=validate)[0]

    def publish_many(
        self, events: Iterable[Mapping[str, Any]], *, validate: bool = True, chunk: int = 1000
    ) -> list[str]:
        """Every event is checked before any is sent; then they are pipelined in chunks.
        Raises `WritesRefused` when Redis is full or read-only, and `WritesNotReplicated`
        when fewer replicas than asked confirmed a chunk in time, saying how many went out."""
        prepared = [self._prepare(event, validate) for event in events]
        for start in range(0, len(prepared), chunk):
            sent = f"{start} of {len(prepared)} events were published" if start else "none"
            try:
                confirmed = self._send(prepared[start : start + chunk])
            except redis.exceptions.ResponseError as exc:
                cause = refused_writes(exc)
                raise WritesRefused(f"Redis refuses writes ({sent}): {cause}") from exc
            if confirmed < self._replicas:
                raise WritesNotReplicated(
                    f"{confirmed} of {self._replicas} replicas had events {start + 1} to "
                    f"{min(start + chunk, len(prepared))} after {self._replica_timeout_ms} ms "
                    f"({sent} before them; the master has {self._connected_replicas()} "
                    "replicas connected): a failover now would lose them, so publish them "
                    "again (duplicates are recognised by event_id). "
                    "TAGGING_REDIS_PUBLISH_REPLICAS sets how many replicas a publish waits for"
                )
        return [str(full["event_id"]) for full, _ in prepared]

    def _send(self, prepared: list[tuple[dict[str, Any], TagUpdate | None]]) -> int:
        """Queues the events in one round trip; how many replicas confirmed them (WAIT, in
        the same pipeline), or 0 when no replica is asked for."""
        batch = self._with_default_versions(prepared)
        pipe = self._ordering.client.pipeline(transaction=False)
        for full, update in batch:
            message = build_task_message(full, queue=self._ordering.queue)
            if update is None:
                pipe.lpush(self._ordering.queue, message)
            else:
                self._ordering.publish(
                    update.call_id, update.version, update.event_id, message, pipe=pipe
                )
        if self._replicas:
            pipe.wait(self._replicas, self._replica_timeout_ms)
        replies = pipe.execute()
        return int(replies[-1]) if self._replicas else 0

    def _connected_replicas(self) -> int | str:
        """For the message of a publish the replicas did not confirm: none connected is a
        set-up to fix, some that lag is a moment to wait out."""
        try:
            return int(self._ordering.client.info("replication")["connected_slaves"])
        except (redis.RedisError, KeyError, ValueError):
            return "unknown"

    def _prepare(
        self, event: Mapping[str, Any], validate: bool
    ) -> tuple[dict[str, Any], TagUpdate | None]:
        full = dict(require_object(event))
        full.setdefault("event_id", str(uuid.uuid4()))
        try:
            update = validate_event(
                full,
                limits=self._limits,
                default_version=0,
                default_event_id=str(full["event_id"]),
            )
        except InvalidEvent:
            if validate:
                raise
            _require_encodable(full)
            update = None
        return full, update

    def _with_default_versions(
        self, batch: list[tuple[dict[str, Any], TagUpdate | None]]
    ) -> list[tuple[dict[str, Any], TagUpdate | None]]:
        """Events without a version get one from their call's clock in Redis, fixed here
        for good: later in the batch or on another host, the next default is higher."""
        calls = [u.call_id for full, u in batch if u is not None and full.get("version") is None]
        versions = iter(self._ordering.default_versions(calls))
        done: list[tuple[dict[str, Any], TagUpdate | None]] = []
        for full, update in batch:
            if full.get("version") is not None:
                done.append((full, update))
            elif update is None:  # a deliberately invalid event: its version orders nothing
                done.append(({**full, "version": int(time.time() * 1000)}, None))
            else:
                version = next(versions)
                done.append(({**full, "version": version}, replace(update, version=version)))
        return done


def _require_encodable(event: dict[str, Any]) -> None:
    """Checked before anything is sent, so an unvalidated batch is still all or nothing."""
    try:
        json.dumps(event, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidEvent(f"event cannot be queued even unvalidated: {exc}") from None


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
        "tags": list(tags) if isinstance(tags, Iterable) and not isinstance(tags, str) else tags,
    }
    optional = {
        "version": version,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "source": source,
    }
    event.update({k: v for k, v in optional.items() if v is not None})
    return Publisher.from_settings(settings or load_settings()).publish(event)
