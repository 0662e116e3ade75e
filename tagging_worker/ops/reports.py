"""Where what happens to events is reported: logs, metrics and Sentry hang off these calls.

The task body stays the story of one event and instrumentation never leaks into it. Each
report is one structured log record (its fields become JSON keys: `logs.py`), the matching
Prometheus counters, and for what an operator must act on, one Sentry event grouped by cause.
"""

from __future__ import annotations

import logging

from tagging_worker.alibaba.api import ApiFailure, ApiResult, ApiSuccess
from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.ops import metrics, sentry
from tagging_worker.state.flow import FlowPolicy, Hold, Verdict

log = logging.getLogger("tagging_worker.events")
flow_log = logging.getLogger("tagging_worker.flow")


def api_called(result: ApiResult) -> None:
    metrics.API_LATENCY.observe(result.duration)
    if isinstance(result, ApiSuccess):
        metrics.API_CALLS.labels("ok", "OK").inc()
    else:
        metrics.API_CALLS.labels(result.kind.value, result.code).inc()


def waited_for_slot(seconds: float) -> None:
    metrics.LIMITER_WAIT.observe(seconds)


def applied(call_id: str, event_id: str, version: int, attempt: int, result: ApiSuccess) -> None:
    metrics.EVENTS.labels("applied").inc()
    log.info(
        "applied",
        extra={
            "outcome": "applied",
            "call_id": call_id,
            "event_id": event_id,
            "version": version,
            "attempt": attempt,
            "request_id": result.request_id,
            "duration_ms": round(result.duration * 1000, 1),
        },
    )


def retrying(
    call_id: str,
    event_id: str,
    version: int,
    attempt: int,
    failure: ApiFailure,
    delay: float,
    attempts_used: int,
) -> None:
    """Warning only for the event's own bad luck; throttling and outages are reported once,
    by the circuit and the pace, not once per event."""
    metrics.EVENTS.labels("retried").inc()
    level = logging.WARNING if failure.kind is FailureKind.TRANSIENT else logging.INFO
    log.log(
        level,
        "attempt failed, retrying",
        extra={
            "outcome": "retried",
            "call_id": call_id,
            "event_id": event_id,
            "version": version,
            "attempt": attempt,
            "attempts_used": attempts_used,
            "kind": failure.kind.value,
            "code": failure.code,
            "http_status": failure.http_status,
            "request_id": failure.request_id,
            "duration_ms": round(failure.duration * 1000, 1),
            "delay_s": round(delay, 2),
        },
    )
    sentry.breadcrumb(
        f"retrying {event_id}: {failure.code}", call_id=call_id, request_id=failure.request_id
    )


def held(call_id: str, event_id: str, hold: Hold, delay: float) -> None:
    why = "circuit" if hold.circuit_open else "rate"
    metrics.EVENTS.labels("held").inc()
    metrics.HELD.labels(why).inc()
    log.debug(
        "held without a call",
        extra={
            "outcome": "held",
            "call_id": call_id,
            "event_id": event_id,
            "why": why,
            "delay_s": round(delay, 2),
        },
    )


def circuit_changed(verdict: Verdict, result: ApiResult, policy: FlowPolicy) -> None:
    """Said once per change of the shared circuit, by the one worker that changed it."""
    failure = result if isinstance(result, ApiFailure) else None
    cause = f"{failure.code}: {failure.message}" if failure else ""
    fields = {
        "circuit": verdict.transition,
        "kind": verdict.kind,
        "code": failure.code if failure else None,
        "retry_in_s": round(verdict.wait, 1),
    }
    if verdict.transition == "closed":
        flow_log.warning("API calls resumed: the probe call was answered", extra=fields)
    elif verdict.transition == "reopened":
        flow_log.warning(
            "API calls stay stopped: the probe failed (%s); next probe in %.0f s",
            cause,
            verdict.wait,
            extra=fields,
        )
    else:
        if verdict.kind == "systemic":
            flow_log.error(
                "API calls stopped: the set-up is broken, not the events (%s). Check the "
                "access key, its RAM permissions, the host clock and the account balance. "
                "Events are kept, not dead-lettered; one probe call every %.0f s until it works.",
                cause,
                policy.systemic_cooldown,
                extra=fields,
            )
        else:
            flow_log.error(
                "API calls stopped: %d failures in a row, the last %s. Events wait without "
                "using their attempts; next probe in %.0f s.",
                policy.failure_threshold,
                cause,
                verdict.wait,
                extra=fields,
            )
        if failure is not None:
            sentry.circuit_opened(verdict.kind, failure.code, failure.message)


def skipped(call_id: str, event_id: str, version: int, why: str) -> None:
    metrics.EVENTS.labels(why).inc()
    log.info(
        "skipped",
        extra={"outcome": why, "call_id": call_id, "event_id": event_id, "version": version},
    )


def resurrected(call_id: str) -> None:
    log.info(
        "requeued the newest held-back event of the call after a newer one died",
        extra={"call_id": call_id},
    )


def dead_letters_trimmed(count: int, limit: int) -> None:
    log.warning(
        "dead-letter store over its limit of %d records: the %d oldest were deleted "
        "(raise TAGGING_DEAD_LETTER_MAX_RECORDS, or replay/purge what is there)",
        limit,
        count,
    )


def dead(
    record_id: str,
    call_id: object,
    reason: str,
    detail: str,
    *,
    attempts: int,
    code: str | None,
    version: object = None,
) -> None:
    metrics.EVENTS.labels("dead").inc()
    metrics.DEAD_LETTERS.labels(reason).inc()
    log.error(
        "dead-lettered: %s",
        detail,
        extra={
            "outcome": "dead",
            "event_id": record_id,
            "call_id": call_id,
            "version": version,
            "reason": reason,
            "code": code,
            "attempt": attempts,
        },
    )
    sentry.dead_letter(record_id, call_id, reason, code or reason, detail)


def maybe_applied(call_id: str, version: int, failure: ApiFailure) -> None:
    log.warning(
        "outcome unknown (%s): the API may still apply version %d; the call is checked once "
        "that can no longer happen",
        failure.code,
        version,
        extra={"call_id": call_id, "version": version, "code": failure.code},
    )


def landed_on_newer(call_id: str, event_id: str, version: int) -> None:
    log.warning(
        "an older write landed on a newer one (this worker's lease had run out): the newest "
        "tags are written again",
        extra={"call_id": call_id, "event_id": event_id, "version": version},
    )


def repaired(call_id: str, version: int) -> None:
    metrics.EVENTS.labels("repaired").inc()
    log.info(
        "repaired: wrote the applied tags again after a write of unknown outcome",
        extra={"outcome": "repaired", "call_id": call_id, "version": version},
    )


def repair_failed(call_id: str, version: int, failure: ApiFailure) -> None:
    metrics.EVENTS.labels("repair_failed").inc()
    log.error(
        "repair refused for good (%s: %s): the call may hold older tags than version %d",
        failure.code,
        failure.message,
        version,
        extra={"outcome": "repair_failed", "call_id": call_id, "version": version},
    )
    sentry.repair_failed(call_id, failure.code, failure.message)
