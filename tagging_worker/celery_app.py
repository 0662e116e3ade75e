"""The Celery application, configured for at-least-once delivery and JSON only."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from kombu import Queue

from tagging_worker.poison import install_tolerant_transport
from tagging_worker.retry_schedule import Housekeeper
from tagging_worker.settings import Settings


class HousekeeperStep(bootsteps.StartStopStep):
    """Runs the housekeeper (due retries, lost messages) in every worker, with the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.housekeeper: Housekeeper | None = None

    def start(self, worker: Any) -> None:
        from tagging_worker.runtime import get_runtime

        rt = get_runtime()
        grace_ms = int(rt.settings.recover_after_seconds * 1000)
        self.housekeeper = Housekeeper(
            rt.retries,
            lambda: rt.ordering.recover_lost(grace_ms=grace_ms),
            interval=rt.settings.scheduler_interval_seconds,
            recover_every=max(1.0, rt.settings.recover_after_seconds / 4),
        )
        self.housekeeper.start()

    def stop(self, worker: Any) -> None:
        if self.housekeeper is not None:
            self.housekeeper.stop()


def create_app(settings: Settings) -> Celery:
    install_tolerant_transport()
    app = Celery("tagging_worker", broker=settings.broker_url, set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue, routing_key=settings.queue)],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message in hand per worker slot: an acked-late message waiting in a local
        # buffer is one a crash would delay, and prefetching helps nothing for I/O-bound work.
        worker_prefetch_multiplier=1,
        # How soon a dead worker's messages come back. Longer than any task runs (API
        # timeouts bound each call); should it ever run out early, the per-call lease and
        # the event's fate keep the second delivery harmless.
        # kombu looks for such messages only every ~100 s by default; look every few seconds.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 5)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_consumer="tagging_worker.poison:PoisonAwareConsumer",
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        worker_pool=settings.worker_pool.value,
    )
    app.steps["worker"].add(HousekeeperStep)
    app.autodiscover_tasks(["tagging_worker"], related_name="tasks", force=True)
    return app
