"""Publish-to-applied latency at a steady load, minus the fake API's own latency.

    .venv/bin/python bench/latency.py [--pool threads] [--concurrency 32] [--latency-ms 50]
        [--loads 0.25 0.5 0.9] [--seconds 15] [--calibrate 4000]

First one worker drains a backlog to find its maximum rate here; then, for each load, events
are published one at a time at that share of the maximum, for `--seconds`, and each event's
time from `publish()` returning to its fate being written in Redis is taken from Redis keyspace
notifications (on a Redis server of the benchmark's own, so no shared server's settings
change). The fake API runs in its own process and answers after `--latency-ms`, which is
subtracted: what is left is the worker's overhead (queueing included).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from benchkit import (
    command_line,
    namespace,
    own_redis,
    settled,
    start_worker,
    stop,
    wait,
    worker_env,
)
from throughput import FakeApi, worker

from tagging_worker.produce.publish import Publisher


def at_load(
    redis_url: str, endpoint: str, pool: str, concurrency: int, rate: float, seconds: float
) -> list[float]:
    """Seconds from publish to fate for every event published at `rate` for `seconds` (one
    event per call: a call's fates hash is written when its event finishes)."""
    with namespace(redis_url) as (prefix, stores):
        published: dict[str, float] = {}
        finished: dict[str, float] = {}
        pubsub = stores.redis.pubsub()
        pubsub.psubscribe(f"__keyspace@0__:{stores.keys.fates('*', '')}")

        listening = threading.Event()
        listening.set()

        def listen() -> None:
            while listening.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message and message["type"] == "pmessage" and message["data"] == b"hset":
                    call_id = message["channel"].decode().split(":")[-2]
                    finished.setdefault(call_id, time.monotonic())

        # Joined before its connection closes: a thread still reading a closed socket would
        # close whichever new connection got its file descriptor.
        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        proc = start_worker(
            worker_env(prefix, endpoint, redis_url, TAGGING_API_RATE_LIMIT="100000"),
            pool,
            concurrency,
        )
        publisher = Publisher.from_settings(stores.settings)
        try:
            publisher.publish({"call_id": "warm-up", "tags": ["x"]})
            wait(lambda: settled(stores) >= 1, timeout=60)
            total = int(rate * seconds)
            start = time.monotonic()
            for n in range(total):
                time.sleep(max(0.0, start + n / rate - time.monotonic()))
                publisher.publish({"call_id": f"load-{n}", "tags": ["有意向"]})
                published[f"load-{n}"] = time.monotonic()
            wait(lambda: all(e in finished for e in published), timeout=300, poll=0.1)
        finally:
            stop([proc])
            listening.clear()
            listener.join()
            pubsub.close()
        return [finished[e] - at for e, at in published.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.25, 0.5, 0.9])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--calibrate", type=int, default=4000, help="events drained to find the maximum"
    )
    args = parser.parse_args()
    fake = FakeApi.start(args.latency_ms)
    rows = []
    try:
        with own_redis("--notify-keyspace-events", "Kh") as redis_url:
            ceiling = worker(fake.endpoint, args.pool, args.concurrency, args.calibrate, redis_url)
            print(f"maximum: {ceiling:,.0f} events/s", flush=True)
            for load in args.loads:
                seconds = at_load(
                    redis_url,
                    fake.endpoint,
                    args.pool,
                    args.concurrency,
                    load * ceiling,
                    args.seconds,
                )
                overhead = sorted(1000 * s - args.latency_ms for s in seconds)
                q = statistics.quantiles(overhead, n=100, method="inclusive")
                rows.append((load, load * ceiling, len(overhead), q[49], q[94], q[98]))
                print(f"load {load:.0%}: p50 {q[49]:.1f} ms p99 {q[98]:.1f} ms", flush=True)
    finally:
        fake.stop()
    print(f"\n`{command_line()}`\n")
    print(
        f"one {args.pool} worker x {args.concurrency}; maximum {ceiling:,.0f} events/s; "
        f"fake API latency {args.latency_ms:g} ms subtracted\n"
    )
    print("| load | events/s | events | p50 overhead | p95 | p99 |")
    print("|---|---|---|---|---|---|")
    for load, rate, n, p50, p95, p99 in rows:
        print(f"| {load:.0%} | {rate:,.0f} | {n:,} | {p50:.1f} ms | {p95:.1f} ms | {p99:.1f} ms |")


if __name__ == "__main__":
    main()
