"""The README's "Try it locally" steps, run as written in one shell session.

Each `$ command` in the section's console blocks runs in the same bash (exports and background
jobs carry over, as in the reader's terminal); the lines under it are what it must print, `...`
standing for anything. The test's own key prefix, queue and loopback port stand in for the
README's `tagging-try` and `8080`, and the README's `.venv/bin/` for this venv.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "Try it locally"


@dataclass
class Step:
    command: str
    expected: list[str]

    def matches(self, output: str) -> bool:
        pattern = ".*?".join(re.escape(part) for part in "\n".join(self.expected).split("..."))
        lines = "\n".join(line.rstrip() for line in output.strip("\n").splitlines())
        return re.fullmatch(pattern, lines, re.DOTALL) is not None


def readme_steps(text: str) -> list[Step]:
    """The `$` commands of the section's console blocks, each with the lines printed under it."""
    section = text.split(f"\n## {SECTION}\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append(Step(line[2:], []))
            else:
                steps[-1].expected.append(line)
    return steps


class Shell:
    """One bash session fed a command at a time, as a reader types them."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Its exit status and output; the timeout only bounds a hung command."""
        assert self._proc.stdin is not None
        marker = f"--done-{uuid.uuid4().hex}--"
        self._proc.stdin.write(f"{command}\nprintf '\\n{marker} %d\\n' $?\n")
        self._proc.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line.startswith(marker):
                return int(line.split()[1]), "".join(output)
            output.append(line)

    def close(self) -> None:
        """Whatever the steps left running in the background goes too."""
        self.run("kill $(jobs -p) 2>/dev/null; wait")
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(30)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TAGGING_", "ACCESS_KEY_", "ALIBABA_CLOUD_ACCESS"))
    }
    env.update(
        TAGGING_BROKER_URL=REDIS_URL,
        TAGGING_METRICS_PORT="0",  # the test's workers do not fight over a port
        COLUMNS="100",  # `dead list` as the README shows it (two lines a record, none wrapped)
    )
    session = Shell(tmp_path, env)
    yield session
    session.close()


@pytest.mark.e2e
def test_the_readme_try_it_locally_steps_work_as_written(namespace: str, shell: Shell) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the README's steps talk to the fake API with curl: install it")
    port = free_port()
    steps = readme_steps(README.read_text())
    assert any("/_fake/faults" in s.command for s in steps)
    assert any("dead replay" in s.command for s in steps)

    for step in steps:
        command = (
            step.command.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
            .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            .replace("--port 8080", f"--port {port}")
            .replace("tagging-try", namespace)
        )
        assert "8080" not in command, f"a port the test did not replace: {command}"
        status, output = shell.run(command)
        if not step.expected:
            assert status == 0, f"{step.command}\n{output}"
            continue
        deadline = time.monotonic() + 60  # a check waits for the background worker
        while not (status == 0 and step.matches(output)) and time.monotonic() < deadline:
            time.sleep(0.2)
            status, output = shell.run(command)
        assert status == 0 and step.matches(output), (
            f"{step.command}\nprinted:\n{output}\nREADME says:\n" + "\n".join(step.expected)
        )
