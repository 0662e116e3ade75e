"""Redis restarted, crashed or failed over under a worker with tasks in flight: the worker
carries on.

A worker that exits on a Redis restart stays down under the shipped systemd units
(`Restart=on-failure`) when it exits 0, and is a gap in service when it exits at all; here
the worker process must still be running once every event has its fate, and every fate must
be right.
"""

from __future__ import annotations

import subprocess
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
    free_port,
    wait_for,
    worker_env_for,
)

pytestmark = pytest.mark.e2e

EVENTS = 80
FAILOVER_EVENTS = 400
"""Enough that the promotion (a second or two) lands while most are still to run."""


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


@pytest.fixture
def failover_pair(own_redis: OwnRedis, tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """The test's Redis as master `tw-master`, a replica of it, and a Sentinel watching both;
    yields the broker URL and a client of the Sentinel."""
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    replica_port = free_port()
    replica = subprocess.Popen(
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", str(replica_port)),
            *("--replicaof", "127.0.0.1", str(own_redis.port)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--dir", str(replica_dir), "--logfile", str(replica_dir / "redis.log")),
        ]
    )
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor tw-master 127.0.0.1 {own_redis.port} 1\n"
        "sentinel down-after-milliseconds tw-master 2000\n"
        "sentinel failover-timeout tw-master 10000\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(config), "--sentinel", "--logfile", str(tmp_path / "sentinel.log")]
    )
    probe = redis.Redis(port=port, decode_responses=True)

    def knows_the_replica() -> bool:
        try:
            return bool(probe.execute_command("SENTINEL", "replicas", "tw-master"))
        except redis.RedisError:
            return False

    wait_for(knows_the_replica, timeout=30, what="the sentinel to find the replica")
    yield f"sentinel://127.0.0.1:{port}/0", probe
    for proc in (sentinel, replica):
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_follows_a_sentinel_failover_with_tasks_in_flight(
    pool: str,
    failover_pair: tuple[str, redis.Redis],
    slow_api: FakeAlibabaApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, sentinel = failover_pair
    env = {
        **worker_env_for(url, "failover", slow_api.endpoint),
        "TAGGING_REDIS_SENTINEL_MASTER": "tw-master",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stores = Stores.connect(load_settings())
    worker = WorkerProcess(
        env, tmp_path / "worker.log", pool=pool, concurrency=8 if pool == "threads" else 4
    )
    try:
        master_before = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "tw-master")
        Publisher.from_settings(stores.settings).publish_many(
            [
                {"call_id": f"call-{i}", "tags": [f"t{i}"], "version": 1}
                for i in range(FAILOVER_EVENTS)
            ]
        )
        wait_for(lambda: _settled(stores) >= 8, what="the worker under way")

        sentinel.execute_command("SENTINEL", "FAILOVER", "tw-master")

        wait_for(
            lambda: (
                sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "tw-master")
                != master_before
            ),
            what="the replica promoted",
        )
        assert _settled(stores) < FAILOVER_EVENTS / 2, "the failover came after most events"
        wait_for(
            lambda: _settled(stores) >= FAILOVER_EVENTS, timeout=120, what="every event settled"
        )
        assert worker.proc.poll() is None, worker.log()[-4000:]
        assert stores.outcomes.snapshot()["applied"] == FAILOVER_EVENTS
        assert all(slow_api.tags_of(f"call-{i}") == [f"t{i}"] for i in range(FAILOVER_EVENTS))
    finally:
        worker.stop()
