"""Shared fixtures: a real Redis (own keys only), the fake API, real worker processes.

Each test gets its own key prefix and queue, so tests never touch keys they did not create
and clean up exactly what they made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tagging_worker.messages import read_task_message
from tagging_worker.settings import load_settings
from tagging_worker.state.outcomes import FATES
from tagging_worker.state.stores import Stores
from tagging_worker.worker.inline import InlineWorker
from tagging_worker.worker.wiring import Services

if TYPE_CHECKING:
    from tagging_worker.alibaba.fake_server import FakeAlibabaApi

REDIS_URL = os.environ.get("TAGGING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ACCESS_KEY_ID = "test-access-key-id"
ACCESS_KEY_SECRET = "test-access-key-secret-0123456789"


@pytest.fixture(autouse=True)
def _no_cloud_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials chain must never reach for the ECS metadata address in tests."""
    monkeypatch.setenv("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need Redis at {REDIS_URL} ({exc}); `bash scripts/test.sh` starts one")
    yield client
    client.close()


@pytest.fixture
def namespace(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh prefix used as both key prefix and queue name; its keys are removed after."""
    name = f"tw-test-{uuid.uuid4().hex[:10]}"
    yield name
    doomed = [*redis_client.scan_iter(f"{name}*", count=1000)]
    doomed += [*redis_client.scan_iter(f"_kombu.binding*.{name}", count=1000)]
    if doomed:
        redis_client.delete(*doomed)


@pytest.fixture
def fake_api() -> Iterator[FakeAlibabaApi]:
    from tagging_worker.alibaba.fake_server import FakeAlibabaApi

    api = FakeAlibabaApi(credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET}).start()
    yield api
    api.stop()


@pytest.fixture
def slow_api() -> Iterator[FakeAlibabaApi]:
    """Each call takes 150 ms, so a worker always has tasks in flight when Redis goes."""
    from tagging_worker.alibaba.fake_server import FakeAlibabaApi

    api = FakeAlibabaApi(credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, latency_ms=150).start()
    yield api
    api.stop()


def worker_env_for(broker_url: str, namespace: str, endpoint: str) -> dict[str, str]:
    """Settings for a worker pointed at a test's Redis keys and fake API, with short
    retry delays and circuit cool-downs so those paths finish in a test's time, a budget
    no test reaches unless it sets its own, and no metrics port for workers to fight over."""
    return {
        "TAGGING_BROKER_URL": broker_url,
        "TAGGING_QUEUE": namespace,
        "TAGGING_KEY_PREFIX": namespace,
        "TAGGING_API_ENDPOINT": endpoint,
        "TAGGING_API_PROTOCOL": "http",
        "TAGGING_API_READ_TIMEOUT_MS": "2000",
        "TAGGING_RETRY_BASE_SECONDS": "0.05",
        "TAGGING_RETRY_CAP_SECONDS": "0.2",
        "TAGGING_RETRY_MAX_ATTEMPTS": "4",
        "TAGGING_SCHEDULER_INTERVAL_SECONDS": "0.05",
        "TAGGING_API_RATE_LIMIT": "5000",
        "TAGGING_CIRCUIT_COOLDOWN_SECONDS": "1",
        "TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS": "2",
        "TAGGING_METRICS_PORT": "0",
        "TAGGING_LOG_FORMAT": "json",
        "ACCESS_KEY_ID": ACCESS_KEY_ID,
        "ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }


@pytest.fixture
def worker_env(namespace: str, fake_api: FakeAlibabaApi) -> dict[str, str]:
    return worker_env_for(REDIS_URL, namespace, fake_api.endpoint)


@pytest.fixture
def stores(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Stores:
    """The same wiring the worker uses, for asserting on Redis state from the test."""
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    return Stores.connect(load_settings())


class WorkerProcess:
    """A real `tagging-worker worker` in a child process."""

    def __init__(self, env: dict[str, str], log_path: Path, *, pool: str, concurrency: int) -> None:
        self.pool = pool
        self.replaced = False
        """Set by a test's supervisor once it started a worker in this one's place."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tagging_worker",
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--loglevel={env.get('TAGGING_LOG_LEVEL', 'INFO')}",
            ],
            # Its metrics files go with its log: a SIGKILLed worker cannot remove them.
            env={
                **os.environ,
                "PROMETHEUS_MULTIPROC_DIR": str(log_path.with_suffix(".metrics")),
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): a crash, no goodbye."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The worker's child processes (its prefork pool), from /proc."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def records(self) -> list[dict[str, Any]]:
        """The worker's JSON log records (lines that are not JSON, like Celery's banner, are
        skipped)."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(pool: str = "threads", concurrency: int = 4, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            {**worker_env, **env},
            tmp_path / f"worker-{len(workers)}.log",
            pool=pool,
            concurrency=concurrency,
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def run_cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`tagging-worker ARGS` as a user runs it, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "tagging_worker", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def queued_events(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The events in the task messages on a queue, oldest first."""
    raw = client.lrange(queue, 0, -1)[::-1]
    return [read_task_message(m).args[0] for m in raw]


def queued_event_ids(client: redis.Redis, queue: str) -> list[str]:
    """The event ids of the task messages on a queue, oldest first."""
    return [event["event_id"] for event in queued_events(client, queue)]


def settled(stores: Stores, n: int) -> Callable[[], bool]:
    """True once `n` events have their fate (applied, stale, superseded or dead)."""

    def check() -> bool:
        counts = stores.outcomes.snapshot()
        return sum(counts[fate.value] for fate in FATES) >= n

    return check


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; the deadline only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port free right now (a test's own server binds it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A Redis server this test starts, with AOF persistence, on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
        )
        wait_for(self._answers, timeout=15, what="the test's Redis to start")

    def restart(self) -> None:
        """A clean shutdown (AOF flushed) and a start on the same port and data."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        self.start()

    def crash(self) -> None:
        """SIGKILL and a start on the same data: only what the AOF (fsync always) holds."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(15)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("this test starts its own redis-server; scripts/bootstrap.sh installs it")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def inline(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> InlineWorker:
    """The task run in this process on the test's keys and fake API, as a worker would."""
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    return InlineWorker(Services.build(load_settings()))
