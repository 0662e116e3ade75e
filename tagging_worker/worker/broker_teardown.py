"""Keeping the worker alive when Redis goes away with messages in flight.

After a lost broker connection, Celery 5.7 first `collect()`s the connection, which drops the
transport's client, then closes it. When a BRPOP was in flight the first close of the channel
stops half way, so the second one asks kombu's Redis QoS to push the unacked messages back, and
kombu builds a connection pool from the client that is gone: AttributeError, which Celery
treats as unrecoverable, and the worker exits. Nothing is lost by not restoring there: the
messages are still in Redis, held by the closing consumer (reliable fetch, which gives them
back when that consumer's deadline passes) or in kombu's unacked hash (its visibility-timeout
restore), so the guard just forgets them locally.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_restore_unacked = kombu_redis.QoS.restore_unacked


def torn_down(channel: Any) -> bool:
    """The channel's transport has lost its client: nothing may build a connection from it."""
    return getattr(channel.connection, "client", None) is None


def _guarded_restore_unacked(self: Any, client: Any = None) -> Any:
    if client is None and torn_down(self.channel):
        log.warning(
            "broker connection torn down: %d unacked message(s) left in Redis for the "
            "visibility-timeout restore",
            len(self._delivered),
        )
        self._delivered.clear()
        return None
    return _restore_unacked(self, client)


def install_teardown_guard() -> None:
    kombu_redis.QoS.restore_unacked = _guarded_restore_unacked
