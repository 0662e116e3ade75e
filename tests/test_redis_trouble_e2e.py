"""Redis restarted or crashed under a worker with tasks in flight, or refusing writes: the
worker carries on.

A worker that exits on a Redis restart stays down under the shipped systemd units
(`Restart=on-failure`) when it exits 0, and is a gap in service when it exits at all; here
the worker process must still be running once every event has its fate, and every fate must
be right.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.connection import WritesRefused
from tagging_worker.state.stores import Stores
from tests.conftest import (
    OwnRedis,
    WorkerProcess,
    free_port,
    run_cli,
    settled,
    wait_for,
    worker_env_for,
)

pytestmark = pytest.mark.e2e

EVENTS = 80


@dataclass
class Running:
    """A worker with `EVENTS` events published to it, on the test's own Redis."""

    env: dict[str, str]
    stores: Stores
    worker: WorkerProcess


@pytest.fixture
def running(
    own_redis: OwnRedis,
    slow_api: FakeAlibabaApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Running]]:
    """Starts a worker of the given pool on the test's Redis, publishes `EVENTS` events and
    returns once it has settled a few: it has tasks in flight from then on."""
    started: list[WorkerProcess] = []

    def start(pool: str, **settings: str) -> Running:
        env = {**worker_env_for(own_redis.url, "trouble", slow_api.endpoint), **settings}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        stores = Stores.connect(load_settings())
        worker = WorkerProcess(
            env, tmp_path / "worker.log", pool=pool, concurrency=8 if pool == "threads" else 4
        )
        started.append(worker)
        Publisher.from_settings(stores.settings).publish_many(
            [{"call_id": f"call-{i}", "tags": [f"t{i}"], "version": 1} for i in range(EVENTS)]
        )
        wait_for(settled(stores, 8), what="the worker under way")
        return Running(env, stores, worker)

    yield start
    for worker in started:
        worker.stop()


def _all_applied_and_running(run: Running, api: FakeAlibabaApi) -> None:
    wait_for(settled(run.stores, EVENTS), timeout=120, what="every event settled")
    assert run.worker.proc.poll() is None, run.worker.log()[-4000:]
    assert run.stores.outcomes.snapshot()["applied"] == EVENTS
    assert all(api.tags_of(f"call-{i}") == [f"t{i}"] for i in range(EVENTS))


@pytest.mark.parametrize("pool", ["threads", "prefork"])
@pytest.mark.parametrize("fault", ["restart", "crash"])
def test_a_worker_outlives_redis_going_away_with_tasks_in_flight(
    fault: str,
    pool: str,
    own_redis: OwnRedis,
    slow_api: FakeAlibabaApi,
    running: Callable[..., Running],
) -> None:
    run = running(pool)

    getattr(own_redis, fault)()

    _all_applied_and_running(run, slow_api)


def _refuse_writes(admin: redis.Redis, how: str) -> None:
    if how == "full":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # below what it holds: every growing write is refused
    else:
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master never seen


def _take_writes(admin: redis.Redis, how: str) -> None:
    if how == "full":
        admin.config_set("maxmemory", 0)
    else:
        admin.execute_command("REPLICAOF", "NO", "ONE")


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except OSError:  # the probe's own connection failed: ask again
        return 0, {}


@pytest.mark.parametrize("pool", ["threads", "prefork"])
@pytest.mark.parametrize("how", ["full", "read_only"])
def test_while_redis_refuses_writes_workers_pause_say_why_once_and_then_resume(
    how: str,
    pool: str,
    own_redis: OwnRedis,
    slow_api: FakeAlibabaApi,
    running: Callable[..., Running],
) -> None:
    metrics_port = free_port()
    run = running(pool, TAGGING_METRICS_PORT=str(metrics_port))
    admin = redis.Redis(port=own_redis.port)
    publisher = Publisher.from_settings(run.stores.settings)
    try:
        _refuse_writes(admin, how)

        _, health = wait_for(
            lambda: (found := _readyz(metrics_port))[0] == 503 and found, what="not ready"
        )
        assert "Redis refuses writes" in " ".join(health["problems"])  # type: ignore[arg-type]
        published = run_cli(run.env, "publish", "--call-id", "call-late", "--tag", "x")
        assert published.returncode == 1
        assert "Redis refuses writes" in published.stderr, published.stderr
        said = "maxmemory" if how == "full" else "read-only replica"
        assert said in published.stderr
        with pytest.raises(WritesRefused, match=said):
            publisher.publish({"call_id": "call-late", "tags": ["x"]})
        time.sleep(2)  # housekeeping turns many times: the cause is still told once
    finally:
        _take_writes(admin, how)

    _all_applied_and_running(run, slow_api)
    wait_for(lambda: _readyz(metrics_port)[0] == 200, what="ready again")
    told = [line for line in run.worker.log().splitlines() if "Redis refuses writes" in line]
    assert len(told) == 1, told


def test_a_fetch_that_redis_refuses_takes_nothing_and_stops_no_worker(
    own_redis: OwnRedis,
    slow_api: FakeAlibabaApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BLMOVE writes, so a full Redis refuses the worker's next fetch before housekeeping has
    paused it: an idle worker whose gate turns slowly meets that every time."""
    env = {
        **worker_env_for(own_redis.url, "fetch-refused", slow_api.endpoint),
        "TAGGING_SCHEDULER_INTERVAL_SECONDS": "10",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worker = WorkerProcess(env, tmp_path / "worker.log", pool="threads", concurrency=2)
    admin = redis.Redis(port=own_redis.port)
    try:
        wait_for(lambda: "ready." in worker.log(), what="the worker ready")
        _refuse_writes(admin, "full")
        wait_for(lambda: "fetch refused" in worker.log(), what="a refused fetch")
        _take_writes(admin, "full")
        stores = Stores.connect(load_settings())
        Publisher.from_settings(stores.settings).publish(
            {"call_id": "call-after", "tags": ["x"], "version": 1}
        )
        wait_for(settled(stores, 1), what="the event applied")
        assert worker.proc.poll() is None, worker.log()[-4000:]
    finally:
        _take_writes(admin, "full")
        worker.stop()
