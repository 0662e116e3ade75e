"""Liveness and readiness from heartbeats the worker's threads leave (pure decisions).

Live: the worker process still runs its loops (a Redis outage is not a reason to restart it).
Ready: Redis answers and takes writes, and the consumer loop is turning, so messages are
being taken, or deliberately not taken while the API circuit is open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

LIVENESS_STALE_AFTER = 60.0
"""Seconds without housekeeping after which the process counts as hung (a Redis call that
hangs until its socket timeout must not look like one)."""
STARTUP_GRACE = 120.0
"""Seconds a starting worker is live before its loops have turned once."""


@dataclass
class Heartbeats:
    """Monotonic times written by the housekeeper and the consumer's timer."""

    started_at: float = field(default_factory=time.monotonic)
    housekeeping_at: float | None = None
    redis_ok_at: float | None = None
    consumer_at: float | None = None
    paused: bool = False
    """Not taking messages because the API circuit is open."""
    writes_refused: str | None = None
    """Why Redis refuses writes (full, read-only), while it does: no message is taken."""


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    problems: tuple[str, ...]
    paused: bool
    writes_refused: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "live": self.live,
            "ready": self.ready,
            "problems": list(self.problems),
            "paused_by_circuit": self.paused,
            "redis_refuses_writes": self.writes_refused,
        }


def assess(beats: Heartbeats, now: float, *, ready_within: float) -> Health:
    """`ready_within`: seconds since Redis last answered, and since the consumer loop last
    turned, for the worker to count as ready."""

    def within(at: float | None, seconds: float) -> bool:
        return at is not None and now - at <= seconds

    starting = now - beats.started_at <= STARTUP_GRACE
    problems = []
    live = within(beats.housekeeping_at, LIVENESS_STALE_AFTER) or (
        beats.housekeeping_at is None and starting
    )
    if not live:
        problems.append("the housekeeping loop has stopped")
    if not within(beats.redis_ok_at, ready_within):
        problems.append("Redis is not answering")
    elif beats.writes_refused:
        problems.append(f"Redis refuses writes: {beats.writes_refused}")
    if not within(beats.consumer_at, ready_within):
        problems.append("the consumer is not taking messages")
    return Health(
        live=live,
        ready=live and not problems,
        problems=tuple(problems),
        paused=beats.paused,
        writes_refused=beats.writes_refused,
    )
