"""Backoff delays and the give-up decision, with numbers and no broker."""

from __future__ import annotations

import random

import pytest

from tagging_worker.worker.backoff import GiveUp, RetryIn, compute_delay, next_step

KNOBS = {"base": 1.0, "factor": 2.0, "cap": 30.0}


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (50, 30)]
)
def test_delay_stays_between_zero_and_the_capped_exponential_ceiling(
    attempt: int, ceiling: float
) -> None:
    assert compute_delay(attempt, rand=lambda: 0.0, **KNOBS) == 0.0
    assert compute_delay(attempt, rand=lambda: 0.999999, **KNOBS) == pytest.approx(
        ceiling, rel=1e-5
    )


def test_huge_attempt_numbers_hit_the_cap_without_overflowing() -> None:
    assert compute_delay(10_000, rand=lambda: 1.0, base=1.0, factor=10.0, cap=300.0) == 300.0


def test_full_jitter_spreads_delays_across_the_range() -> None:
    rng = random.Random(7)
    delays = [compute_delay(4, rand=rng.random, **KNOBS) for _ in range(2000)]

    assert min(delays) < 0.5 and max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5  # uniform on [0, 8): mean 4


def test_retry_after_hint_wins_over_the_computed_delay() -> None:
    assert compute_delay(1, rand=lambda: 0.5, retry_after=45.0, **KNOBS) == 45.0
    assert compute_delay(1, rand=lambda: 0.5, retry_after=0, **KNOBS) == 0.5


def test_retry_while_attempts_and_age_allow() -> None:
    step = next_step(attempts_made=2, max_attempts=3, first_seen=0, now=10, max_age=100, delay=5)
    assert step == RetryIn(5)


def test_give_up_when_the_attempts_are_used_up() -> None:
    step = next_step(attempts_made=3, max_attempts=3, first_seen=0, now=1, max_age=100, delay=1)
    assert step == GiveUp("retries_exhausted")


def test_give_up_as_expired_when_the_retry_would_land_past_the_maximum_age() -> None:
    assert next_step(
        attempts_made=1, max_attempts=9, first_seen=0, now=90, max_age=100, delay=11
    ) == GiveUp("expired")
    assert next_step(
        attempts_made=1, max_attempts=9, first_seen=0, now=90, max_age=100, delay=10
    ) == RetryIn(10)
    assert next_step(
        attempts_made=1, max_attempts=9, first_seen=0, now=101, max_age=100, delay=0
    ) == GiveUp("expired")
