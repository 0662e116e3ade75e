"""Envelopes kombu cannot make a message of are dead-lettered, not lost and not looped.

kombu reads the delivery tag and decodes the body before anyone can look at a message; either
failing used to lose the item at the BRPOP, and with reliable fetch it would stay held and come
back each time its consumer is given up for dead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tagging_worker.worker.poison import OPAQUE_CONTENT_TYPE, tolerant_loads
from tests.conftest import WorkerProcess, settled, wait_for


def _unreadable(queue: str) -> dict[str, str]:
    def envelope(*, drop: str = "", body: str | None = None, **properties: Any) -> str:
        message = json.loads(build_task_message({"call_id": "c", "tags": []}, queue=queue))
        message["properties"].update(properties)
        message["properties"].pop(drop, None)
        if body is not None:
            message["body"] = body
        return json.dumps(message)

    return {
        "no delivery tag": envelope(drop="delivery_tag"),
        "body not base64": envelope(body="abc"),
        "unknown body encoding": envelope(body_encoding="gzip"),
    }


@pytest.mark.parametrize("name", list(_unreadable("q")))
def test_an_envelope_kombu_cannot_read_becomes_an_opaque_message_with_its_raw_bytes(
    name: str,
) -> None:
    raw = _unreadable("q")[name]

    decoded = tolerant_loads(raw)

    assert decoded["content-type"] == OPAQUE_CONTENT_TYPE
    assert base64.b64decode(decoded["body"]).decode() == raw


@pytest.mark.e2e
def test_unreadable_envelopes_are_dead_lettered_once_and_leave_nothing_held(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    queue = stores.settings.queue
    unreadable = _unreadable(queue)
    for raw in unreadable.values():
        redis_client.lpush(queue, raw)
    redis_client.lpush(
        queue, build_task_message({"call_id": "call-ok", "tags": ["ok"]}, queue=queue)
    )
    start_worker()

    wait_for(settled(stores, len(unreadable) + 1), what="every message given its fate")

    records = stores.dead_letters.list(limit=10)
    assert all(isinstance(r, DeadLetter) for r in records), records
    assert [r.reason for r in records] == [DeadReason.UNDECODABLE_MESSAGE] * len(unreadable)
    assert sorted(r.event["raw_body"] for r in records) == sorted(unreadable.values())
    assert fake_api.tags_of("call-ok") == ["ok"]
    held = f"{queue}:fetch:{queue}:held:*"
    # The last event's ack follows its fate: wait for it rather than race it.
    wait_for(lambda: not [*redis_client.scan_iter(held)], what="nothing left held")
