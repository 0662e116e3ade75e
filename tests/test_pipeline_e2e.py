"""End to end: real Redis, real `tagging-worker worker` processes, the fake Alibaba Cloud API."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import TASK_NAME
from tagging_worker.produce.publish import Publisher
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tests.conftest import REDIS_URL, WorkerProcess, run_cli, wait_for
from tests.conftest import settled as _settled

pytestmark = pytest.mark.e2e


def _whole(stores: Stores, record_id: str) -> DeadLetter:
    record = stores.dead_letters.get(record_id)
    assert isinstance(record, DeadLetter), record
    return record


def _publisher(stores: Stores) -> Publisher:
    return Publisher(stores.ordering, limits=stores.settings.event_limits)


def test_events_are_applied_with_their_tags(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    _publisher(stores).publish_many(
        [
            {"call_id": "call-zh", "tags": ["有意向", "需跟进"], "version": 1},
            {"call_id": "call-json", "tags": '["a", " b ", "a"]', "version": 1},
            {"call_id": "call-clear", "tags": [], "version": 1},
        ]
    )
    start_worker()

    wait_for(_settled(stores, 3), what="three events applied")

    assert fake_api.all_tags() == {
        "call-zh": ["有意向", "需跟进"],
        "call-json": ["a", "b"],
        "call-clear": [],
    }
    assert stores.outcomes.snapshot()["applied"] == 3
    assert stores.dead_letters.count() == 0


def test_transient_failures_are_retried_then_applied(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    fake_api.add_fault("throttle", call_id="call-t", times=1, retry_after_ms=100)
    fake_api.add_fault(
        "error", call_id="call-t", times=1, code="ServiceUnavailable", http_status=503
    )
    fake_api.add_fault("close", call_id="call-t", times=1)
    _publisher(stores).publish({"call_id": "call-t", "tags": ["x"], "version": 7})
    start_worker()

    wait_for(_settled(stores, 1), what="the event applied")

    answers = [c.answer for c in fake_api.calls() if c.call_id == "call-t"]
    assert answers == ["Throttling.User", "ServiceUnavailable", "ConnectionClosed", "OK"]
    assert fake_api.tags_of("call-t") == ["x"]
    assert stores.outcomes.snapshot()["retried"] == 3
    assert stores.retries.pending() == 0


def test_permanent_failure_is_dead_lettered_after_exactly_one_call(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    fake_api.add_fault("error", call_id="call-p", code="InvalidParameter.CallId", http_status=400)
    event_id = _publisher(stores).publish({"call_id": "call-p", "tags": ["x"], "source": "crm"})
    start_worker()

    wait_for(_settled(stores, 1), what="the event dead-lettered")

    assert [c.answer for c in fake_api.calls()] == ["InvalidParameter.CallId"]
    record = _whole(stores, event_id)
    assert record.reason is DeadReason.PERMANENT_ERROR
    assert record.detail.startswith("InvalidParameter.CallId")
    assert record.source == "crm"
    assert record.event["call_id"] == "call-p"
    [attempt] = record.attempts
    assert attempt.http_status == 400 and attempt.request_id


def test_exhausted_retries_are_dead_lettered_with_every_attempt_recorded(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    fake_api.add_fault("error", call_id="call-x", code="InternalError", http_status=500)
    event_id = _publisher(stores).publish({"call_id": "call-x", "tags": ["x"], "version": 3})
    start_worker()

    wait_for(_settled(stores, 1), what="the event dead-lettered")

    record = _whole(stores, event_id)
    assert record.reason is DeadReason.RETRIES_EXHAUSTED
    assert len(record.attempts) == 4 == len(fake_api.calls())
    assert all(a.code == "InternalError" and a.http_status == 500 for a in record.attempts)
    assert len({a.request_id for a in record.attempts}) == 4
    assert [a.at for a in record.attempts] == sorted(a.at for a in record.attempts)
    assert record.normalized is not None and record.normalized["version"] == 3


def test_invalid_event_is_dead_lettered_at_once_with_a_reason_naming_the_field(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    _publisher(stores).publish({"call_id": "call-bad", "tags": ["ok", 5]}, validate=False)
    start_worker()

    wait_for(_settled(stores, 1), what="the event dead-lettered")

    [record] = stores.dead_letters.list()
    assert isinstance(record, DeadLetter)
    assert record.reason is DeadReason.INVALID_EVENT
    assert "tags[1]" in record.detail
    assert record.event["tags"] == ["ok", 5]
    assert fake_api.calls() == []


def test_replay_from_the_dead_letters_applies_the_event(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    fake_api.add_fault("error", call_id="call-r", times=1, code="InvalidParameter", http_status=400)
    event_id = _publisher(stores).publish({"call_id": "call-r", "tags": ["回访"], "version": 9})
    start_worker()
    wait_for(_settled(stores, 1), what="the event dead-lettered")

    listed = run_cli(worker_env, "dead", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [event_id]
    replayed = run_cli(worker_env, "dead", "replay", event_id)
    assert replayed.returncode == 0, replayed.stderr

    wait_for(lambda: stores.outcomes.snapshot()["applied"] == 1, what="the replay applied")
    assert fake_api.tags_of("call-r") == ["回访"]
    assert stores.dead_letters.count() == 0
    assert run_cli(worker_env, "dead", "show", event_id).returncode == 1


def test_a_wrong_secret_stops_the_calls_and_keeps_the_event_until_its_maximum_age(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The set-up is broken, not the event: no attempts are used, one probe per cool-down
    reaches the API, and only the event's maximum age ends its wait, as `expired` with the
    systemic error that kept it."""
    event_id = _publisher(stores).publish({"call_id": "call-s", "tags": ["x"]})
    max_age, cooldown = 3.0, 0.5
    start_worker(
        ACCESS_KEY_SECRET="not-the-secret",
        TAGGING_EVENT_MAX_AGE_SECONDS=str(max_age),
        TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS=str(cooldown),
    )

    wait_for(_settled(stores, 1), what="the event dead-lettered")

    assert fake_api.tags_of("call-s") is None
    refused = fake_api.counters().get("SignatureDoesNotMatch", 0)
    assert 1 <= refused <= 1 + max_age / cooldown
    record = _whole(stores, event_id)
    assert record.reason is DeadReason.EXPIRED
    assert "SignatureDoesNotMatch" in record.detail
    assert {a.code for a in record.attempts} == {"SignatureDoesNotMatch"}
    assert {(a.kind, a.charged) for a in record.attempts} == {("systemic", False)}


def test_a_message_sent_by_celery_itself_is_applied(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Producers that use a Celery client rather than our publisher are first-class."""
    producer = Celery(broker=REDIS_URL)
    producer.conf.task_serializer = "json"
    event: dict[str, Any] = {"call_id": "call-c", "tags": ["from-celery"], "version": 1}
    producer.send_task(TASK_NAME, args=[event], queue=stores.settings.queue)
    start_worker()

    wait_for(_settled(stores, 1), what="the event applied")
    assert fake_api.tags_of("call-c") == ["from-celery"]


@pytest.mark.parametrize("pool, children", [("prefork", 2), ("threads", 0)])
def test_the_pool_named_on_the_command_line_runs_and_applies_events_and_retries(
    pool: str,
    children: int,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Celery lets a configured pool override `--pool=prefork` (it cannot tell it from its
    default); the worker command must run the pool it was given."""
    fake_api.add_fault("throttle", call_id="call-0", times=1)
    _publisher(stores).publish_many(
        [{"call_id": f"call-{n}", "tags": [f"t{n}"], "version": 1} for n in range(20)]
    )
    worker = start_worker(pool=pool, concurrency=2, TAGGING_WORKER_POOL="threads")

    wait_for(_settled(stores, 20), what="twenty events applied")
    assert fake_api.all_tags() == {f"call-{n}": [f"t{n}"] for n in range(20)}
    assert len(worker.children()) == children


def test_a_burst_of_updates_to_one_call_ends_in_a_handful_of_calls_and_the_newest_tags(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    versions = list(range(1, 101))
    random.Random(5).shuffle(versions)
    _publisher(stores).publish_many(
        [{"call_id": "call-burst", "tags": [f"v{v}"], "version": v} for v in versions]
    )
    start_worker()

    wait_for(_settled(stores, 100), what="all hundred events settled")

    assert fake_api.tags_of("call-burst") == ["v100"]
    assert len(fake_api.calls()) <= 5
    counts = stores.outcomes.snapshot()
    assert counts["applied"] == len(fake_api.calls())
    assert counts["applied"] + counts["stale"] + counts["superseded"] == 100


def test_replaying_an_older_version_after_a_newer_one_applied_ends_stale(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    fake_api.add_fault("error", call_id="call-o", times=1, code="InvalidParameter", http_status=400)
    publisher = _publisher(stores)
    old = publisher.publish({"call_id": "call-o", "tags": ["old"], "version": 3})
    start_worker()
    wait_for(_settled(stores, 1), what="version 3 dead-lettered")
    publisher.publish({"call_id": "call-o", "tags": ["new"], "version": 5})
    wait_for(lambda: fake_api.tags_of("call-o") == ["new"], what="version 5 applied")

    assert run_cli(worker_env, "dead", "replay", old).returncode == 0

    wait_for(lambda: stores.ordering.fate("call-o", old) == "stale", what="the replay judged stale")
    assert fake_api.tags_of("call-o") == ["new"]
    assert [c.tags for c in fake_api.calls()] == [["old"], ["new"]]


def test_a_sigkilled_workers_in_flight_event_is_redelivered_and_applied(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    fake_api.add_fault("stall", call_id="call-k", times=1)
    _publisher(stores).publish({"call_id": "call-k", "tags": ["survivor"], "version": 1})
    doomed = start_worker(TAGGING_VISIBILITY_TIMEOUT_SECONDS="5")
    wait_for(lambda: redis_client.llen(stores.settings.queue) == 0, what="the event taken")
    time.sleep(0.5)

    doomed.kill()
    fake_api.release_stalls()
    start_worker(TAGGING_VISIBILITY_TIMEOUT_SECONDS="5")

    wait_for(_settled(stores, 1), timeout=60, what="the event redelivered and applied")
    assert stores.dead_letters.count() == 0
    assert fake_api.tags_of("call-k") == ["survivor"]
    assert stores.outcomes.snapshot()["applied"] == 1


def test_sigterm_lets_the_in_flight_event_finish_before_the_worker_exits(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    fake_api.add_fault("stall", call_id="call-w", times=1, seconds=1.5)
    _publisher(stores).publish({"call_id": "call-w", "tags": ["finished"], "version": 1})
    worker = start_worker()
    wait_for(lambda: redis_client.llen(stores.settings.queue) == 0, what="the event taken")
    time.sleep(0.3)

    worker.stop(timeout=30)

    assert worker.proc.returncode == 0
    assert fake_api.tags_of("call-w") == ["finished"]
    assert stores.outcomes.snapshot()["applied"] == 1
