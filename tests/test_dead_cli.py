"""`tagging-worker dead ...` as operators and scripts use it: subprocesses, JSON, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.event import EventLimits, validate_event
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tagging_worker.worker.retry_state import RetryState
from tests.conftest import queued_event_ids, queued_events, run_cli, wait_for


def _bury(
    stores: Stores,
    event_id: str,
    *,
    call_id: str = "call-1",
    version: int = 1,
    code: str = "InvalidParameter.Tags",
    reason: DeadReason = DeadReason.PERMANENT_ERROR,
    source: str | None = "crm",
) -> None:
    raw = {"call_id": call_id, "tags": ["a"], "version": version, "event_id": event_id}
    update = validate_event(
        {**raw, **({"source": source} if source else {})},
        limits=EventLimits(),
        default_version=0,
        default_event_id="",
    )
    stores.dead_letters.add(
        record_id=event_id,
        reason=reason,
        detail=f"{code}: refused",
        event=raw,
        normalized=update.as_event(),
        attempts=[
            {
                "at": time.time(),
                "code": code,
                "message": "refused",
                "http_status": 400,
                "request_id": "REQ",
                "kind": "permanent",
                "charged": True,
            }
        ],
        first_seen=time.time(),
        task_id=event_id,
    )


def _json(env: dict[str, str], *args: str) -> Any:
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def _stored(stores: Stores, record_id: str) -> DeadLetter:
    record = stores.dead_letters.get(record_id)
    assert isinstance(record, DeadLetter), record
    return record


def test_list_filters_by_reason_code_call_source_and_time(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "e1", code="InvalidParameter.Tags", call_id="call-a")
    _bury(stores, "e2", code="MissingTags", call_id="call-b", source="hook")
    _bury(stores, "e3", reason=DeadReason.EXPIRED, code="Throttling.User", call_id="call-a")

    def listed(*filters: str) -> list[str]:
        return _ids(_json(worker_env, "dead", "list", "--json", *filters))

    assert listed() == ["e3", "e2", "e1"]
    assert listed("--reason", "permanent_error") == ["e2", "e1"]
    assert listed("--code", "MissingTags") == ["e2"]
    assert listed("--call-id", "call-a") == ["e3", "e1"]
    assert listed("--call-id", "call-a", "--reason", "expired") == ["e3"]
    assert listed("--source", "hook") == ["e2"]
    assert listed("--since", "1h") == ["e3", "e2", "e1"]
    assert listed("--until", "1h") == []
    assert listed("--limit", "1", "--offset", "1") == ["e2"]
    bad = run_cli(worker_env, "dead", "list", "--since", "last tuesday")
    assert bad.returncode == 2 and "age like 30m" in bad.stderr


def test_list_writes_json_lines_for_scripts(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    _bury(stores, "e1")
    _bury(stores, "e2")
    done = run_cli(worker_env, "dead", "list", "--jsonl")
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == ["e2", "e1"]
    stored = [redis_client.hget(stores.keys.dead_record(i), "json") for i in ("e2", "e1")]
    assert done.stdout.encode().splitlines() == stored, "each line as stored, byte for byte"


def test_a_long_attempt_history_is_shown_with_its_true_numbers_and_the_gap(
    worker_env: dict[str, str], stores: Stores
) -> None:
    """An event that waited out a long outage made 40 attempts; its record keeps the first
    and the latest: `list` counts 40, `show` numbers them 1 and 31..40 and says what is missing."""
    state = RetryState(received={"call_id": "call-1", "tags": ["a"]}, first_seen=time.time())
    failure = ApiFailure(FailureKind.TRANSIENT, "ServiceUnavailable", "busy", 503, "REQ", 0.1)
    for n in range(40):
        state = state.after(failure, time.time() + n, charged=n < 3)
    stores.dead_letters.add(
        record_id="e40",
        reason=DeadReason.EXPIRED,
        detail="ServiceUnavailable: busy",
        event=state.received,
        normalized=None,
        attempts=state.attempts,
        attempt_counts=state.counts,
        first_seen=state.first_seen,
        task_id="e40",
    )

    narrow = run_cli(worker_env, "dead", "list")
    assert "expired  #40  call-1\n" in narrow.stdout, narrow.stdout
    wide = run_cli({**worker_env, "COLUMNS": "200"}, "dead", "list")
    assert re.search(r"call-1 +40 ", wide.stdout), wide.stdout
    shown = run_cli({**worker_env, "COLUMNS": "200"}, "dead", "show", "e40").stdout
    assert "29 attempts in between not kept" in shown
    assert "│ 40 " in shown and "│ 12 " not in shown


def test_show_gives_the_whole_attempt_history(worker_env: dict[str, str], stores: Stores) -> None:
    _bury(stores, "e1")
    record = _json(worker_env, "dead", "show", "e1", "--json")
    assert record["attempts"][0]["code"] == "InvalidParameter.Tags"
    assert record == _stored(stores, "e1").as_dict()
    shown = run_cli(worker_env, "dead", "show", "e1")
    assert "InvalidParameter.Tags" in shown.stdout and "REQ" in shown.stdout


def test_show_through_a_pipe_breaks_no_cell_of_the_attempts(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "e1", code="InvalidParameter.TagsAreNotDefinedForThisInstance")
    shown = run_cli({**worker_env, "COLUMNS": "80"}, "dead", "show", "e1")
    row = next(line for line in shown.stdout.splitlines() if "REQ" in line)
    assert "InvalidParameter.TagsAreNotDefinedForThisInstance" in row
    assert datetime.fromtimestamp(time.time(), tz=timezone.utc).strftime("%Y-%m-%d") in row


def test_replay_of_ids_and_of_a_filter_and_a_dry_run_that_moves_nothing(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    for n in range(4):
        _bury(stores, f"e{n}", call_id=f"call-{n}", code="X" if n < 2 else "Y")
    queue = stores.settings.queue

    dry = _json(worker_env, "dead", "replay", "--all", "--code", "X", "--dry-run", "--json")
    assert sorted(dry["would_replay"]) == ["e0", "e1"]
    assert redis_client.llen(queue) == 0 and stores.dead_letters.count() == 4

    one = _json(worker_env, "dead", "replay", "e3", "--json")
    assert one == {"replayed": ["e3"], "not_found": [], "forced": [], "refused": []}
    some = _json(worker_env, "dead", "replay", "--all", "--code", "X", "--json")
    assert sorted(some["replayed"]) == ["e0", "e1"]
    assert sorted(queued_event_ids(redis_client, queue)) == ["e0", "e1", "e3"]
    assert _ids(_json(worker_env, "dead", "list", "--json")) == ["e2"]

    gone = run_cli(worker_env, "dead", "replay", "e0")
    assert gone.returncode == 1 and "e0" in gone.stderr


def test_force_gives_an_old_event_a_winning_version_and_says_so(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    _bury(stores, "e1", call_id="call-f", version=3)
    redis_client.set(stores.keys.applied("call-f"), 5)

    done = run_cli(worker_env, "dead", "replay", "e1", "--force")

    assert done.returncode == 0, done.stderr
    assert "forced e1: version 3 -> 6 (applied was 5)" in done.stdout
    [event] = queued_events(redis_client, stores.settings.queue)
    assert event["version"] == 6


def test_edit_fixes_the_event_in_the_editor_before_replaying_it(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis, tmp_path: Path
) -> None:
    _bury(stores, "e1", call_id="call-e")
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "event = json.load(open(path))\n"
        "event['tags'] = ['fixed']\n"
        "json.dump(event, open(path, 'w'))\n"
    )
    env = {**worker_env, "EDITOR": f"{sys.executable} {editor}"}

    done = run_cli(env, "dead", "replay", "e1", "--edit")

    assert done.returncode == 0, done.stderr
    [event] = queued_events(redis_client, stores.settings.queue)
    assert event["tags"] == ["fixed"] and event["event_id"] == "e1"
    assert stores.dead_letters.count() == 0


def test_an_edit_that_breaks_the_event_replays_nothing(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis, tmp_path: Path
) -> None:
    _bury(stores, "e1")
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'w').write('{\"tags\": [1]}')\n")

    done = run_cli(
        {**worker_env, "EDITOR": f"{sys.executable} {editor}"}, "dead", "replay", "e1", "--edit"
    )

    assert done.returncode == 2 and "invalid event" in done.stderr
    assert redis_client.llen(stores.settings.queue) == 0 and stores.dead_letters.count() == 1


def test_export_then_import_moves_dead_letters_to_another_environment(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis, tmp_path: Path
) -> None:
    for n in range(3):
        _bury(stores, f"e{n}", code="X" if n else "Y")
    dump = tmp_path / "dead.jsonl"
    exported = run_cli(worker_env, "dead", "export", "--code", "X", "--output", str(dump))
    assert exported.returncode == 0 and "exported 2" in exported.stderr
    other = {**worker_env, "TAGGING_KEY_PREFIX": f"{worker_env['TAGGING_KEY_PREFIX']}-other"}
    try:
        summary = _json(other, "dead", "import", str(dump), "--json")
        assert summary == {"imported": 2, "skipped": 0, "settled": 0, "bad_lines": []}
        again = _json(other, "dead", "import", str(dump), "--json")
        assert again["skipped"] == 2
        moved = _json(other, "dead", "list", "--json")
        assert moved == [_stored(stores, "e2").as_dict(), _stored(stores, "e1").as_dict()]
        broken = tmp_path / "broken.jsonl"
        broken.write_text(dump.read_text() + "not json\n[1]\n")
        bad = run_cli(other, "dead", "import", str(broken), "--replace")
        assert bad.returncode == 2 and "line 3" in bad.stderr and "line 4" in bad.stderr
    finally:
        doomed = list(redis_client.scan_iter(f"{other['TAGGING_KEY_PREFIX']}*"))
        if doomed:
            redis_client.delete(*doomed)


def test_purge_deletes_what_matches_and_asks_first_unless_told(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "e1", code="X")
    _bury(stores, "e2", code="Y")
    refused = run_cli(worker_env, "dead", "purge", "--code", "X", stdin="n\n")
    assert refused.returncode == 1 and stores.dead_letters.count() == 2
    done = run_cli(worker_env, "dead", "purge", "--code", "X", "--yes")
    assert done.returncode == 0 and "deleted 1" in done.stdout
    assert [r.id for r in stores.dead_letters.list()] == ["e2"]


def test_a_bulk_replay_killed_half_way_leaves_each_record_replayed_or_dead_never_both(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    ids = [f"e{n:03d}" for n in range(200)]
    for record_id in ids:
        _bury(stores, record_id, call_id=f"call-{record_id}")
    queue = stores.settings.queue
    replay = subprocess.Popen(
        [sys.executable, "-m", "tagging_worker", "dead", "replay", "--all", "--rate", "50"],
        env={**os.environ, **worker_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: redis_client.llen(queue) >= 20, what="a part of the replay done")
    replay.send_signal(signal.SIGKILL)
    replay.wait()

    queued = queued_event_ids(redis_client, queue)
    dead = {r.id for r in stores.dead_letters.list(limit=1000)}
    assert 20 <= len(queued) < len(ids), "killed half way"
    assert len(queued) == len(set(queued)), "none replayed twice"
    assert not set(queued) & dead, "none both replayed and still dead"
    assert set(queued) | dead == set(ids), "none lost"


def _plant(redis_client: redis.Redis, stores: Stores, record_id: str, stored: str) -> None:
    """A record as an older version or a hand edit might have left it: indexed, JSON as given."""
    k, died_ms = stores.keys, int(time.time() * 1000)
    redis_client.hset(
        k.dead_record(record_id),
        mapping={"json": stored, "reason": "permanent_error", "call_id": "call-1", "code": ""},
    )
    for index in (k.dead_all, k.dead_by_reason("permanent_error"), k.dead_by_call("call-1")):
        redis_client.zadd(index, {record_id: died_ms})


DAMAGED = {
    "no-detail": json.dumps({"id": "no-detail", "reason": "permanent_error", "died_at": 1.0}),
    "inf": '{"id": "inf", "reason": "permanent_error", "detail": "x", "died_at": Infinity, '
    '"event": {}, "attempts": []}',
    "ints": json.dumps(
        {
            "id": "ints",
            "reason": "permanent_error",
            "detail": "x",
            "died_at": 1.0,
            "event": {},
            "attempts": [1, 2],
        }
    ),
    "not-json": "{not json",
}


@pytest.fixture
def damaged(redis_client: redis.Redis, stores: Stores) -> list[str]:
    """One good record (e1) and the damaged ones, all under reason permanent_error."""
    _bury(stores, "e1")
    for record_id, stored in DAMAGED.items():
        _plant(redis_client, stores, record_id, stored)
    return sorted(DAMAGED)


def test_list_shows_damaged_records_as_damaged_and_the_good_ones_whole(
    worker_env: dict[str, str], damaged: list[str]
) -> None:
    for filters in ([], ["--reason", "permanent_error"], ["--call-id", "call-1"]):
        table = run_cli({**worker_env, "COLUMNS": "200"}, "dead", "list", *filters)
        assert table.returncode == 0, table.stderr
        assert table.stdout.count("damaged") == len(damaged), table.stdout
        assert "e1" in table.stdout and "InvalidParameter.Tags" in table.stdout
        records = _json(worker_env, "dead", "list", "--json", *filters)
        assert sorted(r["id"] for r in records if "damaged" in r) == damaged
        [whole] = [r for r in records if r["id"] == "e1"]
        assert whole["detail"] == "InvalidParameter.Tags: refused"


def test_show_says_why_a_record_is_damaged(worker_env: dict[str, str], damaged: list[str]) -> None:
    for record_id in damaged:
        shown = run_cli(worker_env, "dead", "show", record_id)
        assert shown.returncode == 0, shown.stderr
        assert "damaged: " in shown.stdout, shown.stdout
        assert "damaged" in _json(worker_env, "dead", "show", record_id, "--json")


def test_replay_refuses_each_damaged_record_and_replays_the_good_ones(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis, damaged: list[str]
) -> None:
    dry = run_cli(worker_env, "dead", "replay", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would replay e1" in dry.stdout
    assert all(f"{record_id}: damaged: " in dry.stdout for record_id in damaged), dry.stdout
    assert redis_client.llen(stores.settings.queue) == 0

    done = run_cli(worker_env, "dead", "replay", "--all", "--json")

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["replayed"] == ["e1"]
    assert sorted(d["id"] for d in summary["refused"]) == damaged
    assert queued_event_ids(redis_client, stores.settings.queue) == ["e1"]
    assert stores.dead_letters.count() == len(damaged), "damaged records stay for a look"


def test_a_record_naming_another_queue_is_not_replayed_into_this_one(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    _bury(stores, "e1")
    foreign = {**_stored(stores, "e1").as_dict(), "id": "foreign", "queue": "someone-elses"}
    _plant(redis_client, stores, "foreign", json.dumps(foreign))

    done = run_cli(worker_env, "dead", "replay", "foreign")

    assert done.returncode == 1
    assert "foreign" in done.stderr and "someone-elses" in done.stderr, done.stderr
    assert redis_client.llen(stores.settings.queue) == 0


def test_export_writes_the_good_records_and_names_each_damaged_one(
    worker_env: dict[str, str], damaged: list[str], tmp_path: Path
) -> None:
    dump = tmp_path / "dead.jsonl"

    done = run_cli(worker_env, "dead", "export", "--output", str(dump))

    assert done.returncode == 1, done.stderr
    assert [json.loads(line)["id"] for line in dump.read_text().split("\n")[:-1]] == ["e1"]
    for record_id in damaged:
        assert f"not exported: {record_id} damaged: " in done.stderr, done.stderr


def test_a_record_whose_event_holds_a_lone_surrogate_is_refused_not_replayed(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    """No message can carry it (messages are UTF-8); the record stays for an operator's fix."""
    stores.dead_letters.add(
        record_id="e1",
        reason=DeadReason.INVALID_EVENT,
        detail="call_id contains a lone surrogate",
        event={"call_id": "\ud800", "tags": ["a"]},
        normalized=None,
        attempts=[],
        first_seen=time.time(),
        task_id="e1",
    )

    dry = run_cli(worker_env, "dead", "replay", "e1", "--dry-run")
    done = run_cli(worker_env, "dead", "replay", "e1")

    assert dry.returncode == 0 and "would refuse e1: " in dry.stdout, dry.stderr
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "lone surrogate" in done.stderr and "e1" in done.stderr, done.stderr
    assert redis_client.llen(stores.settings.queue) == 0 and stores.dead_letters.count() == 1


LONG_IDS = ("59c3ff05-3e45-41f6-adc6-197c0000000a", "59c3ff05-3e45-41f6-adc6-197c0000000b")


def test_list_through_a_pipe_at_80_columns_shows_short_ids_that_show_takes(
    worker_env: dict[str, str], stores: Stores
) -> None:
    for record_id in LONG_IDS:
        _bury(stores, record_id, call_id="call-narrow")

    listed = run_cli({**worker_env, "COLUMNS": "80"}, "dead", "list")

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    # Two lines a record, never broken: the line with the id also holds the call.
    records = [line for line in lines if line.startswith("59c3ff05")]
    assert len(records) == 2 and all(line.endswith("  #1  call-narrow") for line in records)
    assert [line for line in lines if line.startswith("    ")] == [
        "    InvalidParameter.Tags: refused"
    ] * 2
    shown = [line.split()[0] for line in lines if line.strip().startswith("59c3ff05")]
    assert sorted(shown) == [i[: len("59c3ff05-3e45-41f6-adc6-197c0000000") + 1] for i in LONG_IDS]
    for short, full in zip(sorted(shown), LONG_IDS, strict=True):
        show = run_cli(worker_env, "dead", "show", short)
        assert show.returncode == 0, show.stderr
        assert show.stdout.startswith(full)


def test_show_refuses_a_start_that_more_than_one_id_shares(
    worker_env: dict[str, str], stores: Stores
) -> None:
    for record_id in LONG_IDS:
        _bury(stores, record_id)

    show = run_cli(worker_env, "dead", "show", "59c3ff05")

    assert show.returncode == 2
    assert "'59c3ff05' starts more than one dead letter's id: give more of it" in show.stderr


def test_replay_and_delete_take_the_short_id_a_list_shows(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "ev-short-replay-1")
    _bury(stores, "ev-short-delete-1", call_id="call-2")

    replayed = run_cli(worker_env, "dead", "replay", "ev-short-r")
    deleted = run_cli(worker_env, "dead", "delete", "ev-short-d")

    assert (replayed.returncode, deleted.returncode) == (0, 0), replayed.stderr + deleted.stderr
    assert stores.dead_letters.count() == 0
    assert queued_event_ids(stores.redis, stores.settings.queue) == ["ev-short-replay-1"]


def test_show_leaves_out_what_the_record_does_not_know(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "ev-no-source", source=None)

    show = run_cli(worker_env, "dead", "show", "ev-no-source")

    assert show.returncode == 0, show.stderr
    assert "call call-1, version 1; first seen" in show.stdout
    assert "None" not in show.stdout


def test_list_titles_a_relative_time_filter_with_its_date(
    worker_env: dict[str, str], stores: Stores
) -> None:
    _bury(stores, "ev-recent")

    listed = run_cli({**worker_env, "COLUMNS": "200"}, "dead", "list", "--since", "2h")

    assert listed.returncode == 0, listed.stderr
    assert re.search(r"since=\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z\)", listed.stdout)
