"""Redis restarted or crashed under a worker with tasks in flight, or refusing writes: the
worker carries on.

A worker that exits on a Redis restart stays down under the shipped systemd units
(`Restart=on-failure`) when it exits 0, and is a gap in service when it exits at all; here
the worker process must still be running once every event has its fate, and every fate must
be right.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.outcomes import FATES
from tagging_worker.state.stores import Stores
from tests.conftest import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    OwnRedis,
    WorkerProcess,
    wait_for,
    worker_env_for,
)

pytestmark = pytest.mark.e2e

EVENTS = 80


@pytest.fixture
def slow_api() -> Iterator[FakeAlibabaApi]:
    """Each call takes 150 ms, so a worker always has tasks in flight when Redis goes."""
    api = FakeAlibabaApi(credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, latency_ms=150).start()
    yield api
    api.stop()


def _settled(stores: Stores) -> int:
    try:
        counts = stores.outcomes.snapshot()
    except redis.RedisError:
        return 0
    return sum(counts[fate.value] for fate in FATES)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
@pytest.mark.parametrize("fault", ["restart", "crash"])
def test_a_worker_outlives_redis_going_away_with_tasks_in_flight(
    fault: str,
    pool: str,
    own_redis: OwnRedis,
    slow_api: FakeAlibabaApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = worker_env_for(own_redis.url, "trouble", slow_api.endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stores = Stores.connect(load_settings())
    worker = WorkerProcess(
        env, tmp_path / "worker.log", pool=pool, concurrency=8 if pool == "threads" else 4
    )
    try:
        Publisher.from_settings(stores.settings).publish_many(
            [{"call_id": f"call-{i}", "tags": [f"t{i}"], "version": 1} for i in range(EVENTS)]
        )
        wait_for(lambda: _settled(stores) >= 8, what="the worker under way")

        getattr(own_redis, fault)()

        wait_for(lambda: _settled(stores) >= EVENTS, timeout=120, what="every event settled")
        assert worker.proc.poll() is None, worker.log()[-4000:]
        assert stores.outcomes.snapshot()["applied"] == EVENTS
        assert all(slow_api.tags_of(f"call-{i}") == [f"t{i}"] for i in range(EVENTS))
    finally:
        worker.stop()
