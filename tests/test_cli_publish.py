"""`tagging-worker publish` refuses what would do harm by accident: the API replaces a call's
whole tag list, so a forgotten --tag must not clear it, and no option is silently dropped."""

from __future__ import annotations

import json

import pytest
import redis

from tagging_worker.state.stores import Stores
from tests.conftest import queued_events, run_cli


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "no tags given: add --tag (repeat for several), --tags-json, or --clear"),
        (("--tag", "a", "--tags-json", '["b"]'), "not --tag and --tags-json"),
        (("--tag", "a", "--clear"), "not --tag and --clear"),
        (("--tags-json", "[]", "--clear"), "not --tags-json and --clear"),
    ],
)
def test_publish_takes_the_tags_from_exactly_one_option(
    worker_env: dict[str, str],
    stores: Stores,
    redis_client: redis.Redis,
    args: tuple[str, ...],
    says: str,
) -> None:
    result = run_cli(worker_env, "publish", "--call-id", "call-1", *args)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr
    assert redis_client.llen(stores.settings.queue) == 0


def test_publish_clears_a_calls_tags_only_when_asked_with_clear(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    result = run_cli(worker_env, "publish", "--call-id", "call-1", "--clear")

    assert result.returncode == 0, result.stderr
    assert [e["tags"] for e in queued_events(redis_client, stores.settings.queue)] == [[]]


def test_publish_from_a_file_refuses_the_options_of_a_single_event(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    event = json.dumps({"call_id": "c1", "tags": ["a"]})

    result = run_cli(worker_env, "publish", "--file", "-", "--tag", "b", stdin=event)

    assert result.returncode == 2
    assert "--file holds whole events: give it without --tag" in result.stderr
    assert redis_client.llen(stores.settings.queue) == 0


@pytest.mark.parametrize("stdin", ["", "\n  \n"])
def test_publish_of_an_empty_stdin_says_there_were_no_events(
    worker_env: dict[str, str], stdin: str
) -> None:
    result = run_cli(worker_env, "publish", "--file", "-", stdin=stdin)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "tagging-worker: stdin: no events in it\n"


def test_a_json_lines_error_names_the_line_it_is_on(
    worker_env: dict[str, str], stores: Stores, redis_client: redis.Redis
) -> None:
    lines = '\n{"call_id": "c1", "tags": []}\n{"call_id": "c2", "tags": [}\n'

    result = run_cli(worker_env, "publish", "--file", "-", stdin=lines)

    assert result.returncode == 2
    assert result.stderr.startswith("tagging-worker: stdin: line 3: not JSON: ")
    assert redis_client.llen(stores.settings.queue) == 0
