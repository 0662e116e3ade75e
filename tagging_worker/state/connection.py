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
