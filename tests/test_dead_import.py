"""`dead import` and `dead export` against hostile files and paths, as an operator runs them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores
from tests.conftest import run_cli


@pytest.fixture
def other_env(worker_env: dict[str, str], redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """The same queue under another key prefix: an environment to import into."""
    prefix = f"{worker_env['TAGGING_KEY_PREFIX']}-other"
    yield {**worker_env, "TAGGING_KEY_PREFIX": prefix}
    doomed = list(redis_client.scan_iter(f"{prefix}*"))
    if doomed:
        redis_client.delete(*doomed)


def _record(stores: Stores, record_id: str, *, text: str = "refused") -> DeadLetter:
    """A record as the worker writes it (through `prepare`), `text` in its event and detail."""
    event = {"call_id": "call-1", "tags": ["a"], "version": 1, "event_id": record_id, "note": text}
    prepared = stores.dead_letters.prepare(
        record_id=record_id,
        reason=DeadReason.PERMANENT_ERROR,
        detail=f"InvalidParameter.Tags: {text}",
        event=event,
        normalized=event,
        attempts=[],
        first_seen=time.time(),
        task_id=record_id,
    )
    return prepared.letter


def _stored(stores: Stores, record_id: str) -> DeadLetter:
    record = stores.dead_letters.get(record_id)
    assert isinstance(record, DeadLetter), record
    return record


def _ids(env: dict[str, str]) -> list[str]:
    done = run_cli(env, "dead", "list", "--json")
    assert done.returncode == 0, done.stderr
    return [r["id"] for r in json.loads(done.stdout)]


def test_import_refuses_each_bad_line_with_its_number_and_stores_the_good_ones(
    worker_env: dict[str, str], stores: Stores, tmp_path: Path
) -> None:
    good = _record(stores, "e1").as_dict()
    without = {k: v for k, v in good.items() if k not in ("detail",)}
    undated = {k: v for k, v in good.items() if k not in ("died_at",)}
    lines = [
        json.dumps(good),
        json.dumps(without),
        json.dumps(undated),
        json.dumps({**good, "id": "inf", "died_at": float("inf")}),  # Python writes Infinity
        json.dumps({**good, "id": "s", "attempts": "abc"}),
        json.dumps({**good, "id": "ints", "attempts": [1, 2]}),
        json.dumps({**good, "id": "huge", "event": {"blob": "x" * 30_000_000}}),
        json.dumps({**good, "id": "q", "queue": "someone-elses-queue"}),
        json.dumps({**good, "id": "p", "key_prefix": "someone-elses-prefix"}),
        json.dumps(_record(stores, "e2").as_dict()),
    ]
    dump = tmp_path / "hostile.jsonl"
    dump.write_text("\n".join(lines) + "\n", encoding="utf-8")

    done = run_cli(worker_env, "dead", "import", str(dump))

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    refused = [line for line in done.stderr.splitlines() if line.startswith("not imported: ")]
    expected = {
        2: "detail",
        3: "died_at",
        4: "died_at",
        5: "attempts",
        6: "attempts",
        7: "bytes",
        8: "queue",
        9: "key_prefix",
    }
    assert len(refused) == len(expected), done.stderr
    for (number, field), line in zip(expected.items(), refused, strict=True):
        assert line.startswith(f"not imported: line {number}: "), line
        assert field in line, line
    assert "imported 2" in done.stdout
    assert _ids(worker_env) == ["e2", "e1"]
    listed = run_cli(worker_env, "dead", "list", "--reason", "permanent_error")
    assert listed.returncode == 0 and "e1" in listed.stdout, listed.stderr


def test_export_then_import_keeps_every_record_whose_text_holds_unicode_line_breaks(
    worker_env: dict[str, str], other_env: dict[str, str], stores: Stores, tmp_path: Path
) -> None:
    """str.splitlines also splits on U+2028, U+0085 and U+001C: a line is what ends in \\n."""
    for n, text in enumerate(["a\u2028b", "a\x85b", "a\x1cb"]):
        stores.dead_letters.restore(_record(stores, f"e{n}", text=text), replace=False)
    dump = tmp_path / "dead.jsonl"

    exported = run_cli(worker_env, "dead", "export", "--output", str(dump))
    imported = run_cli(other_env, "dead", "import", str(dump), "--json")

    assert exported.returncode == 0 and "exported 3" in exported.stderr, exported.stderr
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["imported"] == 3
    done = run_cli(other_env, "dead", "list", "--json")
    assert json.loads(done.stdout) == [_stored(stores, f"e{n}").as_dict() for n in (2, 1, 0)]


def _non_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"id": "caf\xe9"}\n'.encode("latin-1"))
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: tmp / "missing.jsonl", "No such file"),
        (lambda tmp: tmp, "directory"),
        (_non_utf8, "UTF-8"),
    ],
    ids=["missing", "directory", "not-utf8"],
)
def test_an_unreadable_import_file_is_one_line_naming_it_and_exit_2(
    worker_env: dict[str, str], tmp_path: Path, make: Any, problem: str
) -> None:
    path = make(tmp_path)

    done = run_cli(worker_env, "dead", "import", str(path))

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(path) in done.stderr and problem in done.stderr, done.stderr


@pytest.mark.parametrize(
    "make",
    [lambda tmp: tmp / "no-such-dir" / "dead.jsonl", lambda tmp: tmp],
    ids=["missing-directory", "a-directory"],
)
def test_export_to_an_unwritable_path_is_one_line_naming_it_and_exit_2(
    worker_env: dict[str, str], stores: Stores, tmp_path: Path, make: Any
) -> None:
    stores.dead_letters.restore(_record(stores, "e1"), replace=False)
    path = make(tmp_path)

    done = run_cli(worker_env, "dead", "export", "--output", str(path))

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(path) in done.stderr, done.stderr


def test_a_record_with_only_the_fields_the_schema_requires_is_imported_listed_and_shown(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    minimal = {
        "id": "old-1",
        "reason": "invalid_event",
        "detail": "written by an older version",
        "event": {"tags": []},
        "attempts": [],
        "died_at": 1_764_115_200.0,
    }
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(minimal) + "\n")

    assert run_cli(worker_env, "dead", "import", str(path)).returncode == 0
    listed = run_cli(worker_env, "dead", "list")
    shown = run_cli(worker_env, "dead", "show", "old-1")

    assert listed.returncode == 0 and "old-1" in listed.stdout, listed.stderr
    assert shown.returncode == 0 and "written by an older version" in shown.stdout, shown.stderr
