"""`tagging-worker demo --keep` leaves a worker, the fake API and a dead letter to explore, and
the commands it prints work as printed; `demo --stop` ends what it left."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagging_worker.cli.demo import state_dir
from tests.conftest import REDIS_URL, wait_for

DEMO_ENV = {"COLUMNS": "200", "TAGGING_BROKER_URL": REDIS_URL}


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`tagging-worker demo ARGS`, given time for its own waits (a minute each) on a busy host."""
    return subprocess.run(
        [sys.executable, "-m", "tagging_worker", "demo", *args],
        env={**os.environ, **DEMO_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )


class KeptDemo:
    """What `demo --keep` printed: the exports and the commands to try, run as a user would."""

    def __init__(self, stdout: str) -> None:
        lines = [line.strip() for line in stdout.splitlines()]
        self.exports = [line for line in lines if line.startswith("export ")]
        tried = lines[lines.index("then try:") + 1 :]
        self.commands = [line for line in tried if not line.startswith("stop it:")]
        self.stop = next(line for line in tried if line.startswith("stop it:"))[len("stop it: ") :]

    def command(self, fragment: str) -> str:
        (found,) = [c for c in self.commands if fragment in c]
        return found

    def sh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", "\n".join([*self.exports, command])],
            env={**os.environ, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )


def pids(namespace: str) -> dict[str, int]:
    state = state_dir(namespace)
    return {path.stem: int(path.read_text().split()[0]) for path in sorted(state.glob("*.pid"))}


def alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def demo_namespace(namespace: str) -> Iterator[str]:
    """The namespace of the test's demos; whatever they leave running (kept, or a demo killed
    half way) is stopped."""
    yield namespace
    run_demo("--stop", "--namespace", namespace)


@pytest.mark.e2e
def test_a_kept_demo_leaves_a_worker_the_api_and_a_dead_letter_that_the_printed_commands_reach(
    demo_namespace: str,
) -> None:
    result = run_demo("--keep", "--namespace", demo_namespace)
    assert result.returncode == 0, result.stdout + result.stderr
    demo = KeptDemo(result.stdout)
    running = pids(demo_namespace)
    assert set(running) == {"worker", "fake-api"} and all(map(alive, running.values()))
    assert f"{state_dir(demo_namespace)}/worker.log" in result.stdout

    listed = demo.sh(demo.command(" dead list"))
    assert listed.returncode == 0 and "1 matching" in listed.stdout
    assert "call-demo-0005" in listed.stdout
    shown = demo.sh(demo.command(" dead show "))
    assert shown.returncode == 0 and "InvalidParameter.Tags" in shown.stdout
    replayed = demo.sh(demo.command(" dead replay "))
    assert "replayed 1," in replayed.stdout, replayed.stdout + replayed.stderr
    held = demo.command("/_fake/calls/call-demo-0005")
    wait_for(lambda: "需跟进" in demo.sh(held).stdout, what="the replayed event applied")

    fault = demo.sh(demo.command("-X POST"))
    assert fault.stdout.startswith('{"id": ')
    assert '"kind": "throttle"' in demo.sh(demo.command("faults still queued")).stdout
    published = demo.sh(demo.command(" publish "))
    assert published.returncode == 0, published.stderr
    wait_for(
        lambda: "已成交" in demo.sh(held.replace("call-demo-0005", "call-demo-0001")).stdout,
        what="the event published by hand applied, after the throttling",
    )
    status = demo.sh(demo.command("tagging-worker status"))
    assert status.returncode == 0 and "workers" in status.stdout
    assert "none answered" not in status.stdout

    stopped = demo.sh(demo.stop)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the demo's worker" in stopped.stdout
    assert not any(map(alive, running.values()))
    assert not state_dir(demo_namespace).exists()


@pytest.mark.e2e
def test_a_second_kept_demo_stops_the_first_before_it_starts(demo_namespace: str) -> None:
    first = run_demo("--keep", "--namespace", demo_namespace)
    assert first.returncode == 0, first.stdout + first.stderr
    before = pids(demo_namespace)

    second = run_demo("--keep", "--namespace", demo_namespace)

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"stopped the demo's worker (pid {before['worker']})" in second.stdout
    assert not any(map(alive, before.values()))
    assert all(map(alive, pids(demo_namespace).values()))


@pytest.mark.e2e
def test_without_keep_the_demo_leaves_nothing_running(demo_namespace: str) -> None:
    namespace = demo_namespace
    result = run_demo("--namespace", namespace)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "every call holds its tags" in result.stdout
    assert not state_dir(namespace).exists()
    assert not [pid for pid in _pids_with_env(f"TAGGING_QUEUE={namespace}") if alive(pid)]


def test_stop_with_no_kept_demo_says_there_is_nothing_to_stop(namespace: str) -> None:
    result = run_demo("--stop", "--namespace", namespace)

    assert result.returncode == 0
    assert f"no demo kept under {namespace}" in result.stdout


def test_stop_and_keep_together_are_refused() -> None:
    result = run_demo("--stop", "--keep")

    assert result.returncode == 2
    assert "--stop ends a kept demo" in result.stderr


def _pids_with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry`: the demo's worker carries its queue there."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found
