"""Everything a worker runs beside Celery's consumer, start to stop, in one place.

- Housekeeping: a thread in every worker process (main process under prefork) that, every
  scheduler interval, moves due retries to the queue, queues settle checks, samples the
  outcome counters and reads the API circuit.
- The consumption gate: on the consumer's own event loop, stops taking messages while the
  circuit keeps every call from the API and takes them again once a probe may go. The loop
  only compares a flag the housekeeping thread sets, so it never waits on Redis.
- Monitoring: `/metrics`, `/livez` and `/readyz`, judged from heartbeats both loops leave.
- Recovery of messages held by dead consumers runs inside the transport (`reliable_fetch`),
  at each fetch; shutdown is Celery's, with the steps below stopped in reverse order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, bootsteps

from tagging_worker.ops.health import Health, Heartbeats, assess
from tagging_worker.ops.logs import Repeats
from tagging_worker.ops.monitoring import MonitoringServer, registry_for
from tagging_worker.settings import Settings
from tagging_worker.worker.wiring import PerProcess, Services

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    """Runs `tick` every `interval`. Redis errors are logged (once, then summarised) and retried
    on the next tick: the worker outlives a Redis restart."""

    def __init__(self, tick: Callable[[], None], *, interval: float) -> None:
        super().__init__(name="tagging-housekeeper", daemon=True)
        self._tick = tick
        self._interval = interval
        self._stopped = threading.Event()
        self._failures = Repeats(log, "housekeeping")

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._tick()
            except redis.RedisError as exc:
                self._failures.failed("housekeeping: Redis unavailable (%s); trying again", exc)
            else:
                self._failures.succeeded()
            self._stopped.wait(self._interval)

    def stop(self) -> None:
        self._stopped.set()

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()


class Lifecycle:
    """One worker's loops and what they share: the heartbeats the health checks read, and
    whether the circuit keeps every call from the API (set by housekeeping, read by the gate)."""

    def __init__(self, settings: Settings, services: PerProcess[Services]) -> None:
        self.settings = settings
        self.services = services
        self.heartbeats = Heartbeats()
        self.api_blocked = threading.Event()
        self._housekeeper: Housekeeper | None = None
        self._gate: Any = None
        self._paused = False
        self._server: MonitoringServer | None = None

    def install(self, app: Celery) -> None:
        """Adds the bootsteps that start and stop these loops with the worker."""
        life = self

        class Housekeeping(bootsteps.StartStopStep):
            requires = ("celery.worker.components:Pool",)

            def start(self, worker: Any) -> None:
                life.start_housekeeping()

            def stop(self, worker: Any) -> None:
                life.stop_housekeeping()

        class Monitoring(bootsteps.StartStopStep):
            requires = ("celery.worker.components:Pool",)

            def start(self, worker: Any) -> None:
                life.start_monitoring()

            def stop(self, worker: Any) -> None:
                life.stop_monitoring()

        class ConsumptionGate(bootsteps.StartStopStep):
            requires = ("celery.worker.consumer.tasks:Tasks",)

            def start(self, c: Any) -> None:
                life.start_gate(c)

            def stop(self, c: Any) -> None:
                life.stop_gate()

            shutdown = stop

        app.steps["worker"].add(Housekeeping)
        app.steps["worker"].add(Monitoring)
        app.steps["consumer"].add(ConsumptionGate)

    def housekeeping_tick(self) -> None:
        stores = self.services.get().stores
        self.heartbeats.housekeeping_at = time.monotonic()
        refusal = stores.write_refusal()
        self._tell_refusal(refusal)
        if refusal:
            # It answers, but each step below writes: the gate stops taking messages.
            self.heartbeats.redis_ok_at = time.monotonic()
            return
        if stores.flow.blocked():
            self.api_blocked.set()
        else:
            self.api_blocked.clear()
        stores.outcomes.sample()
        self.heartbeats.redis_ok_at = time.monotonic()
        while stores.retries.move_due() and self._housekeeper and self._housekeeper.running:
            pass
        stores.ordering.queue_due_settles()

    def _tell_refusal(self, refusal: str | None) -> None:
        """One error when Redis starts refusing writes (or for another cause), one line when it
        takes them again; nothing on the ticks between."""
        was, self.heartbeats.writes_refused = self.heartbeats.writes_refused, refusal
        if refusal and refusal != was:
            log.error(
                "Redis refuses writes: %s. Not taking messages until it accepts them; "
                "nothing is lost",
                refusal,
                extra={"redis_refuses_writes": refusal},
            )
        elif was and not refusal:
            log.warning("Redis accepts writes again: taking messages")

    def start_housekeeping(self) -> None:
        self._housekeeper = Housekeeper(
            self.housekeeping_tick, interval=self.settings.scheduler_interval_seconds
        )
        self._housekeeper.start()

    def stop_housekeeping(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.stop()
            self._housekeeper = None

    def start_gate(self, consumer: Any) -> None:
        self._gate = consumer.timer.call_repeatedly(
            self.settings.scheduler_interval_seconds, self.check_gate, (consumer,), priority=10
        )

    def stop_gate(self) -> None:
        if self._gate is not None:
            self._gate.cancel()
            self._gate = None

    def check_gate(self, consumer: Any) -> None:
        queue = self.settings.queue
        self.heartbeats.consumer_at = time.monotonic()
        circuit = self.api_blocked.is_set()
        if consumer.task_consumer is not None:
            blocked = circuit or self.heartbeats.writes_refused is not None
            if blocked and not self._paused:
                self._paused = True
                consumer.cancel_task_queue(queue)
                if circuit:
                    log.warning("circuit open: stopped taking messages from %s", queue)
            elif not blocked and self._paused:
                self._paused = False
                consumer.add_task_queue(queue)
                log.warning("taking messages from %s again", queue)
        self.heartbeats.paused = self._paused and circuit

    def health(self) -> Health:
        # Both loops turn every scheduler interval; a few missed turns is not yet trouble.
        ready_within = max(5.0, 10 * self.settings.scheduler_interval_seconds)
        return assess(self.heartbeats, time.monotonic(), ready_within=ready_within)

    def start_monitoring(self) -> None:
        s = self.settings
        if not s.metrics_port:
            return
        try:
            self._server = MonitoringServer(
                s.metrics_host,
                s.metrics_port,
                registry_for(self.services.get().stores),
                self.health,
            )
        except OSError as exc:
            # Events still flow without the endpoint; a probe that cannot connect says so.
            log.error(
                "cannot serve /metrics, /livez and /readyz on %s:%d (%s): "
                "give each worker on this host its own TAGGING_METRICS_PORT",
                s.metrics_host,
                s.metrics_port,
                exc,
            )
            return
        self._server.start()
        log.info("serving /metrics, /livez and /readyz on %s:%d", s.metrics_host, self._server.port)

    def stop_monitoring(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
