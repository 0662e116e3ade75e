"""What every benchmark here needs: its own Redis keys, real worker processes, a way to wait.

Benchmarks use the Redis at TAGGING_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), under a
key prefix and queue of their own, and delete only those keys when they finish.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tagging_worker.settings import load_settings
from tagging_worker.state.outcomes import FATES
from tagging_worker.state.stores import Stores

REDIS_URL = os.environ.get("TAGGING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_ID, SECRET = "bench-access-key-id", "bench-access-key-secret"
os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")


@contextmanager
def own_redis(*options: str) -> Iterator[str]:
    """A Redis server of the benchmark's own (nothing kept on disk), for measuring its memory
    or turning on options a shared server should not get; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tagging-bench-redis-") as directory:
        proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", directory, *options),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait(lambda: connects(port))
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop([proc])


@contextmanager
def namespace(redis_url: str = REDIS_URL, **settings: Any) -> Iterator[tuple[str, Stores]]:
    """A fresh key prefix (also the queue name) and the stores that reads it; its keys go
    when the block ends."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    stores = Stores.connect(
        load_settings(broker_url=redis_url, key_prefix=prefix, queue=prefix, **settings)
    )
    try:
        yield prefix, stores
    finally:
        doomed = [*stores.redis.scan_iter(f"{prefix}*", count=1000)]
        doomed += [*stores.redis.scan_iter(f"_kombu.binding*.{prefix}", count=1000)]
        if doomed:
            stores.redis.delete(*doomed)


def worker_env(
    prefix: str, endpoint: str, redis_url: str = REDIS_URL, **settings: str
) -> dict[str, str]:
    return {
        **os.environ,
        "TAGGING_BROKER_URL": redis_url,
        "TAGGING_KEY_PREFIX": prefix,
        "TAGGING_QUEUE": prefix,
        "TAGGING_API_ENDPOINT": endpoint,
        "TAGGING_API_PROTOCOL": "http",
        "ACCESS_KEY_ID": KEY_ID,
        "ACCESS_KEY_SECRET": SECRET,
        "TAGGING_METRICS_PORT": "0",
        "TAGGING_LOG_LEVEL": "WARNING",
        **settings,
    }


def start_worker(env: dict[str, str], pool: str, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            *("-m", "tagging_worker", "worker"),
            *(f"--pool={pool}", f"--concurrency={concurrency}"),
            f"--loglevel={env.get('TAGGING_LOG_LEVEL', 'WARNING')}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def settled(stores: Stores) -> int:
    counts = stores.outcomes.snapshot()
    return sum(counts[f.value] for f in FATES)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a prefork worker's pool), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait(predicate: Callable[[], object], timeout: float = 15.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark timed out waiting")
        time.sleep(poll)


def command_line() -> str:
    return " ".join([".venv/bin/python", *sys.argv])
