"""The shared API budget under a real quota: how close to it, how many refusals, how fast a
backlog drains after an outage.

    .venv/bin/python bench/flow_control.py [--quota 150] [--workers 3] [--concurrency 8]
        [--pool threads] [--limit-factor 2] [--warmup 15] [--steady 45]
        [--backlog 20000] [--outage 10] [--latency-ms 20]

The fake API (in this process) answers `Throttling.User` above `--quota` requests in any one
second, like the per-account QPS quota; `--workers` worker processes share one budget whose
configured ceiling is `--limit-factor` times the quota, as when an operator does not know the
quota exactly, so the adaptive rate has to find it. Counts come from the fake API's own log.

1. Steady: from `--warmup` s after the first request, for `--steady` s: successful calls/s
   divided by the quota, and the share of requests refused with Throttling.
2. Outage: the API drops every connection; `--backlog` events are published; after
   `--outage` s it answers again. Reported: requests that reached it while it was down, and the
   time from its return until every event is applied, against the ideal backlog / quota.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quota", type=float, default=150)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--limit-factor", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--steady", type=float, default=45)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--outage", type=float, default=10)
    parser.add_argument("--latency-ms", type=float, default=20)
    args = parser.parse_args()

    api = FakeAlibabaApi(credentials={KEY_ID: SECRET}, latency_ms=args.latency_ms).start()
    api.set_quota(args.quota)
    limit = args.quota * args.limit_factor
    with namespace(api_rate_limit=limit) as (prefix, stores):
        env = worker_env(
            prefix,
            api.endpoint,
            TAGGING_API_RATE_LIMIT=f"{limit:g}",
            TAGGING_RETRY_MAX_ATTEMPTS="50",
            TAGGING_RETRY_CAP_SECONDS="5",
            TAGGING_CIRCUIT_COOLDOWN_SECONDS="2",
        )
        publisher = Publisher(stores.ordering, limits=stores.settings.event_limits)
        steady_events = int(args.quota * (args.warmup + args.steady + 10))
        publisher.publish_many(
            [{"call_id": f"s-{n}", "tags": ["有意向"], "version": 1} for n in range(steady_events)]
        )
        workers = [start_worker(env, args.pool, args.concurrency) for _ in range(args.workers)]
        try:
            wait(lambda: api.calls(), timeout=60)
            first = api.calls()[0].at
            time.sleep(max(0.0, first + args.warmup + args.steady - time.time()))
            window = [c for c in api.calls() if first + args.warmup <= c.at]
            ok = sum(1 for c in window if c.answer == "OK")
            throttled = sum(1 for c in window if c.answer.startswith("Throttling"))
            pace = stores.flow.snapshot()
            wait(lambda: settled(stores) >= steady_events, timeout=600, poll=0.2)

            api.add_fault("close")
            down_at = time.time()
            publisher.publish_many(
                [
                    {"call_id": f"b-{n}", "tags": ["有意向"], "version": 1}
                    for n in range(args.backlog)
                ]
            )
            time.sleep(max(0.0, down_at + args.outage - time.time()))
            api.clear_faults()
            up_at = time.time()
            during = sum(1 for c in api.calls() if down_at <= c.at < up_at)
            total = steady_events + args.backlog
            wait(lambda: settled(stores) >= total, timeout=3600, poll=0.2)
            drained = time.time() - up_at
            dead = stores.dead_letters.count()
            applied = stores.outcomes.snapshot()["applied"]
        finally:
            stop(workers)
            api.stop()

    ideal = args.backlog / args.quota
    print(f"\n`{command_line()}`\n")
    print(
        f"quota {args.quota:g}/s, configured ceiling {limit:g}/s, {args.workers} {args.pool} "
        f"workers x {args.concurrency}, fake API latency {args.latency_ms:g} ms\n"
    )
    print("| measure | result | target |")
    print("|---|---|---|")
    print(
        f"| successful calls/s ÷ quota (steady {args.steady:g} s) | "
        f"{ok / args.steady / args.quota:.3f} | ≥ 0.95 |"
    )
    print(
        f"| throttled share of requests | {throttled / max(1, len(window)):.2%} "
        f"({throttled} of {len(window)}) | ≤ 1 % |"
    )
    print(f"| shared rate at the end of the window | {pace['rate']:.1f}/s | |")
    print(f"| requests reaching the API during a {args.outage:g} s outage | {during} | |")
    print(
        f"| time to drain {args.backlog:,} events after it | {drained:.1f} s "
        f"(ideal {ideal:.1f} s, {ideal / drained:.0%} of it) | |"
    )
    print(f"| events applied / dead-lettered | {applied:,} / {dead} | all / 0 |")


if __name__ == "__main__":
    main()
