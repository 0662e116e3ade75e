"""A worker survives the broker connection's teardown after Redis goes away mid-flight."""

from __future__ import annotations

import json

import redis
from kombu import Connection, Queue

from tagging_worker.broker_teardown import install_teardown_guard
from tests.conftest import OwnRedis


def test_closing_a_half_torn_down_channel_leaves_unacked_messages_to_redis(
    own_redis: OwnRedis,
) -> None:
    """The state Celery 5.7 leaves after `collect()` when a BRPOP was in flight: the
    transport has lost its client, the channel is still open and holds an unacked message.
    kombu would build a new pool from the missing client and raise AttributeError, which
    Celery treats as unrecoverable and the worker exits."""
    install_teardown_guard()
    connection = Connection(own_redis.url)
    channel = connection.default_channel
    queue = Queue("teardown", routing_key="teardown")(channel)
    queue.declare()
    connection.Producer(channel).publish({"n": 1}, routing_key="teardown")
    message = queue.get(no_ack=False)
    assert message is not None

    connection.transport.client = None
    channel._disconnect_pools()
    channel.close()

    assert channel.closed
    unacked = redis.Redis.from_url(own_redis.url).hgetall("unacked")
    assert [json.loads(raw)[0]["properties"]["delivery_tag"] for raw in unacked.values()] == [
        message.delivery_tag
    ]
