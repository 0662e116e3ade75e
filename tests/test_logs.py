"""Log lines: JSON objects with the event's fields for collectors, readable text otherwise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
from tagging_worker.ops.logs import configure
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
    hooks = install_hooks(log_report)
    stream = io.StringIO()
    yield stream
    install_hooks(*hooks)
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


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
