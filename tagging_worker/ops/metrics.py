"""The worker's Prometheus metrics, counted where the work happens.

Under the prefork pool that is in child processes, so a worker always runs prometheus-client
in multiprocess mode (`monitoring.prepare_multiprocess_dir`, before this module is imported).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "tagging_events_total",
    "Events by outcome: the fates (applied, stale, superseded, dead) and work done "
    "(retried, held, replayed).",
    ["outcome"],
)
API_CALLS = Counter(
    "tagging_api_calls_total",
    "UpdateOutboundCallTags calls by result (ok, throttled, transient, permanent, systemic) "
    "and Alibaba error code (OK on success).",
    ["result", "code"],
)
API_LATENCY = Histogram(
    "tagging_api_call_duration_seconds",
    "Time of one UpdateOutboundCallTags call, whatever its answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0),
)
DEAD_LETTERS = Counter("tagging_dead_letters_total", "Events dead-lettered, by reason.", ["reason"])
LIMITER_WAIT = Histogram(
    "tagging_rate_limiter_wait_seconds",
    "Time a worker slept for its slot of the shared API budget.",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
HELD = Counter(
    "tagging_held_total",
    "Events sent back to wait without an API call: the budget was spent (rate) or the "
    "circuit was open (circuit).",
    ["why"],
)
