"""The Celery (protocol 2) message for one event, as kombu's Redis transport stores it.

Publishing, scheduled retries and dead-letter replays all put messages on the queue from
Redis scripts (so that moving a message is atomic); they share this one builder, which is
also the reference for producers written in other languages.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

TASK_NAME = "tagging_worker.update_call_tags"
CONTENT_TYPE = "application/json"
ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
"""The `origin` header of the messages this process builds. Set at import, so a worker's
prefork children name their main process, whose consumer ids start with it too: `celery
inspect scheduled` can tell which worker deferred a retry and whether it is alive
(`worker/inspection.py`)."""


def build_task_message(
    event: Any,
    *,
    queue: str,
    task_id: str | None = None,
    retry_state: dict[str, Any] | None = None,
) -> str:
    """Serialize one task message; `retry_state` rides in kwargs so a retry is self-contained."""
    return _envelope(
        [event],
        {"retry_state": retry_state} if retry_state else {},
        queue=queue,
        task_id=task_id,
        retries=int(retry_state.get("attempts_made", 0)) if retry_state else 0,
        argsrepr=_argsrepr(event),
    )


def build_settle_message(call_id: str, *, queue: str) -> str:
    """The task message that checks whether a call needs a repair (`settle=call_id`)."""
    return _envelope(
        [], {"settle": call_id}, queue=queue, argsrepr="()", kwargsrepr=repr({"settle": call_id})
    )


@dataclass(frozen=True)
class TaskMessage:
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]


def read_task_message(raw: str | bytes) -> TaskMessage:
    """What a message made by the builders above carries. Not a check: messages anyone else
    wrote are checked by the worker (`worker/envelope.py`) before they run."""
    message = json.loads(raw)
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return TaskMessage(message["headers"]["id"], args, kwargs)


def _envelope(
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    queue: str,
    task_id: str | None = None,
    retries: int = 0,
    argsrepr: str,
    kwargsrepr: str = "{}",
) -> str:
    task_id = task_id or str(uuid.uuid4())
    body = [args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    message = {
        "body": base64.b64encode(_dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": CONTENT_TYPE,
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": retries,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": ORIGIN,
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return _dumps(message)


SHOWN_TAGS = 5
"""How many of an event's tags its short form shows (each cut at `SHOWN_TAG_LENGTH`)."""
SHOWN_TAG_LENGTH = 32


def _argsrepr(event: Any) -> str:
    """A short readable form for Flower and logs, bounded whatever the event: the call, its
    version and id, and the first tags (an empty list, shown, is an event that clears)."""
    if not isinstance(event, dict):
        return "<event>"
    shown: dict[str, Any] = {
        k: event.get(k) for k in ("call_id", "version", "event_id") if k in event
    }
    tags = event.get("tags")
    if isinstance(tags, list):
        listed = [str(tag)[:SHOWN_TAG_LENGTH] for tag in tags[:SHOWN_TAGS]]
        more = len(tags) - SHOWN_TAGS
        shown["tags"] = listed + ([f"... {more} more"] if more > 0 else [])
    elif tags is not None:
        shown["tags"] = str(tags)[: SHOWN_TAGS * SHOWN_TAG_LENGTH]
    return repr(shown)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
