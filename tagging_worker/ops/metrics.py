"""The worker's Prometheus metrics, counted by a report hook.

Under the prefork pool the work is done in child processes, so a worker runs prometheus-client
in multiprocess mode (`monitoring.prepare_multiprocess_dir`). The metrics are made when the
hook is made, at worker start after that, never at import: who imports prometheus-client
first no longer matters. Label values are plain strings (an enum's `.value`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tagging_worker.alibaba.results import ApiSuccess
from tagging_worker.ops.reports import (
    ApiCalled,
    Applied,
    Dead,
    Held,
    Repaired,
    RepairFailed,
    Report,
    Retrying,
    Skipped,
    WaitedForSlot,
)


class Metrics:
    """The metrics hook. `registry`: where they are registered; none in a worker, whose
    `/metrics` reads every process's files (`monitoring.registry_for`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.events = Counter(
            "tagging_events_total",
            "Events by outcome: the fates (applied, stale, superseded, dead) and work done "
            "(retried, held, replayed).",
            ["outcome"],
            registry=registry,
        )
        self.api_calls = Counter(
            "tagging_api_calls_total",
            "UpdateOutboundCallTags calls by result (ok, throttled, transient, permanent, "
            "systemic) and Alibaba error code (OK on success).",
            ["result", "code"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "tagging_api_call_duration_seconds",
            "Time of one UpdateOutboundCallTags call, whatever its answer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0),
            registry=registry,
        )
        self.dead_letters = Counter(
            "tagging_dead_letters_total",
            "Events dead-lettered, by reason.",
            ["reason"],
            registry=registry,
        )
        self.limiter_wait = Histogram(
            "tagging_rate_limiter_wait_seconds",
            "Time a worker slept for its slot of the shared API budget.",
            buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.held = Counter(
            "tagging_held_total",
            "Events sent back to wait without an API call: the budget was spent (rate) or the "
            "circuit was open (circuit).",
            ["why"],
            registry=registry,
        )

    def __call__(self, record: Report) -> None:
        match record:
            case ApiCalled(result=ApiSuccess() as result):
                self.api_latency.observe(result.duration)
                self.api_calls.labels("ok", "OK").inc()
            case ApiCalled(result=result):
                self.api_latency.observe(result.duration)
                self.api_calls.labels(result.kind.value, result.code).inc()
            case WaitedForSlot():
                self.limiter_wait.observe(record.seconds)
            case Applied():
                self.events.labels("applied").inc()
            case Retrying():
                self.events.labels("retried").inc()
            case Held():
                self.events.labels("held").inc()
                self.held.labels(record.why).inc()
            case Skipped():
                self.events.labels(record.step.value).inc()
            case Dead():
                self.events.labels("dead").inc()
                self.dead_letters.labels(record.reason.value).inc()
            case Repaired():
                self.events.labels("repaired").inc()
            case RepairFailed():
                self.events.labels("repair_failed").inc()
