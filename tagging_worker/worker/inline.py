"""Running queued events in this process, without a Celery worker.

Dramatiq's stub worker is the model: `InlineWorker(services).drain()` takes messages off the
queue from the consuming end, as a worker does, and runs the task on each against real Redis
and whatever API the services point at, so the story of one event (publish, retry, park,
die, replay) is tested in milliseconds. Only the task runs here; what guards the way to it
(reliable fetch, the poison checks, acks, the consumption gate) is tested with real workers.
"""

from __future__ import annotations

from celery.exceptions import Reject

from tagging_worker.messages import read_task_message
from tagging_worker.worker import tasks
from tagging_worker.worker.wiring import Services


class InlineWorker:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._redis = services.stores.redis
        self._queue = services.settings.queue

    def run_one(self) -> str | None:
        """Runs the next message; its outcome, or None when the queue is empty. A message
        whose task asks to be delivered again (Redis trouble) goes back to the front."""
        raw = self._redis.rpop(self._queue)
        if raw is None:
            return None
        message = read_task_message(raw)
        try:
            ending = tasks.run(self.services, message.task_id, message.args, message.kwargs)
        except Reject:
            self._redis.rpush(self._queue, raw)
            raise
        return ending.outcome

    def drain(self, *, limit: int = 10_000) -> list[str]:
        """Runs messages until the queue is empty; their outcomes in order."""
        outcomes: list[str] = []
        while len(outcomes) < limit and (outcome := self.run_one()) is not None:
            outcomes.append(outcome)
        return outcomes

    def release_retries(self) -> int:
        """Puts every delayed retry on the queue now, due or not: a test need not wait out
        backoff. Returns how many."""
        return self.services.stores.retries.move_due(now=float("inf"))
