"""What happens to events, as records handed to hooks: logs, metrics and Sentry are hooks.

The task body says what happened (`report(Applied(...))`) and never how that is told, so
instrumentation never leaks into the story of an event. Each kind of report is a frozen record;
`report` hands it to every installed hook. A worker installs its hooks once (`create_app`:
`log_report` here, `metrics.Metrics`, `sentry.send_report`); with none installed (a CLI, a
test) a report goes nowhere. A test sees the records with `capture_reports`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiResult, ApiSuccess
from tagging_worker.reasons import DeadReason
from tagging_worker.state.flow import FlowPolicy, Hold, Transition, Verdict
from tagging_worker.state.ordering import Begin

log = logging.getLogger(__name__)
events_log = logging.getLogger("tagging_worker.events")
flow_log = logging.getLogger("tagging_worker.flow")


@dataclass(frozen=True)
class ApiCalled:
    result: ApiResult


@dataclass(frozen=True)
class WaitedForSlot:
    """A worker slept `seconds` for its slot of the shared API budget (0 when it had one)."""

    seconds: float


@dataclass(frozen=True)
class Applied:
    call_id: str
    event_id: str
    version: int
    attempt: int
    result: ApiSuccess


@dataclass(frozen=True)
class Retrying:
    call_id: str
    event_id: str
    version: int
    attempt: int
    attempts_used: int
    failure: ApiFailure
    delay: float


@dataclass(frozen=True)
class Held:
    """Sent back to wait without an API call."""

    call_id: str
    event_id: str
    hold: Hold
    delay: float

    @property
    def why(self) -> str:
        return "circuit" if self.hold.circuit_open else "rate"


@dataclass(frozen=True)
class CircuitChanged:
    """Said once per change of the shared circuit, by the one worker that changed it."""

    verdict: Verdict
    result: ApiResult
    policy: FlowPolicy


@dataclass(frozen=True)
class Skipped:
    """Finished or kept aside without an API call: `step` is stale, parked or duplicate."""

    call_id: str
    event_id: str
    version: int
    step: Begin


@dataclass(frozen=True)
class Resurrected:
    """The newest held-back event of the call was requeued after a newer one died."""

    call_id: str


@dataclass(frozen=True)
class DeadLettersTrimmed:
    count: int
    limit: int


@dataclass(frozen=True)
class Dead:
    event_id: str
    """The dead letter's id: the event id, or the task id when the event has none."""
    call_id: str | None
    version: int | None
    reason: DeadReason
    detail: str
    attempts: int
    code: str | None
    """The last attempt's error code, if an attempt was made."""


@dataclass(frozen=True)
class MaybeApplied:
    call_id: str
    version: int
    failure: ApiFailure


@dataclass(frozen=True)
class LandedOnNewer:
    """An older write landed on a newer one (the worker's lease had run out)."""

    call_id: str
    event_id: str
    version: int


@dataclass(frozen=True)
class Repaired:
    call_id: str
    version: int


@dataclass(frozen=True)
class RepairFailed:
    call_id: str
    version: int
    failure: ApiFailure


Report = (
    ApiCalled
    | WaitedForSlot
    | Applied
    | Retrying
    | Held
    | CircuitChanged
    | Skipped
    | Resurrected
    | DeadLettersTrimmed
    | Dead
    | MaybeApplied
    | LandedOnNewer
    | Repaired
    | RepairFailed
)
Hook = Callable[[Report], None]

_hooks: tuple[Hook, ...] = ()
_failed: set[int] = set()
"""Ids of installed hooks that have raised, so each failure is logged once."""


def report(record: Report) -> None:
    """Hands `record` to every installed hook. Telling never changes what happens to an event:
    a hook that raises is logged (once per hook and process, so a broken one cannot flood the
    logs) and the other hooks still get the record."""
    for hook in _hooks:
        try:
            hook(record)
        except Exception:
            if id(hook) not in _failed:
                _failed.add(id(hook))
                log.exception(
                    "report hook %r failed on %s; its later failures are not logged",
                    hook,
                    type(record).__name__,
                )


def install_hooks(*hooks: Hook) -> tuple[Hook, ...]:
    """Makes `hooks` the ones every report goes to, in place of those before; returns those."""
    global _hooks
    previous, _hooks = _hooks, hooks
    _failed.clear()
    return previous


@contextmanager
def capture_reports() -> Iterator[list[Report]]:
    """The records reported inside the block, in order, kept instead of going to the installed
    hooks (which are back afterwards), as `structlog.testing.capture_logs` keeps log calls."""
    captured: list[Report] = []
    previous = install_hooks(captured.append)
    try:
        yield captured
    finally:
        install_hooks(*previous)


def log_report(record: Report) -> None:
    """The logs hook: one structured log record per report (fields become JSON keys: `logs.py`).
    A retry is a warning only for the event's own bad luck; throttling and outages are told
    once, by the circuit and the pace, not once per event."""
    match record:
        case Applied():
            events_log.info(
                "applied",
                extra={
                    "outcome": "applied",
                    "call_id": record.call_id,
                    "event_id": record.event_id,
                    "version": record.version,
                    "attempt": record.attempt,
                    "request_id": record.result.request_id,
                    "duration_ms": round(record.result.duration * 1000, 1),
                },
            )
        case Retrying(failure=failure):
            level = logging.WARNING if failure.kind is FailureKind.TRANSIENT else logging.INFO
            unknown = (
                " (outcome unknown: the API may still apply it; its call is checked once that "
                "can no longer happen)"
                if failure.maybe_applied
                else ""
            )
            events_log.log(
                level,
                f"attempt failed, retrying{unknown}",
                extra={
                    "outcome": "retried",
                    "maybe_applied": failure.maybe_applied,
                    "call_id": record.call_id,
                    "event_id": record.event_id,
                    "version": record.version,
                    "attempt": record.attempt,
                    "attempts_used": record.attempts_used,
                    "kind": failure.kind.value,
                    "code": failure.code,
                    "http_status": failure.http_status,
                    "request_id": failure.request_id,
                    "duration_ms": round(failure.duration * 1000, 1),
                    "delay_s": round(record.delay, 2),
                },
            )
        case Held():
            events_log.debug(
                "held without a call",
                extra={
                    "outcome": "held",
                    "call_id": record.call_id,
                    "event_id": record.event_id,
                    "why": record.why,
                    "delay_s": round(record.delay, 2),
                },
            )
        case CircuitChanged():
            _log_circuit(record)
        case Skipped():
            events_log.info(
                "skipped",
                extra={
                    "outcome": record.step.value,
                    "call_id": record.call_id,
                    "event_id": record.event_id,
                    "version": record.version,
                },
            )
        case Resurrected():
            events_log.info(
                "requeued the newest held-back event of the call after a newer one died",
                extra={"call_id": record.call_id},
            )
        case DeadLettersTrimmed():
            events_log.warning(
                "dead-letter store over its limit of %d records: the %d oldest were deleted "
                "(raise TAGGING_DEAD_LETTER_MAX_RECORDS, or replay/purge what is there)",
                record.limit,
                record.count,
            )
        case Dead():
            events_log.error(
                "dead-lettered: %s",
                record.detail,
                extra={
                    "outcome": "dead",
                    "event_id": record.event_id,
                    "call_id": record.call_id,
                    "version": record.version,
                    "reason": record.reason.value,
                    "code": record.code,
                    "attempt": record.attempts,
                },
            )
        case MaybeApplied(failure=failure):
            # At INFO the event's own line says it (a retry's, a dead letter's detail).
            events_log.debug(
                "outcome unknown (%s): the API may still apply version %d; the call is checked "
                "once that can no longer happen",
                failure.code,
                record.version,
                extra={"call_id": record.call_id, "version": record.version, "code": failure.code},
            )
        case LandedOnNewer():
            events_log.warning(
                "an older write landed on a newer one (this worker's lease had run out): the "
                "newest tags are written again",
                extra={
                    "call_id": record.call_id,
                    "event_id": record.event_id,
                    "version": record.version,
                },
            )
        case Repaired():
            events_log.info(
                "repaired: wrote the applied tags again after a write of unknown outcome",
                extra={"outcome": "repaired", "call_id": record.call_id, "version": record.version},
            )
        case RepairFailed(failure=failure):
            events_log.error(
                "repair refused for good (%s: %s): the call may hold older tags than version %d",
                failure.code,
                failure.message,
                record.version,
                extra={
                    "outcome": "repair_failed",
                    "call_id": record.call_id,
                    "version": record.version,
                },
            )


def _log_circuit(record: CircuitChanged) -> None:
    verdict, policy = record.verdict, record.policy
    failure = record.result if isinstance(record.result, ApiFailure) else None
    cause = f"{failure.code}: {failure.message}" if failure else ""
    fields = {
        "circuit": verdict.transition.value,
        "kind": verdict.kind,
        "code": failure.code if failure else None,
        "retry_in_s": round(verdict.wait, 1),
    }
    if verdict.transition is Transition.CLOSED:
        flow_log.warning("API calls resumed: the probe call was answered", extra=fields)
    elif verdict.transition is Transition.REOPENED:
        flow_log.warning(
            "API calls stay stopped: the probe failed (%s); next probe in %.0f s",
            cause,
            verdict.wait,
            extra=fields,
        )
    elif verdict.kind == "systemic":
        flow_log.error(
            "API calls stopped: the set-up is broken, not the events (%s). Check the access "
            "key, its RAM permissions, the host clock and the account balance. Events are "
            "kept, not dead-lettered; one probe call every %.0f s until it works.",
            cause,
            policy.systemic_cooldown,
            extra=fields,
        )
    else:
        flow_log.error(
            "API calls stopped: %d or more failures in a row across %d or more calls, the "
            "last %s. Events wait without using their attempts; next probe in %.0f s.",
            policy.failure_threshold,
            policy.min_calls,
            cause,
            verdict.wait,
            extra=fields,
        )
