"""Broken messages pushed straight into the queue end in the dead letters; the worker goes on."""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.produce.publish import Publisher
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tagging_worker.worker.poison import OPAQUE_CONTENT_TYPE, tolerant_loads
from tests.conftest import WorkerProcess, settled, wait_for


def _envelope(event: Any = None, **changes: Any) -> dict[str, Any]:
    message = json.loads(build_task_message(event or {"call_id": "c", "tags": []}, queue="q"))
    message.update(changes)
    return message


def _with_body(body: Any, **changes: Any) -> bytes:
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(_envelope(body=encoded, **changes)).encode()


def _with_task(name: str) -> bytes:
    message = _envelope()
    message["headers"]["task"] = name
    return json.dumps(message).encode()


PICKLED = json.dumps(
    _envelope(
        body=base64.b64encode(pickle.dumps(([{"call_id": "c", "tags": []}], {}, {}))).decode(),
        **{"content-type": "application/x-python-serialize", "content-encoding": "binary"},
    )
).encode()
EVENT = {"call_id": "c", "tags": []}

POISON = {
    "garbage bytes": (b"\x00\xff\xfenot json at all", "undecodable_message"),
    "json but no envelope": (b"[1, 2, 3]", "undecodable_message"),
    "pickle content type": (PICKLED, "undecodable_message"),
    "body not json": (
        json.dumps(_envelope(body=base64.b64encode(b"{nope").decode())).encode(),
        "undecodable_message",
    ),
    "unknown task": (_with_task("someone.elses_task"), "unknown_task"),
    "two positional args": (_with_body([[EVENT, EVENT], {}, {}]), "invalid_event"),
    "no positional args": (_with_body([[], {}, {}]), "invalid_event"),
    "unknown keyword": (_with_body([[EVENT], {"force": True}, {}]), "invalid_event"),
    "body not protocol 2": (_with_body({"task": "x"}), "invalid_event"),
    "huge event": (
        _with_body([[{"call_id": "c", "tags": ["x" * 2_000_000]}], {}, {}]),
        "invalid_event",
    ),
}


@pytest.mark.e2e
def test_poison_messages_are_dead_lettered_with_their_raw_body_and_the_worker_keeps_running(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    queue = stores.settings.queue
    for raw, _ in POISON.values():
        redis_client.lpush(queue, raw)
    start_worker()

    wait_for(settled(stores, len(POISON)), what="every poison message dead-lettered")
    Publisher(stores.ordering, limits=stores.settings.event_limits).publish(
        {"call_id": "call-after", "tags": ["still here"]}
    )
    wait_for(lambda: fake_api.tags_of("call-after") == ["still here"], what="a good event after")

    records = stores.dead_letters.list(limit=100)
    assert all(isinstance(r, DeadLetter) for r in records), records
    assert sorted(r.reason.value for r in records) == sorted(r for _, r in POISON.values())
    assert stores.outcomes.snapshot()["dead"] == len(POISON)
    garbage = next(r for r in records if "not json at all" in json.dumps(r.event))
    assert garbage.reason is DeadReason.UNDECODABLE_MESSAGE
    huge = next(r for r in records if isinstance(r.event, dict) and r.event.get("truncated"))
    assert huge.event["size_bytes"] > 2_000_000
    assert len(json.dumps(huge.as_dict())) < 3 * stores.settings.dead_letter_max_raw_bytes
    pickled = next(r for r in records if "python-serialize" in r.detail)
    assert pickled.event["content_type"] == "application/x-python-serialize"
    assert [c.call_id for c in fake_api.calls()] == ["call-after"]


@pytest.mark.parametrize("raw", [b"\x00\xffgarbage", b"[1, 2, 3]", b'{"no": "properties"}', b"42"])
def test_queue_items_that_are_not_envelopes_become_opaque_messages(raw: bytes) -> None:
    decoded = tolerant_loads(raw.decode("utf-8", "surrogateescape"))

    assert decoded["content-type"] == OPAQUE_CONTENT_TYPE
    assert base64.b64decode(decoded["body"]) == raw


def test_envelopes_and_kombus_unacked_triples_pass_through_unchanged() -> None:
    envelope = _envelope()
    triple = [envelope, "", "q"]

    assert tolerant_loads(json.dumps(envelope)) == envelope
    assert tolerant_loads(json.dumps(triple)) == triple
