"""Worker memory with 10,000 delayed retries waiting: they live in Redis, not in the worker.

    .venv/bin/python bench/retry_memory.py [--retries 10000]

Starts one `tagging-worker worker` (threads pool) on its own queue and key prefix in the
local Redis, reads its resident memory, parks N retry messages due in an hour, waits, and
reads it again; then removes its keys. Prints the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

import redis

from tagging_worker.messages import build_task_message
from tagging_worker.runtime import Runtime
from tagging_worker.settings import load_settings


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retries", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    namespace = f"bench-retry-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TAGGING_BROKER_URL": args.redis,
        "TAGGING_QUEUE": namespace,
        "TAGGING_KEY_PREFIX": namespace,
        "ACCESS_KEY_ID": "x",
        "ACCESS_KEY_SECRET": "y",
        "TAGGING_API_ENDPOINT": "127.0.0.1:9",
        "TAGGING_API_PROTOCOL": "http",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }
    rt = Runtime(load_settings(broker_url=args.redis, queue=namespace, key_prefix=namespace))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tagging_worker", "worker", "--loglevel=WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(4)
        before = rss_mib(worker.pid)
        redis_before = rt.redis.info("memory")["used_memory"] / 2**20
        for n in range(args.retries):
            message = build_task_message(
                {"call_id": f"call-{n}", "tags": ["x"], "version": 1}, queue=namespace
            )
            rt.retries.schedule(message, delay=3600)
        time.sleep(5)
        after = rss_mib(worker.pid)
        redis_after = rt.redis.info("memory")["used_memory"] / 2**20
        print(f"command: {' '.join(sys.argv)}")
        print(f"delayed retries waiting: {rt.retries.pending()}")
        print(f"worker RSS: {before:.1f} MiB before, {after:.1f} MiB after ({after - before:+.1f})")
        print(f"Redis used_memory: {redis_before:.1f} MiB before, {redis_after:.1f} MiB after")
    finally:
        worker.terminate()
        worker.wait(30)
        client = redis.Redis.from_url(args.redis)
        doomed = [
            *client.scan_iter(f"{namespace}*"),
            *client.scan_iter(f"_kombu.binding*.{namespace}"),
        ]
        if doomed:
            client.delete(*doomed)


if __name__ == "__main__":
    main()
