"""Where the CPU goes, per event: what limits the worker's throughput on a small machine.

    .venv/bin/python bench/cpu_per_event.py [--pool prefork] [--concurrency 32] [--seconds 8]
        [--log-level WARNING]

1. One worker drains a backlog against the fake API (its own process, 50 ms latency); over
   `--seconds` the CPU time used by the worker's main process, its pool children, the fake API
   and Redis is divided by the events settled.
2. In this process, with no Celery: the CPU time of the task body (`tasks.process`: the checks,
   the newest-wins and budget scripts, the SDK call) per event, and of the bare SDK call
   (`TagsApi.update_tags`) per call, against the fake API with no latency.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchkit import (
    KEY_ID,
    SECRET,
    children,
    command_line,
    namespace,
    settled,
    start_worker,
    stop,
    wait,
    worker_env,
)
from throughput import FakeApi

from tagging_worker.produce.publish import Publisher
from tagging_worker.worker.tasks import Progress, process
from tagging_worker.worker.wiring import Services

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def in_worker(pool: str, concurrency: int, seconds: float, log_level: str) -> dict[str, float]:
    fake = FakeApi.start(50)
    try:
        with namespace() as (prefix, stores):
            n = int(600 * (seconds + 10))
            Publisher.from_settings(stores.settings).publish_many(
                [{"call_id": f"cpu-{i}", "tags": ["有意向"], "version": 1} for i in range(n)]
            )
            env = worker_env(
                prefix,
                fake.endpoint,
                TAGGING_API_RATE_LIMIT="100000",
                TAGGING_LOG_LEVEL=log_level,
            )
            worker = start_worker(env, pool, concurrency)
            fake_pid = fake.proc.pid

            def redis_cpu() -> float:
                info = stores.redis.info("cpu")
                return float(info["used_cpu_sys"] + info["used_cpu_user"])

            def sample() -> tuple[float, ...]:
                kids = sum(cpu_seconds(c) for c in children(worker.pid))
                return (
                    time.monotonic(),
                    settled(stores),
                    cpu_seconds(worker.pid),
                    kids,
                    cpu_seconds(fake_pid),
                    redis_cpu(),
                )

            try:
                wait(lambda: settled(stores) > 300, timeout=120)
                before = sample()
                time.sleep(seconds)
                after = sample()
            finally:
                stop([worker])
    finally:
        fake.stop()
    elapsed, events = after[0] - before[0], after[1] - before[1]
    per_event = [1000 * (a - b) / events for a, b in zip(after[2:], before[2:], strict=True)]
    return {
        "rate": events / elapsed,
        "main": per_event[0],
        "children": per_event[1],
        "fake": per_event[2],
        "redis": per_event[3],
        "cores": sum(per_event) * events / elapsed / 1000,
    }


def task_body(n: int = 1000) -> tuple[float, float]:
    fake = FakeApi.start(0)
    try:
        with namespace(
            api_endpoint=fake.endpoint,
            api_protocol="http",
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
            api_rate_limit=100_000,
        ) as (_, stores):
            sv = Services.build(stores.settings)
            events = [
                {"call_id": f"body-{i}", "tags": ["有意向"], "version": 1, "event_id": f"e-{i}"}
                for i in range(n + 100)
            ]
            for event in events[:100]:  # connections made, scripts loaded
                process(
                    sv, event, None, task_id=event["event_id"], progress=Progress(event["event_id"])
                )
            started = time.process_time()
            for event in events[100:]:
                process(
                    sv, event, None, task_id=event["event_id"], progress=Progress(event["event_id"])
                )
            body = 1000 * (time.process_time() - started) / n
            started = time.process_time()
            for i in range(n):
                sv.api.update_tags(f"bare-{i}", '["有意向"]')
            bare = 1000 * (time.process_time() - started) / n
    finally:
        fake.stop()
    return body, bare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--log-level", default="WARNING", help="the worker's; its log goes to /dev/null"
    )
    args = parser.parse_args()
    w = in_worker(args.pool, args.concurrency, args.seconds, args.log_level)
    body, bare = task_body()
    print(f"\n`{command_line()}`\n")
    print(
        f"one {args.pool} worker x {args.concurrency} (log level {args.log_level}) "
        f"at {w['rate']:,.0f} events/s, "
        f"using {w['cores']:.2f} cores in all\n"
    )
    print("| CPU per event | ms |")
    print("|---|---|")
    print(f"| worker main process (consumer loop, acks, pool dispatch) | {w['main']:.2f} |")
    print(f"| worker pool children (task run by Celery) | {w['children']:.2f} |")
    print(f"| fake API | {w['fake']:.2f} |")
    print(f"| Redis server | {w['redis']:.2f} |")
    print(f"| task body alone, no Celery (`tasks.process`) | {body:.2f} |")
    print(f"| bare SDK call alone (`TagsApi.update_tags`) | {bare:.2f} |")


if __name__ == "__main__":
    main()
