"""A worker survives the broker connection's teardown after Redis goes away mid-flight."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

from tagging_worker.worker.broker_teardown import install_teardown_guard
from tagging_worker.worker.reliable_fetch import Transport
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


def test_closing_a_half_torn_down_reliable_channel_leaves_its_held_message_for_recovery(
    own_redis: OwnRedis,
) -> None:
    """The same state with reliable fetch: closing does not raise, and does not try Redis
    through the lost client; the message stays held by the closing consumer, which stays
    registered, so a live consumer takes it back once that consumer's deadline passes."""
    options = {"fetch_key_prefix": "fetch", "fetch_heartbeat_ttl": 2}
    connection = Connection(own_redis.url, transport=Transport, transport_options=options)
    queue = Queue("teardown", routing_key="teardown")
    connection.Producer().publish({"n": 1}, routing_key="teardown", declare=[queue])
    taken: list[Any] = []
    connection.Consumer(queue, callbacks=[lambda body, m: taken.append(body)]).consume()
    connection.drain_events(timeout=5)
    channel = connection.default_channel
    client = redis.Redis.from_url(own_redis.url)

    connection.transport.client = None
    channel._disconnect_pools()
    channel.close()

    assert channel.closed and taken == [{"n": 1}]
    [held] = client.scan_iter("fetch:teardown:held:*")
    assert client.llen(held) == 1
    assert client.zcard("fetch:teardown:consumers") == 1
    survivor = Connection(own_redis.url, transport=Transport, transport_options=options)
    with survivor.Consumer(queue, callbacks=[lambda body, m: taken.append(body)]):
        survivor.drain_events(timeout=10)
    assert taken == [{"n": 1}, {"n": 1}]
    survivor.release()
    connection.release()


@pytest.mark.parametrize("end", ["ack", "reject"])
def test_a_task_that_ends_after_its_channel_was_torn_down_settles_without_raising(
    end: str, own_redis: OwnRedis
) -> None:
    """A lost connection restores the held messages while their tasks run; each task's ack
    then comes to the old channel, whose connection is gone. kombu's ack would build a client
    from it (AttributeError: Celery's "Unrecoverable error", and the worker exits): the ack
    takes the message out of the held list instead, so it is not delivered again. A task
    whose Redis error became a reject to be delivered again puts it back on the queue, once."""
    options = {"fetch_key_prefix": "fetch", "fetch_heartbeat_ttl": 2}
    connection = Connection(own_redis.url, transport=Transport, transport_options=options)
    queue = Queue("teardown", routing_key="teardown")
    producer = connection.Producer()
    for n in range(2):
        producer.publish({"n": n}, routing_key="teardown", declare=[queue])
    taken: list[Any] = []
    consumer = connection.Consumer(
        queue, callbacks=[lambda body, m: taken.append(m)], prefetch_count=1
    )
    consumer.consume()
    connection.drain_events(timeout=5)
    channel = connection.default_channel
    client = redis.Redis.from_url(own_redis.url)
    own_redis.stop()  # the hand-back at the restore below meets no Redis...
    channel.qos.restore_unacked()
    connection.transport.client = None
    own_redis.start()  # ...and the task ends once Redis is back

    [message] = taken
    if end == "ack":
        message.ack()
    else:
        message.reject(requeue=True)

    assert not list(client.scan_iter("fetch:teardown:held:*")), "nothing held any more"
    queued = [json.loads(raw)["body"] for raw in client.lrange("teardown", 0, -1)]
    assert len(queued) == len(set(queued)) == (1 if end == "ack" else 2)
    connection.release()  # or its fetch keeper goes on renewing it after this Redis is gone
