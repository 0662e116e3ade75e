"""A bare consumer of the worker's queue on the worker's own broker connection (`create_app`),
in a process of its own, so a test can have it die at a chosen point.

    python -m tests.fetch_consumer MODE [--ttl SECONDS] [--global-keyprefix PREFIX]

Settings come from the environment, as a worker's do. MODE:

- `die_after_pop`: SIGKILLed the moment Redis has handed a message over, before kombu's
  bookkeeping (or anything else) has seen it: the BRPOP boundary.
- `die_holding`: SIGKILLed once a message is delivered and recorded, not acknowledged.
- `receive`: prints the task id of the first message, acknowledges it and exits 0; exits 1 if
  none came within `--seconds`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from kombu import Queue

from tagging_worker.settings import load_settings
from tagging_worker.worker.app import create_app


def _die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["die_after_pop", "die_holding", "receive"])
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--global-keyprefix", default="")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    settings = load_settings()
    app = create_app(settings)
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "fetch_heartbeat_ttl": args.ttl,
        **({"global_keyprefix": args.global_keyprefix} if args.global_keyprefix else {}),
    }
    received: list[str] = []

    def on_message(body: Any, message: Any) -> None:
        if args.mode == "die_holding":
            _die()
        received.append(str(message.headers.get("id")))
        message.ack()

    with app.connection_for_read() as connection:
        if args.mode == "die_after_pop":
            connection.transport._deliver = _die
        queue = Queue(settings.queue, routing_key=settings.queue)
        with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + args.seconds
            while not received and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    continue
    if not received:
        return 1
    print(received[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
