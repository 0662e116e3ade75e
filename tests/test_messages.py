"""The task message's short form: what Flower and Celery's log lines show of an event."""

from __future__ import annotations

import ast
import json

from tagging_worker.messages import build_task_message


def _argsrepr(event: object) -> str:
    return json.loads(build_task_message(event, queue="q"))["headers"]["argsrepr"]


def test_the_short_form_shows_the_tags_so_a_clearing_event_is_told_apart() -> None:
    shown = ast.literal_eval(_argsrepr({"call_id": "c", "version": 1, "tags": ["vip", "新"]}))
    assert shown == {"call_id": "c", "version": 1, "tags": ["vip", "新"]}
    assert ast.literal_eval(_argsrepr({"call_id": "c", "tags": []}))["tags"] == []


def test_the_short_form_is_bounded_whatever_the_tags() -> None:
    event = {"call_id": "c", "tags": ["x" * 10_000] * 1_000}
    shown = ast.literal_eval(_argsrepr(event))
    assert shown["tags"][:5] == ["x" * 32] * 5 and shown["tags"][5] == "... 995 more"
    assert len(_argsrepr({"call_id": "c", "tags": "y" * 100_000})) < 250
