"""Messages that cannot be run are dead-lettered with a reason, never dropped, and no message
can take the worker down.

Celery's defaults log and discard a message it cannot decode, whose content type it refuses
(pickle), whose task it does not know, whose body is not the protocol-2 shape, or that was
revoked or expired; the Redis transport even loses an item that is not JSON, or an envelope
kombu cannot make a message of, before Celery sees it; and both read envelopes with code that
trusts the producer (`envelope.py`). Here the transport hands an unreadable item on as an
opaque message (a quarantined one too, see `state/fetch.py`), the consumer checks every message
before Celery's handler, and Celery's own discards go to the dead letters as well.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import redis
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

from tagging_worker import plain_json
from tagging_worker.messages import CONTENT_TYPE, TASK_NAME
from tagging_worker.reasons import DeadReason
from tagging_worker.state.fetch import QUARANTINED
from tagging_worker.worker.envelope import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_ITEM_BYTES,
    Problem,
    body_problem,
    header_problem,
    single_event,
)

log = logging.getLogger(__name__)

OPAQUE_CONTENT_TYPE = "application/x-tagging-worker-undecodable"
_json_loads = kombu_redis.loads


REASON_HEADER, DETAIL_HEADER = "x-tagging-reason", "x-tagging-detail"
"""Carry, on an opaque message, why its queue item could not be read."""


def tolerant_loads(raw: Any) -> Any:
    """kombu's decoder for Redis items, except that a queue item that is not a message
    envelope kombu and Celery can read becomes an opaque message instead of an exception that
    loses it (or kills the worker).

    kombu decodes two shapes with this: message envelopes (queue items) and
    `[envelope, exchange, routing_key]` triples (its own unacked records); both pass as they are.
    """
    decoded, problem = _decode(raw)
    if problem is None:
        return decoded
    if isinstance(decoded, dict) and isinstance(decoded.get("item"), str):
        raw = decoded["item"]  # a quarantine wrapper: what is kept is the message inside
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    return {
        "body": base64.b64encode(data).decode(),
        "content-encoding": "binary",
        "content-type": OPAQUE_CONTENT_TYPE,
        "headers": {REASON_HEADER: problem.reason.value, DETAIL_HEADER: problem.detail},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": ""},
            "priority": 0,
        },
    }


def _decode(raw: Any) -> tuple[Any, Problem | None]:
    """The decoded item, or why it is not a message envelope. Bounded before anything
    recursive runs: by size before parsing, by depth (and plain JSON) after."""
    if len(raw) > MAX_ITEM_BYTES:
        return None, _unreadable(f"the queue item is {len(raw)} bytes, more than {MAX_ITEM_BYTES}")
    try:
        decoded = _json_loads(raw)
    except RecursionError:
        return None, _unreadable("the queue item is nested too deep to parse")
    except (ValueError, TypeError):
        return None, _unreadable("the queue item is not a JSON message envelope")
    if isinstance(decoded, dict) and QUARANTINED in decoded:
        marker = decoded[QUARANTINED]
        crashes = marker.get("crashes") if isinstance(marker, dict) else "several"
        return decoded, Problem(
            DeadReason.POISON_MESSAGE,
            f"the worker holding it died or lost its process {crashes} times "
            "(TAGGING_POISON_AFTER_CRASHES): it may be what kills workers, or was held beside it",
        )
    triple = isinstance(decoded, list) and len(decoded) == 3
    problem = _envelope_problem(decoded[0] if triple else decoded)
    if problem is None and (shape := plain_json.problem(decoded, max_depth=MAX_DEPTH)):
        problem = f"in the queue item, {shape}"
    return decoded, None if problem is None else _unreadable(problem)


def _unreadable(detail: str) -> Problem:
    return Problem(DeadReason.UNDECODABLE_MESSAGE, detail)


def _envelope_problem(value: Any) -> str | None:
    """What kombu needs to make a message: properties with a delivery tag and a delivery info
    it can read, and a body that its encoding decodes (kombu decodes it before anyone can
    look at the message)."""
    if not isinstance(value, dict):
        return "the queue item is not a JSON message envelope"
    properties = value.get("properties")
    if not isinstance(properties, dict):
        return "the message envelope has no properties object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not 0 < len(tag) <= MAX_ID_LENGTH:
        return f"the message envelope's delivery_tag is not 1 to {MAX_ID_LENGTH} characters"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "the message envelope's delivery_info is not an object"
    if not isinstance(value.get("headers", {}), (dict, type(None))):
        return "the message envelope's headers are not an object"
    encoding, body = properties.get("body_encoding"), value.get("body")
    if not body or not encoding or (isinstance(encoding, str) and encoding.lower() == "utf-8"):
        return None if isinstance(body, (str, type(None))) else "the message body is not text"
    if encoding != "base64":
        return f"the message body encoding {str(encoding)[:40]!r} is not base64 or utf-8"
    try:
        base64.b64decode(body)
    except (binascii.Error, TypeError, ValueError):
        return "the message body is not base64"
    return None


def install_tolerant_transport() -> None:
    """kombu's Redis transport decodes with its module's `loads`; this swaps in ours."""
    kombu_redis.loads = tolerant_loads


def diagnose(message: Any, *, now: datetime, max_eta_seconds: float) -> Problem | None:
    """Why the message cannot become a task run; None when it can. Decodes the body as
    Celery will (kombu caches it, so it is decoded once)."""
    if message.content_type == OPAQUE_CONTENT_TYPE:
        headers = message.headers or {}
        reason = _reason(headers.get(REASON_HEADER))
        return Problem(reason, str(headers.get(DETAIL_HEADER) or "unreadable queue item"))
    if message.content_type != CONTENT_TYPE:
        detail = f"content type {str(message.content_type)[:80]!r} is not accepted"
        return Problem(DeadReason.UNDECODABLE_MESSAGE, detail)
    headers = message.headers
    if (problem := header_problem(headers, now=now)) is not None:
        return problem
    if headers["task"] != TASK_NAME:
        return Problem(DeadReason.UNKNOWN_TASK, f"unknown task {headers['task'][:200]!r}")
    try:
        body = message.decode()
    except Exception as exc:  # kombu raises whatever its codec raises
        detail = f"body is not JSON ({type(exc).__name__}: {exc})"[:500]
        return Problem(DeadReason.UNDECODABLE_MESSAGE, detail)
    return body_problem(body, max_eta_seconds=max_eta_seconds, eta=headers.get("eta"), now=now)


def _reason(given: Any) -> DeadReason:
    """The reason an opaque message carries. The transport writes one; anything else (a
    producer imitating the opaque content type) is just an undecodable message."""
    try:
        return DeadReason(given)
    except ValueError:
        return DeadReason.UNDECODABLE_MESSAGE


class Refuse(Protocol):
    """How the app dead-letters a delivery that cannot run (`tasks.refuse`, bound to the
    process's services)."""

    def __call__(
        self, received: Any, carried: Any, reason: DeadReason, detail: str, *, task_id: str
    ) -> object: ...


def poison_handlers(
    refuse: Refuse, *, max_eta_seconds: float
) -> tuple[type[Consumer], type[Request]]:
    """The consumer and task request classes of one app, wired to how it dead-letters (Celery
    takes classes, not instances, for both)."""
    wiring = {"refuse": staticmethod(refuse), "max_eta_seconds": max_eta_seconds}
    return (
        type("PoisonAwareConsumer", (PoisonAwareConsumer,), wiring),
        type("RevocationAwareRequest", (RevocationAwareRequest,), wiring),
    )


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with every message checked before it is handed to a task, and no
    message able to take the consumer down: whatever fails on the way to a task run
    dead-letters that one message (Redis trouble excepted: the message stays held and comes
    back). Made for an app by `poison_handlers`."""

    refuse: Refuse
    max_eta_seconds: float

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                problem = self._check(message)
            except Exception as exc:
                log.exception("checking a message failed")
                problem = Problem(
                    DeadReason.INTERNAL_ERROR, f"checking the message failed: {exc!r}"[:500]
                )
            if problem is not None:
                return self._dead_letter(message, problem)
            # Its expiry was checked at receipt: once taken, it runs; Celery must not drop it.
            message.headers["expires"] = None
            try:
                return handle(message)
            except (*self.connection_errors, redis.RedisError):
                raise
            except Exception as exc:
                log.exception("Celery could not start a task for a message")
                detail = f"Celery could not start a task for it: {exc!r}"[:500]
                return self._dead_letter(message, Problem(DeadReason.INTERNAL_ERROR, detail))

        return on_task_received

    def _check(self, message: Any) -> Problem | None:
        problem = diagnose(
            message, now=datetime.now(timezone.utc), max_eta_seconds=self.max_eta_seconds
        )
        if problem is None and message.headers["id"] in worker_state.revoked:
            problem = REVOKED
        return problem

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(
            message, Problem(DeadReason.UNDECODABLE_MESSAGE, f"{type(exc).__name__}: {exc}")
        )

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, Problem(DeadReason.UNKNOWN_TASK, f"{type(exc).__name__}: {exc}"))

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(
            message, Problem(DeadReason.UNDECODABLE_MESSAGE, "unknown message format")
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(
            message, Problem(DeadReason.INVALID_EVENT, f"{type(exc).__name__}: {exc}")
        )

    def _dead_letter(self, message: Any, problem: Problem) -> None:
        dead_letter_message(message, problem, self.refuse)
        message.ack()


REVOKED = Problem(DeadReason.REVOKED, "revoked (celery control revoke) before it ran")


class RevocationAwareRequest(Request):
    """Celery acknowledges a task revoked (or expired) after it was received and forgets it;
    this dead-letters it first, so a revocation is an answer, not a loss. Made for an app by
    `poison_handlers`."""

    refuse: Refuse

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if not self._already_revoked:
            problem = (
                Problem(DeadReason.EXPIRED, "it expired (its expires header) before it ran")
                if expired
                else REVOKED
            )
            dead_letter_message(self._message, problem, self.refuse)
        super()._announce_revoked(reason, terminated, signum, expired)


def dead_letter_message(message: Any, problem: Problem, refuse: Refuse) -> None:
    """Store the message as a dead letter with its fate. A message of this task whose body
    reads as one event is kept as that event (a revoked, expired or quarantined event replays
    as it is); anything else is kept as its raw body (bounded) and headers."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = headers.get("id")
    usable = isinstance(task_id, str) and 0 < len(task_id) <= MAX_ID_LENGTH
    raw = message.body if isinstance(message.body, bytes) else str(message.body or "").encode()
    raw_text = raw.decode("utf-8", "replace")
    received: Any = {"content_type": message.content_type, "headers": headers, "raw_body": raw_text}
    record_id = task_id if usable else f"message-{message.delivery_tag}"
    try:
        carried = None
        if (readable := _one_event(message)) is not None:
            received, carried = readable
        refuse(received, carried, problem.reason, problem.detail, task_id=record_id)
    except redis.RedisError:
        raise
    except Exception as exc:
        # A bug here would otherwise crash the consumer on this message at every delivery.
        log.exception("dead-lettering a message failed: keeping its raw body alone")
        detail = f"dead-lettering it as {problem.reason.value} failed: {exc!r}"[:500]
        refuse({"raw_body": raw_text}, None, DeadReason.INTERNAL_ERROR, detail, task_id=record_id)


def _one_event(message: Any) -> tuple[Mapping[str, Any], Any] | None:
    """(event, retry state) of a message of this task that holds one event, read within the
    same bounds as any item (for a quarantined message, the one inside); None otherwise."""
    if message.content_type == OPAQUE_CONTENT_TYPE:
        if message.headers.get(REASON_HEADER) != DeadReason.POISON_MESSAGE.value:
            return None
        inner = tolerant_loads(bytes(message.body).decode("utf-8", "replace"))
        if not isinstance(inner, dict):
            return None
        headers, content_type = inner.get("headers"), inner.get("content-type")
        try:
            body = _json_loads(base64.b64decode(inner.get("body") or ""))
        except (ValueError, TypeError, RecursionError, binascii.Error):
            return None
    else:
        headers, content_type = message.headers, message.content_type
        try:
            body = message.decode()
        except Exception:  # kombu raises whatever its codec raises
            return None
    if content_type != CONTENT_TYPE or not isinstance(headers, dict):
        return None
    return single_event(body) if headers.get("task") == TASK_NAME else None
