"""What workers answer over the broker: `status` lists its own deployment's workers only, and
`celery inspect scheduled` still lists a delayed retry once the worker that deferred it is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from celery import Celery

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.connection import broker_transport_options
from tagging_worker.state.keys import Keys
from tagging_worker.state.stores import Stores
from tests.conftest import WorkerProcess, run_cli, wait_for

pytestmark = pytest.mark.e2e


def _status_workers(env: dict[str, str]) -> list[dict[str, object]]:
    shown = run_cli(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["workers"]


def test_status_lists_its_own_workers_not_a_paused_worker_of_another_queue(
    stores: Stores,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    namespace: str,
) -> None:
    other = f"{namespace}-other"
    # The other deployment's circuit is open for an hour: its worker serves no queue at all,
    # which is all a paused worker of ours shows to Celery's own inspection.
    stores.redis.hset(
        Keys(other).circuit,
        mapping={
            "state": "open",
            "until": int((time.time() + 3600) * 1000),
            "kind": "systemic",
            "code": "SignatureDoesNotMatch",
            "message": "elsewhere",
        },
    )
    try:
        start_worker(TAGGING_QUEUE=other, TAGGING_KEY_PREFIX=other)
        start_worker()
        other_env = {**worker_env, "TAGGING_QUEUE": other, "TAGGING_KEY_PREFIX": other}
        wait_for(
            lambda: [w["consuming"] for w in _status_workers(other_env)] == [False],
            what="the other deployment's worker paused",
        )

        ours = _status_workers(worker_env)

        assert [w["consuming"] for w in ours] == [True], ours
    finally:
        for key in stores.redis.scan_iter(f"{other}*"):
            stores.redis.delete(key)


def test_a_delayed_retry_is_listed_after_the_worker_that_deferred_it_stopped(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # The API's retry-after decides the delay (backoff's full jitter could make it short).
    fake_api.add_fault(
        "error", code="ServiceUnavailable", http_status=503, times=1, retry_after_ms=600_000
    )
    first = start_worker()
    Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": "call-orphan-retry", "tags": ["x"], "version": 1}]
    )
    wait_for(lambda: stores.retries.pending() == 1, what="the retry scheduled")
    first.stop()
    start_worker()

    inspect = Celery(
        broker=stores.settings.broker_url,
        broker_transport_options=broker_transport_options(stores.settings),
    ).control.inspect(timeout=2.0)

    def listed() -> list[str]:
        return [
            entry["request"]["id"]
            for entries in (inspect.scheduled() or {}).values()
            for entry in entries
            if "call-orphan-retry" in entry["request"]["args"]
        ]

    assert len(wait_for(listed, what="the retry listed by the new worker")) == 1
