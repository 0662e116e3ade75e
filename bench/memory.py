"""Worker and Redis memory with a large backlog: 100,000 events queued, 10,000 delayed retries.

    .venv/bin/python bench/memory.py [--pool threads] [--concurrency 32] [--queued 100000]
        [--retries 10000] [--settle 10]

On a Redis server of the benchmark's own (so its memory is this benchmark's alone): one worker
starts against a fake API that holds every request (a stall), so the worker takes only what
its slots can hold and the rest of the backlog stays in Redis. The worker's RSS (main process)
and PSS (with its prefork children, shared pages counted once) are read idle, then with the
backlog waiting; Redis used_memory before and after.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchkit import (
    KEY_ID,
    SECRET,
    children,
    command_line,
    namespace,
    own_redis,
    rss_mib,
    start_worker,
    stop,
    worker_env,
)

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.produce.publish import Publisher


def tree_pss_mib(pid: int) -> float:
    """Proportional set size of the worker and its pool children: pages shared between them
    (prefork children share the parent's) are split between the sharers, not counted again."""
    return sum(_pss_mib(p) for p in (pid, *children(pid)))


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--retries", type=int, default=10_000)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds before each memory reading"
    )
    args = parser.parse_args()
    api = FakeAlibabaApi(credentials={KEY_ID: SECRET}).start()
    api.add_fault("stall")
    with own_redis() as redis_url, namespace(redis_url) as (prefix, stores):
        redis_before = stores.redis.info("memory")["used_memory"] / 2**20
        worker = start_worker(
            worker_env(prefix, api.endpoint, redis_url, TAGGING_API_READ_TIMEOUT_MS="600000"),
            args.pool,
            args.concurrency,
        )
        try:
            time.sleep(args.settle)
            idle = rss_mib(worker.pid), tree_pss_mib(worker.pid)
            publisher = Publisher.from_settings(stores.settings)
            publisher.publish_many(
                {"call_id": f"call-{n}", "tags": ["有意向", "需跟进"], "version": 1}
                for n in range(args.queued)
            )
            for n in range(args.retries):
                message = build_task_message(
                    {"call_id": f"retry-{n}", "tags": ["有意向"], "version": 1}, queue=prefix
                )
                stores.retries.schedule(message, delay=3600)
            time.sleep(args.settle)  # the worker has filled its slots, seen the schedule
            loaded = rss_mib(worker.pid), tree_pss_mib(worker.pid)
            queued = stores.redis.llen(prefix)
            waiting = stores.retries.pending()
            redis_after = stores.redis.info("memory")["used_memory"] / 2**20
        finally:
            api.release_stalls()
            api.clear_faults()
            stop([worker])
            api.stop()

    print(f"\n`{command_line()}`\n")
    print(f"one {args.pool} worker x {args.concurrency}, every API request held (a stall)\n")
    print("| measure | idle | with the backlog | target |")
    print("|---|---|---|---|")
    print(f"| worker RSS, main process | {idle[0]:.0f} MiB | {loaded[0]:.0f} MiB | ≤ 200 MB |")
    print(f"| worker PSS, with pool children | {idle[1]:.0f} MiB | {loaded[1]:.0f} MiB | |")
    print(f"| Redis used_memory | {redis_before:.1f} MiB | {redis_after:.1f} MiB | |")
    print(f"| events queued / delayed retries | | {queued:,} / {waiting:,} | |")


if __name__ == "__main__":
    main()
