"""A Sentinel failover under load: no event a publisher was told is queued is lost, every one
ends applied with its tags, and the worker keeps running.

A real Sentinel, the test's Redis as master and a replica of it. `SENTINEL FAILOVER` promotes
the replica while a worker (threads, then prefork) runs events and a producer keeps
publishing. Until Sentinel turns the old master into a replica it still takes writes, and
those are lost when it resyncs: the publisher's WAIT for a replica turns that loss into an
error it publishes again after; the worker's own lost writes (fates, acks) come back as the
messages still held on the new master.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.stores import Stores
from tests.conftest import (
    OwnRedis,
    WorkerProcess,
    free_port,
    wait_for,
    worker_env_for,
)

pytestmark = pytest.mark.e2e

MASTER = "tw-master"
BATCH = 10


@pytest.fixture
def sentinel(own_redis: OwnRedis, tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """The test's Redis as master, a replica of it, and a Sentinel watching both; yields the
    broker URL and a client of the Sentinel."""
    directory = tmp_path / "replica"
    directory.mkdir()
    replica = subprocess.Popen(
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", str(free_port())),
            *("--replicaof", "127.0.0.1", str(own_redis.port)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
        ]
    )
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {own_redis.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(config), "--sentinel", "--logfile", str(tmp_path / "sentinel.log")]
    )
    client = redis.Redis(port=port, decode_responses=True)

    def knows_the_replica() -> bool:
        try:
            return bool(client.execute_command("SENTINEL", "replicas", MASTER))
        except redis.RedisError:
            return False

    wait_for(knows_the_replica, timeout=30, what="the sentinel to find the replica")
    yield f"sentinel://127.0.0.1:{port}/0", client
    for proc in (sentinel, replica):
        proc.terminate()
        proc.wait(15)


class Producer(threading.Thread):
    """Publishes batches of events, one call each, until stopped; a batch that fails (Redis
    unreachable, or not confirmed by a replica) is published again, event ids and all."""

    def __init__(self, publisher: Publisher) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.confirmed: list[int] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            batch = [
                {"call_id": f"call-{i}", "tags": [f"t{i}"], "version": 1, "event_id": f"e{i}"}
                for i in range(n, n + BATCH)
            ]
            try:
                self.publisher.publish_many(batch)
            except redis.RedisError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.stopping.wait(0.2)
                continue
            self.confirmed.extend(range(n, n + BATCH))
            n += BATCH
            self.stopping.wait(0.05)


def _master(sentinel: redis.Redis) -> object:
    return sentinel.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_failover_under_load_loses_no_event_a_publisher_was_told_is_queued(
    pool: str,
    sentinel: tuple[str, redis.Redis],
    slow_api: FakeAlibabaApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, watcher = sentinel
    env = {
        **worker_env_for(url, "failover", slow_api.endpoint),
        "TAGGING_REDIS_SENTINEL_MASTER": MASTER,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stores = Stores.connect(load_settings())
    worker = WorkerProcess(
        env, tmp_path / "worker.log", pool=pool, concurrency=8 if pool == "threads" else 4
    )
    producer = Producer(Publisher.from_settings(stores.settings))
    try:
        wait_for(lambda: "ready." in worker.log(), what="the worker ready")
        producer.start()
        wait_for(lambda: slow_api.tags_of("call-40") is not None, what="events applied")
        before = _master(watcher)

        watcher.execute_command("SENTINEL", "FAILOVER", MASTER)

        wait_for(lambda: _master(watcher) != before, what="the replica promoted")
        promoted = len(producer.confirmed)
        wait_for(lambda: len(producer.confirmed) >= promoted + 100, timeout=60, what="publishes")
        producer.stopping.set()
        producer.join(10)
        confirmed = producer.confirmed
        wait_for(
            lambda: all(slow_api.tags_of(f"call-{i}") == [f"t{i}"] for i in confirmed),
            timeout=120,
            what="every confirmed event applied",
        )
        wait_for(
            lambda: all(stores.ordering.fate(f"call-{i}", f"e{i}") == "applied" for i in confirmed),
            timeout=60,
            what="every confirmed event's fate applied",
        )
        assert worker.proc.poll() is None, worker.log()[-4000:]
        print(
            f"\n{pool}: {len(confirmed)} events confirmed, {promoted} before the promotion; "
            f"publishes that failed and went again: {len(producer.failures)} "
            f"{sorted(set(f.split(':')[0] for f in producer.failures))}"
        )
    finally:
        producer.stopping.set()
        worker.stop()
