"""Keeping the worker alive when Redis goes away with messages in flight.

After a lost broker connection, Celery 5.7 first `collect()`s the connection, which drops the
transport's client, then closes it. When a BRPOP was in flight the first close of the channel
stops half way, so the second one asks kombu's Redis QoS to push the unacked messages back, and
kombu builds a connection pool from the client that is gone: AttributeError, which Celery
treats as unrecoverable, and the worker exits. Nothing is lost by not restoring there: those
messages are still in kombu's unacked hash in Redis, and its visibility-timeout restore (and
the lost-message scan) hand them out again, so the guard just forgets them locally.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_restore_unacked = kombu_redis.QoS.restore_unacked


def _guarded_restore_unacked(self: Any, client: Any = None) -> Any:
    if client is None and getattr(self.channel.connection, "client", None) is None:
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
