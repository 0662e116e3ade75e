"""What Redis keeps, and for how long: bytes per queued event, per delayed retry, per dead
letter, and kept per finished event, with a week extrapolated from them.

    .venv/bin/python bench/redis_footprint.py [--events 200000] [--calls 50000]
        [--queued 20000] [--retries 5000] [--dead 5000] [--pool prefork] [--concurrency 32]

On a Redis server of the benchmark's own (its memory is the benchmark's alone), with the
default settings:
- queued: events published with no worker running (the message on the queue plus what
  publishing registers for its call), against the size of the message itself;
- delayed retries and dead letters: events run in this process (`InlineWorker`) against a fake
  API that answers each with a transient error (`SignatureNonceUsed`, known not applied) or a
  permanent one (`InvalidParameter`);
- finished: a worker drains a steady stream of `--events` events over `--calls` calls (each
  call's versions in order, calls interleaved), then stops; what is left is what finished
  events cost until it expires. Only the API budget is raised from its default (50/s, which
  would pace the drain and change nothing kept). Each key family is measured with
  `MEMORY USAGE`, and what `used_memory` grew beyond their sum (the keyspace's tables, expiry
  entries) is shared out per key. A week is then that cost per event (or per call) times the
  events (or calls) still remembered: those of the last `TAGGING_FATE_TTL_SECONDS` (fates) or
  `TAGGING_VERSION_TTL_SECONDS` (a call's versions).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from benchkit import (
    KEY_ID,
    SECRET,
    command_line,
    namespace,
    own_redis,
    settled,
    start_worker,
    stop,
    wait,
    worker_env,
)

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import Settings
from tagging_worker.state.stores import Stores
from tagging_worker.worker.inline import InlineWorker
from tagging_worker.worker.wiring import Services

WEEK = 7 * 86_400
TAGS = ["有意向", "需跟进", "回访"]


@dataclass(frozen=True)
class Family:
    """Keys of one shape (`call:*:applied`): how many there are and the bytes they take."""

    name: str
    keys: int
    bytes: int


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def family_of(key: str, prefix: str) -> str:
    """The key's shape with its event, call or record id replaced by `*`."""
    parts = key.removeprefix(prefix + ":").split(":")
    if parts[0] == "fate":
        return "fate:*"
    if parts[0] == "call":
        return ":".join(["call", "*", *parts[2:]])
    if parts[0] == "dead" and len(parts) > 2:
        return f"dead:{parts[1]}:*"
    return ":".join(parts)


def families(client: redis.Redis, prefix: str) -> list[Family]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    batch: list[str] = []

    def measure() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute(), strict=True):
            name = family_of(key, prefix)
            counts[name] += 1
            sizes[name] += size or 0
        batch.clear()

    for raw in client.scan_iter(f"{prefix}:*", count=5000):
        batch.append(raw.decode())
        if len(batch) == 5000:
            measure()
    measure()
    return [Family(name, counts[name], sizes[name]) for name in sorted(counts)]


def grown(client: redis.Redis, before: int, act: Callable[[], object]) -> int:
    act()
    time.sleep(0.2)
    return used(client) - before


def queued_cost(redis_url: str, count: int) -> tuple[float, float]:
    """Bytes of Redis per queued event, and the average size of its message."""
    with namespace(redis_url) as (prefix, stores):
        publisher = Publisher.from_settings(stores.settings)
        before = used(stores.redis)
        delta = grown(stores.redis, before, lambda: publisher.publish_many(stream(count, count)))
        sample = stores.redis.lrange(prefix, 0, 999)
        return delta / count, sum(map(len, sample)) / len(sample)


def inline_cost(redis_url: str, api: FakeAlibabaApi, count: int, code: str, status: int) -> float:
    """Bytes of Redis per event left as the API's `code` leaves it, run in this process."""
    with namespace(redis_url, **api_settings(api)) as (_, stores):
        publisher = Publisher.from_settings(stores.settings)
        inline = InlineWorker(Services.build(stores.settings))
        api.add_fault("error", code=code, http_status=status)
        before = used(stores.redis)
        try:
            return grown(stores.redis, before, lambda: run_inline(publisher, inline, count)) / count
        finally:
            api.clear_faults()


def run_inline(publisher: Publisher, inline: InlineWorker, count: int) -> None:
    for start in range(0, count, 1000):
        publisher.publish_many(stream(min(1000, count - start), count, first=start))
        inline.drain()


def api_settings(api: FakeAlibabaApi) -> dict[str, object]:
    return {
        "api_endpoint": api.endpoint,
        "api_protocol": "http",
        "access_key_id": KEY_ID,
        "access_key_secret": SECRET,
    }


def stream(count: int, calls: int, first: int = 0) -> Iterator[dict[str, object]]:
    """Events `first` to `first + count` of a stream that gives each of `calls` calls its
    versions in order, one call after another, round after round."""
    for n in range(first, first + count):
        yield {
            "call_id": f"call-{n % calls:08d}",
            "version": n // calls + 1,
            "tags": TAGS[: 1 + n % len(TAGS)],
        }


def finished_cost(
    redis_url: str, api: FakeAlibabaApi, args: argparse.Namespace
) -> tuple[list[Family], int, Settings, float]:
    """The key families a drained stream leaves, what `used_memory` grew by, the settings, and
    how many events a second the worker drained."""
    with namespace(redis_url) as (prefix, stores):
        publisher = Publisher.from_settings(stores.settings)
        before = used(stores.redis)
        worker = start_worker(
            worker_env(prefix, api.endpoint, redis_url, TAGGING_API_RATE_LIMIT="100000"),
            args.pool,
            args.concurrency,
        )
        started = time.monotonic()
        try:
            for start in range(0, args.events, 2000):
                wait(lambda: stores.redis.llen(prefix) < 10_000, timeout=600)
                publisher.publish_many(
                    stream(min(2000, args.events - start), args.calls, first=start)
                )
            wait(lambda: settled(stores) >= args.events, timeout=max(600, args.events / 50))
            rate = args.events / (time.monotonic() - started)
            wait(lambda: not unfinished(stores, prefix), timeout=600)
        finally:
            stop([worker])
        time.sleep(1)
        found = families(stores.redis, prefix)
        return found, used(stores.redis) - before, stores.settings, rate


def unfinished(stores: Stores, prefix: str) -> bool:
    """Whether a call still has a lease, a write in doubt or an event on its way."""
    return stores.redis.zcard(stores.keys.settle_index) > 0 or any(
        True for _ in stores.redis.scan_iter(f"{prefix}:call:*:lease", count=5000)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--queued", type=int, default=20_000)
    parser.add_argument("--retries", type=int, default=5_000)
    parser.add_argument("--dead", type=int, default=5_000)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    api = FakeAlibabaApi(credentials={KEY_ID: SECRET}).start()
    try:
        with own_redis("--maxmemory-policy", "noeviction") as redis_url:
            per_queued, message = queued_cost(redis_url, args.queued)
            per_retry = inline_cost(redis_url, api, args.retries, "SignatureNonceUsed", 400)
            per_dead = inline_cost(redis_url, api, args.dead, "InvalidParameter", 400)
            found, growth, settings, rate = finished_cost(redis_url, api, args)
            version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    finally:
        api.stop()

    keys = sum(f.keys for f in found)
    overhead = (growth - sum(f.bytes for f in found)) / max(keys, 1)
    windows = {f.name: window(f.name, settings) for f in found}
    per_event = {
        f.name: (f.bytes + f.keys * overhead) / args.events for f in found if windows[f.name]
    }

    print(f"\n`{command_line()}`\n")
    print(f"Redis {version}, every setting at its default but the API budget\n")
    print("| what | Redis bytes | notes |")
    print("|---|---|---|")
    print(
        f"| a queued event | {per_queued:,.0f} | {per_queued / message:.2f}x its "
        f"message ({message:,.0f} B) |"
    )
    print(f"| a delayed retry | {per_retry:,.0f} | message, schedule entry, its call's state |")
    print(f"| a dead letter | {per_dead:,.0f} | record, indexes, fate |")
    print(
        f"| kept per finished event | {growth / args.events:,.0f} | {args.events:,} events over "
        f"{args.calls:,} calls, drained at {rate:,.0f}/s by one {args.pool} worker "
        f"x {args.concurrency} |"
    )
    print("\n| key family | keys | bytes per key (with table overhead) | kept for |")
    print("|---|---|---|---|")
    for f in found:
        kept = windows[f.name]
        print(
            f"| `{f.name}` | {f.keys:,} | {f.bytes / f.keys + overhead:,.0f} | "
            f"{f'{kept / 3600:,.1f} h after the call' if kept else 'fixed'} |"
        )
    print("\n| rate | Redis after a week, extrapolated |")
    print("|---|---|")
    for per_second in (50, 300):
        total = sum(b * per_second * min(WEEK, windows[name]) for name, b in per_event.items())
        print(f"| {per_second} events/s | {total / 2**30:,.2f} GiB |")


def window(family: str, settings: Settings) -> int:
    """How long a key of `family` outlives its call's last event (s); 0 for fixed keys."""
    if family in ("call:*:fates", "call:*:received", "fate:*"):
        return settings.fate_ttl
    return settings.version_ttl if family.startswith("call:") else 0


if __name__ == "__main__":
    main()
