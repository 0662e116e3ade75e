"""The chaos suite: guarantees 1 and 2 under crashes, Redis restarts and a misbehaving API.

5,000 events over 500 calls, versions shuffled and published out of order by three kinds of
producer: the Python publisher (some events published twice with the same event id, as a
retrying producer does), bare Celery messages with a version, and bare messages without one
(ordered at first receipt). The fake API fails ~10 % of calls transiently, refuses ~1 % of
requests permanently (by their content), throttles, adds latency, and answers ~3 % with a
gateway timeout or a hang while applying the write after the client gave up. Two worker
processes, each SIGKILLed once while messages are in flight; failpoints kill workers right
after parking, after an API success, after an unknown outcome and before the ack, and dead
workers are replaced; the test's own Redis (AOF, fsync always) restarted once and SIGKILLed
once; an operator replays every dead letter, then exports, deletes and imports them, while
events flow. Afterwards every event has exactly one fate, each call holds the tags of its
newest version that was not dead-lettered, exactly the events that met a permanent error are
dead, and no call was ever sent an older version after a newer one was applied.
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

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.messages import build_task_message
from tagging_worker.produce.publish import Publisher
from tagging_worker.produce.replay import replay_dead_letter
from tagging_worker.reasons import DeadReason
from tagging_worker.settings import load_settings
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.outcomes import FATES
from tagging_worker.state.stores import Stores
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
    api.add_fault("late_apply", probability=0.02, seconds=1.0, answer="504")
    api.add_fault("late_apply", probability=0.01, seconds=2.5, answer="hang")
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
        "TAGGING_FETCH_HEARTBEAT_TTL_SECONDS": "5",
        "TAGGING_SETTLE_SECONDS": "4",
        "TAGGING_EVENT_MAX_AGE_SECONDS": "120",
        "TAGGING_VERSION_TTL_SECONDS": "130",
        "TAGGING_FATE_TTL_SECONDS": "130",
        "TAGGING_FAILPOINTS": FAILPOINTS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stores = Stores.connect(load_settings())
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

    def settled_at_least(fraction: float) -> bool:
        _replace_the_dead(workers, start_worker)
        return _settled(stores) >= fraction * len(events)

    in_flight: list[int] = []
    rng = random.Random(20261124)
    events = _events(rng)
    started = time.monotonic()
    try:
        start_worker("threads")
        start_worker("prefork")
        publisher = Publisher(stores.ordering, limits=stores.settings.event_limits)
        for start in range(0, len(events), 100):  # trickled, so workers race the producers
            _publish(stores, publisher, events[start : start + 100])
            time.sleep(0.15)

        for fraction, act in (
            (0.15, lambda: _kill_and_replace(workers, start_worker, stores, in_flight)),
            (0.3, own_redis.restart),
            (0.45, lambda: _replay_every_dead_letter(stores)),
            (0.55, own_redis.crash),
            (0.6, lambda: _kill_and_replace(workers, start_worker, stores, in_flight)),
            (0.75, lambda: _export_delete_import(stores)),
        ):
            wait_for(
                lambda f=fraction: settled_at_least(f),
                timeout=240,
                what=f"{fraction:.0%} of events settled",
            )
            act()

        try:
            wait_for(lambda: settled_at_least(1.0), timeout=180, what="every event settled")
            wait_for(lambda: _at_rest(stores, workers, start_worker), timeout=60, what="rest")
        except AssertionError as exc:
            raise AssertionError(_whereabouts(stores, events)) from exc
        time.sleep(1)  # anything still moving would now show as an extra fate
        elapsed = time.monotonic() - started

        logs = "\n".join(w.log() for w in workers)
        resent = sum(int(n) for n in re.findall(r"(\d+) message\(s\) it held are back", logs))
        kills = Counter(re.findall(r"failpoint (\w+): killing", logs))
        with capsys.disabled():
            _assert_guarantees(stores, api, events, elapsed, in_flight, resent, kills)
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


FAILPOINTS = "after_park:0.002,after_api_success:0.002,after_api_unknown:0.02,before_ack:0.002"


def _events(rng: random.Random) -> list[dict]:
    """Each event says how it is produced: `publisher` (the Python publisher; `twice`: its
    publish is retried with the same event id), `bare` (a plain Celery message) or `bare
    unversioned` (no version: ordered when first received)."""
    events = []
    for c in range(CALLS):
        for n, v in enumerate(rng.sample(range(1, 1_000_000), EVENTS_PER_CALL)):
            kind = rng.choices(["publisher", "bare", "unversioned"], [70, 15, 15])[0]
            event = {"call_id": f"call-{c:04d}", "event_id": uuid.uuid4().hex}
            if kind == "unversioned":
                event["tags"] = [f"u{c}-{n}"]
            else:
                event.update(tags=[f"v{v}"], version=v)
            events.append({"event": event, "kind": kind, "twice": rng.random() < 0.05})
    rng.shuffle(events)
    return events


def _publish(stores: Stores, publisher: Publisher, batch: list[dict]) -> None:
    by_publisher = [e for e in batch if e["kind"] == "publisher"]
    publisher.publish_many(
        [e["event"] for e in by_publisher] + [e["event"] for e in by_publisher if e["twice"]]
    )
    for e in batch:
        if e["kind"] != "publisher":
            for _ in range(2 if e["twice"] else 1):
                stores.redis.lpush("chaos", build_task_message(e["event"], queue="chaos"))


def _replace_the_dead(
    workers: list[WorkerProcess], start_worker: Callable[[str], WorkerProcess]
) -> None:
    """A supervisor: a worker a failpoint killed is replaced by one of the same pool."""
    for worker in list(workers):
        if worker.proc.poll() is not None and not worker.replaced:
            worker.replaced = True
            start_worker(worker.pool)


def _replay_every_dead_letter(stores: Stores) -> None:
    for record in stores.dead_letters.list(limit=10_000):
        replay_dead_letter(stores, record.id)


def _export_delete_import(stores: Stores) -> None:
    records = list(stores.dead_letters.iter_records())
    whole = [r for r in records if isinstance(r, DeadLetter)]
    assert whole == records, "the worker wrote a record its schema refuses"
    for record in whole:
        stores.dead_letters.delete(record.id)
    for record in whole:
        stores.dead_letters.restore(record, replace=False)


def _at_rest(
    stores: Stores, workers: list[WorkerProcess], start_worker: Callable[[str], WorkerProcess]
) -> bool:
    """Nothing queued, delayed or in doubt: every repair that was due has been made."""
    _replace_the_dead(workers, start_worker)
    try:
        return not (
            stores.redis.llen("chaos")
            or stores.retries.pending()
            or stores.redis.zcard(stores.keys.settle_index)
        )
    except redis.RedisError:
        return False


def _kill_and_replace(
    workers: list[WorkerProcess],
    start_worker: Callable[[str], WorkerProcess],
    stores: Stores,
    in_flight: list[int],
) -> None:
    """SIGKILL the oldest live worker while messages are taken and not yet acknowledged
    (held by its consumers: reliable fetch), noting how many, and start one of its pool
    instead."""
    _replace_the_dead(workers, start_worker)
    victim = next(w for w in workers if not w.replaced)
    deadline = time.monotonic() + 20
    while _held(stores) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    in_flight.append(_held(stores))
    victim.replaced = True
    if victim.proc.poll() is None:
        victim.kill()
    start_worker(victim.pool)


def _held(stores: Stores) -> int:
    """Messages taken by workers and not yet acknowledged (reliable fetch's held lists)."""
    held = stores.redis.scan_iter("chaos:fetch:chaos:held:*", count=1000)
    return sum(int(stores.redis.llen(key)) for key in held)


def _fate(stores: Stores, event: dict) -> str | None:
    return stores.ordering.fate(event["call_id"], event["event_id"])


def _whereabouts(stores: Stores, events: list[dict]) -> str:
    """Where the events without a fate are, to make a failure explain itself."""
    lost = [e["event"] for e in events if _fate(stores, e["event"]) is None]
    lines = [
        f"{len(lost)} events without a fate; queue {stores.redis.llen('chaos')}, "
        f"delayed retries {stores.retries.pending()}, held by workers {_held(stores)}, "
        f"calls to settle {stores.redis.zcard(stores.keys.settle_index)}"
    ]
    for e in lost[:5]:
        call = e["call_id"]
        lines.append(
            f"{call} v{e.get('version')} {e['event_id']}: "
            f"applied={stores.ordering.applied_version(call)} "
            f"pending={stores.redis.zrange(stores.keys.pending(call), 0, -1, withscores=True)} "
            f"parked={stores.redis.zrange(stores.keys.parked(call), 0, -1)} "
            f"lease={stores.redis.get(stores.keys.lease(call))}"
        )
    return "\n".join(lines)


def _settled(stores: Stores) -> int:
    try:
        counts = stores.outcomes.snapshot()
    except redis.RedisError:
        return 0
    return sum(counts[fate.value] for fate in FATES)


def _assert_guarantees(
    stores: Stores,
    api: FakeAlibabaApi,
    events: list[dict],
    elapsed: float,
    in_flight: list[int],
    resent: int,
    kills: Counter[str],
) -> None:
    counts = stores.outcomes.snapshot()
    calls = api.calls()
    by_tags = {e["event"]["tags"][0]: e["event"] for e in events}
    version = {
        e["event_id"]: e.get("version")
        if "version" in e
        else int(stores.redis.hget(stores.keys.received(e["call_id"]), e["event_id"]))
        for e in (x["event"] for x in events)
    }
    late = [c for c in calls if c.answer == "OK-LATE"]
    print(
        f"\nchaos: {len(events)} events over {CALLS} calls in {elapsed:.1f} s; producers "
        f"{dict(Counter(e['kind'] for e in events))}, published twice "
        f"{sum(e['twice'] for e in events)}; {len(in_flight)} workers SIGKILLed (messages in "
        f"flight at each kill: {in_flight}); failpoint kills {dict(kills)}; Redis restarted "
        f"once and SIGKILLed once; messages of dead workers put back: {resent}; late applies "
        f"{len(late)}; repairs {counts['repaired']} (failed {counts['repair_failed']}); "
        f"outcomes { {f.value: counts[f.value] for f in FATES} }; retried "
        f"{counts['retried']}; replayed {counts['replayed']}; API requests {len(calls)} "
        f"({Counter(c.answer for c in calls).most_common(9)}); longest time a call held "
        f"older tags than its newest applied version: "
        f"{_longest_regression(calls, by_tags, version):.2f} s"
    )

    fates = Counter(_fate(stores, e["event"]) for e in events)

    # Guarantee 1: exactly one recorded fate per event, and the counters agree.
    assert None not in fates, _whereabouts(stores, events)
    assert sum(counts[f.value] for f in FATES) == len(events)
    assert {f.value: counts[f.value] for f in FATES} == {f.value: fates[f.value] for f in FATES}

    # Exactly the events that met a permanent error are dead-lettered. The fake API refuses
    # by the request's content (sticky), as a real API's validation does, so every copy of a
    # refused event is refused, even one redelivered after a crash or replayed. One that was
    # delivered again (its worker killed between the refusal and the dead letter, or replayed)
    # may instead have lost to a newer version before it reached the API again.
    refused = {by_tags[c.tags[0]]["event_id"] for c in calls if c.answer == PERMANENT_CODE}
    event_of = {e["event"]["event_id"]: e["event"] for e in events}
    dead = {r.id for r in stores.dead_letters.list(limit=len(events))}
    assert dead == {e for e in refused if _fate(stores, event_of[e]) == "dead"}
    outdone = refused - dead
    assert {_fate(stores, event_of[e]) for e in outdone} <= {"stale", "superseded"}
    reasons = {r.reason for r in stores.dead_letters.list(limit=len(events))}
    assert reasons <= {DeadReason.PERMANENT_ERROR}

    # Guarantee 2: each call holds its newest version that was not dead-lettered ...
    newest: dict[str, dict] = {}
    for e in (x["event"] for x in events):
        best = newest.get(e["call_id"])
        if e["event_id"] not in dead and (
            best is None or version[e["event_id"]] > version[best["event_id"]]
        ):
            newest[e["call_id"]] = e
    held = api.all_tags()
    wrong = {c: (held.get(c), e["tags"]) for c, e in newest.items() if held.get(c) != e["tags"]}
    assert not wrong, f"{len(wrong)} calls hold the wrong tags, e.g. {list(wrong.items())[:3]}"

    # ... and no worker ever sent an older version after a newer one was applied (a late
    # write is the API's doing; the repairs above put the newest back after each).
    applied_max: dict[str, int] = defaultdict(lambda: -1)
    backwards = []
    for c in calls:
        if c.answer == "OK-LATE" or not c.tags:
            continue
        v = version[by_tags[c.tags[0]]["event_id"]]
        if v < applied_max[c.call_id]:
            backwards.append(c.call_id)
        if c.answer == "OK":
            applied_max[c.call_id] = max(applied_max[c.call_id], v)
    assert not backwards, [
        [(c.seq, round(c.at, 3), c.tags[0], c.answer) for c in calls if c.call_id == call_id]
        for call_id in backwards[:3]
    ]


def _longest_regression(calls: list, by_tags: dict[str, dict], version: dict[str, int]) -> float:
    """From each late write that put older tags over a newer applied version, to the next
    write of a version at least as new."""
    newest: dict[str, int] = defaultdict(lambda: -1)
    since: dict[str, float] = {}
    longest = 0.0
    for c in calls:
        if c.answer not in ("OK", "OK-LATE"):
            continue
        v = version[by_tags[c.tags[0]]["event_id"]]
        if c.answer == "OK-LATE" and v < newest[c.call_id]:
            since.setdefault(c.call_id, c.at)
        elif v >= newest[c.call_id] and c.call_id in since:
            longest = max(longest, c.at - since.pop(c.call_id))
        if c.answer == "OK":
            newest[c.call_id] = max(newest[c.call_id], v)
    return longest
