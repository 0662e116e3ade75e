"""`status --watch` when its output is a pipe, not a terminal: a fresh snapshot each interval."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tagging_worker.produce.publish import Publisher
from tagging_worker.state.stores import Stores
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

QUEUED_ROW = re.compile(r"^\W*queued\W+(\d+)\W*$")


@contextmanager
def watching(env: dict[str, str], *options: str) -> Iterator[list[str]]:
    """`status --watch` with its output in a pipe; yields the lines it has written so far, read
    as they come, and stops it after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagging_worker", "status", "--watch", "--no-workers", *options],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(stdout), daemon=True).start()
    try:
        yield lines
    finally:
        proc.terminate()
        proc.wait(15)


def _queued(lines: list[str]) -> list[int]:
    """The `queued` row of each table written so far."""
    return [int(m[1]) for m in map(QUEUED_ROW.match, lines) if m]


def test_watch_into_a_pipe_prints_a_fresh_table_each_interval(
    stores: Stores, worker_env: dict[str, str]
) -> None:
    with watching(worker_env, "--interval=0.5") as lines:
        wait_for(lambda: _queued(lines), what="a first snapshot")
        Publisher.from_settings(stores.settings).publish({"call_id": "call-w", "tags": ["a"]})
        wait_for(lambda: _queued(lines)[-1] == 1, what="a snapshot after the publish")

    assert _queued(lines)[0] == 0
    titles = [
        line for line in lines if f"tagging-worker status (queue {stores.settings.queue})" in line
    ]
    assert len(titles) == len(_queued(lines)) >= 2
    assert not [line for line in lines if "\x1b" in line]


def test_watch_json_into_a_pipe_prints_one_object_per_line_each_interval(
    stores: Stores, worker_env: dict[str, str]
) -> None:
    with watching(worker_env, "--json", "--interval=0.5") as lines:
        wait_for(lambda: lines, what="a first snapshot")
        Publisher.from_settings(stores.settings).publish({"call_id": "call-w", "tags": ["a"]})
        wait_for(lambda: json.loads(lines[-1])["queued"] == 1, what="a snapshot after the publish")

    snapshots = [json.loads(line) for line in lines]
    assert snapshots[0]["queued"] == 0
    assert {s["queue"] for s in snapshots} == {stores.settings.queue}
    assert len(snapshots) >= 2
