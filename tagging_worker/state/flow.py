"""Kindness to the API: one request budget, an adaptive pace and a circuit breaker, shared by
every worker process on every host through Redis.

Celery's `rate_limit` is per process and knows nothing of the others, while Alibaba counts
the account's requests per second across all of them. So the budget lives in Redis:

- **pace** (GCRA): a theoretical arrival time advanced by one interval per request. A worker
  *reserves* the next slot and sleeps until it, so nobody polls; when the next slot is further
  away than `max_wait`, the event goes back to the retry schedule instead of holding a worker.
- **adaptive rate** (AIMD): a throttling answer cuts the pace once per pace (not again until
  the slots reserved at the old pace have gone out and been answered): by `decrease`, or to
  what the share of refusals says the quota is when that is lower (at most by half); sustained
  success adds `increase` of the limit per second, never above the limit.
- **circuit**: a run of transient failures that spans several calls opens it for a
  cool-down, a systemic failure (credentials, permission, clock, balance) at once for a longer
  one; while open nobody calls the API and events wait without using their attempts. After the
  cool-down one caller is let through as the probe (half-open); its success closes the
  circuit, its failure reopens it.

  Why a run across calls: the circuit stops every call, so it needs evidence that the API is
  down, not that one call is in trouble. A run in a row is that evidence whenever other calls
  are in flight, since any answer ends it; when nothing else is in flight, one call's own
  retries would make a run on their own, hence `min_calls` distinct calls. A failure rate over
  a time window would need a window to tune and more state, and at low traffic it holds too
  few calls to say anything. The run keeps only its count and a short hash per distinct call,
  at most `min_calls` of them, in the circuit's hash.

Time is Redis's own (`TIME`), so hosts with skewed clocks share one timeline. Each decision is
one Lua script (`lua/flow_*.lua`, the pace and the circuit being functions of `lua/library.lua`);
the rules about what a failure means for an event stay in Python (`uses_attempt`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiResult, ApiSuccess
from tagging_worker.settings import Settings
from tagging_worker.state import scripts
from tagging_worker.state.keys import Keys


class Signal(str, Enum):
    """What one API call says about the API, as opposed to about the event."""

    ANSWERED = "answered"
    """It answered on its merits (success, or a refusal of this event): it is up."""
    THROTTLED = "throttled"
    FAILED = "failed"
    """Connection error, 5xx, timeout: maybe down."""
    SYSTEMIC = "systemic"
    """Our set-up is broken: every call will fail the same way."""


def signal_of(result: ApiResult) -> Signal:
    if isinstance(result, ApiSuccess) or result.kind is FailureKind.PERMANENT:
        return Signal.ANSWERED
    return {
        FailureKind.THROTTLED: Signal.THROTTLED,
        FailureKind.TRANSIENT: Signal.FAILED,
        FailureKind.SYSTEMIC: Signal.SYSTEMIC,
    }[result.kind]


@dataclass(frozen=True)
class FlowPolicy:
    rate_limit: float
    burst: int
    rate_floor: float
    decrease: float
    increase: float
    """Share of `rate_limit` regained per second of success."""
    max_wait: float
    failure_threshold: int
    min_calls: int
    """Distinct calls a run of failures must span to open the circuit."""
    cooldown: float
    systemic_cooldown: float
    probe_timeout: float
    """How long a probe may take before another caller may probe (its caller died)."""

    @classmethod
    def from_settings(cls, s: Settings) -> FlowPolicy:
        return cls(
            rate_limit=s.api_rate_limit,
            burst=s.api_rate_burst,
            rate_floor=s.api_rate_floor,
            decrease=s.api_rate_decrease,
            increase=s.api_rate_increase,
            max_wait=s.api_rate_max_wait_seconds,
            failure_threshold=s.circuit_failure_threshold,
            min_calls=s.circuit_min_calls,
            cooldown=s.circuit_cooldown_seconds,
            systemic_cooldown=s.circuit_systemic_cooldown_seconds,
            probe_timeout=(s.api_connect_timeout_ms + s.api_read_timeout_ms) / 1000 + 5,
        )

    decrease_hold: float = 0.25
    """After the last slot reserved at the old pace, how long its answers may still take to
    come back (and count against the old pace, not the new one)."""


@dataclass(frozen=True)
class Go:
    """Call the API after sleeping `wait` seconds (the reserved slot)."""

    wait: float
    probe: bool


@dataclass(frozen=True)
class Hold:
    """Do not call the API now; come back in about `wait` seconds."""

    wait: float
    circuit_open: bool
    """True: the circuit is open (`cause` says why); False: the pace is full."""
    cause: str = ""


class Transition(str, Enum):
    """How recording one call's signal changed the circuit. A `str`, so it compares equal to
    the text (`verdict.transition == "closed"`), and only a change is truthy."""

    UNCHANGED = ""
    OPENED = "opened"
    REOPENED = "reopened"
    """A probe failed."""
    CLOSED = "closed"
    """The probe was answered."""

    def __str__(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Verdict:
    """The shared state after one call's signal was recorded (`lua/flow_record.lua`'s reply)."""

    transition: Transition
    circuit_open: bool
    wait: float
    """When open: seconds until the next probe may go."""
    rate: float
    kind: str
    """When open: 'transient' or 'systemic'."""

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Verdict:
        transition, state, wait_ms, rate, kind = (_text(x) for x in reply)
        return cls(
            transition=Transition(transition),
            circuit_open=state != "closed",
            wait=float(wait_ms) / 1000,
            rate=float(rate),
            kind=kind,
        )


def uses_attempt(result_kind: FailureKind, verdict: Verdict) -> bool:
    """Does this failure use one of the event's attempts? Only when it may be the event's
    own bad luck: throttling and systemic failures are the account's, and a failure that
    found (or left) the circuit open is the API's outage."""
    if result_kind is FailureKind.PERMANENT:
        return True
    return result_kind is FailureKind.TRANSIENT and not verdict.circuit_open


def spread(wait: float) -> float:
    """Events held back together should not all come back in the same instant."""
    return wait * random.uniform(1.0, 1.2) + random.uniform(0.0, 0.05)


class Flow:
    def __init__(self, client: redis.Redis, keys: Keys, policy: FlowPolicy) -> None:
        self._redis = client
        self._keys = keys
        self.policy = policy
        self._admit = scripts.register(client, "flow_admit")
        self._record = scripts.register(client, "flow_record")
        self._blocked = scripts.register(client, "flow_blocked")
        self._close = scripts.register(client, "flow_close")

    def admit(self, token: str) -> Go | Hold:
        """Ask for one API call; `token` identifies the caller should it become the probe."""
        p = self.policy
        reply = self._admit(
            keys=[self._keys.circuit, self._keys.limiter],
            args=[token, p.rate_limit, p.burst, p.max_wait * 1000, p.probe_timeout * 1000],
        )
        return _admission(reply)

    def record(
        self,
        signal: Signal,
        *,
        token: str,
        call_id: str = "",
        code: str = "",
        message: str = "",
    ) -> Verdict:
        """Feeds one request's signal to the pace and the circuit. `call_id` is the call the
        request was for: a run of failures opens the circuit only once it spans `min_calls`
        of them, so a caller that leaves it out is one call however often it fails."""
        p = self.policy
        reply = self._record(
            keys=[self._keys.circuit, self._keys.limiter],
            args=[
                signal.value,
                token,
                call_id,
                p.rate_limit,
                p.rate_floor,
                p.decrease,
                p.increase * p.rate_limit,
                p.decrease_hold * 1000,
                p.failure_threshold,
                p.min_calls,
                p.cooldown * 1000,
                p.systemic_cooldown * 1000,
                code,
                message[:500],
            ],
        )
        return Verdict.from_reply(reply)

    def blocked(self) -> bool:
        """While True no caller may reach the API, so workers should stop taking messages."""
        return bool(self._blocked(keys=[self._keys.circuit]))

    def snapshot(self) -> dict[str, Any]:
        """The shared state as an operator reads it (`tagging-worker status`)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(self._keys.circuit)
            pipe.hmget(self._keys.limiter, "rate")
            (seconds, micros), circuit, (rate,) = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        c = {_text(k): _text(v) for k, v in circuit.items()}
        state = c.get("state", "closed")
        deadline = c.get("until") if state == "open" else c.get("probe_until")
        current = min(float(rate), self.policy.rate_limit) if rate else self.policy.rate_limit
        return {
            "rate": round(current, 3),
            "rate_limit": self.policy.rate_limit,
            "circuit": state,
            "circuit_kind": c.get("kind"),
            "circuit_cause": f"{c['code']}: {c['message']}" if "code" in c else None,
            "circuit_retry_in": (
                max(float(deadline) - now_ms, 0) / 1000 if deadline is not None else None
            ),
            "failures_in_a_row": int(c.get("failures", 0)),
            "failing_calls_in_a_row": len(c.get("calls", "")) // 8,
        }

    def close(self) -> tuple[Transition, int]:
        """Closes the circuit now, without waiting for the next probe: for an operator who
        knows the set-up is fixed, or whose own check call was answered on its merits
        (`tagging-worker circuit reset|probe`). The events it kept waiting come due now too.
        Returns CLOSED (UNCHANGED when it was closed) and how many delayed retries came due."""
        was, due = self._close(keys=[self._keys.circuit, self._keys.retry_due])
        return (Transition.UNCHANGED if _text(was) == "closed" else Transition.CLOSED), int(due)


def _admission(reply: list[Any]) -> Go | Hold:
    """`lua/flow_admit.lua`'s reply, read."""
    verdict, wait_ms, code, message = (_text(x) for x in reply)
    wait = float(wait_ms) / 1000
    if verdict == "go":
        return Go(wait=wait, probe=False)
    if verdict == "probe":
        return Go(wait=0.0, probe=True)
    if verdict == "rate":
        return Hold(wait=wait, circuit_open=False)
    return Hold(wait=wait, circuit_open=True, cause=f"{code}: {message}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
