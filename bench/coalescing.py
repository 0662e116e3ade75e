"""API calls per burst of updates to one call: newest-wins lets the worker skip the rest.

    .venv/bin/python bench/coalescing.py [--bursts 20] [--updates 100] [--concurrency 16]

`--bursts` calls each get `--updates` tag updates (versions shuffled), published two ways:
all at once (`publish_many`, as a CRM sync does) while a worker is running, one `publish()`
at a time as fast as Python can, and one every `--gap-ms` (a trickle: each update may find
the previous one already applied, so calls can only be saved while one is in flight). The fake API
(latency 50 ms, in this process) counts the calls it receives per call id; each call must end
with the tags of its newest version.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from benchkit import (
    KEY_ID,
    SECRET,
    command_line,
    namespace,
    settled,
    start_worker,
    stop,
    wait,
    worker_env,
)

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher


def run(
    api: FakeAlibabaApi, bursts: int, updates: int, concurrency: int, bulk: bool, gap: float
) -> list[int]:
    api.reset()
    rng = random.Random(7)
    with namespace() as (prefix, stores):
        worker = start_worker(
            worker_env(prefix, api.endpoint, TAGGING_API_RATE_LIMIT="100000"),
            "threads",
            concurrency,
        )
        publisher = Publisher.from_settings(stores.settings)
        try:
            publisher.publish({"call_id": "warm-up", "tags": ["x"]})
            wait(lambda: settled(stores) >= 1, timeout=60)
            for b in range(bursts):
                versions = rng.sample(range(1, updates + 1), updates)
                events = [
                    {"call_id": f"burst-{b}", "tags": [f"v{v}"], "version": v} for v in versions
                ]
                if bulk:
                    publisher.publish_many(events)
                else:
                    for event in events:
                        publisher.publish(event)
                        time.sleep(gap)
            wait(lambda: settled(stores) >= 1 + bursts * updates, timeout=600, poll=0.1)
        finally:
            stop([worker])
    tags = api.all_tags()
    wrong = [b for b in range(bursts) if tags.get(f"burst-{b}") != [f"v{updates}"]]
    assert not wrong, f"bursts without their newest tags: {wrong}"
    per_call: dict[str, int] = {}
    for call in api.calls():
        if call.call_id and call.call_id.startswith("burst-"):
            per_call[call.call_id] = per_call.get(call.call_id, 0) + 1
    return [per_call.get(f"burst-{b}", 0) for b in range(bursts)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args()
    ways = (
        ("publish_many, all at once", True, 0.0),
        ("publish, one by one", False, 0.0),
        (f"publish, one every {args.gap_ms:g} ms", False, args.gap_ms / 1000),
    )
    api = FakeAlibabaApi(credentials={KEY_ID: SECRET}, latency_ms=50).start()
    try:
        rows = [
            (how, run(api, args.bursts, args.updates, args.concurrency, bulk, gap))
            for how, bulk, gap in ways
        ]
    finally:
        api.stop()
    print(f"\n`{command_line()}`\n")
    print(
        f"{args.bursts} bursts of {args.updates} updates to one call; one threads worker "
        f"x {args.concurrency}; every call ended with its newest tags\n"
    )
    print("| published with | API calls per burst: mean | min | max |")
    print("|---|---|---|---|")
    for how, calls in rows:
        print(f"| {how} | {statistics.mean(calls):.1f} | {min(calls)} | {max(calls)} |")


if __name__ == "__main__":
    main()
