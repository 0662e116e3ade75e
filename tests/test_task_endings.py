"""How one delivery's ending reaches Celery: the state Flower and `celery events` show."""

from __future__ import annotations

import pickle

import pytest
from celery.exceptions import Retry

from tagging_worker.worker.tasks import DeadLettered, Ending, RunsAgain


def test_a_settled_event_returns_its_outcome() -> None:
    assert Ending("applied").for_celery() == "applied"
    assert Ending("superseded").for_celery() == "superseded"


def test_a_dead_letter_raises_dead_lettered_with_why_and_where_to_look() -> None:
    ending = Ending("dead", dead="permanent_error: X (tagging-worker dead show e-1)")
    with pytest.raises(DeadLettered, match=r"permanent_error: X \(tagging-worker dead show e-1\)"):
        ending.for_celery()


def test_an_event_that_runs_again_raises_retry_with_its_cause_and_delay() -> None:
    ending = Ending("retried", again="ServiceUnavailable: try later", again_in=2.25)
    with pytest.raises(Retry) as raised:
        ending.for_celery()
    assert raised.value.when == 2.25
    assert isinstance(raised.value.exc, RunsAgain)
    assert str(raised.value) == "retried, runs again in 2.2 s: ServiceUnavailable: try later"


def test_a_parked_event_runs_again_without_a_known_delay() -> None:
    with pytest.raises(Retry) as raised:
        Ending("parked", again="parked until an older version settles").for_celery()
    assert raised.value.when is None
    assert str(raised.value) == "parked, runs again: parked until an older version settles"


def test_the_exceptions_survive_the_prefork_pool_pickle() -> None:
    """A prefork child hands the exception to the main process pickled."""
    for ending in (Ending("dead", dead="why"), Ending("held", again="why", again_in=1.0)):
        with pytest.raises((DeadLettered, Retry)) as raised:
            ending.for_celery()
        copy = pickle.loads(pickle.dumps(raised.value))
        assert str(copy) == str(raised.value)
