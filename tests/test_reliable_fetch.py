"""Reliable fetch at the transport level: kombu connections on the real Redis, in this process.

Each test's consumers use the test's queue and a short heartbeat TTL, so a consumer that stops
renewing its deadline is taken for dead within seconds.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu.transport
import pytest
import redis
from kombu import Connection, Queue

from tagging_worker.worker import reliable_fetch
from tests.conftest import REDIS_URL, wait_for

TTL = 2.0


@pytest.fixture
def connect(namespace: str) -> Iterator[Callable[[], Connection]]:
    """Connections with the reliable transport on the test's keys; all closed after."""
    made: list[Connection] = []

    def make() -> Connection:
        connection = Connection(
            REDIS_URL,
            transport=reliable_fetch.Transport,
            transport_options={
                "fetch_key_prefix": f"{namespace}:fetch",
                "fetch_heartbeat_ttl": TTL,
            },
        )
        made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.release()


class Inbox:
    """A consumer's received messages, in order, not acknowledged unless a test does it."""

    def __init__(self, connection: Connection, queue: str) -> None:
        self.connection = connection
        self.messages: list[Any] = []
        self.consumer = connection.Consumer(
            Queue(queue, routing_key=queue),
            callbacks=[lambda body, message: self.messages.append(message)],
            accept=["json"],
        )
        self.consumer.consume()

    def drain(self, count: int, *, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            try:
                self.connection.drain_events(timeout=0.2)
            except TimeoutError:
                continue
        assert len(self.messages) >= count, f"got {len(self.messages)} of {count} messages"
        return self.messages


def _publish(connection: Connection, queue: str, *bodies: Any, **options: Any) -> None:
    producer = connection.Producer()
    for body in bodies:
        producer.publish(
            body, routing_key=queue, declare=[Queue(queue, routing_key=queue)], **options
        )


def _held(client: redis.Redis, namespace: str) -> dict[str, list[Any]]:
    """Each consumer's held messages by consumer id (bodies decoded), newest first."""
    prefix = f"{namespace}:fetch:{namespace}:held:"
    return {
        key.decode().removeprefix(prefix): [_body(raw) for raw in client.lrange(key, 0, -1)]
        for key in client.scan_iter(f"{prefix}*")
    }


def _consumers(client: redis.Redis, namespace: str) -> list[str]:
    return [c.decode() for c in client.zrange(f"{namespace}:fetch:{namespace}:consumers", 0, -1)]


def _queued(client: redis.Redis, queue: str) -> list[Any]:
    """The bodies on the queue, next taken first."""
    return [_body(raw) for raw in client.lrange(queue, 0, -1)[::-1]]


def _body(raw: bytes) -> Any:
    return json.loads(base64.b64decode(json.loads(raw)["body"]))


def test_a_taken_message_is_held_by_its_consumer_until_acked_and_never_in_kombus_unacked_hash(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    connection = connect()
    _publish(connection, namespace, {"n": 1})
    inbox = Inbox(connection, namespace)

    [message] = inbox.drain(1)

    assert list(_held(redis_client, namespace).values()) == [[{"n": 1}]]
    assert _consumers(redis_client, namespace) == list(_held(redis_client, namespace))
    assert not redis_client.hexists("unacked", message.delivery_tag)
    message.ack()
    assert _held(redis_client, namespace) == {}
    assert _queued(redis_client, namespace) == []


def test_reject_with_requeue_puts_the_message_back_once_at_the_back_of_the_queue(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    connection = connect()
    _publish(connection, namespace, {"n": 1})
    inbox = Inbox(connection, namespace)
    [first] = inbox.drain(1)
    inbox.consumer.cancel()
    _publish(connection, namespace, {"n": 2})

    first.reject(requeue=True)

    assert _queued(redis_client, namespace) == [{"n": 2}, {"n": 1}]
    assert _held(redis_client, namespace) == {}


def test_closing_gives_held_messages_back_once_in_order_and_retires_the_consumer(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    """A warm shutdown restores what was taken and not acked: exactly once, and nothing left
    for the dead-consumer recovery to deliver a second time."""
    connection = connect()
    _publish(connection, namespace, {"n": 1}, {"n": 2}, {"n": 3})
    inbox = Inbox(connection, namespace)
    inbox.drain(3)
    assert len(next(iter(_held(redis_client, namespace).values()))) == 3

    connection.release()

    assert _queued(redis_client, namespace) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert _held(redis_client, namespace) == {}
    assert _consumers(redis_client, namespace) == []


def test_a_dead_consumers_messages_go_back_once_in_the_order_it_took_them(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    doomed = connect()
    _publish(doomed, namespace, {"n": 1}, {"n": 2}, {"n": 3})
    doomed_inbox = Inbox(doomed, namespace)
    doomed_inbox.drain(3)
    # Dead as far as Redis can tell: its deadline is no longer renewed.
    reliable_fetch._keeper.forget(doomed.default_channel)

    survivor = Inbox(connect(), namespace)
    redelivered = survivor.drain(3, timeout=5 * TTL)

    assert [m.decode() for m in redelivered] == [{"n": 1}, {"n": 2}, {"n": 3}]
    # Should it come back to life: a late ack, and a close that restores what it thinks it
    # still holds, find nothing of it and put nothing back.
    doomed_inbox.messages[0].ack()
    doomed.release()
    assert _queued(redis_client, namespace) == []
    assert list(_held(redis_client, namespace).values()) == [[{"n": 3}, {"n": 2}, {"n": 1}]], (
        "only the survivor holds them"
    )


def test_a_fetch_whose_reply_was_lost_gives_back_what_redis_moved(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    """A dropped BLMOVE connection (kombu's health check drops one that seems stale) can lose
    a reply after Redis moved the message: once that BLMOVE can no longer move anything, the
    consumer puts back what it holds without knowing of it."""
    connection = connect()
    _publish(connection, namespace, {"n": 1})
    inbox = Inbox(connection, namespace)
    channel = connection.default_channel
    connection.transport.cycle.on_poll_start()  # sends the BLMOVE
    wait_for(lambda: _held(redis_client, namespace), what="Redis to move the message")
    channel.client.connection.disconnect()  # the reply is lost with the connection

    [message] = inbox.drain(1, timeout=5 * TTL)

    assert message.decode() == {"n": 1}
    assert list(_held(redis_client, namespace).values()) == [[{"n": 1}]]
    message.ack()
    assert _held(redis_client, namespace) == {}
    assert _queued(redis_client, namespace) == []


def test_messages_published_with_a_priority_are_fetched_and_held_too(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    connection = connect()
    _publish(connection, namespace, {"n": 1}, priority=9)
    assert redis_client.llen(namespace) == 0, "kombu keeps it in a list of its own"
    inbox = Inbox(connection, namespace)

    [message] = inbox.drain(1)

    assert message.decode() == {"n": 1}
    assert list(_held(redis_client, namespace).values()) == [[{"n": 1}]]


def test_consuming_without_acks_or_several_queues_is_kombus_own_brpop(
    connect: Callable[[], Connection], namespace: str, redis_client: redis.Redis
) -> None:
    connection = connect()
    _publish(connection, namespace, {"n": 1})
    received: list[Any] = []
    queue = Queue(namespace, routing_key=namespace)
    with connection.Consumer(queue, callbacks=[lambda b, m: received.append(b)], no_ack=True):
        connection.drain_events(timeout=5)

    assert received == [{"n": 1}]
    assert _held(redis_client, namespace) == {}
    assert _consumers(redis_client, namespace) == []


@pytest.mark.parametrize(
    "url, transport",
    [
        ("redis://127.0.0.1:6379/0", reliable_fetch.Transport),
        ("rediss://127.0.0.1:6380/0", reliable_fetch.Transport),
        (
            "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380",
            reliable_fetch.SentinelTransport,
        ),
    ],
)
def test_redis_url_schemes_resolve_to_the_reliable_transports(
    url: str, transport: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kombu.transport, "TRANSPORT_ALIASES", {**kombu.transport.TRANSPORT_ALIASES})
    monkeypatch.setattr(kombu.transport, "_transport_cache", {"redis": object, "sentinel": object})

    reliable_fetch.install_reliable_fetch()

    assert Connection(url).get_transport_cls() is transport
