"""Serving what operators and Kubernetes look at: `/metrics`, `/livez` and `/readyz`.

Counters come from every worker process through prometheus-client's multiprocess files;
what lives in Redis (queue depth, delayed retries, stored dead letters, the API's pace and
circuit) is read at scrape time and is the same whichever worker is scraped: aggregate those
with max(), not sum().
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from tagging_worker.ops.health import Health
from tagging_worker.ops.logs import Repeats
from tagging_worker.ops.status import gather
from tagging_worker.state.stores import Stores

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> None:
    """Before the metrics are made (`create_app`). An operator's directory (a Kubernetes
    emptyDir, say) is emptied of old runs' files; without one, a private temporary directory
    is made and removed at exit. prometheus-client picks how it keeps values when first
    imported, which may have been before the directory was set (Flower imports it, say):
    then it is switched to the multiprocess files here, so import order does not matter."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        made = tempfile.mkdtemp(prefix="tagging-worker-metrics-")
        os.environ[MULTIPROC_ENV] = made
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(made, ignore_errors=True))
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class RedisCollector:
    """The shared state, read from Redis at each scrape."""

    def __init__(self, stores: Stores) -> None:
        self._rt = stores
        self._failures = Repeats(log, "metrics")

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = gather(self._rt)
        except Exception as exc:  # a scrape must answer, even when Redis does not
            self._failures.failed("metrics: could not read Redis (%s)", exc)
            yield GaugeMetricFamily("tagging_redis_up", "Whether Redis answered.", value=0)
            return
        self._failures.succeeded()
        yield GaugeMetricFamily("tagging_redis_up", "Whether Redis answered.", value=1)
        yield GaugeMetricFamily(
            "tagging_redis_writable",
            "Whether Redis takes writes (0: full or a read-only replica; workers pause).",
            value=0 if snapshot["redis_refuses_writes"] else 1,
        )
        yield GaugeMetricFamily(
            "tagging_queue_depth", "Messages waiting on the queue.", value=snapshot["queued"]
        )
        yield GaugeMetricFamily(
            "tagging_delayed_retries",
            "Events waiting in the retry schedule.",
            value=snapshot["delayed_retries"],
        )
        yield GaugeMetricFamily(
            "tagging_unfinished_events",
            "Task messages queued, held by workers or waiting to retry.",
            value=snapshot["unfinished_events"],
        )
        stored = GaugeMetricFamily(
            "tagging_dead_letters_stored",
            "Dead letters waiting for an operator.",
            labels=["reason"],
        )
        for reason, count in snapshot["dead_letters_by_reason"].items():
            stored.add_metric([reason], count)
        yield stored
        api = snapshot["api"]
        yield GaugeMetricFamily(
            "tagging_api_rate", "Current shared pace of API calls (requests/s).", value=api["rate"]
        )
        yield GaugeMetricFamily(
            "tagging_api_rate_limit", "Configured ceiling of the pace.", value=api["rate_limit"]
        )
        yield GaugeMetricFamily(
            "tagging_api_circuit_state",
            "API circuit: 0 closed, 1 half-open (a probe is out), 2 open.",
            value=CIRCUIT_STATES.get(api["circuit"], 2),
        )


def registry_for(stores: Stores) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(RedisCollector(stores))  # type: ignore[arg-type]
    return registry


class MonitoringServer:
    """`/metrics`, `/livez` and `/readyz` on one port, in a daemon thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], Health]
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(registry, health))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tagging-monitoring", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Callable[[], Health]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/livez", "/readyz"):
                state = health()
                ok = state.live if path == "/livez" else state.ready
                body = json.dumps(state.as_dict()).encode()
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b"try /metrics, /livez or /readyz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds are not news."""

    return Handler
