"""Whatever a producer puts on the queue, a real worker gives it exactly one fate, stays alive
and keeps consuming: no crash, no hang, nothing dropped.

Each input goes in alone, and the worker must give it its fate and then apply a good event;
a worker that died or stopped consuming is replaced (and the suite fails, naming the input).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import TASK_NAME, build_task_message
from tagging_worker.state.outcomes import FATES
from tagging_worker.state.stores import Stores
from tests.conftest import REDIS_URL, WorkerProcess
from tests.hostile import catalogue, hostile_items, send_task_cases

FATE_WITHIN = 20.0
"""Seconds an input may take to reach its fate before it counts as a hang."""


class Trial:
    """One worker, fed one input at a time, with a verdict per input."""

    def __init__(
        self,
        stores: Stores,
        fake_api: FakeAlibabaApi,
        start_worker: Callable[..., WorkerProcess],
        client: redis.Redis,
        pool: str,
    ) -> None:
        self.stores, self.fake_api, self.client = stores, fake_api, client
        self.start_worker = lambda: start_worker(pool, 2)
        self.worker = self.start_worker()
        self.fates = 0
        self.goods = 0
        self.verdicts: dict[str, str] = {}

    def fated(self) -> int:
        counts = self.stores.outcomes.snapshot()
        return sum(counts[fate.value] for fate in FATES)

    def feed(self, name: str, push: Callable[[], None]) -> str:
        push()
        verdict = self._settle(self.fates + 1)
        if verdict == "ok":
            self.goods += 1
            call_id = f"call-good-{self.goods}"
            self.client.lpush(
                self.stores.settings.queue,
                build_task_message(
                    {"call_id": call_id, "tags": [str(self.goods)]},
                    queue=self.stores.settings.queue,
                ),
            )
            verdict = self._settle(self.fates + 2, good=call_id)
        if verdict == "ok":
            self.fates += 2
        else:
            verdict += f" (log: {self.worker.log()[-600:]!r})"
            self._recover()
        self.verdicts[name] = verdict
        return verdict

    def _settle(self, expected: int, good: str = "") -> str:
        deadline = time.monotonic() + FATE_WITHIN
        while time.monotonic() < deadline:
            if self.worker.proc.poll() is not None:
                return f"worker exited with code {self.worker.proc.returncode}"
            fated = self.fated()
            if fated > expected:
                return f"{fated - expected} fate(s) too many"
            if fated == expected and (not good or self.fake_api.tags_of(good)):
                return "ok"
            time.sleep(0.02)
        return "hang: no fate" if not good else "hang: a good event after it was not applied"

    def _recover(self) -> None:
        """Start afresh for the next input: a new worker, the queue emptied."""
        if self.worker.proc.poll() is None:
            self.worker.kill()
        queue = self.stores.settings.queue
        self.client.delete(queue)
        for key in self.client.scan_iter(f"{queue}:fetch:*"):
            self.client.delete(key)
        self.worker = self.start_worker()
        self.fates = self.fated()


@pytest.fixture(params=["threads", "prefork"])
def trial(
    request: pytest.FixtureRequest,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> Trial:
    """A trial with a worker of each pool: the task runs in a child process under prefork."""
    return Trial(stores, fake_api, start_worker, redis_client, request.param)


def _failures(trial: Trial) -> dict[str, str]:
    return {name: verdict for name, verdict in trial.verdicts.items() if verdict != "ok"}


@pytest.mark.e2e
def test_every_hostile_queue_item_gets_one_fate_and_the_worker_keeps_consuming(
    trial: Trial, redis_client: redis.Redis
) -> None:
    queue = trial.stores.settings.queue
    for name, raw in catalogue(queue).items():
        trial.feed(name, lambda raw=raw: redis_client.lpush(queue, raw))

    assert _failures(trial) == {}
    assert trial.worker.proc.poll() is None


@pytest.mark.e2e
def test_every_hostile_send_task_gets_one_fate_and_the_worker_keeps_consuming(
    trial: Trial,
) -> None:
    queue = trial.stores.settings.queue
    producer = Celery(broker=REDIS_URL, set_as_current=False)

    def sender(case: dict[str, Any]) -> Callable[[], None]:
        options = dict(case)
        if link := options.pop("link_name", None):
            options["link"] = producer.signature(link)
        return lambda: producer.send_task(TASK_NAME, queue=queue, **options)

    for name, case in send_task_cases().items():
        trial.feed(name, sender(case))

    assert _failures(trial) == {}


@pytest.mark.e2e
def test_arbitrary_task_messages_each_get_one_fate_and_the_worker_keeps_consuming(
    trial: Trial, redis_client: redis.Redis
) -> None:
    queue = trial.stores.settings.queue

    @given(raw=hostile_items(queue))
    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def one(raw: bytes) -> None:
        name = f"example {len(trial.verdicts)}: {raw[:300]!r}"
        assert trial.feed(name, lambda: redis_client.lpush(queue, raw)) == "ok"

    one()
