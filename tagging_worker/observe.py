"""Where outcomes are reported: every log line about an event's fate is written here.

Metrics and Sentry hang off these same calls, so the task body stays the story of one
event and instrumentation never leaks into it.
"""

from __future__ import annotations

import logging

from tagging_worker.api import ApiFailure, ApiSuccess
from tagging_worker.classify import FailureKind

log = logging.getLogger("tagging_worker.events")


def applied(call_id: str, event_id: str, version: int, attempt: int, result: ApiSuccess) -> None:
    log.info(
        "applied call_id=%s event_id=%s version=%s attempt=%d request_id=%s duration_ms=%.1f",
        call_id,
        event_id,
        version,
        attempt,
        result.request_id,
        result.duration * 1000,
    )


def retrying(call_id: str, event_id: str, attempt: int, failure: ApiFailure, delay: float) -> None:
    level = logging.ERROR if failure.kind is FailureKind.SYSTEMIC else logging.WARNING
    log.log(
        level,
        "retrying call_id=%s event_id=%s attempt=%d kind=%s code=%s http_status=%s "
        "request_id=%s delay_s=%.2f",
        call_id,
        event_id,
        attempt,
        failure.kind.value,
        failure.code,
        failure.http_status,
        failure.request_id,
        delay,
    )


def skipped(call_id: str, event_id: str, version: int, why: str) -> None:
    log.info("skipped call_id=%s event_id=%s version=%s why=%s", call_id, event_id, version, why)


def resurrected(call_id: str) -> None:
    log.info("requeued the newest held-back event of call_id=%s after a newer one died", call_id)


def dead_letters_trimmed(count: int, limit: int) -> None:
    log.warning(
        "dead-letter store over its limit of %d records: the %d oldest were deleted "
        "(raise TAGGING_DEAD_LETTER_MAX_RECORDS, or replay/purge what is there)",
        limit,
        count,
    )


def dead(record_id: str, call_id: object, reason: str, detail: str, attempts: int) -> None:
    log.error(
        "dead-lettered id=%s call_id=%s reason=%s attempts=%d detail=%s",
        record_id,
        call_id,
        reason,
        attempts,
        detail,
    )
