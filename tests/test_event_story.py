"""The story of one event, told by the task itself run in this process (`InlineWorker`)
against real Redis and the fake API: each path an event can take, without a worker process."""

from __future__ import annotations

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.produce.publish import Publisher
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.worker.inline import InlineWorker

CALL = "call-story"


def _publisher(inline: InlineWorker) -> Publisher:
    settings = inline.services.settings
    return Publisher(inline.services.stores.ordering, limits=settings.event_limits)


def _event(version: int, *tags: str, event_id: str | None = None) -> dict:
    return {
        "call_id": CALL,
        "version": version,
        "tags": list(tags),
        "event_id": event_id or f"ev-{version}",
    }


def test_an_event_is_applied_once_and_counted(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    _publisher(inline).publish(_event(1, "vip"))

    assert inline.drain() == ["applied"]
    assert fake_api.tags_of(CALL) == ["vip"]
    counts = inline.services.stores.outcomes.snapshot()
    assert (counts["applied"], counts["dead"]) == (1, 0)


def test_a_transient_failure_waits_in_the_schedule_then_applies(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    fake_api.add_fault("error", times=1)
    _publisher(inline).publish(_event(1, "vip"))

    assert inline.drain() == ["retried"]
    assert fake_api.tags_of(CALL) is None
    assert inline.services.stores.retries.pending() == 1
    assert inline.release_retries() == 1
    assert inline.drain() == ["applied"]
    assert fake_api.tags_of(CALL) == ["vip"]
    assert inline.services.stores.dead_letters.count() == 0


def test_a_permanent_error_dead_letters_the_event_with_its_attempt(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    fake_api.add_fault("error", code="InvalidParameter.Tags", http_status=400, times=1)
    _publisher(inline).publish(_event(1, "vip"))

    assert inline.drain() == ["dead"]
    record = inline.services.stores.dead_letters.get("ev-1")
    assert isinstance(record, DeadLetter)
    assert record.reason is DeadReason.PERMANENT_ERROR
    assert [a.code for a in record.attempts] == ["InvalidParameter.Tags"]
    assert inline.services.stores.retries.pending() == 0


def test_failing_every_attempt_dead_letters_as_retries_exhausted(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    fake_api.add_fault("error")
    _publisher(inline).publish(_event(1, "vip"))
    outcomes = inline.drain()
    while inline.release_retries():
        outcomes += inline.drain()

    max_attempts = inline.services.settings.retry_max_attempts
    assert outcomes == ["retried"] * (max_attempts - 1) + ["dead"]
    record = inline.services.stores.dead_letters.get("ev-1")
    assert isinstance(record, DeadLetter)
    assert record.reason is DeadReason.RETRIES_EXHAUSTED
    assert len(record.attempts) == max_attempts


def test_an_older_event_is_parked_behind_a_newer_one_and_superseded(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    _publisher(inline).publish_many([_event(1, "old"), _event(2, "new")])

    assert inline.drain() == ["parked", "applied"]
    assert fake_api.tags_of(CALL) == ["new"]
    assert len(fake_api.calls()) == 1
    counts = inline.services.stores.outcomes.snapshot()
    assert (counts["applied"], counts["superseded"]) == (1, 1)


def test_when_the_newer_event_dies_the_parked_older_one_is_applied(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    fake_api.add_fault(
        "error", code="InvalidParameter.Tags", http_status=400, call_id=CALL, times=1
    )
    _publisher(inline).publish_many([_event(1, "old"), _event(2, "bad")])

    assert inline.drain() == ["parked", "dead", "applied"]
    assert fake_api.tags_of(CALL) == ["old"]
    counts = inline.services.stores.outcomes.snapshot()
    assert (counts["applied"], counts["dead"], counts["superseded"]) == (1, 1, 0)


def test_a_redelivered_message_of_a_finished_event_is_a_duplicate(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    _publisher(inline).publish(_event(1, "vip"))
    queue, client = inline.services.settings.queue, inline.services.stores.redis
    copy = client.lindex(queue, 0)
    assert inline.drain() == ["applied"]

    client.lpush(queue, copy)
    assert inline.drain() == ["duplicate"]
    assert len(fake_api.calls()) == 1
    assert inline.services.stores.outcomes.snapshot()["applied"] == 1


def test_an_event_without_a_version_takes_its_place_when_first_received(
    inline: InlineWorker, fake_api: FakeAlibabaApi
) -> None:
    """A producer that sends no version is ordered by receipt, so an event the Python
    publisher versioned earlier (at publish time) is older, whatever the queue order."""
    queue, client = inline.services.settings.queue, inline.services.stores.redis
    _publisher(inline).publish({"call_id": CALL, "tags": ["published"]})
    versionless = {"call_id": CALL, "tags": ["received"], "event_id": "no-version"}
    client.rpush(queue, build_task_message(versionless, queue=queue))

    assert inline.drain() == ["applied", "stale"]
    assert fake_api.tags_of(CALL) == ["received"]
