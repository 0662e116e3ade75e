"""Every store on one Redis connection pool, built in one step from the settings.

Building them costs no round trip (a pool connects on first use and scripts load on first
call), so whoever needs Redis (the worker, a publisher, the CLI, a test) builds all of them
at once and hands on the ones it uses. A prefork child builds its own: it must not share the
parent's sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from tagging_worker.settings import Settings
from tagging_worker.state.connection import connect, refused_writes
from tagging_worker.state.dead_letters import DeadLetterStore
from tagging_worker.state.flow import Flow, FlowPolicy
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Ordering
from tagging_worker.state.outcomes import OutcomeCounters
from tagging_worker.state.retry_schedule import RetrySchedule


@dataclass(frozen=True)
class Stores:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    ordering: Ordering
    dead_letters: DeadLetterStore
    retries: RetrySchedule
    outcomes: OutcomeCounters
    flow: Flow

    @classmethod
    def connect(cls, settings: Settings) -> Stores:
        client = connect(
            settings.broker_url,
            sentinel_master=settings.redis_sentinel_master,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        keys = Keys(settings.key_prefix)
        return cls(
            settings=settings,
            redis=client,
            keys=keys,
            ordering=Ordering(
                client,
                keys,
                queue=settings.queue,
                version_ttl=settings.version_ttl,
                fate_ttl=settings.fate_ttl,
                settle_ms=int(settings.settle_seconds * 1000),
            ),
            dead_letters=DeadLetterStore.from_settings(client, keys, settings),
            retries=RetrySchedule(client, keys, queue=settings.queue),
            outcomes=OutcomeCounters(client, keys),
            flow=Flow(client, keys, FlowPolicy.from_settings(settings)),
        )

    def write_refusal(self) -> str | None:
        """Why Redis refuses writes now (full, or a read-only replica), None while it takes
        them. Other Redis errors (unreachable) are raised."""
        try:
            self.redis.set(self.keys.writable, "1", px=60_000)
        except redis.exceptions.ResponseError as exc:
            return refused_writes(exc)
        return None
