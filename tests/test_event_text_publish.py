"""The Python publish API refuses text that is not valid Unicode, and values that are not JSON,
with an InvalidEvent naming the field, before anything reaches the queue."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from tagging_worker.errors import InvalidEvent
from tagging_worker.produce.publish import Publisher, publish_tag_update
from tagging_worker.state.stores import Stores

LONE = "contains a lone surrogate (not valid Unicode text)"


def _queued(stores: Stores, client: redis.Redis) -> int:
    return int(client.llen(stores.settings.queue))


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"call_id": "call-\ud800", "tags": []}, f"call_id {LONE}"),
        ({"call_id": "c", "tags": ["ok", "\udfff"]}, f"tags[1] {LONE}"),
        ({"call_id": "c", "tags": '["\\ud800"]'}, f"tags[0] {LONE}"),
        ({"call_id": "c", "tags": [], "event_id": "e\udc80"}, f"event_id {LONE}"),
        ({"call_id": "c", "tags": [], "source": "\ud800"}, f"source {LONE}"),
        ({"call_id": "c", "tags": [], "crm": {"note": "\ud800"}}, f"'crm.note' {LONE}"),
        ({"call_id": "c", "tags": [], "crm": {1, 2}}, "extra field 'crm' is set, not a JSON"),
    ],
    ids=["call_id", "tag", "tags JSON", "event_id", "source", "extra", "set"],
)
def test_publish_refuses_an_event_that_cannot_be_queued_naming_the_field(
    stores: Stores, redis_client: redis.Redis, event: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(reason)):
        Publisher.from_settings(stores.settings).publish(event)
    assert _queued(stores, redis_client) == 0


def test_publish_many_refuses_the_whole_batch_when_one_event_holds_a_lone_surrogate(
    stores: Stores, redis_client: redis.Redis
) -> None:
    good = {"call_id": "call-1", "tags": ["a"]}
    bad = {"call_id": "call-2", "tags": ["a"], "crm": ["ok", {"x": "\ud800"}]}

    with pytest.raises(InvalidEvent, match=re.escape(f"extra field 'crm[1].x' {LONE}")):
        Publisher.from_settings(stores.settings).publish_many([good, bad])
    assert _queued(stores, redis_client) == 0


def test_publish_many_refuses_an_event_that_is_not_an_object(
    stores: Stores, redis_client: redis.Redis
) -> None:
    events: list[Any] = [{"call_id": "call-1", "tags": []}, 5]

    with pytest.raises(InvalidEvent, match="event must be a JSON object, got int"):
        Publisher.from_settings(stores.settings).publish_many(events)
    assert _queued(stores, redis_client) == 0


def test_publish_tag_update_refuses_a_lone_surrogate_in_a_tag(
    stores: Stores, redis_client: redis.Redis
) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(f"tags[0] {LONE}")):
        publish_tag_update("call-1", ["\udfff"], settings=stores.settings)
    assert _queued(stores, redis_client) == 0


def test_publish_tag_update_names_tags_that_are_not_a_list(stores: Stores) -> None:
    with pytest.raises(InvalidEvent, match="tags must be a list of strings, got int"):
        publish_tag_update("call-1", 5, settings=stores.settings)  # type: ignore[arg-type]


def test_even_an_unvalidated_event_is_refused_when_it_cannot_be_encoded(
    stores: Stores, redis_client: redis.Redis
) -> None:
    event = {"call_id": "call-1", "tags": ["ok", 5], "note": "\ud800"}

    with pytest.raises(InvalidEvent, match="cannot be queued even unvalidated"):
        Publisher.from_settings(stores.settings).publish(event, validate=False)
    assert _queued(stores, redis_client) == 0
