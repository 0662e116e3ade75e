"""A publish returns once the replicas have the events, so a failover cannot lose what a
producer was told is queued.

Redis replicates asynchronously: a master that is about to be replaced (Sentinel promoting a
replica while the old master still takes writes) acknowledges writes that are then lost. With
`TAGGING_REDIS_PUBLISH_REPLICAS` the publisher asks Redis to WAIT for that many replicas and
fails, saying so, when they do not confirm in time. Here: the test's Redis as master and a
real replica of it, which the test stops with SIGSTOP (a replica cut off from its master).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.connection import WritesNotReplicated
from tagging_worker.state.stores import Stores
from tests.conftest import OwnRedis, free_port, run_cli, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def replica(own_redis: OwnRedis, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A replica of the test's Redis, in sync; yields its process and port."""
    directory = tmp_path / "replica"
    directory.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", str(port)),
            *("--replicaof", "127.0.0.1", str(own_redis.port), "--save", ""),
            *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
        ]
    )
    client = redis.Redis(port=port, decode_responses=True)

    def in_sync() -> bool:
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.ConnectionError:
            return False

    wait_for(in_sync, timeout=30, what="the replica in sync")
    yield proc, port
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(15)


def _env(own_redis: OwnRedis, namespace: str, **settings: str) -> dict[str, str]:
    return {
        "TAGGING_BROKER_URL": own_redis.url,
        "TAGGING_QUEUE": namespace,
        "TAGGING_KEY_PREFIX": namespace,
        **settings,
    }


def _publisher(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Publisher:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Publisher.from_settings(load_settings())


def test_a_publish_returns_once_the_replica_has_the_events(
    own_redis: OwnRedis,
    replica: tuple[subprocess.Popen[bytes], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(own_redis, "replicated", TAGGING_REDIS_PUBLISH_REPLICAS="1")
    publisher = _publisher(env, monkeypatch)

    publisher.publish_many([{"call_id": f"call-{n}", "tags": ["x"]} for n in range(50)])

    assert redis.Redis(port=replica[1]).llen("replicated") == 50


def test_a_publish_no_replica_confirms_fails_saying_the_events_may_be_lost(
    own_redis: OwnRedis,
    replica: tuple[subprocess.Popen[bytes], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(
        own_redis,
        "unreplicated",
        TAGGING_REDIS_PUBLISH_REPLICAS="1",
        TAGGING_REDIS_PUBLISH_REPLICA_TIMEOUT_MS="300",
    )
    publisher = _publisher(env, monkeypatch)
    replica[0].send_signal(signal.SIGSTOP)

    with pytest.raises(WritesNotReplicated, match="0 of 1 replicas had events 1 to 2 after 300 ms"):
        publisher.publish_many([{"call_id": f"call-{n}", "tags": ["x"]} for n in range(3)], chunk=2)
    published = run_cli(env, "publish", "--call-id", "call-cli", "--tag", "x")

    assert published.returncode == 1
    assert "a failover now would lose them" in published.stderr, published.stderr
    assert "publish them again" in published.stderr
    assert "the master has 1 replicas connected" in published.stderr
    replica[0].send_signal(signal.SIGCONT)
    stores = Stores.connect(load_settings())
    assert stores.redis.llen("unreplicated") == 3  # the master has them: only unconfirmed


def test_a_publish_waiting_on_a_master_without_replicas_says_it_has_none(
    own_redis: OwnRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(
        own_redis,
        "lone",
        TAGGING_REDIS_PUBLISH_REPLICAS="1",
        TAGGING_REDIS_PUBLISH_REPLICA_TIMEOUT_MS="100",
    )

    with pytest.raises(WritesNotReplicated, match="the master has 0 replicas connected"):
        _publisher(env, monkeypatch).publish({"call_id": "call-1", "tags": ["x"]})


def test_a_publish_that_waits_for_no_replica_does_not_wait(
    own_redis: OwnRedis,
    replica: tuple[subprocess.Popen[bytes], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = _publisher(_env(own_redis, "unwaited"), monkeypatch)
    replica[0].send_signal(signal.SIGSTOP)

    publisher.publish({"call_id": "call-1", "tags": ["x"]})


def test_publishes_wait_for_one_replica_by_default_only_under_sentinel() -> None:
    sentinel = "sentinel://127.0.0.1:26379/0"

    assert load_settings().publish_replicas == 0
    assert load_settings(broker_url=sentinel, redis_sentinel_master="m").publish_replicas == 1
    assert (
        load_settings(
            broker_url=sentinel, redis_sentinel_master="m", redis_publish_replicas=0
        ).publish_replicas
        == 0
    )
