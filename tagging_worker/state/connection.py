"""The worker's own Redis connection, for the same URL Celery's broker uses.

A plain (`redis://`), TLS (`rediss://`, with `ssl_cert_reqs` and friends in the query) or ACL
(`redis://user:password@...`) URL is read by redis-py itself. A Sentinel URL, as kombu reads it
(`sentinel://:password@host1:26379/0;sentinel://host2:26379`), names the sentinels; the master
comes from them by its name, so a failover moves both Celery and the worker's own state.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from tagging_worker.settings import Settings
from tagging_worker.state.keys import Keys


class WritesRefused(redis.exceptions.RedisError):
    """Redis answers but refuses writes; `str()` says why and what fixes it. A `RedisError`,
    so code that handles Redis trouble handles this too."""


class WritesNotReplicated(redis.exceptions.RedisError):
    """Redis took writes that fewer replicas than asked confirmed in time: a failover now would
    lose them. A `RedisError`, so code that handles Redis trouble handles this too."""


def write_refusal_cause(exc: BaseException) -> str | None:
    """Why Redis refused a write, said so an operator can fix it; None for other errors."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return (
            "Redis is full: it reached maxmemory and its policy evicts nothing (noeviction); "
            "free memory (dead letters, old keys) or raise maxmemory"
        )
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return (
            "Redis is a read-only replica (a failover left this client on it?): point "
            "TAGGING_BROKER_URL at the master, or at its Sentinels"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("NOREPLICAS"):
        return (
            "Redis reaches fewer replicas than its min-replicas-to-write (a failover under "
            "way?): it takes writes again once they are back"
        )
    return None


def refused_writes(exc: redis.exceptions.ResponseError) -> str:
    """`exc`'s cause when it is a refusal of writes; re-raises it otherwise (for use in an
    `except ResponseError` clause)."""
    cause = write_refusal_cause(exc)
    if cause is None:
        raise exc
    return cause


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' addresses, and the master's db, username and password (from the URLs'
    first that gives them), as kombu reads the same `;`-separated list."""
    nodes: list[tuple[str, int]] = []
    master: dict[str, Any] = {}
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        nodes.append((parts.hostname or "127.0.0.1", parts.port or 26379))
        if parts.password and "password" not in master:
            master["password"] = unquote(parts.password)
            if parts.username:
                master["username"] = unquote(parts.username)
        db = parts.path.lstrip("/")
        if db and "db" not in master:
            master["db"] = int(db)
    return nodes, master


def connect(url: str, *, sentinel_master: str | None, **options: Any) -> redis.Redis:
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    if not sentinel_master:
        raise ValueError("a sentinel:// broker URL needs TAGGING_REDIS_SENTINEL_MASTER")
    nodes, master = sentinel_nodes(url)
    return Sentinel(nodes, **options).master_for(sentinel_master, **master, **options)


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
