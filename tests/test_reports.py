"""Reports are records handed to hooks: capture, dispatch, plain label values, broken hooks,
and metrics that count whoever imported prometheus-client first."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, get_args

import pytest
import sentry_sdk
from prometheus_client import CollectorRegistry
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
from tagging_worker.ops import sentry
from tagging_worker.ops.metrics import Metrics
from tagging_worker.ops.reports import (
    ApiCalled,
    Applied,
    CircuitChanged,
    Dead,
    DeadLettersTrimmed,
    Held,
    LandedOnNewer,
    MaybeApplied,
    Repaired,
    RepairFailed,
    Report,
    Resurrected,
    Retrying,
    Skipped,
    WaitedForSlot,
    capture_reports,
    install_hooks,
    log_report,
    report,
)
from tagging_worker.reasons import DeadReason
from tagging_worker.settings import Settings
from tagging_worker.state.flow import FlowPolicy, Hold, Transition, Verdict
from tagging_worker.state.ordering import Begin

OK = ApiSuccess(request_id="REQ-1", duration=0.01)
FLAKY = ApiFailure(FailureKind.TRANSIENT, "InternalError", "boom", 500, "REQ-2", 0.2)
REFUSED = ApiFailure(FailureKind.PERMANENT, "InvalidParameter.Tags", "bad tags", 400, "REQ-3", 0.05)
BROKEN_KEY = ApiFailure(FailureKind.SYSTEMIC, "SignatureDoesNotMatch", "no", 400, "REQ-4", 0.05)
POLICY = FlowPolicy.from_settings(Settings())


def _circuit(transition: Transition, kind: str = "systemic") -> CircuitChanged:
    verdict = Verdict(transition=transition, circuit_open=True, wait=10.0, rate=1.0, kind=kind)
    return CircuitChanged(verdict=verdict, result=BROKEN_KEY, policy=POLICY)


DEAD = Dead(
    event_id="ev-9",
    call_id="call-9",
    version=9,
    reason=DeadReason.PERMANENT_ERROR,
    detail="InvalidParameter.Tags: bad tags",
    attempts=1,
    code="InvalidParameter.Tags",
)
RETRYING = Retrying(
    call_id="call-2",
    event_id="ev-2",
    version=2,
    attempt=1,
    attempts_used=1,
    failure=FLAKY,
    delay=0.5,
)
EVERY_KIND: list[Report] = [
    ApiCalled(result=OK),
    ApiCalled(result=FLAKY),
    WaitedForSlot(seconds=0.02),
    Applied(call_id="call-1", event_id="ev-1", version=1, attempt=1, result=OK),
    RETRYING,
    Held(call_id="call-3", event_id="ev-3", hold=Hold(wait=1.0, circuit_open=True), delay=1.2),
    _circuit(Transition.OPENED),
    _circuit(Transition.OPENED, kind="transient"),
    _circuit(Transition.REOPENED),
    _circuit(Transition.CLOSED),
    Skipped(call_id="call-4", event_id="ev-4", version=4, step=Begin.STALE),
    Resurrected(call_id="call-5"),
    DeadLettersTrimmed(count=3, limit=100),
    DEAD,
    MaybeApplied(call_id="call-6", version=6, failure=FLAKY),
    LandedOnNewer(call_id="call-7", event_id="ev-7", version=7),
    Repaired(call_id="call-8", version=8),
    RepairFailed(call_id="call-8", version=8, failure=REFUSED),
]


@pytest.fixture(autouse=True)
def _hooks_restored() -> Iterator[None]:
    hooks = install_hooks()
    yield
    install_hooks(*hooks)


def test_the_samples_cover_every_kind_of_report() -> None:
    assert {type(record) for record in EVERY_KIND} == set(get_args(Report))


def test_capture_keeps_the_records_in_order_instead_of_handing_them_on() -> None:
    seen: list[Report] = []
    install_hooks(seen.append)
    with capture_reports() as reports:
        for record in EVERY_KIND:
            report(record)
    assert reports == EVERY_KIND
    assert seen == []
    report(DEAD)
    assert seen == [DEAD], "the installed hooks are back after the block"


def test_every_installed_hook_gets_every_record() -> None:
    first: list[Report] = []
    second: list[Report] = []
    install_hooks(first.append, second.append)
    for record in EVERY_KIND:
        report(record)
    assert first == second == EVERY_KIND


def test_without_hooks_a_report_goes_nowhere_and_does_not_fail() -> None:
    install_hooks()
    for record in EVERY_KIND:
        report(record)


def test_the_worker_hooks_take_every_kind_of_report() -> None:
    metrics = Metrics(CollectorRegistry())
    for record in EVERY_KIND:
        log_report(record)
        metrics(record)
        sentry.send_report(record)


def test_a_hook_that_raises_is_logged_once_and_the_others_still_get_the_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(record: Report) -> None:
        raise RuntimeError("the hook is broken")

    kept: list[Report] = []
    install_hooks(broken, kept.append)
    with caplog.at_level(logging.ERROR, logger="tagging_worker.ops.reports"):
        report(DEAD)
        report(DEAD)
    assert kept == [DEAD, DEAD]
    failures = [r for r in caplog.records if r.name == "tagging_worker.ops.reports"]
    assert len(failures) == 1
    assert "broken" in failures[0].getMessage() and failures[0].exc_info is not None


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_metric_label_values_are_plain_strings_never_enum_names() -> None:
    registry = CollectorRegistry()
    install_hooks(Metrics(registry))
    for record in EVERY_KIND:
        report(record)

    m = _samples(registry)
    assert m[("tagging_dead_letters_total", (("reason", "permanent_error"),))] == 1
    assert m[("tagging_events_total", (("outcome", "stale"),))] == 1
    assert m[("tagging_events_total", (("outcome", "dead"),))] == 1
    assert m[("tagging_api_calls_total", (("code", "InternalError"), ("result", "transient")))]
    assert m[("tagging_api_calls_total", (("code", "OK"), ("result", "ok")))] == 1
    assert m[("tagging_held_total", (("why", "circuit"),))] == 1
    assert m[("tagging_api_call_duration_seconds_count", ())] == 2
    assert m[("tagging_rate_limiter_wait_seconds_count", ())] == 1
    labels = {value for _, pairs in m for _, value in pairs}
    enum_names = ("DeadReason", "FailureKind", "Begin", "Transition")
    assert not [v for v in labels if v.startswith(enum_names)], labels


def test_log_fields_are_plain_strings(caplog: pytest.LogCaptureFixture) -> None:
    install_hooks(log_report)
    with caplog.at_level(logging.DEBUG):
        for record in EVERY_KIND:
            report(record)
    fields = [
        (name, getattr(r, name))
        for r in caplog.records
        for name in ("outcome", "reason", "kind", "circuit", "why")
        if hasattr(r, name)
    ]
    assert ("reason", "permanent_error") in fields and ("circuit", "opened") in fields
    assert all(type(value) is str for _, value in fields), fields
    loggers = {r.name for r in caplog.records}
    assert loggers == {"tagging_worker.events", "tagging_worker.flow"}


class KeptEvents(Transport):
    """A Sentry transport that keeps the error events it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        if (event := envelope.get_event()) is not None:
            self.events.append(dict(event))


def test_sentry_gets_dead_letters_repair_failures_and_circuit_openings_grouped_by_cause() -> None:
    kept = KeptEvents()
    client = sentry_sdk.Client(dsn="http://public@127.0.0.1:9/1", transport=kept)
    install_hooks(sentry.send_report)
    with sentry_sdk.isolation_scope() as scope:
        scope.set_client(client)
        for record in EVERY_KIND:
            report(record)
    assert [(e["fingerprint"], e["tags"]) for e in kept.events] == [
        (
            ["circuit-open", "systemic", "SignatureDoesNotMatch"],
            {"circuit_kind": "systemic", "error_code": "SignatureDoesNotMatch"},
        ),
        (
            ["circuit-open", "transient", "SignatureDoesNotMatch"],
            {"circuit_kind": "transient", "error_code": "SignatureDoesNotMatch"},
        ),
        (
            ["dead-letter", "permanent_error", "InvalidParameter.Tags"],
            {"reason": "permanent_error", "error_code": "InvalidParameter.Tags"},
        ),
        (
            ["repair-failed", "InvalidParameter.Tags"],
            {"error_code": "InvalidParameter.Tags"},
        ),
    ]
    assert kept.events[2]["extra"]["dead_letter_id"] == "ev-9"


IMPORTED_FIRST = textwrap.dedent(
    """
    import json, os, sys

    import prometheus_client  # first, as Flower does when it is installed beside the worker
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from tagging_worker.alibaba.results import ApiSuccess
    from tagging_worker.ops.reports import Applied, report
    from tagging_worker.settings import Settings
    from tagging_worker.worker.app import create_app

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    create_app(Settings())
    ok = ApiSuccess(request_id="REQ-1", duration=0.01)
    report(Applied(call_id="call-1", event_id="ev-1", version=1, attempt=1, result=ok))
    if os.fork() == 0:  # a prefork pool's child counts into the same directory
        report(Applied(call_id="call-2", event_id="ev-2", version=1, attempt=1, result=ok))
        os._exit(0)
    os.wait()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    print(json.dumps(registry.get_sample_value("tagging_events_total", {"outcome": "applied"})))
    """
)


def test_metrics_count_in_multiprocess_mode_even_when_prometheus_client_came_first() -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED_FIRST],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 2.0


def test_a_failed_attempt_of_unknown_outcome_is_one_line_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unknown = ApiFailure(
        FailureKind.TRANSIENT, "ServiceUnavailable", "down", 503, "REQ-5", 0.1, maybe_applied=True
    )
    install_hooks(log_report)
    with caplog.at_level(logging.INFO):
        report(MaybeApplied(call_id="call-2", version=2, failure=unknown))
        report(replace(RETRYING, failure=unknown))
    [line] = caplog.records
    assert line.getMessage().startswith("attempt failed, retrying (outcome unknown:")
    assert line.maybe_applied is True  # type: ignore[attr-defined]
