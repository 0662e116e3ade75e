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
from typing import Any

TASK_NAME = "tagging_worker.update_call_tags"
CONTENT_TYPE = "application/json"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def build_task_message(
    event: Any,
    *,
    queue: str,
    task_id: str | None = None,
    retry_state: dict[str, Any] | None = None,
) -> str:
    """Serialize one task message; `retry_state` rides in kwargs so a retry is self-contained."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = {"retry_state": retry_state} if retry_state else {}
    body = [[event], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    retries = len(retry_state.get("attempts", ())) if retry_state else 0
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
            "argsrepr": _argsrepr(event),
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
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


def _argsrepr(event: Any) -> str:
    """A short readable form for Flower and logs; never the whole event."""
    if isinstance(event, dict):
        return repr({k: event.get(k) for k in ("call_id", "version", "event_id") if k in event})
    return "<event>"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
