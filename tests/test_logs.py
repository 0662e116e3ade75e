"""Log lines: JSON objects with the event's fields for collectors, readable text otherwise."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_RETRY, LOG_SUCCESS

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
from tagging_worker.ops.logs import (
    CELERY_PER_TASK_LOGGERS,
    CREDENTIAL_CHAIN_LOGGERS,
    OncePerInterval,
    Repeats,
    configure,
)
from tagging_worker.ops.reports import (
    Applied,
    Retrying,
    Skipped,
    install_hooks,
    log_report,
    report,
)
from tagging_worker.settings import LogFormat
from tagging_worker.state.ordering import Begin


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    touched = [logging.getLogger(n) for n in (*CREDENTIAL_CHAIN_LOGGERS, *CELERY_PER_TASK_LOGGERS)]
    saved_loggers = [(lg, lg.level, lg.filters[:], lg.handlers[:]) for lg in touched]
    hooks = install_hooks(log_report)
    stream = io.StringIO()
    yield stream
    install_hooks(*hooks)
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    for logger, level, filters, handlers in saved_loggers:
        logger.setLevel(level)
        logger.filters[:] = filters
        logger.handlers[:] = handlers


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_applied_event_is_one_json_line_with_its_fields(captured: io.StringIO) -> None:
    configure("INFO", LogFormat.JSON, captured)
    result = ApiSuccess(request_id="REQ-1", duration=0.0123)
    report(Applied(call_id="call-1", event_id="ev-1", version=7, attempt=2, result=result))

    record = json.loads(captured.getvalue().strip())
    assert record["message"] == "applied"
    assert record["level"] == "info"
    assert {k: record[k] for k in ("call_id", "event_id", "version", "attempt", "outcome")} == {
        "call_id": "call-1",
        "event_id": "ev-1",
        "version": 7,
        "attempt": 2,
        "outcome": "applied",
    }
    assert record["request_id"] == "REQ-1" and record["duration_ms"] == 12.3
    assert "timestamp" in record


def test_a_failed_attempt_carries_its_error_code_and_request_id(captured: io.StringIO) -> None:
    configure("INFO", LogFormat.JSON, captured)
    failure = ApiFailure(FailureKind.TRANSIENT, "InternalError", "boom", 500, "REQ-2", 0.2)
    report(
        Retrying(
            call_id="call-2",
            event_id="ev-2",
            version=3,
            attempt=1,
            attempts_used=1,
            failure=failure,
            delay=0.5,
        )
    )

    record = json.loads(captured.getvalue().strip())
    assert record["level"] == "warning" and record["outcome"] == "retried"
    assert (record["code"], record["request_id"], record["attempt"]) == (
        "InternalError",
        "REQ-2",
        1,
    )


def test_other_libraries_records_come_out_in_the_same_format(captured: io.StringIO) -> None:
    configure("INFO", LogFormat.JSON, captured)
    logging.getLogger("celery.worker").warning("hello %s", "there")
    record = json.loads(captured.getvalue().strip())
    assert record["message"] == "hello there" and record["logger"] == "celery.worker"


def test_text_format_is_readable_and_keeps_the_fields(captured: io.StringIO) -> None:
    configure("INFO", LogFormat.TEXT, captured)
    report(Skipped(call_id="call-3", event_id="ev-3", version=4, step=Begin.STALE))
    line = captured.getvalue()
    assert not line.startswith("{")
    assert "skipped" in line and "call_id=call-3" in line and "outcome=stale" in line


def test_auto_format_writes_json_when_not_a_terminal(captured: io.StringIO) -> None:
    configure("INFO", LogFormat.AUTO, captured)
    logging.getLogger("x").info("plain")
    assert json.loads(captured.getvalue())["message"] == "plain"


TASK = {"id": "t-1", "name": "tagging_worker.update_call_tags", "args": "()", "kwargs": "{}"}


def _celery_task_lines() -> None:
    """What Celery's worker logs around one task: received, succeeded, and for a failing one a
    retry, an expected failure (a dead letter) and an unexpected one."""
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, TASK, extra={"data": TASK})
    trace = logging.getLogger("celery.app.trace")
    trace.info(LOG_SUCCESS, {**TASK, "runtime": 0.01, "return_value": "'applied'"})
    trace.info(LOG_RETRY, {**TASK, "exc": "Retry in 1s"})
    trace.info(LOG_FAILURE, {**TASK, "description": "raised expected", "exc": "DeadLettered()"})
    trace.error(LOG_FAILURE, {**TASK, "description": "raised unexpected", "exc": "KeyError"})


def test_celerys_per_task_info_lines_are_debug_and_an_unexpected_failure_stays_an_error(
    captured: io.StringIO,
) -> None:
    configure("INFO", LogFormat.JSON, captured)
    _celery_task_lines()
    assert [(r["level"], r["message"].split(": ")[0]) for r in _records(captured)] == [
        ("error", "Task tagging_worker.update_call_tags[t-1] raised unexpected"),
    ]


def test_at_debug_celerys_per_task_lines_show_as_debug(
    captured: io.StringIO,
) -> None:
    configure("DEBUG", LogFormat.JSON, captured)
    _celery_task_lines()
    levels = [r["level"] for r in _records(captured)]
    assert levels == ["debug", "debug", "debug", "debug", "error"]
    assert _records(captured)[0]["message"].endswith("] received")


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_the_credential_chains_scheduler_speaks_only_to_warn_unless_debug(
    captured: io.StringIO, level: str, shown: bool
) -> None:
    """The ECS RAM role provider of Alibaba Cloud's credential chain runs an APScheduler job
    every minute, which logs two INFO lines each time."""
    configure(level, LogFormat.JSON, captured)
    ran = threading.Semaphore(0)
    scheduler = BackgroundScheduler()
    scheduler.add_job(ran.release, "interval", seconds=0.05)
    scheduler.start()
    try:
        assert ran.acquire(timeout=10) and ran.acquire(timeout=10)
    finally:
        scheduler.shutdown()
    said = [r["message"] for r in _records(captured) if r["logger"].startswith("apscheduler")]
    assert any(m.startswith("Running job") for m in said) is shown


def test_the_credential_chains_warnings_come_out_once_in_our_format(
    captured: io.StringIO,
) -> None:
    import alibabacloud_credentials.provider.refreshable  # noqa: F401  (adds its handlers)

    configure("INFO", LogFormat.JSON, captured)
    logging.getLogger("credentials").info("Refreshing")
    logging.getLogger("credentials").warning("Refresh credentials failed")

    assert [r["message"] for r in _records(captured)] == ["Refresh credentials failed"]
    assert logging.getLogger("credentials").handlers == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repeats(caplog: pytest.LogCaptureFixture) -> tuple[Repeats, Clock]:
    caplog.set_level(logging.INFO, logger="test.loop")
    clock = Clock()
    return Repeats(logging.getLogger("test.loop"), "the loop", clock=clock), clock


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test.loop"]


def test_a_failure_repeated_every_turn_is_logged_once_then_summarised_each_interval(
    repeats: tuple[Repeats, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    limiter, clock = repeats
    for turn in range(150):  # 75 s of a loop turning every 0.5 s
        clock.now = 1000.0 + turn * 0.5
        limiter.failed("Redis unavailable (%s); trying again", f"refused #{turn}")
    limiter.succeeded()

    assert _said(caplog) == [
        ("WARNING", "Redis unavailable (refused #0); trying again"),
        (
            "WARNING",
            "Redis unavailable (refused #60); trying again (repeated 60 times in the last 30 s)",
        ),
        (
            "WARNING",
            "Redis unavailable (refused #120); trying again (repeated 60 times in the last 30 s)",
        ),
        ("INFO", "the loop works again after 74 s and 150 failure(s)"),
    ]


def test_each_kind_of_failure_is_logged_the_first_time_and_recovery_once_for_all(
    repeats: tuple[Repeats, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    limiter, clock = repeats
    for _ in range(3):
        clock.now += 1
        limiter.failed("Redis unavailable (%s)", "refused")
        limiter.failed("bug in the loop", level=logging.ERROR)
    limiter.succeeded()
    limiter.succeeded()

    assert _said(caplog) == [
        ("WARNING", "Redis unavailable (refused)"),
        ("ERROR", "bug in the loop"),
        ("INFO", "the loop works again after 2 s and 6 failure(s)"),
    ]


def test_a_loop_that_keeps_working_logs_nothing_and_a_new_outage_is_told_at_once(
    repeats: tuple[Repeats, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    limiter, clock = repeats
    limiter.succeeded()
    limiter.failed("Redis unavailable")
    limiter.succeeded()
    clock.now += 5
    limiter.failed("Redis unavailable")

    assert [m for _, m in _said(caplog)] == [
        "Redis unavailable",
        "the loop works again after 0 s and 1 failure(s)",
        "Redis unavailable",
    ]


def test_a_librarys_warning_from_a_loop_comes_out_once_a_minute(captured: io.StringIO) -> None:
    """kombu warns with a traceback on each turn of its binding refresh while Redis refuses
    writes: once a second."""
    now = [0.0]
    limiter = OncePerInterval(60.0, clock=lambda: now[0])
    kombu = logging.getLogger("tests.kombu-like")
    kombu.addFilter(limiter)
    try:
        configure("INFO", LogFormat.JSON, captured)
        for second in range(0, 130):
            now[0] = float(second)
            kombu.warning("maybe_refresh_binding_expiry: Redis error, will retry")
        kombu.warning("another problem")
    finally:
        kombu.removeFilter(limiter)
    messages = [r["message"] for r in _records(captured)]
    assert messages == ["maybe_refresh_binding_expiry: Redis error, will retry"] * 3 + [
        "another problem"
    ]
