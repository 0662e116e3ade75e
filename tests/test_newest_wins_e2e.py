"""Newest wins under the faults that broke it: late applies, duplicates of held-back events,
versions that tie, and limits that differ between a producer and the worker.

Real workers, real Redis, the fake API; each test is the reproduction from the issue that
found the fault.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.ops.status import gather
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.stores import Stores
from tests.conftest import WorkerProcess, wait_for
from tests.conftest import settled as _settled

pytestmark = pytest.mark.e2e


def _publisher(stores: Stores) -> Publisher:
    return Publisher(stores.ordering, limits=stores.settings.event_limits)


def test_an_older_write_the_api_applies_after_the_client_gave_up_is_repaired(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    """v1 times out at the client (1 s) and the API applies it 4 s after receiving it; v2,
    published 1.5 s after v1, is applied at once. The late v1 lands on top of v2, and once
    nothing can land any more the worker writes v2's tags again."""
    fake_api.add_fault("late_apply", call_id="call-late", times=1, seconds=4, answer="hang")
    start_worker(
        TAGGING_API_READ_TIMEOUT_MS="1000",
        TAGGING_API_CONNECT_TIMEOUT_MS="500",
        TAGGING_API_RATE_MAX_WAIT_SECONDS="0.1",
        TAGGING_SETTLE_SECONDS="5",
    )
    publisher = _publisher(stores)
    old = publisher.publish({"call_id": "call-late", "tags": ["old"], "version": 1})
    time.sleep(1.5)
    new = publisher.publish({"call_id": "call-late", "tags": ["new"], "version": 2})

    wait_for(
        lambda: any(c.answer == "OK-LATE" for c in fake_api.calls()),
        timeout=20,
        what="the late write of v1 to land",
    )
    wait_for(
        lambda: stores.outcomes.snapshot()["repaired"] >= 1,
        timeout=40,
        what="the call to be repaired",
    )

    assert fake_api.tags_of("call-late") == ["new"]
    answers = [(c.tags, c.answer) for c in fake_api.calls()]
    late = answers.index((["old"], "OK-LATE"))
    assert (["new"], "OK") in answers[:late] and answers[-1] == (["new"], "OK")
    assert stores.ordering.fate("call-late", new) == "applied"
    old_fate = stores.ordering.fate("call-late", old)
    assert old_fate in ("applied", "superseded", "stale")  # retries race v2


def test_a_duplicate_of_a_held_back_event_never_costs_the_older_event_its_turn(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    """v2, v3, v3 again (the producer retried its publish), v5; the API refuses the first two
    requests to the call on their merits: v5 and v3 are dead-lettered and v2 is applied."""
    publisher = _publisher(stores)
    for version, event_id in ((2, "e2"), (3, "e3"), (3, "e3"), (5, "e5")):
        publisher.publish(
            {
                "call_id": "call-dup",
                "tags": [f"v{version}"],
                "version": version,
                "event_id": event_id,
            }
        )
    fake_api.add_fault(
        "error", call_id="call-dup", times=2, code="InvalidParameter.Tags", http_status=400
    )
    start_worker(concurrency=1)

    wait_for(_settled(stores, 3), what="three events settled")
    time.sleep(0.5)  # a lost event would not show here; an extra fate would

    assert fake_api.tags_of("call-dup") == ["v2"]
    fates = [stores.ordering.fate("call-dup", e) for e in ("e2", "e3", "e5")]
    assert fates == ["applied", "dead", "dead"]
    counts = stores.outcomes.snapshot()
    assert (counts["applied"], counts["dead"], counts["superseded"]) == (1, 2, 0)
    assert sorted(r.id for r in stores.dead_letters.list()) == ["e3", "e5"]


def test_events_published_in_one_batch_without_versions_keep_their_order(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    _publisher(stores).publish_many(
        [{"call_id": f"call-{c}", "tags": [f"t{n}"]} for c in range(20) for n in range(5)]
    )
    start_worker(concurrency=8)

    wait_for(_settled(stores, 100), what="every event settled")

    assert fake_api.all_tags() == {f"call-{c}": ["t4"] for c in range(20)}


def test_an_event_the_workers_limits_refuse_is_dead_lettered_under_its_own_id_once(
    stores: Stores, fake_api: FakeAlibabaApi, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The producer allows two tags, the worker one: the event dies once, under its event id,
    and its registration goes with it, so an older event it held back is applied."""
    publisher = _publisher(stores)
    publisher.publish({"call_id": "call-lim", "tags": ["a"], "version": 1, "event_id": "old"})
    publisher.publish(
        {"call_id": "call-lim", "tags": ["a", "b"], "version": 2, "event_id": "too-many"}
    )
    start_worker(TAGGING_MAX_TAGS="1")

    wait_for(_settled(stores, 2), what="both events settled")
    # No copy of either is left to run again: not queued, held by the worker or scheduled.
    wait_for(lambda: gather(stores)["unfinished_events"] == 0, what="both messages acked")

    assert [r.id for r in stores.dead_letters.list()] == ["too-many"]
    assert stores.outcomes.snapshot()["dead"] == 1
    assert fake_api.tags_of("call-lim") == ["a"]
    assert stores.redis.zcard(stores.keys.pending("call-lim")) == 0
