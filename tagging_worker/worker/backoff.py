"""Retry timing (pure): exponential backoff with full jitter, and when to give up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tagging_worker.reasons import DeadReason


def compute_delay(
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    rand: Callable[[], float] = random.random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait after `attempt` failed calls.

    Full jitter (a uniform draw below the exponential ceiling) spreads a burst of failures
    out instead of retrying them in lock-step. The API's own `x-acs-retry-after` hint, when
    given, wins: it knows its quota better than we do.
    """
    if retry_after is not None and retry_after > 0:
        return retry_after
    exponent = max(attempt - 1, 0)
    try:
        ceiling = min(cap, base * factor**exponent)
    except OverflowError:
        ceiling = cap
    return rand() * ceiling


@dataclass(frozen=True)
class RetryIn:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    reason: DeadReason
    """`retries_exhausted` or `expired`: the dead-letter reason."""


def next_step(
    *,
    attempts_made: int,
    max_attempts: int,
    first_seen: float,
    now: float,
    max_age: float,
    delay: float,
) -> RetryIn | GiveUp:
    if attempts_made >= max_attempts:
        return GiveUp(DeadReason.RETRIES_EXHAUSTED)
    if now + delay > first_seen + max_age:
        # Waiting would only let it expire before the retry runs.
        return GiveUp(DeadReason.EXPIRED)
    return RetryIn(delay)
