"""The per-process wiring: settings, one Redis pool, one API client and the stores.

Built lazily and rebuilt after a fork, because prefork children must not share the
parent's sockets.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import cached_property

import redis

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.ops.health import Heartbeats
from tagging_worker.settings import Settings, load_settings
from tagging_worker.state.connection import connect
from tagging_worker.state.dead_letters import DeadLetterStore
from tagging_worker.state.flow import Flow, FlowPolicy
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Ordering
from tagging_worker.state.outcomes import OutcomeCounters
from tagging_worker.state.retry_schedule import RetrySchedule


@dataclass
class Runtime:
    settings: Settings
    api_blocked: threading.Event = field(default_factory=threading.Event)
    """Set in the worker's main process while the circuit keeps every call from the API."""
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    """Left by the worker main process's loops, for the health endpoints."""

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(
            self.settings.broker_url,
            sentinel_master=self.settings.redis_sentinel_master,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @cached_property
    def api(self) -> TagsApi:
        return TagsApi(self.settings)

    @cached_property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore.from_settings(self.redis, self.keys, self.settings)

    @cached_property
    def ordering(self) -> Ordering:
        return Ordering(
            self.redis,
            self.keys,
            queue=self.settings.queue,
            version_ttl=self.settings.version_ttl_seconds,
            fate_ttl=self.settings.fate_ttl_seconds,
            settle_ms=int(self.settings.settle_seconds * 1000),
        )

    @cached_property
    def flow(self) -> Flow:
        return Flow(self.redis, self.keys, FlowPolicy.from_settings(self.settings))

    @cached_property
    def retries(self) -> RetrySchedule:
        return RetrySchedule(self.redis, self.keys, queue=self.settings.queue)

    @cached_property
    def outcomes(self) -> OutcomeCounters:
        return OutcomeCounters(self.redis, self.keys)


_lock = threading.Lock()
_current: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), Runtime(load_settings()))
        return _current[1]
