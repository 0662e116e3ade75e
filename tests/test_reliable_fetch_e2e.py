"""Messages from any producer survive the death of the worker that took them.

None of these messages goes through `tagging_worker.produce.publish`: they come from Celery's
`send_task` or are pushed onto the queue as protocol-2 envelopes, as producers in other
languages do. The visibility timeout stays at its default (300 s), so a message that comes
back sooner came back through reliable fetch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import TASK_NAME, build_task_message
from tagging_worker.state.stores import Stores
from tests.conftest import REDIS_URL, WorkerProcess, settled, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CONSUMER_TTL = 5.0
"""The heartbeat TTL of the consumers these tests kill; workers keep the default."""


def _consumer(
    env: dict[str, str], mode: str, *, global_keyprefix: str = "", seconds: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """`tests.fetch_consumer` in a process of its own, run to its end (or its death)."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "tests.fetch_consumer", mode),
            *("--ttl", str(CONSUMER_TTL), "--seconds", str(seconds)),
            *(("--global-keyprefix", global_keyprefix) if global_keyprefix else ()),
        ],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )


def _whereabouts(client: redis.Redis, queue: str, message: str, *, prefix: str = "") -> list[str]:
    """Every place in Redis that has the message: the queue, a consumer's held list, kombu's
    unacked hash."""
    raw = message.encode()
    found = ["queue"] * client.lrange(prefix + queue, 0, -1).count(raw)
    for key in client.scan_iter(f"{prefix}{queue}:fetch:{queue}:held:*"):
        found += ["held"] * client.lrange(key, 0, -1).count(raw)
    wanted = json.loads(message)
    for record in client.hvals(prefix + "unacked"):
        if json.loads(record)[0] == wanted:
            found.append("kombu unacked")
    return found


def _task_message(call_id: str, queue: str) -> tuple[str, str]:
    """A protocol-2 message as another producer would push it, and its task id."""
    message = build_task_message({"call_id": call_id, "tags": ["x"], "version": 1}, queue=queue)
    return message, json.loads(message)["headers"]["id"]


def test_a_message_popped_by_a_consumer_killed_before_any_bookkeeping_is_delivered_again(
    worker_env: dict[str, str], namespace: str, redis_client: redis.Redis
) -> None:
    """The BRPOP boundary: the consumer dies the moment Redis has handed the message over,
    before kombu or Celery has recorded anything. Taking it and recording who holds it are one
    step in Redis, so the message is held by the dead consumer, and comes back when its
    deadline passes."""
    message, task_id = _task_message("call-boundary", namespace)
    redis_client.lpush(namespace, message)

    doomed = _consumer(worker_env, "die_after_pop")

    assert doomed.returncode == -signal.SIGKILL, doomed.stderr
    assert _whereabouts(redis_client, namespace, message) == ["held"]
    survivor = _consumer(worker_env, "receive")
    assert survivor.returncode == 0, survivor.stderr
    assert survivor.stdout.split() == [task_id]
    assert _whereabouts(redis_client, namespace, message) == []


def test_a_dead_consumers_message_comes_back_under_a_kombu_global_keyprefix(
    worker_env: dict[str, str], namespace: str, redis_client: redis.Redis
) -> None:
    """kombu's `global_keyprefix` moves the queue and kombu's own keys; the held lists and the
    registry move with them, and recovery finds them there."""
    prefix = f"{namespace}.kombu:"
    message, task_id = _task_message("call-prefixed", namespace)
    redis_client.lpush(prefix + namespace, message)

    doomed = _consumer(worker_env, "die_holding", global_keyprefix=prefix)

    assert doomed.returncode == -signal.SIGKILL, doomed.stderr
    assert _whereabouts(redis_client, namespace, message, prefix=prefix) == ["held"]
    survivor = _consumer(worker_env, "receive", global_keyprefix=prefix)
    assert survivor.returncode == 0, survivor.stderr
    assert survivor.stdout.split() == [task_id]
    assert _whereabouts(redis_client, namespace, message, prefix=prefix) == []


def test_the_messages_of_a_sigkilled_busy_worker_are_applied_by_another_within_60_seconds(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    """Sixteen threads, each stalled in an API call on a message sent by Celery's
    `send_task`, die with their worker; another worker applies every event within a minute,
    though the visibility timeout is 300 s."""
    queue = stores.settings.queue
    fake_api.add_fault("stall", times=16)
    producer = Celery(broker=REDIS_URL)
    producer.conf.task_serializer = "json"
    events: list[dict[str, Any]] = [
        {"call_id": f"call-busy-{n}", "tags": [f"t{n}"], "version": 1} for n in range(16)
    ]
    for event in events:
        producer.send_task(TASK_NAME, args=[event], queue=queue)
    # The production read timeout, so the calls are still stalled when the worker dies.
    doomed = start_worker(concurrency=16, TAGGING_API_READ_TIMEOUT_MS="10000")
    wait_for(lambda: redis_client.llen(queue) == 0, what="every message taken")
    time.sleep(1.0)

    doomed.kill()
    killed_at = time.monotonic()
    fake_api.release_stalls()
    assert stores.outcomes.snapshot()["applied"] == 0
    start_worker(concurrency=4)

    wait_for(settled(stores, 16), timeout=60, what="every event applied by the other worker")
    assert time.monotonic() - killed_at < 60
    assert stores.outcomes.snapshot()["applied"] == 16
    assert stores.dead_letters.count() == 0
    assert fake_api.all_tags() == {e["call_id"]: e["tags"] for e in events}


@pytest.mark.parametrize("pool, concurrency", [("threads", 4), ("prefork", 2)])
def test_a_worker_holds_messages_only_until_it_acks_them_and_leaves_no_trace_when_stopped(
    pool: str,
    concurrency: int,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    """Acks come from the worker's main process in both pools and remove the message from the
    held list; a warm shutdown leaves neither held messages nor a registered consumer."""
    queue = stores.settings.queue
    fake_api.add_fault("stall", call_id="call-held", times=1)
    message, _ = _task_message("call-held", queue)
    redis_client.lpush(queue, message)
    worker = start_worker(pool=pool, concurrency=concurrency)

    wait_for(
        lambda: _whereabouts(redis_client, queue, message) == ["held"],
        what="the message held by the worker",
    )
    fake_api.release_stalls()
    wait_for(settled(stores, 1), what="the event applied")
    wait_for(lambda: _whereabouts(redis_client, queue, message) == [], what="the ack")
    registry = f"{queue}:fetch:{queue}:consumers"
    assert redis_client.zcard(registry) == 1
    worker.stop()

    assert worker.proc.returncode == 0
    assert redis_client.zcard(registry) == 0
    assert [*redis_client.scan_iter(f"{queue}:fetch:{queue}:held:*")] == []
