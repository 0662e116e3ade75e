"""`publish` in a terminal says where to see what became of the event; in a pipe it prints
the ids alone, for scripts."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from tests.conftest import run_cli

PUBLISH = ("publish", "--call-id", "call-hint-0001", "--tag", "有意向")


def test_publish_in_a_terminal_follows_the_id_with_where_to_see_it_on_stderr(
    worker_env: dict[str, str],
) -> None:
    main, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tagging_worker", *PUBLISH],
            env={**os.environ, **worker_env},
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        os.close(terminal)
        shown = os.read(main, 65536).decode()
    finally:
        os.close(main)

    assert result.returncode == 0, result.stderr
    event_id = re.sub(r"\x1b\[[0-9;]*m", "", shown).strip()  # colours, in a terminal
    assert len(event_id) == 36  # the id alone on stdout
    assert "tagging-worker status" in result.stderr
    assert f"dead show {event_id}" in result.stderr
    assert "--help" in result.stderr


def test_publish_in_a_pipe_prints_only_the_ids(worker_env: dict[str, str]) -> None:
    result = run_cli(worker_env, *PUBLISH)

    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and len(result.stdout.strip()) == 36
    assert result.stderr == ""
