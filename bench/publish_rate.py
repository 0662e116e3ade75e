"""How fast Python producers can publish: one `publish()` per event, and `publish_many()`.

    .venv/bin/python bench/publish_rate.py [--single 5000] [--bulk 100000] [--chunk 1000]

Every event is validated and registered for newest-wins (its version recorded as pending)
in the same round trip that queues it, exactly as producers publish in production. No worker
runs; the benchmark's keys are deleted after.
"""

from __future__ import annotations

import argparse
import time

from benchkit import command_line, namespace

from tagging_worker.produce.publish import Publisher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=5_000)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    args = parser.parse_args()
    with namespace() as (_, stores):
        publisher = Publisher.from_settings(stores.settings)
        started = time.perf_counter()
        for n in range(args.single):
            publisher.publish({"call_id": f"single-{n}", "tags": ["有意向"], "source": "crm"})
        single = args.single / (time.perf_counter() - started)

        events = [
            {"call_id": f"bulk-{n}", "tags": ["有意向"], "source": "crm"} for n in range(args.bulk)
        ]
        started = time.perf_counter()
        publisher.publish_many(events, chunk=args.chunk)
        bulk = args.bulk / (time.perf_counter() - started)
        queued = stores.redis.llen(stores.settings.queue)

    print(f"\n`{command_line()}`\n")
    print("| how | events | events/s | target |")
    print("|---|---|---|---|")
    print(f"| `publish()` one at a time | {args.single:,} | {single:,.0f} | |")
    print(f"| `publish_many()`, chunks of {args.chunk:,} | {args.bulk:,} | {bulk:,.0f} | ≥ 5,000 |")
    print(f"\n{queued:,} messages were on the queue at the end")


if __name__ == "__main__":
    main()
