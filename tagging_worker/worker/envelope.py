"""What a queue item must be before Celery may touch it (pure, no I/O).

Celery and kombu read a task message's envelope, headers and body with code that assumes a
well-formed producer: a header of the wrong type, a date that does not parse or a value nested
ten thousand levels deep raises where nothing catches it, and the worker exits. So every item
is checked here first, iteratively and within fixed bounds, and one that fails becomes a dead
letter whose reason names the problem instead of an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery.utils.time import maybe_iso8601

from tagging_worker import plain_json
from tagging_worker.reasons import DeadReason

MAX_ITEM_BYTES = 32 * 1024 * 1024
"""A queue item larger than this is not parsed at all (json would need several times as much
memory); the largest event the worker accepts is far smaller."""
MAX_DEPTH = 32
"""How deep a message may nest, envelope and body alike. A task message nests 4 levels and an
event a few more; anything recursive in Celery, kombu or json stays far from Python's limit."""
MAX_ID_LENGTH = 255
_OPTIONAL_TEXT_HEADERS = (
    "root_id",
    "parent_id",
    "group",
    "shadow",
    "origin",
    "argsrepr",
    "kwargsrepr",
    "lang",
)
_OPTIONAL_INT_HEADERS = ("retries", "group_index", "replaced_task_nesting")
_WORKFLOW = ("callbacks", "errbacks", "chain", "chord")


@dataclass(frozen=True)
class Problem:
    """Why a message cannot run: the dead letter's reason and detail."""

    reason: DeadReason
    detail: str


def header_problem(headers: Any, *, now: datetime) -> Problem | None:
    """Headers Celery can build a request from, or why not."""
    if not isinstance(headers, Mapping):
        return _undecodable("not a Celery protocol 2 task message (headers are not an object)")
    task = headers.get("task")
    if task is None:
        return _undecodable("not a Celery protocol 2 task message (no task header)")
    if not isinstance(task, str):
        return _undecodable(f"the task header is {_kind(task)}, not a string")
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_LENGTH:
        return _undecodable(f"the id header must be 1 to {MAX_ID_LENGTH} characters of text")
    for name in _OPTIONAL_TEXT_HEADERS:
        if not isinstance(headers.get(name), (str, type(None))):
            return _undecodable(f"the {name} header is {_kind(headers[name])}, not a string")
    for name in _OPTIONAL_INT_HEADERS:
        value = headers.get(name)
        if value is not None and (not _is_int(value) or value < 0):
            return _undecodable(f"the {name} header must be a non-negative integer")
    if not isinstance(headers.get("ignore_result"), (bool, type(None))):
        return _undecodable("the ignore_result header must be true or false")
    if not _time_limits(headers.get("timelimit")):
        return _undecodable("the timelimit header must be [soft, hard] in seconds or nulls")
    stamped, stamps = headers.get("stamped_headers"), headers.get("stamps")
    if stamped is not None and not (
        isinstance(stamped, list) and all(isinstance(name, str) for name in stamped)
    ):
        return _undecodable("the stamped_headers header must be a list of names")
    if not isinstance(stamps, (Mapping, type(None))):
        return _undecodable("the stamps header must be an object")
    times = {name: _instant(headers.get(name)) for name in ("eta", "expires")}
    for name, when in times.items():
        if headers.get(name) not in (None, "") and when is None:
            value = headers[name]
            return _undecodable(f"the {name} header is not an ISO 8601 time: {str(value)[:60]!r}")
    expires = times["expires"]
    if expires is not None and expires <= now:
        detail = f"it expired at {expires.isoformat()} (its expires header) before a worker took it"
        return Problem(DeadReason.EXPIRED, detail)
    return None


def body_problem(body: Any, *, max_eta_seconds: float, eta: Any, now: datetime) -> Problem | None:
    """A decoded protocol 2 body `[args, kwargs, embed]` this worker runs, or why not."""
    if (problem := plain_json.problem(body, max_depth=MAX_DEPTH)) is not None:
        return Problem(DeadReason.INVALID_EVENT, f"in the message body, {problem}")
    if not _is_protocol2(body):
        return Problem(
            DeadReason.INVALID_EVENT, "body is not the protocol 2 shape [args, kwargs, embed]"
        )
    workflow = [name for name in _WORKFLOW if (body[2] or {}).get(name)]
    if workflow:
        return Problem(
            DeadReason.UNSUPPORTED_OPTION,
            f"{', '.join(workflow)} given: this task starts no other tasks "
            "(links, chains and chords are not supported)",
        )
    when = _instant(eta)
    if when is not None and (when - now).total_seconds() > max_eta_seconds:
        return Problem(
            DeadReason.UNSUPPORTED_OPTION,
            f"eta {when.isoformat()} is more than {max_eta_seconds:.0f} s ahead "
            "(TAGGING_EVENT_MAX_AGE_SECONDS): a worker would hold it all that time",
        )
    return None


def single_event(body: Any) -> tuple[Mapping[str, Any], Any] | None:
    """(event, the retry state it carries) when a decoded body is plain bounded JSON in the
    protocol 2 shape holding one event, as this task takes it; None otherwise."""
    if not _is_protocol2(body) or plain_json.problem(body, max_depth=MAX_DEPTH) is not None:
        return None
    args, kwargs = body[0], body[1]
    if len(args) != 1 or not isinstance(args[0], Mapping):
        return None
    return args[0], kwargs.get("retry_state")


def _is_protocol2(body: Any) -> bool:
    """`[args, kwargs, embed]`, each of its type."""
    return (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], Mapping)
        and isinstance(body[2], (Mapping, type(None)))
    )


def _undecodable(detail: str) -> Problem:
    return Problem(DeadReason.UNDECODABLE_MESSAGE, detail)


def _instant(value: Any) -> datetime | None:
    """The time an eta or expires header names, as Celery will read it, or None."""
    if not isinstance(value, str):
        return None
    try:
        when = maybe_iso8601(value)
    except (ValueError, OverflowError):
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _time_limits(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list) or len(value) != 2:
        return False
    return all(v is None or (_is_number(v) and v >= 0) for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return type(value).__name__
