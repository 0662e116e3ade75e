"""The console command as scripts use it: subprocesses, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import typer.main

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.cli.main import cli
from tagging_worker.reasons import DeadReason
from tagging_worker.state.stores import Stores
from tests.conftest import queued_events, run_cli


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAGGING_RETRY_FACTOR", "0.5"),
        ("TAGGING_WORKER_POOL", "fibers"),
        ("TAGGING_API_PROTOCOL", "ftp"),
        ("TAGGING_WORKER_CONCURRENCY", "many"),
        ("TAGGING_ERROR_CODES", "{not json"),
        ("TAGGING_ERROR_CODES", '{"Busy": "sometimes"}'),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    worker_env: dict[str, str], variable: str, value: str
) -> None:
    result = run_cli({**worker_env, variable: value}, "worker")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tagging-worker: bad setting {variable}:")
    assert "Traceback" not in result.stderr


def test_celery_command_with_a_bad_setting_also_stops_with_one_line(
    worker_env: dict[str, str],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tagging_worker", "worker"],
        env={**os.environ, **worker_env, "TAGGING_RETRY_MAX_ATTEMPTS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "bad setting TAGGING_RETRY_MAX_ATTEMPTS" in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_values_are_never_echoed_in_setting_errors(worker_env: dict[str, str]) -> None:
    result = run_cli(
        {**worker_env, "TAGGING_API_READ_TIMEOUT_MS": "x", "ACCESS_KEY_SECRET": "s3cr3t-value"},
        "worker",
    )

    assert result.returncode == 2
    assert "s3cr3t-value" not in result.stderr + result.stdout


def test_publish_prints_the_event_id_and_queues_one_message(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    result = run_cli(
        worker_env,
        "publish",
        "--call-id",
        "call-1",
        "--tag",
        "有意向",
        "--tag",
        "需跟进",
        "--version",
        "5",
        "--event-id",
        "ev-1",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ev-1"
    assert redis_client.llen(stores.settings.queue) == 1


def test_publish_reads_json_lines_from_stdin(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    lines = "\n".join(json.dumps({"call_id": f"c{n}", "tags": []}) for n in range(3))

    result = run_cli(worker_env, "publish", "--file", "-", stdin=lines)

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3
    assert redis_client.llen(stores.settings.queue) == 3


def test_publish_splits_json_lines_on_newlines_only_not_on_unicode_line_breaks(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    notes = ["a\u2028b", "c\u0085d", "e\u001cf"]
    lines = "\n".join(
        json.dumps({"call_id": f"c{n}", "tags": [], "note": note}, ensure_ascii=False)
        for n, note in enumerate(notes)
    )

    result = run_cli(worker_env, "publish", "--file", "-", stdin=lines)

    assert result.returncode == 0, result.stderr
    assert [e["note"] for e in queued_events(redis_client, stores.settings.queue)] == notes


def test_publish_refuses_an_invalid_event_with_exit_2_and_publishes_nothing(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    result = run_cli(
        worker_env,
        "publish",
        "--file",
        "-",
        stdin='{"call_id": "ok", "tags": []}\n{"call_id": "", "tags": []}',
    )

    assert result.returncode == 2
    assert "call_id is empty" in result.stderr
    assert redis_client.llen(stores.settings.queue) == 0


LONE = "contains a lone surrogate (not valid Unicode text)"


def _refused_in_one_line(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tagging-worker: ") and reason in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"call_id": "call-\\ud800", "tags": []}', f"call_id {LONE}"),
        ('{"call_id": "c", "tags": ["a", "b", "\\udfff"]}', f"tags[2] {LONE}"),
        ('{"call_id": "c", "tags": "[\\"\\\\ud800\\"]"}', f"tags[0] {LONE}"),
        ('{"call_id": "c", "tags": [], "event_id": "\\udc00"}', f"event_id {LONE}"),
        ('{"call_id": "c", "tags": [], "source": "crm\\ud800"}', f"source {LONE}"),
        ('{"call_id": "c", "tags": [], "crm": {"note": "\\ud800"}}', f"'crm.note' {LONE}"),
        ('{"call_id": "c", "tags": [], "crm": {"\\ud800": 1}}', "extra field name 'crm.\\ud800'"),
    ],
    ids=["call_id", "tag", "tags JSON", "event_id", "source", "extra value", "extra key"],
)
def test_publish_refuses_a_lone_surrogate_from_stdin_in_one_line_naming_the_field(
    worker_env: dict[str, str],
    stores: Stores,
    redis_client: redis.Redis,
    line: str,
    reason: str,
) -> None:
    good = json.dumps({"call_id": "call-ok", "tags": []})

    result = run_cli(worker_env, "publish", "--file", "-", stdin=f"{good}\n{line}\n")

    _refused_in_one_line(result, reason)
    assert redis_client.llen(stores.settings.queue) == 0


def test_publish_refuses_a_lone_surrogate_in_a_file_of_events(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = tmp_path / "events.json"
    events.write_text('[{"call_id": "c1", "tags": []}, {"call_id": "c2", "tags": ["\\udfff"]}]')

    result = run_cli(worker_env, "publish", "--file", str(events))

    _refused_in_one_line(result, f"tags[0] {LONE}")
    assert redis_client.llen(stores.settings.queue) == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--call-id", "call-\udcff", "--tag", "a"], f"call_id {LONE}"),
        (["--call-id", "c", "--tag", "ok", "--tag", "\udcfe"], f"tags[1] {LONE}"),
        (["--call-id", "c", "--tags-json", '["\\ud800"]'], f"tags[0] {LONE}"),
        (["--call-id", "c", "--tag", "a", "--event-id", "e\udcff"], f"event_id {LONE}"),
        (["--call-id", "c", "--tag", "a", "--source", "\udc80"], f"source {LONE}"),
    ],
    ids=["call-id", "tag", "tags-json", "event-id", "source"],
)
def test_publish_refuses_arguments_that_are_not_utf8_in_one_line_naming_the_field(
    worker_env: dict[str, str],
    stores: Stores,
    redis_client: redis.Redis,
    args: list[str],
    reason: str,
) -> None:
    """A lone surrogate in an argument is how Python hands on bytes that are not UTF-8: the
    child gets the raw byte (0xff for "\\udcff")."""
    result = run_cli(worker_env, "publish", *args)

    _refused_in_one_line(result, reason)
    assert redis_client.llen(stores.settings.queue) == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"call_id": "c\xff", "tags": []}', "not UTF-8 text"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[1]", "event must be a JSON object, got int"),
        (b'{"call_id": "c", "tags": [], "crm": ' + b"[" * 20 + b"]" * 20 + b"}", "nests deeper"),
    ],
    ids=["invalid UTF-8", "nested 100,000 deep", "not an object", "extra nested 20 deep"],
)
def test_publish_refuses_an_unreadable_file_of_events_in_one_line(
    worker_env: dict[str, str], stores: Stores, tmp_path: Path, content: bytes, reason: str
) -> None:
    events = tmp_path / "events.json"
    events.write_bytes(content)

    _refused_in_one_line(run_cli(worker_env, "publish", "--file", str(events)), reason)


def test_publish_of_a_missing_file_says_so_in_one_line(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.jsonl"

    _refused_in_one_line(run_cli(worker_env, "publish", "--file", str(missing)), str(missing))


def test_dead_show_of_an_unknown_id_exits_1(worker_env: dict[str, str], stores: Stores) -> None:
    assert run_cli(worker_env, "dead", "show", "nope").returncode == 1
    assert run_cli(worker_env, "dead", "replay", "nope").returncode == 1
    assert run_cli(worker_env, "dead", "delete", "nope").returncode == 1


def test_dead_list_show_and_purge_by_reason(worker_env: dict[str, str], stores: Stores) -> None:
    reasons = [DeadReason.INVALID_EVENT, DeadReason.PERMANENT_ERROR, DeadReason.PERMANENT_ERROR]
    for n, reason in enumerate(reasons):
        stores.dead_letters.add(
            record_id=f"e{n}",
            reason=reason,
            detail="d",
            event={"call_id": f"c{n}"},
            normalized=None,
            attempts=[],
            first_seen=0.0,
            task_id=f"t{n}",
        )

    listed = run_cli(worker_env, "dead", "list", "--reason", "permanent_error", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == ["e2", "e1"]
    shown = run_cli(worker_env, "dead", "show", "e0", "--json")
    assert json.loads(shown.stdout)["event"] == {"call_id": "c0"}
    assert "permanent_error" in run_cli({**worker_env, "COLUMNS": "200"}, "dead", "list").stdout

    purged = run_cli(worker_env, "dead", "purge", "--reason", "permanent_error", "--yes")
    assert purged.returncode == 0 and "deleted 2" in purged.stdout
    assert [r.id for r in stores.dead_letters.list()] == ["e0"]


def test_doctor_passes_when_redis_credentials_and_endpoint_are_fine(
    worker_env: dict[str, str], fake_api: FakeAlibabaApi
) -> None:
    result = run_cli(worker_env, "doctor")

    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout


def test_doctor_says_in_plain_words_what_is_wrong(worker_env: dict[str, str]) -> None:
    env = {
        **worker_env,
        "TAGGING_API_ENDPOINT": "127.0.0.1:9",
        "TAGGING_BROKER_URL": "redis://127.0.0.1:9/0",
        "ACCESS_KEY_SECRET": "",
    }
    result = run_cli(env, "doctor")

    assert result.returncode == 1
    assert "cannot reach the broker" in result.stdout
    assert "cannot connect to 127.0.0.1:9" in result.stdout
    assert "ACCESS_KEY_SECRET" in result.stdout


@pytest.mark.e2e
def test_demo_shows_events_applied_and_a_dead_letter_replayed(namespace: str) -> None:
    env = {
        "COLUMNS": "200",
        "TAGGING_BROKER_URL": os.environ.get("TAGGING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    try:
        result = run_cli(env, "demo", "--namespace", namespace)
    finally:
        # A demo cut short by run_cli's timeout leaves its processes: stop them.
        run_cli(env, "demo", "--stop", "--namespace", namespace)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "dead letter" in result.stdout and "permanent_error" in result.stdout
    assert "InvalidParameter.Tags → OK" in result.stdout
    assert "every call holds its tags" in result.stdout


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every leaf command of the CLI, with its path."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_option_and_argument_of_every_command_says_what_it_is() -> None:
    undescribed = [
        f"{path} {param.name}"
        for path, command in _commands(typer.main.get_command(cli))
        for param in command.params
        if param.name != "help" and not getattr(param, "help", None)
    ]
    assert not undescribed


def test_help_joins_a_docstrings_lines_into_paragraphs_at_80_columns() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tagging_worker", "circuit", "--help"],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "merits: the circuit closes and workers" in " ".join(shown.split())
    assert max(len(line) for line in shown.splitlines()) <= 80
