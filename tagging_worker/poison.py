"""Messages that cannot be run are dead-lettered with their raw body, never dropped.

Celery's defaults log and discard a message it cannot decode, whose content type it refuses
(pickle), whose task it does not know, or whose body is not the protocol-2 shape; the Redis
transport even loses an item that is not JSON, or an envelope kombu cannot make a message of,
before Celery sees it (and with reliable fetch such an item would come back for ever). Here
the transport hands such an item on as an opaque message, and the consumer checks every
message before Celery's handler, moving the broken ones to the dead letters.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from tagging_worker.messages import CONTENT_TYPE, TASK_NAME
from tagging_worker.outcomes import Outcome

OPAQUE_CONTENT_TYPE = "application/x-tagging-worker-undecodable"
_json_loads = kombu_redis.loads


def tolerant_loads(raw: Any) -> Any:
    """kombu's decoder for Redis items, except that a queue item that is not a message
    envelope becomes an opaque message instead of an exception that loses it.

    kombu decodes two shapes with this: message envelopes (queue items) and
    `[envelope, exchange, routing_key]` triples (its own unacked records); both pass as they are.
    """
    try:
        decoded = _json_loads(raw)
    except (ValueError, TypeError):
        decoded = None
    if _is_envelope(decoded) or (
        isinstance(decoded, list) and len(decoded) == 3 and _is_envelope(decoded[0])
    ):
        return decoded
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    return {
        "body": base64.b64encode(data).decode(),
        "content-encoding": "binary",
        "content-type": OPAQUE_CONTENT_TYPE,
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": ""},
            "priority": 0,
        },
    }


def _is_envelope(value: Any) -> bool:
    """What kombu needs to make a message: properties with a delivery tag, and a body that its
    encoding decodes (kombu decodes it before anyone can look at the message)."""
    if not isinstance(value, dict):
        return False
    properties = value.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return False
    encoding, body = properties.get("body_encoding"), value.get("body")
    if not body or not encoding or (isinstance(encoding, str) and encoding.lower() == "utf-8"):
        return True
    if encoding != "base64":
        return False
    try:
        base64.b64decode(body)
    except (binascii.Error, TypeError, ValueError):
        return False
    return True


def install_tolerant_transport() -> None:
    """kombu's Redis transport decodes with its module's `loads`; this swaps in ours."""
    kombu_redis.loads = tolerant_loads


def diagnose(message: Any) -> tuple[str, str] | None:
    """(reason, detail) when the message cannot become a task run; None when it can."""
    headers = message.headers if isinstance(message.headers, dict) else None
    if message.content_type != CONTENT_TYPE:
        if message.content_type == OPAQUE_CONTENT_TYPE:
            return "undecodable_message", "the queue item is not a JSON message envelope"
        return "undecodable_message", f"content type {message.content_type!r} is not accepted"
    try:
        body = json.loads(message.body)
    except (ValueError, TypeError) as exc:
        return "undecodable_message", f"body is not JSON ({exc})"
    if headers is None or "task" not in headers:
        return "undecodable_message", "not a Celery protocol 2 task message (no task header)"
    if headers["task"] != TASK_NAME:
        return "unknown_task", f"unknown task {str(headers['task'])[:200]!r}"
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
    ):
        return "invalid_event", "body is not the protocol 2 shape [args, kwargs, embed]"
    return None


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with every message checked before it is handed to a task."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            problem = diagnose(message)
            if problem is None:
                return handle(message)
            return self._dead_letter(message, *problem)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "undecodable_message", f"{type(exc).__name__}: {exc}")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "unknown_task", f"{type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "undecodable_message", "unknown message format")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "invalid_event", f"{type(exc).__name__}: {exc}")

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        from tagging_worker.runtime import get_runtime

        rt = get_runtime()
        headers = message.headers if isinstance(message.headers, dict) else {}
        record_id = str(headers.get("id") or f"message-{message.delivery_tag}")[:200]
        raw = bytes(message.body) if message.body is not None else b""
        kept = {
            "content_type": message.content_type,
            "headers": headers,
            "raw_body": raw.decode("utf-8", "replace"),
        }
        record = rt.dead_letters.prepare(
            record_id=record_id,
            reason=reason,
            detail=detail,
            event=kept,
            normalized=None,
            attempts=[],
            first_seen=time.time(),
            task_id=record_id,
        )
        if not rt.ordering.finish(record_id, Outcome.DEAD, record):
            message.ack()  # delivered again after it was dead-lettered: one record is enough
            return
        from tagging_worker import observe  # imports metrics: not before the worker set them up

        observe.dead(record_id, None, reason, detail, attempts=0, code=None)
        if trimmed := rt.dead_letters.trim():
            observe.dead_letters_trimmed(trimmed, rt.settings.dead_letter_max_records)
        message.ack()
