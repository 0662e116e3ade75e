"""The Celery application, configured for at-least-once delivery and JSON only."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps, signals
from kombu import Queue

from tagging_worker.ops import logs, sentry
from tagging_worker.ops.monitoring import prepare_multiprocess_dir
from tagging_worker.settings import Settings
from tagging_worker.state.keys import Keys
from tagging_worker.state.retry_schedule import Housekeeper
from tagging_worker.worker.broker_teardown import install_teardown_guard
from tagging_worker.worker.poison import install_tolerant_transport
from tagging_worker.worker.reliable_fetch import install_reliable_fetch

log = logging.getLogger(__name__)


class HousekeeperStep(bootsteps.StartStopStep):
    """Runs the housekeeper (due retries, settle checks) in every worker, with the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.housekeeper: Housekeeper | None = None

    def start(self, worker: Any) -> None:
        from tagging_worker.state.stores import get_runtime

        rt = get_runtime()

        def watch() -> None:
            rt.heartbeats.housekeeping_at = time.monotonic()
            if rt.flow.blocked():
                rt.api_blocked.set()
            else:
                rt.api_blocked.clear()
            rt.outcomes.sample()
            rt.heartbeats.redis_ok_at = time.monotonic()

        self.housekeeper = Housekeeper(
            rt.retries,
            watch,
            settle=rt.ordering.queue_due_settles,
            interval=rt.settings.scheduler_interval_seconds,
        )
        self.housekeeper.start()

    def stop(self, worker: Any) -> None:
        if self.housekeeper is not None:
            self.housekeeper.stop()


class ConsumptionGate(bootsteps.StartStopStep):
    """Stops taking messages while the circuit keeps every call from the API, so a long
    outage leaves the queue in Redis instead of pulling it through the workers; resumes as
    soon as a probe may go. Runs on the consumer's own event loop: the housekeeper thread
    reads the circuit, this only compares a flag, so the loop never waits on Redis."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._timer_entry: Any = None
        self._paused = False

    def start(self, c: Any) -> None:
        from tagging_worker.state.stores import get_runtime

        rt = get_runtime()
        self._timer_entry = c.timer.call_repeatedly(
            rt.settings.scheduler_interval_seconds, self._check, (c, rt), priority=10
        )

    def stop(self, c: Any) -> None:
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    shutdown = stop

    def _check(self, c: Any, rt: Any) -> None:
        queue = rt.settings.queue
        rt.heartbeats.consumer_at = time.monotonic()
        if c.task_consumer is not None:
            blocked = rt.api_blocked.is_set()
            if blocked and not self._paused:
                self._paused = True
                c.cancel_task_queue(queue)
                log.warning("circuit open: stopped taking messages from %s", queue)
            elif not blocked and self._paused:
                self._paused = False
                c.add_task_queue(queue)
                log.warning("circuit no longer blocks calls: taking messages from %s again", queue)
        rt.heartbeats.paused = self._paused


class MonitoringStep(bootsteps.StartStopStep):
    """Serves /metrics, /livez and /readyz from the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.server: Any = None

    def start(self, worker: Any) -> None:
        from tagging_worker.ops.health import assess
        from tagging_worker.ops.monitoring import MonitoringServer, registry_for
        from tagging_worker.state.stores import get_runtime

        rt = get_runtime()
        if not rt.settings.metrics_port:
            return
        # Both loops turn every scheduler interval; a few missed turns is not yet trouble.
        ready_within = max(5.0, 10 * rt.settings.scheduler_interval_seconds)
        try:
            self.server = MonitoringServer(
                rt.settings.metrics_host,
                rt.settings.metrics_port,
                registry_for(rt),
                lambda: assess(rt.heartbeats, time.monotonic(), ready_within=ready_within),
            )
        except OSError as exc:
            # Events still flow without the endpoint; a probe that cannot connect says so.
            log.error(
                "cannot serve /metrics, /livez and /readyz on %s:%d (%s): "
                "give each worker on this host its own TAGGING_METRICS_PORT",
                rt.settings.metrics_host,
                rt.settings.metrics_port,
                exc,
            )
            return
        self.server.start()
        log.info(
            "serving /metrics, /livez and /readyz on %s:%d",
            rt.settings.metrics_host,
            self.server.port,
        )

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """For every connection to the broker: the worker's, and `status` asking the workers."""
    return {
        **(
            {"master_name": settings.redis_sentinel_master}
            if settings.redis_sentinel_master
            else {}
        ),
        # Task messages are held per consumer (reliable_fetch): a worker that stops renewing
        # its deadline for this long is dead, and its messages go back on the queue.
        "fetch_key_prefix": Keys(settings.key_prefix).fetch,
        "fetch_heartbeat_ttl": settings.fetch_heartbeat_ttl_seconds,
        "fetch_max_crashes": settings.poison_after_crashes,
        # kombu's own restore, for what still enters its unacked hash: messages taken by
        # workers of an earlier version during a rolling upgrade, and `basic_get`. Longer than
        # any task runs; should it run out early, the per-call lease and the event's fate keep
        # the second delivery harmless. kombu looks only every ~100 s by default.
        "visibility_timeout": settings.visibility_timeout_seconds,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 5)),
        "unacked_restore_throttle": 1,
    }


def create_app(settings: Settings) -> Celery:
    prepare_multiprocess_dir()
    sentry.init(settings)

    def configure_logging(loglevel: Any = None, **kwargs: Any) -> None:
        logs.configure(loglevel or settings.log_level, settings.log_format)

    # Connected, this tells Celery to leave logging to us: one format for every record.
    signals.setup_logging.connect(configure_logging, weak=False)
    install_tolerant_transport()
    install_teardown_guard()
    install_reliable_fetch()
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
        worker_send_task_events=False,
        worker_consumer="tagging_worker.worker.poison:PoisonAwareConsumer",
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        worker_pool=settings.worker_pool.value,
    )
    app.steps["worker"].add(HousekeeperStep)
    app.steps["worker"].add(MonitoringStep)
    app.steps["consumer"].add(ConsumptionGate)
    app.autodiscover_tasks(["tagging_worker.worker"], related_name="tasks", force=True)
    return app
