"""The chaos suite: guarantees 1 and 2 under crashes, a Redis restart and a misbehaving API.

5,000 events over 500 calls, versions shuffled and published out of order; the fake API
fails ~10 % of calls transiently, refuses ~1 % of requests permanently (by their content),
throttles and adds latency; two worker
processes, each SIGKILLed once and restarted; the test's own Redis (AOF on) restarted once.
Afterwards every event has exactly one fate, each call holds the tags of its newest version
that was not dead-lettered, exactly the events that met a permanent error are dead, and no
call ever received an older version after a newer one was applied.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tagging_worker.fake_api.server import FakeAlibabaApi
from tagging_worker.outcomes import FATES
from tagging_worker.publish import Publisher
from tagging_worker.runtime import Runtime
from tagging_worker.settings import load_settings
from tests.conftest import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    OwnRedis,
    WorkerProcess,
    wait_for,
    worker_env_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CALLS = 500
EVENTS_PER_CALL = 10
PERMANENT_CODE = "InvalidParameter.Tags"


def test_chaos_every_event_accounted_for_and_newest_wins(
    own_redis: OwnRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeAlibabaApi(credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, latency_ms=40).start()
    api.add_fault(
        "error",
        code=PERMANENT_CODE,
        http_status=400,
        probability=0.01,
        sticky=True,
        message="The specified tag is not allowed.",
    )
    api.add_fault("error", code="InternalError", http_status=500, probability=0.05)
    api.add_fault("error", code="ServiceUnavailable", http_status=503, probability=0.03)
    api.add_fault("close", probability=0.02)
    api.add_fault("throttle", probability=0.03, retry_after_ms=100)
    api.add_fault("latency", probability=0.05, latency_ms=50)
    env = {
        **worker_env_for(own_redis.url, "chaos", api.endpoint),
        "TAGGING_RETRY_CAP_SECONDS": "0.5",
        "TAGGING_RETRY_MAX_ATTEMPTS": "40",
        "TAGGING_VISIBILITY_TIMEOUT_SECONDS": "5",
        "TAGGING_RECOVER_AFTER_SECONDS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rt = Runtime(load_settings())
    workers: list[WorkerProcess] = []

    def start_worker(pool: str) -> WorkerProcess:
        worker = WorkerProcess(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            pool=pool,
            concurrency=8 if pool == "threads" else 2,
        )
        workers.append(worker)
        return worker

    in_flight: list[int] = []
    rng = random.Random(20261124)
    events = [
        {"call_id": f"call-{c:04d}", "tags": [f"v{v}"], "version": v, "event_id": uuid.uuid4().hex}
        for c in range(CALLS)
        for v in rng.sample(range(1, 1_000_000), EVENTS_PER_CALL)
    ]
    rng.shuffle(events)
    started = time.monotonic()
    try:
        first, second = start_worker("threads"), start_worker("prefork")
        publisher = Publisher(rt.ordering, limits=rt.settings.event_limits)
        for start in range(0, len(events), 100):  # trickled, so workers race the producer
            publisher.publish_many(events[start : start + 100])
            time.sleep(0.15)

        for fraction, act in (
            (0.15, lambda: _kill_and_replace(first, start_worker, "threads", rt, in_flight)),
            (0.35, own_redis.restart),
            (0.6, lambda: _kill_and_replace(second, start_worker, "threads", rt, in_flight)),
        ):
            wait_for(
                lambda f=fraction: _settled(rt) >= f * len(events),
                timeout=240,
                what=f"{fraction:.0%} of events settled",
            )
            act()

        try:
            wait_for(lambda: _settled(rt) >= len(events), timeout=120, what="every event settled")
        except AssertionError as exc:
            raise AssertionError(_whereabouts(rt, events)) from exc
        time.sleep(1)  # anything still moving would now show as an extra fate
        elapsed = time.monotonic() - started

        resent = sum(
            int(match) for w in workers for match in re.findall(r"sent again (\d+)", w.log())
        )
        with capsys.disabled():
            _assert_guarantees(rt, api, events, elapsed, in_flight, resent)
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


def _kill_and_replace(
    victim: WorkerProcess,
    start_worker: Callable[[str], WorkerProcess],
    pool: str,
    rt: Runtime,
    in_flight: list[int],
) -> None:
    """SIGKILL a worker while messages are taken and not yet acknowledged (kombu's
    `unacked` records them), noting how many."""
    deadline = time.monotonic() + 20
    while rt.redis.hlen("unacked") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    in_flight.append(int(rt.redis.hlen("unacked")))
    victim.kill()
    start_worker(pool)


def _whereabouts(rt: Runtime, events: list[dict]) -> str:
    """Where the events without a fate are, to make a failure explain itself."""
    lost = [e for e in events if rt.redis.get(rt.keys.fate(e["event_id"])) is None]
    lines = [
        f"{len(lost)} events without a fate; queue {rt.redis.llen('chaos')}, "
        f"delayed retries {rt.retries.pending()}, unacked {rt.redis.hlen('unacked')}"
    ]
    for e in lost[:5]:
        call = e["call_id"]
        parked = [m.partition(b"\n")[0] for m in rt.redis.zrange(rt.keys.parked(call), 0, -1)]
        lines.append(
            f"{call} v{e['version']} {e['event_id']}: applied={rt.ordering.applied_version(call)} "
            f"pending={rt.redis.zrange(rt.keys.pending(call), 0, -1, withscores=True)} "
            f"parked={parked} "
            f"lease={rt.redis.get(rt.keys.lease(call))}"
        )
    return "\n".join(lines)


def _settled(rt: Runtime) -> int:
    try:
        counts = rt.outcomes.snapshot()
    except redis.RedisError:
        return 0
    return sum(counts[fate.value] for fate in FATES)


def _assert_guarantees(
    rt: Runtime,
    api: FakeAlibabaApi,
    events: list[dict],
    elapsed: float,
    in_flight: list[int],
    resent: int,
) -> None:
    counts = rt.outcomes.snapshot()
    calls = api.calls()
    oks = Counter((c.call_id, c.tags[0]) for c in calls if c.answer == "OK")
    print(
        f"\nchaos: {len(events)} events over {CALLS} calls in {elapsed:.1f} s; "
        f"{len(in_flight)} workers SIGKILLed (messages in flight at each kill: {in_flight}), "
        f"Redis restarted once; lost messages sent again: {resent}; outcomes "
        f"{ {f.value: counts[f.value] for f in FATES} }; retried {counts['retried']}; "
        f"API requests {len(calls)} ({Counter(c.answer for c in calls).most_common(8)}); "
        f"events applied more than once (duplicates seen by the API): "
        f"{sum(1 for n in oks.values() if n > 1)}"
    )

    pipe = rt.redis.pipeline(transaction=False)
    for event in events:
        pipe.get(rt.keys.fate(event["event_id"]))
    fates = Counter(raw.decode() if raw else None for raw in pipe.execute())

    # Guarantee 1: exactly one recorded fate per event, and the counters agree.
    assert None not in fates, _whereabouts(rt, events)
    assert sum(counts[f.value] for f in FATES) == len(events)
    assert {f.value: counts[f.value] for f in FATES} == {f.value: fates[f.value] for f in FATES}

    # Exactly the events that met a permanent error are dead-lettered. The fake API refuses
    # by the request's content (sticky), as a real API's validation does, so every copy of a
    # refused event is refused, even one redelivered after a crash.
    by_request = {(e["call_id"], e["tags"][0]): e for e in events}
    refused = {
        by_request[(c.call_id, c.tags[0])]["event_id"] for c in calls if c.answer == PERMANENT_CODE
    }
    dead = {r["id"] for r in rt.dead_letters.list(limit=len(events))}
    assert dead == refused
    assert {r["reason"] for r in rt.dead_letters.list(limit=len(events))} <= {"permanent_error"}

    # Guarantee 2: each call holds its newest version that was not dead-lettered ...
    newest: dict[str, int] = {}
    for event in events:
        if event["event_id"] not in dead:
            newest[event["call_id"]] = max(newest.get(event["call_id"], -1), event["version"])
    held = api.all_tags()
    wrong = {c: (held.get(c), v) for c, v in newest.items() if held.get(c) != [f"v{v}"]}
    assert not wrong, f"{len(wrong)} calls hold the wrong tags, e.g. {list(wrong.items())[:3]}"

    # ... and never received an older version after a newer one was applied.
    applied_max: dict[str, int] = defaultdict(lambda: -1)
    backwards = []
    for c in calls:
        version = int(c.tags[0][1:])
        if version < applied_max[c.call_id]:
            backwards.append(c.call_id)
        if c.answer == "OK":
            applied_max[c.call_id] = max(applied_max[c.call_id], version)
    assert not backwards, [
        [(c.seq, round(c.at, 3), c.tags[0], c.answer) for c in calls if c.call_id == call_id]
        for call_id in backwards[:3]
    ]
