"""The story of one tag-update event, top to bottom: what one delivery of the task does."""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import redis
from celery.exceptions import Reject, Retry

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiResult, ApiSuccess
from tagging_worker.errors import InvalidEvent, TaggingWorkerError
from tagging_worker.event import MAX_CALL_ID_LENGTH, MAX_EVENT_ID_LENGTH, TagUpdate, validate_event
from tagging_worker.messages import build_task_message
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
    Resurrected,
    Retrying,
    Skipped,
    WaitedForSlot,
    report,
)
from tagging_worker.reasons import DeadReason
from tagging_worker.state.flow import Go, Hold, Verdict, signal_of, spread, uses_attempt
from tagging_worker.state.ordering import Begin, Death, lease_ms_for
from tagging_worker.state.outcomes import Outcome
from tagging_worker.worker import failpoints
from tagging_worker.worker.backoff import GiveUp, RetryIn, compute_delay, next_step
from tagging_worker.worker.retry_state import RetryState
from tagging_worker.worker.wiring import Services

log = logging.getLogger(__name__)

BUSY_WAIT_SECONDS = (0.05, 0.3)
"""How long an event waits when another worker is writing its call (jittered)."""


class DeadLettered(TaggingWorkerError):
    """The event was dead-lettered and its message is done with. Raised to Celery so that
    Flower and Celery's events show FAILURE; the task lists it in `throws`, so Celery logs it
    in one line without a traceback and the Sentry integration leaves it to the dead-letter
    report, which is grouped by cause."""


class RunsAgain(TaggingWorkerError):
    """Why an event will run again: what Celery's RETRY state shows."""


@dataclass(frozen=True)
class Ending:
    """What one delivery came to: the outcome we count, and how Celery should see it. The
    event is settled (SUCCESS), runs again under the same task id (RETRY), or was
    dead-lettered (FAILURE); a message is acked in every case."""

    outcome: str
    again: str | None = None
    """Why the event runs again, when it does."""
    again_in: float | None = None
    """In about how many seconds, when that is known (a parked event waits for its call)."""
    dead: str | None = None
    """Why it was dead-lettered, when it was."""

    def for_celery(self) -> str:
        """The task's return value, or the exception that gives Celery the true state."""
        if self.dead is not None:
            raise DeadLettered(self.dead)
        if self.again is not None:
            when = "" if self.again_in is None else f" in {self.again_in:.1f} s"
            raise Retry(
                f"{self.outcome}, runs again{when}: {self.again}",
                exc=RunsAgain(self.again),
                when=self.again_in,
            )
        return self.outcome


def run(sv: Services, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Ending:
    """One delivery of the task (`create_app` registers it; `inline.py` runs it in a test).
    Celery acks a message whose task raises, so nothing may escape before the event's fate is
    recorded: a message of the wrong shape or a bug dead-letters the event, and Redis trouble
    puts the message back. Only then does the task raise, for Celery's states (`Ending`)."""
    try:
        settle = kwargs.get("settle")
        if not args and set(kwargs) == {"settle"} and _is_call_id(settle):
            return Ending(settle_call(sv, settle))
        if len(args) != 1 or set(kwargs) - {"retry_state"}:
            state = RetryState(
                received={"args": list(args), "kwargs": kwargs}, first_seen=time.time()
            )
            detail = (
                "the task takes one positional argument, the event; got "
                f"{len(args)} positional and keyword arguments {sorted(kwargs)}"
            )
            return _bury(sv, state, None, DeadReason.INVALID_EVENT, detail, task_id=task_id)
        event, carried = args[0], kwargs.get("retry_state")
        progress = Progress(token=uuid.uuid4().hex)
        try:
            return process(sv, event, carried, task_id=task_id, progress=progress)
        except redis.RedisError:
            raise
        except Exception as exc:
            log.exception("internal error while processing task %s", task_id)
            return _after_internal_error(sv, event, carried, exc, task_id=task_id, p=progress)
    except redis.RedisError as exc:
        raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc


@dataclass
class Progress:
    """How far one delivery got, so an unexpected error is handled for what it interrupted."""

    token: str
    update: TagUpdate | None = None
    applied: bool = False
    """The API answered with success: the event must not be dead-lettered after that."""


def process(
    sv: Services,
    raw: Any,
    carried: dict[str, Any] | None,
    *,
    task_id: str,
    progress: Progress,
) -> Ending:
    """The outcome, or what happened on the way to one (retried, parked, ...)."""
    now = time.time()
    state = RetryState.resume(carried, raw, now)
    try:
        update = _validated(sv, raw, task_id)
    except InvalidEvent as exc:
        return _bury(sv, state, None, DeadReason.INVALID_EVENT, str(exc), task_id=task_id)
    progress.update = update
    failpoints.hit(failpoints.BEFORE_BEGIN)
    token = progress.token
    step = sv.stores.ordering.begin(
        update.call_id,
        update.version,
        update.event_id,
        _message(sv, update, state, task_id),
        token=token,
        lease_ms=_lease_ms(sv),
    )
    if step is Begin.BUSY:
        delay = random.uniform(*BUSY_WAIT_SECONDS)
        _later(sv, update, state, delay, task_id)
        return Ending(step.value, again="another delivery is writing this call", again_in=delay)
    if step is not Begin.GO:
        if step is Begin.PARKED:
            failpoints.hit(failpoints.AFTER_PARK)
        report(
            Skipped(
                call_id=update.call_id,
                event_id=update.event_id,
                version=update.version,
                step=step,
            )
        )
        if step is Begin.PARKED:
            return Ending(step.value, again="parked until an older version of its call settles")
        return Ending(step.value)

    admission = sv.stores.flow.admit(token)
    if isinstance(admission, Hold):
        return _hold(sv, state, update, admission, now, task_id=task_id, token=token)
    result, verdict = call_api(sv, token, admission, update.call_id, update.tags_json)
    if isinstance(result, ApiSuccess):
        progress.applied = True
        failpoints.hit(failpoints.AFTER_API_SUCCESS)
        recorded = sv.stores.ordering.applied(
            update.call_id, update.version, update.event_id, update.tags_json, token=token
        )
        if recorded.repair:
            report(
                LandedOnNewer(
                    call_id=update.call_id, event_id=update.event_id, version=update.version
                )
            )
        report(
            Applied(
                call_id=update.call_id,
                event_id=update.event_id,
                version=update.version,
                attempt=state.attempts_made + 1,
                result=result,
            )
        )
        failpoints.hit(failpoints.BEFORE_ACK)
        return Ending((recorded.fate or Outcome.APPLIED).value)

    if result.maybe_applied:
        failpoints.hit(failpoints.AFTER_API_UNKNOWN)
        report(MaybeApplied(call_id=update.call_id, version=update.version, failure=result))
    state = state.after(result, now, charged=uses_attempt(result.kind, verdict))
    detail = f"{result.code}: {result.message}"
    if result.kind is FailureKind.PERMANENT:
        return _bury(
            sv,
            state,
            update,
            DeadReason.PERMANENT_ERROR,
            detail,
            task_id=task_id,
            token=token,
            last=result,
        )
    return _retry_or_bury(
        sv, state, update, result, verdict, detail, now, task_id=task_id, token=token
    )


def call_api(
    sv: Services, token: str, admission: Go, call_id: str, tags_json: str
) -> tuple[ApiResult, Verdict]:
    """One request within the shared budget, its answer fed to the adaptive pace and the
    circuit."""
    if admission.wait:
        time.sleep(admission.wait)
    report(WaitedForSlot(seconds=admission.wait))
    result = sv.api.update_tags(call_id, tags_json)
    report(ApiCalled(result=result))
    failed = isinstance(result, ApiFailure)
    verdict = sv.stores.flow.record(
        signal_of(result),
        token=token,
        call_id=call_id,
        code=result.code if failed else "",
        message=result.message if failed else "",
    )
    if verdict.transition:
        report(CircuitChanged(verdict=verdict, result=result, policy=sv.stores.flow.policy))
    return result, verdict


def settle_call(sv: Services, call_id: str) -> str:
    """Once no write of unknown outcome can land any more: if one may have landed over the
    call's applied version, write that version's tags again. A check that cannot finish now
    (busy, held, failed) is simply dropped: the call stays due and is claimed again later."""
    token = uuid.uuid4().hex
    checked_ms = int(time.time() * 1000)
    step, repair = sv.stores.ordering.settle(call_id, token=token, lease_ms=_lease_ms(sv))
    if repair is None:
        return f"settle_{step.value}"
    admission = sv.stores.flow.admit(token)
    if isinstance(admission, Hold):
        sv.stores.ordering.release(call_id, token=token, version=repair.version)
        return "settle_held"
    result, _ = call_api(sv, token, admission, call_id, repair.tags_json)
    if isinstance(result, ApiSuccess):
        sv.stores.ordering.repaired(call_id, repair, checked_ms=checked_ms, token=token)
        report(Repaired(call_id=call_id, version=repair.version))
        return Outcome.REPAIRED.value
    if result.kind is FailureKind.PERMANENT:
        sv.stores.ordering.repaired(
            call_id, repair, checked_ms=checked_ms, token=token, failed=True
        )
        report(RepairFailed(call_id=call_id, version=repair.version, failure=result))
        return Outcome.REPAIR_FAILED.value
    sv.stores.ordering.release(
        call_id, token=token, version=None if result.maybe_applied else repair.version
    )
    return "settle_retried"


def _hold(
    sv: Services,
    state: RetryState,
    update: TagUpdate,
    hold: Hold,
    now: float,
    *,
    task_id: str,
    token: str,
) -> Ending:
    """No API call now (the budget is spent or the circuit is open): the event waits in the
    retry schedule, not in a worker, and keeps its attempts; only its maximum age limits it."""
    step = _next_step(sv, state, now, spread(hold.wait))
    if isinstance(step, GiveUp):
        detail = (
            f"the API circuit was open: {hold.cause}"
            if hold.circuit_open
            else "waited for the API budget (TAGGING_API_RATE_LIMIT) until its maximum age"
        )
        return _bury(
            sv, state, update, step.reason, detail, task_id=task_id, token=token, sent=False
        )
    sv.stores.ordering.release(
        update.call_id, token=token, version=update.version, event_id=update.event_id
    )
    _later(sv, update, state, step.delay, task_id)
    sv.stores.outcomes.add(Outcome.HELD)
    report(Held(call_id=update.call_id, event_id=update.event_id, hold=hold, delay=step.delay))
    why = f"API circuit open: {hold.cause}" if hold.circuit_open else "API budget spent"
    return Ending(Outcome.HELD.value, again=why, again_in=step.delay)


def _retry_or_bury(
    sv: Services,
    state: RetryState,
    update: TagUpdate,
    failure: ApiFailure,
    verdict: Verdict,
    detail: str,
    now: float,
    *,
    task_id: str,
    token: str,
) -> Ending:
    s = sv.settings
    delay = compute_delay(
        state.attempts_made,
        base=s.retry_base_seconds,
        factor=s.retry_factor,
        cap=s.retry_cap_seconds,
        retry_after=failure.retry_after,
    )
    if verdict.circuit_open:
        delay = max(delay, spread(verdict.wait))
    step = _next_step(sv, state, now, delay)
    if isinstance(step, GiveUp):
        return _bury(
            sv, state, update, step.reason, detail, task_id=task_id, token=token, last=failure
        )
    sv.stores.ordering.release(
        update.call_id,
        token=token,
        version=None if failure.maybe_applied else update.version,
        event_id=update.event_id,
    )
    _later(sv, update, state, step.delay, task_id)
    sv.stores.outcomes.add(Outcome.RETRIED)
    report(
        Retrying(
            call_id=update.call_id,
            event_id=update.event_id,
            version=update.version,
            attempt=state.attempts_made,
            attempts_used=state.attempts_used,
            failure=failure,
            delay=step.delay,
        )
    )
    return Ending(Outcome.RETRIED.value, again=detail, again_in=step.delay)


def _next_step(sv: Services, state: RetryState, now: float, delay: float) -> RetryIn | GiveUp:
    s = sv.settings
    return next_step(
        attempts_made=state.attempts_used,
        max_attempts=s.retry_max_attempts,
        first_seen=state.first_seen,
        now=now,
        max_age=s.event_max_age_seconds,
        delay=delay,
    )


def _bury(
    sv: Services,
    state: RetryState,
    update: TagUpdate | None,
    reason: DeadReason,
    detail: str,
    *,
    task_id: str,
    token: str = "",
    last: ApiFailure | None = None,
    sent: bool = True,
) -> Ending:
    """Dead-letter the event with its fate in one step, under its event id (taken from the
    raw event when it is not valid here, so the publisher's registration is cleared too); this
    may put back an older event of the call that this one had held back. `last` is the answer
    to the request it just made, `sent` False when it made none: either way, a request that
    can no longer land is not left in doubt."""
    record_id, call_id = _identity(update, state.received, task_id)
    version = update.version if update else None
    record = sv.stores.dead_letters.prepare(
        record_id=record_id,
        reason=reason,
        detail=detail,
        event=state.received,
        normalized=update.as_event() if update else None,
        attempts=state.attempts,
        attempt_counts=state.counts,
        first_seen=state.first_seen,
        task_id=task_id,
        applied_version=sv.stores.ordering.applied_version(call_id) if call_id else None,
    )
    definite = not sent or (last is not None and not last.maybe_applied)
    if call_id is None:
        sv.stores.ordering.finish(record_id, Outcome.DEAD, record)
    else:
        fate = sv.stores.ordering.dead(
            call_id, record_id, record, token=token, version=version if definite else None
        )
        if fate is Death.DUPLICATE:
            return Ending(Outcome.DEAD.value, dead=f"{reason.value}: a copy was already dead")
        if fate is Death.RESURRECTED:
            report(Resurrected(call_id=call_id))
    report(
        Dead(
            event_id=record_id,
            call_id=call_id,
            version=version,
            reason=reason,
            detail=detail,
            attempts=state.attempts_made,
            code=state.attempts[-1]["code"] if state.attempts else None,
        )
    )
    if trimmed := sv.stores.dead_letters.trim():
        report(DeadLettersTrimmed(count=trimmed, limit=sv.settings.dead_letter_max_records))
    return Ending(
        Outcome.DEAD.value,
        dead=f"{reason.value}: {detail} (tagging-worker dead show {record_id})",
    )


def refuse(
    sv: Services, received: Any, carried: Any, reason: DeadReason, detail: str, *, task_id: str
) -> Outcome:
    """A delivery refused before it could run (revoked, expired, quarantined, an option this
    task cannot honour, an envelope Celery cannot read): dead-lettered like any event that died,
    under its event id when it has one, so its call's order and its publisher's registration
    settle as for any other death. This delivery sent no request: it leaves nothing in doubt."""
    state = RetryState.resume(carried, received, time.time())
    update = _validated_or_none(sv, received, task_id)
    return Outcome(_bury(sv, state, update, reason, detail, task_id=task_id, sent=False).outcome)


def _identity(update: TagUpdate | None, raw: Any, task_id: str) -> tuple[str, str | None]:
    """The event id and call of an event, even one that is not valid here (a producer with
    other limits accepted it): its registration and fate live under those."""
    if update is not None:
        return update.event_id, update.call_id
    event_id, call_id = _peek(raw, "event_id"), _peek(raw, "call_id")
    usable = isinstance(event_id, str) and 0 < len(event_id) <= MAX_EVENT_ID_LENGTH
    known = _is_call_id(call_id)
    return (event_id if usable else task_id), (call_id if known and usable else None)


def _after_internal_error(
    sv: Services,
    event: Any,
    carried: dict[str, Any] | None,
    exc: Exception,
    *,
    task_id: str,
    p: Progress,
) -> Ending:
    """A bug, not the event's fault. If the API had already applied the event, record that
    (dead-lettering it would put older held-back events back over it); otherwise dead-letter
    it, giving up its lease."""
    update = p.update or _validated_or_none(sv, event, task_id)
    if p.applied and update is not None:
        recorded = sv.stores.ordering.applied(
            update.call_id, update.version, update.event_id, update.tags_json, token=p.token
        )
        return Ending((recorded.fate or Outcome.APPLIED).value)
    state = RetryState.resume(carried, event, time.time())
    detail = f"{type(exc).__name__}: {exc}"
    return _bury(
        sv, state, update, DeadReason.INTERNAL_ERROR, detail, task_id=task_id, token=p.token
    )


def _message(sv: Services, update: TagUpdate, state: RetryState, task_id: str) -> str:
    """The event as a self-contained message, to run again later or to hold back. It keeps
    the task id: to Celery and Flower a retry is the same task running again."""
    return build_task_message(
        update.as_event(), queue=sv.settings.queue, task_id=task_id, retry_state=state.as_dict()
    )


def _later(sv: Services, update: TagUpdate, state: RetryState, delay: float, task_id: str) -> None:
    """Park the event's next message in the retry schedule."""
    sv.stores.retries.schedule(_message(sv, update, state, task_id), delay=delay)


def _validated(sv: Services, raw: Any, task_id: str) -> TagUpdate:
    """The event as the worker's limits accept it; one that came without a version gets its
    place in the call's order at first receipt, kept for every later copy."""
    update = validate_event(
        raw, limits=sv.settings.event_limits, default_version=0, default_event_id=task_id
    )
    if _peek(raw, "version") is None:
        version = sv.stores.ordering.version_at_receipt(update.call_id, update.event_id)
        update = replace(update, version=version)
    return update


def _validated_or_none(sv: Services, raw: Any, task_id: str) -> TagUpdate | None:
    try:
        return _validated(sv, raw, task_id)
    except InvalidEvent:
        return None


def _lease_ms(sv: Services) -> int:
    s = sv.settings
    return lease_ms_for(
        s.api_connect_timeout_ms,
        s.api_read_timeout_ms,
        int(s.api_rate_max_wait_seconds * 1000),
    )


def _is_call_id(value: Any) -> bool:
    """A string that can name a call: what a settle message must carry."""
    return isinstance(value, str) and 0 < len(value) <= MAX_CALL_ID_LENGTH


def _peek(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, dict) else None
