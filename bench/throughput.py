"""Events applied per second by one worker, against a bare loop of SDK calls, same conditions.

    .venv/bin/python bench/throughput.py [--concurrency 8 32] [--pools threads prefork]
                                         [--latency-ms 50] [--seconds 8] [--rounds 2]
                                         [--processes 1]

Both sides call the same fake API (its own process, answering after `--latency-ms`). The bare
side is `--concurrency` threads calling `TagsApi.update_tags` in a loop; the worker side is one
`tagging-worker worker` with that pool and concurrency, draining events published beforehand
(one per call, so nothing coalesces), with every guarantee on; with `--processes P`, P such
workers share the concurrency (one per core, as a host runs them). The two sides alternate,
`--rounds` times, and the table gives the mean of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from benchkit import (
    KEY_ID,
    REDIS_URL,
    SECRET,
    command_line,
    connects,
    free_port,
    namespace,
    settled,
    start_worker,
    stop,
    wait,
    worker_env,
)

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.alibaba.results import ApiSuccess
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings


@dataclass
class FakeApi:
    """The fake API in its own process, so that it does not share a GIL with the bare loop."""

    proc: subprocess.Popen[bytes]
    endpoint: str

    @classmethod
    def start(cls, latency_ms: float) -> FakeApi:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "tagging_worker", "fake-api"),
                *("--port", str(port), "--latency-ms", str(latency_ms)),
            ],
            env={
                **os.environ,
                "FAKE_API_ACCESS_KEY_ID": KEY_ID,
                "FAKE_API_ACCESS_KEY_SECRET": SECRET,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait(lambda: connects(port))
        return cls(proc, f"127.0.0.1:{port}")

    def stop(self) -> None:
        stop([self.proc])


def bare(endpoint: str, concurrency: int, seconds: float) -> float:
    api = TagsApi(
        load_settings(
            api_endpoint=endpoint,
            api_protocol="http",
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
        ).api_config()
    )
    done = [0] * concurrency
    deadline = time.monotonic() + seconds

    def loop(slot: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            assert isinstance(api.update_tags(f"call-bare-{slot}-{n}", '["有意向"]'), ApiSuccess)
            n += 1
        done[slot] = n

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(s,)) for s in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def worker(
    endpoint: str,
    pool: str,
    concurrency: int,
    events: int,
    redis_url: str = REDIS_URL,
    processes: int = 1,
) -> float:
    """Events/s of `processes` workers sharing `concurrency` slots, draining `events`
    published beforehand, from the first fate to the last (so start-up is not counted)."""
    with namespace(redis_url) as (prefix, stores):
        Publisher.from_settings(stores.settings).publish_many(
            [
                {"call_id": f"call-{prefix}-{n}", "tags": ["有意向"], "version": 1}
                for n in range(events)
            ]
        )
        env = worker_env(prefix, endpoint, redis_url, TAGGING_API_RATE_LIMIT="100000")
        procs = [start_worker(env, pool, concurrency // processes) for _ in range(processes)]
        try:
            wait(lambda: settled(stores) > 0, timeout=60)
            first, count_then = time.monotonic(), settled(stores)
            wait(lambda: settled(stores) >= events, timeout=600)
            return (events - count_then) / (time.monotonic() - first)
        finally:
            stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--pools", nargs="+", default=["threads", "prefork"])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes sharing the concurrency"
    )
    args = parser.parse_args()
    fake = FakeApi.start(args.latency_ms)
    rows = []
    try:
        for pool in args.pools:
            for concurrency in args.concurrency:
                bare_rates, worker_rates = [], []
                for _ in range(args.rounds):
                    bare_rates.append(bare(fake.endpoint, concurrency, args.seconds))
                    events = int(bare_rates[-1] * args.seconds)
                    worker_rates.append(
                        worker(
                            fake.endpoint,
                            pool,
                            concurrency,
                            events,
                            processes=args.processes,
                        )
                    )
                b, w = statistics.mean(bare_rates), statistics.mean(worker_rates)
                rows.append((pool, concurrency, b, w))
                print(f"{pool} x{concurrency}: bare {b:,.0f}/s, worker {w:,.0f}/s", flush=True)
    finally:
        fake.stop()
    print(
        f"\n`{command_line()}` (fake API latency {args.latency_ms:g} ms; "
        f"{args.processes} worker process(es) sharing the concurrency)\n"
    )
    print("| pool | concurrency | bare SDK calls/s | worker events/s | ratio |")
    print("|---|---|---|---|---|")
    for pool, concurrency, b, w in rows:
        print(f"| {pool} | {concurrency} | {b:,.0f} | {w:,.0f} | {w / b:.2f} |")


if __name__ == "__main__":
    main()
