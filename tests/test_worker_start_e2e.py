"""`tagging-worker worker` and `celery -A tagging_worker worker` start the same worker: the queue
from TAGGING_QUEUE, the log level from TAGGING_LOG_LEVEL unless `--loglevel` is given, a node
name of its own on a shared host unless `-n` is given, and metrics that count with Flower
installed beside it."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.stores import Stores
from tagging_worker.worker.start_options import queue_refusal
from tests.conftest import WorkerProcess, free_port, run_cli, settled, wait_for

CELERY = str(Path(sys.executable).with_name("celery"))
COMMANDS = {
    "tagging-worker": [sys.executable, "-m", "tagging_worker", "worker"],
    "celery": [CELERY, "-A", "tagging_worker", "worker"],
}


class StartedWorker(WorkerProcess):
    """A worker started by `command` as a user types it: no metrics directory given, so one
    installed package importing prometheus-client first (Flower does) is not papered over."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.pool = "threads"
        self.replaced = False
        self.log_path = log_path
        self._log = log_path.open("wb")
        environ = {**os.environ, **env}
        environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            command,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def start(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., StartedWorker]]:
    started: list[StartedWorker] = []

    def run(command: str, *args: str, **env: str) -> StartedWorker:
        worker = StartedWorker(
            [*COMMANDS[command], *args],
            {**worker_env, "TAGGING_WORKER_CONCURRENCY": "2", **env},
            tmp_path / f"{command}-{len(started)}.log",
        )
        started.append(worker)
        return worker

    yield run
    for worker in started:
        worker.stop()


def _listed_workers(env: dict[str, str]) -> list[str]:
    """The workers `status` lists as consuming this test's queue."""
    shown = run_cli(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return sorted(w["name"] for w in json.loads(shown.stdout)["workers"] if w["consuming"])


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _logged(worker: StartedWorker, level: str, message: str = "") -> bool:
    return any(r["level"] == level and message in r["message"] for r in worker.records())


def test_only_a_worker_consuming_exactly_TAGGING_QUEUE_may_start() -> None:
    assert queue_refusal("tagging", ["tagging"]) is None
    for consumed in (["other"], ["other", "tagging"], []):
        refusal = queue_refusal("tagging", consumed)
        assert refusal is not None and "TAGGING_QUEUE is tagging" in refusal


@pytest.mark.e2e
@pytest.mark.parametrize("queue_args", [(), ("-Q", "{queue}")], ids=["no -Q", "-Q TAGGING_QUEUE"])
def test_a_celery_started_worker_consumes_TAGGING_QUEUE(
    queue_args: tuple[str, ...],
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start: Callable[..., StartedWorker],
) -> None:
    queue = stores.settings.queue
    start("celery", *(a.format(queue=queue) for a in queue_args))
    Publisher.from_settings(stores.settings).publish({"call_id": "call-q", "tags": ["q"]})

    wait_for(lambda: fake_api.tags_of("call-q") == ["q"], what="the event applied")


@pytest.mark.e2e
def test_a_celery_started_worker_told_another_queue_refuses_in_one_line_naming_TAGGING_QUEUE(
    stores: Stores, worker_env: dict[str, str]
) -> None:
    queue = stores.settings.queue
    other = f"{queue}-other"

    ran = subprocess.run(
        [*COMMANDS["celery"], "-Q", other],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 2, ran.stderr
    said = [line for line in ran.stderr.splitlines() if line.startswith("tagging-worker:")]
    assert len(said) == 1
    assert f"would consume {other}, but TAGGING_QUEUE is {queue}" in said[0]


@pytest.mark.e2e
@pytest.mark.parametrize("command", COMMANDS)
def test_without_loglevel_a_worker_logs_at_TAGGING_LOG_LEVEL(
    command: str, stores: Stores, start: Callable[..., StartedWorker]
) -> None:
    worker = start(command, TAGGING_LOG_LEVEL="DEBUG")

    wait_for(lambda: _logged(worker, "debug"), what="a debug record")


@pytest.mark.e2e
@pytest.mark.parametrize("command", COMMANDS)
def test_an_explicit_loglevel_wins_over_TAGGING_LOG_LEVEL(
    command: str, stores: Stores, start: Callable[..., StartedWorker]
) -> None:
    worker = start(command, "--loglevel=INFO", TAGGING_LOG_LEVEL="ERROR")

    wait_for(lambda: _logged(worker, "info", "ready."), what="the worker's ready record")


@pytest.mark.e2e
@pytest.mark.parametrize("command", COMMANDS)
def test_both_starts_run_without_mingle_and_gossip(
    command: str, stores: Stores, start: Callable[..., StartedWorker]
) -> None:
    """`tagging-worker worker` always ran without them; `celery -A` ran both (a second of
    'searching for neighbors' at start, every worker's events on every worker)."""
    worker = start(command, "--loglevel=INFO")

    wait_for(lambda: _logged(worker, "info", "ready."), what="the worker's ready record")
    assert not [r for r in worker.records() if "mingle" in r["logger"] or "gossip" in r["logger"]]


@pytest.mark.e2e
def test_workers_on_one_host_get_node_names_of_their_own_and_status_lists_each(
    stores: Stores, worker_env: dict[str, str], start: Callable[..., StartedWorker]
) -> None:
    workers = [start("celery"), start("celery"), start("tagging-worker")]

    wait_for(lambda: len(_listed_workers(worker_env)) == 3, what="status to list three workers")
    host = socket.gethostname()
    assert _listed_workers(worker_env) == sorted(f"tagging-{w.proc.pid}@{host}" for w in workers)


@pytest.mark.e2e
def test_a_node_name_given_on_the_command_line_wins(
    stores: Stores, worker_env: dict[str, str], start: Callable[..., StartedWorker]
) -> None:
    queue = stores.settings.queue
    start("celery", "-n", f"{queue}-a@%h")
    start("tagging-worker", f"--hostname={queue}-b@%h")
    host = socket.gethostname()
    expected = [f"{queue}-a@{host}", f"{queue}-b@{host}"]

    wait_for(lambda: _listed_workers(worker_env) == expected, what=f"status to list {expected}")


@pytest.mark.e2e
def test_a_celery_started_worker_counts_its_metrics_with_flower_installed(
    stores: Stores, fake_api: FakeAlibabaApi, start: Callable[..., StartedWorker]
) -> None:
    assert importlib.util.find_spec("flower"), "Flower is a dev extra: pip install -e '.[dev]'"
    port = free_port()
    start("celery", TAGGING_METRICS_PORT=str(port))
    Publisher.from_settings(stores.settings).publish({"call_id": "call-m", "tags": ["m"]})
    wait_for(settled(stores, 1), what="the event settled")

    applied = ("tagging_events_total", (("outcome", "applied"),))

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = _metrics(port)
        return samples if applied in samples else None

    samples = wait_for(counted, what="tagging_events_total to count the event")
    assert samples[applied] == 1
    assert samples[("tagging_api_calls_total", (("code", "OK"), ("result", "ok")))] == 1
    assert samples[("tagging_api_call_duration_seconds_count", ())] == 1
