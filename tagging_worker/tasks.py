"""The Celery task: the story of one tag-update event, top to bottom."""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import shared_task
from celery.exceptions import Reject

from tagging_worker import observe
from tagging_worker.api import ApiFailure, ApiSuccess
from tagging_worker.backoff import GiveUp, RetryIn, compute_delay, next_step
from tagging_worker.classify import FailureKind
from tagging_worker.dead_letters import Attempt
from tagging_worker.event import InvalidEvent, TagUpdate, validate_event
from tagging_worker.flow import Hold, Verdict, signal_of, spread, uses_attempt
from tagging_worker.messages import TASK_NAME, build_task_message
from tagging_worker.ordering import Begin, lease_ms_for
from tagging_worker.outcomes import Outcome
from tagging_worker.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

BUSY_WAIT_SECONDS = (0.05, 0.3)
"""How long an event waits when another worker is writing its call (jittered)."""


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def update_call_tags(self: Any, *args: Any, **kwargs: Any) -> str:
    """Celery drops a message whose task raises, so nothing may escape: a message of the
    wrong shape or a bug dead-letters the event, and Redis trouble puts the message back."""
    rt = get_runtime()
    task_id = self.request.id
    try:
        if len(args) != 1 or set(kwargs) - {"retry_state"}:
            state = RetryState(
                received={"args": list(args), "kwargs": kwargs}, first_seen=time.time()
            )
            detail = (
                "the task takes one positional argument, the event; got "
                f"{len(args)} positional and keyword arguments {sorted(kwargs)}"
            )
            return _bury(rt, state, None, "invalid_event", detail, task_id=task_id).value
        event, carried = args[0], kwargs.get("retry_state")
        try:
            return process(rt, event, carried, task_id=task_id)
        except redis.RedisError:
            raise
        except Exception as exc:
            log.exception("internal error while processing task %s", task_id)
            state = RetryState.resume(carried, event, time.time())
            update = _validated_or_none(rt, event, task_id)
            detail = f"{type(exc).__name__}: {exc}"
            return _bury(rt, state, update, "internal_error", detail, task_id=task_id).value
    except redis.RedisError as exc:
        raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc


@dataclass(frozen=True)
class RetryState:
    """What an event carries from one attempt to the next, inside its own message."""

    received: Any
    first_seen: float
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def resume(cls, carried: dict[str, Any] | None, raw: Any, now: float) -> RetryState:
        if not carried:
            return cls(received=raw, first_seen=now)
        return cls(
            received=carried.get("received", raw),
            first_seen=float(carried.get("first_seen", now)),
            attempts=list(carried.get("attempts", [])),
        )

    @property
    def attempts_used(self) -> int:
        """Attempts that count against the event's limit."""
        return sum(1 for attempt in self.attempts if attempt.get("charged", True))

    def after(self, failure: ApiFailure, at: float, *, charged: bool) -> RetryState:
        attempt = Attempt(
            at=at,
            code=failure.code,
            message=failure.message,
            http_status=failure.http_status,
            request_id=failure.request_id,
            kind=failure.kind.value,
            charged=charged,
        )
        return RetryState(self.received, self.first_seen, [*self.attempts, attempt.as_dict()])

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "first_seen": self.first_seen, "attempts": self.attempts}


def process(rt: Runtime, raw: Any, carried: dict[str, Any] | None, *, task_id: str) -> str:
    """Returns the outcome, or what happened on the way to one (retried, parked, ...)."""
    now = time.time()
    state = RetryState.resume(carried, raw, now)
    try:
        update = validate_event(
            raw,
            limits=rt.settings.event_limits,
            default_version=int(now * 1000),
            default_event_id=task_id,
        )
    except InvalidEvent as exc:
        return _bury(rt, state, None, "invalid_event", str(exc), task_id=task_id).value

    token = uuid.uuid4().hex
    step = rt.ordering.begin(
        update.call_id,
        update.version,
        update.event_id,
        _message(rt, update, state),
        token=token,
        lease_ms=lease_ms_for(
            rt.settings.api_connect_timeout_ms,
            rt.settings.api_read_timeout_ms,
            int(rt.settings.api_rate_max_wait_seconds * 1000),
        ),
    )
    if step is Begin.BUSY:
        _later(rt, update, state, random.uniform(*BUSY_WAIT_SECONDS))
        return step.value
    if step is not Begin.GO:
        observe.skipped(update.call_id, update.event_id, update.version, step.value)
        return step.value

    admission = rt.flow.admit(token)
    if isinstance(admission, Hold):
        return _hold(rt, state, update, admission, now, task_id=task_id, token=token)
    if admission.wait:
        time.sleep(admission.wait)
    observe.waited_for_slot(admission.wait)
    result = rt.api.update_tags(update.call_id, update.tags_json)
    observe.api_called(result)
    failed = isinstance(result, ApiFailure)
    verdict = rt.flow.record(
        signal_of(result),
        token=token,
        code=result.code if failed else "",
        message=result.message if failed else "",
    )
    if verdict.transition:
        observe.circuit_changed(verdict, result, rt.flow.policy)
    if isinstance(result, ApiSuccess):
        rt.ordering.applied(update.call_id, update.version, update.event_id, token=token)
        observe.applied(
            update.call_id, update.event_id, update.version, len(state.attempts) + 1, result
        )
        return Outcome.APPLIED.value

    state = state.after(result, now, charged=uses_attempt(result.kind, verdict))
    detail = f"{result.code}: {result.message}"
    if result.kind is FailureKind.PERMANENT:
        return _bury(
            rt, state, update, "permanent_error", detail, task_id=task_id, token=token
        ).value
    return _retry_or_bury(
        rt, state, update, result, verdict, detail, now, task_id=task_id, token=token
    )


def _hold(
    rt: Runtime,
    state: RetryState,
    update: TagUpdate,
    hold: Hold,
    now: float,
    *,
    task_id: str,
    token: str,
) -> str:
    """No API call now (the budget is spent or the circuit is open): the event waits in the
    retry schedule, not in a worker, and keeps its attempts; only its maximum age limits it."""
    step = _next_step(rt, state, now, spread(hold.wait))
    if isinstance(step, GiveUp):
        detail = (
            f"the API circuit was open: {hold.cause}"
            if hold.circuit_open
            else "waited for the API budget (TAGGING_API_RATE_LIMIT) until its maximum age"
        )
        return _bury(rt, state, update, step.reason, detail, task_id=task_id, token=token).value
    rt.ordering.release(update.call_id, token=token)
    _later(rt, update, state, step.delay)
    rt.outcomes.add(Outcome.HELD)
    observe.held(update.call_id, update.event_id, hold, step.delay)
    return Outcome.HELD.value


def _retry_or_bury(
    rt: Runtime,
    state: RetryState,
    update: TagUpdate,
    failure: ApiFailure,
    verdict: Verdict,
    detail: str,
    now: float,
    *,
    task_id: str,
    token: str,
) -> str:
    s = rt.settings
    delay = compute_delay(
        len(state.attempts),
        base=s.retry_base_seconds,
        factor=s.retry_factor,
        cap=s.retry_cap_seconds,
        retry_after=failure.retry_after,
    )
    if verdict.circuit_open:
        delay = max(delay, spread(verdict.wait))
    step = _next_step(rt, state, now, delay)
    if isinstance(step, GiveUp):
        return _bury(rt, state, update, step.reason, detail, task_id=task_id, token=token).value
    rt.ordering.release(update.call_id, token=token)
    _later(rt, update, state, step.delay)
    rt.outcomes.add(Outcome.RETRIED)
    observe.retrying(
        update.call_id,
        update.event_id,
        update.version,
        len(state.attempts),
        failure,
        step.delay,
        state.attempts_used,
    )
    return Outcome.RETRIED.value


def _next_step(rt: Runtime, state: RetryState, now: float, delay: float) -> RetryIn | GiveUp:
    s = rt.settings
    return next_step(
        attempts_made=state.attempts_used,
        max_attempts=s.retry_max_attempts,
        first_seen=state.first_seen,
        now=now,
        max_age=s.event_max_age_seconds,
        delay=delay,
    )


def _bury(
    rt: Runtime,
    state: RetryState,
    update: TagUpdate | None,
    reason: str,
    detail: str,
    *,
    task_id: str,
    token: str = "",
) -> Outcome:
    """Dead-letter under the event's id (the task's for an invalid event), so a redelivered
    message replaces its record instead of adding a second one; then record the fate, which
    may put back an older event of the call that this one had held back."""
    record_id = update.event_id if update else task_id
    trimmed = rt.dead_letters.add(
        record_id=record_id,
        reason=reason,
        detail=detail,
        event=state.received,
        normalized=update.as_event() if update else None,
        attempts=state.attempts,
        first_seen=state.first_seen,
        task_id=task_id,
    )
    if update is None:
        rt.ordering.finish(record_id, Outcome.DEAD)
    else:
        if rt.ordering.dead(update.call_id, update.event_id, token=token) == "resurrected":
            observe.resurrected(update.call_id)
    call_id = update.call_id if update else _peek(state.received, "call_id")
    observe.dead(
        record_id,
        call_id,
        reason,
        detail,
        attempts=len(state.attempts),
        code=state.attempts[-1]["code"] if state.attempts else None,
        version=update.version if update else None,
    )
    if trimmed:
        observe.dead_letters_trimmed(trimmed, rt.settings.dead_letter_max_records)
    return Outcome.DEAD


def _message(
    rt: Runtime, update: TagUpdate, state: RetryState, *, enqueued_at_ms: int | None = None
) -> str:
    """The event as a self-contained message, to run again later or to hold back."""
    return build_task_message(
        update.as_event(),
        queue=rt.settings.queue,
        retry_state=state.as_dict(),
        enqueued_at_ms=enqueued_at_ms,
    )


def _later(rt: Runtime, update: TagUpdate, state: RetryState, delay: float) -> None:
    """Park the event's next message in the retry schedule and journal it as its message."""
    due_ms = int((time.time() + delay) * 1000)
    message = _message(rt, update, state, enqueued_at_ms=due_ms)
    rt.retries.schedule(message, delay=delay)
    rt.ordering.track(update.event_id, message, enqueued_at_ms=due_ms)


def _validated_or_none(rt: Runtime, raw: Any, task_id: str) -> TagUpdate | None:
    try:
        return validate_event(
            raw,
            limits=rt.settings.event_limits,
            default_version=int(time.time() * 1000),
            default_event_id=task_id,
        )
    except InvalidEvent:
        return None


def _peek(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, dict) else None
