"""`tagging-worker circuit status|probe|reset`: see the API circuit, and close it as soon as the
set-up is fixed instead of waiting for the workers' next probe. The cool-down here is an hour:
nothing in these tests closes the circuit but the command."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tagging_worker.alibaba.api import CHECK_CALL_ID
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.flow import Signal
from tagging_worker.state.stores import Stores
from tests.conftest import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    WorkerProcess,
    run_cli,
    settled,
    wait_for,
)

COOLDOWN = 3600
CAUSE = "Specified signature does not match our calculation."


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS": str(COOLDOWN)}


@pytest.fixture
def circuit_stores(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Stores:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Stores.connect(load_settings())


def _open(stores: Stores) -> None:
    """What a worker's call refused for its signature records."""
    verdict = stores.flow.record(
        Signal.SYSTEMIC, token="a-worker", code="SignatureDoesNotMatch", message=CAUSE
    )
    assert verdict.circuit_open


def test_circuit_status_shows_what_opened_it_and_when_workers_probe_next(
    env: dict[str, str], circuit_stores: Stores
) -> None:
    closed = json.loads(run_cli(env, "circuit", "status", "--json").stdout)
    _open(circuit_stores)

    shown = run_cli(env, "circuit", "status", "--json")
    text = run_cli({**env, "COLUMNS": "60"}, "circuit", "status")

    assert closed["circuit"] == "closed" and closed["circuit_cause"] is None
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["circuit"] == "open" and found["circuit_kind"] == "systemic"
    assert found["circuit_cause"] == f"SignatureDoesNotMatch: {CAUSE}"
    assert COOLDOWN / 2 < found["circuit_retry_in"] <= COOLDOWN
    lines = text.stdout.splitlines()
    assert lines[:3] == [
        "circuit: open",
        "kind: systemic",
        f"cause: SignatureDoesNotMatch: {CAUSE}",
    ]
    assert lines[3].startswith("probe in: ") and lines[3].endswith(" s")


def test_circuit_reset_closes_it_and_brings_back_the_retries_it_kept_waiting(
    env: dict[str, str], circuit_stores: Stores
) -> None:
    _open(circuit_stores)
    circuit_stores.retries.schedule("held-until-the-probe", delay=COOLDOWN * 1.1)
    circuit_stores.retries.schedule("due-long-after", delay=COOLDOWN * 3)

    result = run_cli(env, "circuit", "reset")

    assert result.returncode == 0, result.stderr
    assert "circuit closed (was open, systemic: SignatureDoesNotMatch" in result.stdout
    assert circuit_stores.flow.snapshot()["circuit"] == "closed"
    assert not circuit_stores.flow.blocked()
    (first, due_now), (second, due_later) = circuit_stores.retries.soonest(2)
    assert (first, second) == (b"held-until-the-probe", b"due-long-after")
    assert due_now <= time.time() < due_later
    again = run_cli(env, "circuit", "reset")
    assert again.returncode == 0 and "the circuit was closed already" in again.stdout


def test_circuit_probe_refused_before_its_merits_exits_1_leaving_the_circuit_as_it_was(
    env: dict[str, str], circuit_stores: Stores, fake_api: FakeAlibabaApi
) -> None:
    _open(circuit_stores)
    before = circuit_stores.redis.hgetall(circuit_stores.keys.circuit)

    result = run_cli({**env, "ACCESS_KEY_SECRET": "still-the-old-secret"}, "circuit", "probe")

    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("tagging-worker: the probe was not answered on its merits: signature:")
    assert "SignatureDoesNotMatch" in line and line.endswith("the circuit stays open")
    assert circuit_stores.redis.hgetall(circuit_stores.keys.circuit) == before
    assert fake_api.counters().get("SignatureDoesNotMatch") == 1


def test_circuit_probe_answered_on_its_merits_closes_it(
    env: dict[str, str], circuit_stores: Stores, fake_api: FakeAlibabaApi
) -> None:
    _open(circuit_stores)

    result = run_cli(env, "circuit", "probe")

    assert result.returncode == 0, result.stderr
    assert "the API answered the probe on its merits (InvalidParameter.Tags" in result.stdout
    assert circuit_stores.flow.snapshot()["circuit"] == "closed"
    assert [(c.call_id, c.answer) for c in fake_api.calls()] == [
        (CHECK_CALL_ID, "InvalidParameter.Tags")
    ]
    assert fake_api.all_tags() == {}


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["probe", "reset"])
def test_workers_paused_by_a_rotated_key_resume_once_the_circuit_is_closed(
    env: dict[str, str],
    circuit_stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    command: str,
) -> None:
    """The key is rotated under a worker: the circuit opens for an hour and the worker stops
    taking messages. Once the key works again, the command alone brings every event through:
    the one refused, held back until the probe, and those published while paused."""
    publisher = Publisher.from_settings(circuit_stores.settings)
    fake_api.set_credentials({ACCESS_KEY_ID: "the-rotated-secret"})
    worker = start_worker(TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS=str(COOLDOWN))
    publisher.publish_many([{"call_id": "call-first", "tags": ["t"], "version": 1}])
    wait_for(lambda: circuit_stores.flow.snapshot()["circuit"] == "open", what="the circuit open")
    wait_for(
        lambda: any("stopped taking messages" in r["message"] for r in worker.records()),
        what="the worker paused",
    )
    later = [{"call_id": f"call-later-{n}", "tags": ["t"], "version": 1} for n in range(5)]
    publisher.publish_many(later)
    fake_api.set_credentials({ACCESS_KEY_ID: ACCESS_KEY_SECRET})

    result = run_cli(env, "circuit", command)

    assert result.returncode == 0, result.stderr
    wait_for(settled(circuit_stores, 6), what="every event applied")
    assert all(fake_api.tags_of(e["call_id"]) == ["t"] for e in [*later, {"call_id": "call-first"}])
    assert circuit_stores.dead_letters.count() == 0
    assert any("taking messages from" in r["message"] for r in worker.records())
