"""The Celery application, configured for at-least-once delivery and JSON only, and wired.

`create_app` is the one place the worker is put together: the services the task runs with
(`wiring.py`), the task itself, the consumer and request classes that dead-letter what
cannot run (`poison.py`), the transport patches, and the loops beside the consumer
(`lifecycle.py`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, signals
from kombu import Queue

from tagging_worker.messages import TASK_NAME
from tagging_worker.ops import logs, sentry
from tagging_worker.ops.metrics import Metrics
from tagging_worker.ops.monitoring import prepare_multiprocess_dir
from tagging_worker.ops.reports import install_hooks, log_report
from tagging_worker.settings import Settings
from tagging_worker.state.connection import broker_transport_options
from tagging_worker.worker import tasks
from tagging_worker.worker.broker_teardown import install_teardown_guard
from tagging_worker.worker.inspection import install_inspection
from tagging_worker.worker.lifecycle import Lifecycle
from tagging_worker.worker.poison import install_tolerant_transport, poison_handlers
from tagging_worker.worker.reliable_fetch import install_reliable_fetch
from tagging_worker.worker.wiring import PerProcess, Services


def create_app(settings: Settings) -> Celery:
    prepare_multiprocess_dir()
    sentry.init(settings)
    # The metrics are made here, once their multiprocess directory is set.
    install_hooks(log_report, Metrics(), sentry.send_report)

    def configure_logging(loglevel: Any = None, **kwargs: Any) -> None:
        logs.configure(loglevel or settings.log_level, settings.log_format)

    # Connected, this tells Celery to leave logging to us: one format for every record.
    signals.setup_logging.connect(configure_logging, weak=False)
    install_tolerant_transport()
    install_teardown_guard()
    install_reliable_fetch()

    services = PerProcess(lambda: Services.build(settings))

    def refuse(received: Any, carried: Any, reason: str, detail: str, *, task_id: str) -> object:
        return tasks.refuse(services.get(), received, carried, reason, detail, task_id=task_id)

    consumer, request = poison_handlers(refuse, max_eta_seconds=settings.event_max_age_seconds)
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
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_send_task_events=settings.task_events,
        worker_consumer=consumer,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        worker_pool=settings.worker_pool.value,
    )

    @app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        Request=request,
        throws=(tasks.DeadLettered,),
    )
    def update_call_tags(self: Task, *args: Any, **kwargs: Any) -> str:
        return tasks.run(services.get(), self.request.id, args, kwargs).for_celery()

    install_inspection(services)
    Lifecycle(settings, services).install(app)
    return app
