"""What a real worker writes to its log: one INFO line per event, and a few lines, not one per
turn of a loop, while Redis is away."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.stores import Stores
from tests.conftest import OwnRedis, WorkerProcess, settled, wait_for

pytestmark = pytest.mark.e2e

N = 6
TASK_LINE = "Task tagging_worker.update_call_tags["


def _process_events(stores: Stores, worker: WorkerProcess) -> list[dict[str, Any]]:
    wait_for(lambda: _ready(worker), what="the worker ready")
    Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": f"call-log-{i}", "tags": ["x"], "version": 1} for i in range(N)]
    )
    wait_for(settled(stores, N), what=f"{N} events settled")
    worker.stop()
    return worker.records()


def _ready(worker: WorkerProcess) -> bool:
    return any(r["message"].endswith(" ready.") for r in worker.records())


def _task_lines(records: list[dict[str, Any]], ending: str) -> list[str]:
    return [
        r["level"] for r in records if r["message"].startswith(TASK_LINE) and ending in r["message"]
    ]


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_at_info_an_event_is_one_line_its_outcome_and_not_celerys_task_lines(
    pool: str,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    records = _process_events(stores, start_worker(pool, 2))

    ready = next(i for i, r in enumerate(records) if r["message"].endswith(" ready."))
    after_ready = [r for r in records[ready + 1 :] if r["level"] == "info"]
    assert [r.get("outcome") for r in after_ready] == ["applied"] * N
    assert not [r for r in records if r["message"].startswith(TASK_LINE)]


def test_at_debug_celerys_received_and_succeeded_lines_are_there_as_debug(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    records = _process_events(stores, start_worker(TAGGING_LOG_LEVEL="DEBUG"))

    assert _task_lines(records, "] received") == ["debug"] * N
    assert _task_lines(records, "] succeeded in ") == ["debug"] * N
    assert [r["outcome"] for r in records if "outcome" in r] == ["applied"] * N


def test_a_redis_outage_is_told_once_per_loop_and_its_end_once(
    own_redis: OwnRedis,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker(
        TAGGING_BROKER_URL=own_redis.url,
        TAGGING_SCHEDULER_INTERVAL_SECONDS="0.05",
    )
    wait_for(lambda: _ready(worker), what="the worker ready")

    before = len(worker.records())
    own_redis.stop()
    time.sleep(4)  # housekeeping turns about 80 times while Redis is away
    during = [r["message"] for r in worker.records()[before:]]
    told = [m for m in during if m.startswith("housekeeping: Redis")]
    assert len(told) == 1, f"{len(told)} lines in 4 s"
    # Besides: Celery's consumer saying it lost the broker and retrying at 2 s, then 4 s.
    assert len(during) <= 10, during
    own_redis.start()
    wait_for(
        lambda: any(r["message"].startswith("housekeeping works again") for r in worker.records()),
        what="housekeeping to say it works again",
    )
    worker.stop()

    records = worker.records()
    housekeeping = [r["message"] for r in records if r["message"].startswith("housekeeping")]
    assert len(housekeeping) == 2, housekeeping
    assert housekeeping[0].startswith("housekeeping: Redis unavailable (")
    assert housekeeping[1].startswith("housekeeping works again after ")
