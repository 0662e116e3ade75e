"""Outcome totals and the short history that recent rates are told from (real Redis)."""

from __future__ import annotations

import pytest
import redis

from tagging_worker.state.keys import Keys
from tagging_worker.state.outcomes import SAMPLE_EVERY_MS, Outcome, OutcomeCounters


@pytest.fixture
def counters(redis_client: redis.Redis, namespace: str) -> OutcomeCounters:
    return OutcomeCounters(redis_client, Keys(namespace))


def test_recent_rates_are_the_growth_since_the_oldest_sample_in_the_window(
    counters: OutcomeCounters,
) -> None:
    t0 = 1_800_000_000.0
    counters.add(Outcome.APPLIED, 100)
    assert counters.sample(now=t0)
    counters.add(Outcome.APPLIED, 50)
    counters.add(Outcome.DEAD, 5)

    rates = counters.rates(60, now=t0 + 10)
    assert rates["applied"] == 5.0 and rates["dead"] == 0.5 and rates["stale"] == 0.0


def test_one_sample_per_slot_however_many_workers_take_it(counters: OutcomeCounters) -> None:
    t0 = 1_800_000_000.0
    assert counters.sample(now=t0)
    assert not counters.sample(now=t0 + 0.001), "another worker in the same slot"
    assert counters.sample(now=t0 + SAMPLE_EVERY_MS / 1000)


def test_no_rate_is_told_before_a_sample_exists(counters: OutcomeCounters) -> None:
    counters.add(Outcome.APPLIED)
    assert counters.rates(60, now=1_800_000_000.0) == {}
