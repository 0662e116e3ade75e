"""The shared API budget, adaptive pace and circuit breaker, against a real Redis."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
from tagging_worker.state.flow import (
    Flow,
    FlowPolicy,
    Go,
    Hold,
    Signal,
    Verdict,
    signal_of,
    uses_attempt,
)
from tagging_worker.state.keys import Keys
from tests.conftest import REDIS_URL

POLICY = FlowPolicy(
    rate_limit=10.0,
    burst=1,
    rate_floor=1.0,
    decrease=0.5,
    increase=1.0,
    max_wait=1.0,
    failure_threshold=3,
    min_calls=2,
    cooldown=0.3,
    systemic_cooldown=0.6,
    probe_timeout=0.3,
)
SLACK = 0.05
"""Reservations are computed on Redis's clock; calls in a row take a few ms of it."""


@pytest.fixture
def flow(redis_client: redis.Redis, namespace: str) -> Flow:
    return Flow(redis_client, Keys(namespace), POLICY)


def _with(flow: Flow, **changes: object) -> Flow:
    return Flow(flow._redis, flow._keys, dataclasses.replace(flow.policy, **changes))


def _open(flow: Flow) -> Verdict:
    for i in range(POLICY.failure_threshold):
        verdict = flow.record(
            Signal.FAILED, token="t", call_id=f"call-{i}", code="InternalError", message="boom"
        )
    return verdict


def _fail(flow: Flow, call_id: str) -> Verdict:
    return flow.record(Signal.FAILED, token="t", call_id=call_id, code="InternalError")


def test_calls_are_spaced_at_the_rate_by_reserving_the_next_slot(flow: Flow) -> None:
    waits = [flow.admit(f"t{i}") for i in range(11)]
    assert all(isinstance(w, Go) and not w.probe for w in waits)
    for i, admission in enumerate(waits):
        assert admission.wait == pytest.approx(i * 0.1, abs=SLACK)


def test_a_caller_whose_slot_is_beyond_the_longest_wait_is_held_without_reserving(
    flow: Flow,
) -> None:
    for i in range(11):
        flow.admit(f"t{i}")
    held = flow.admit("late")
    again = flow.admit("later")
    assert isinstance(held, Hold) and not held.circuit_open
    assert held.wait == pytest.approx(1.1, abs=SLACK)
    assert isinstance(again, Hold) and again.wait == pytest.approx(held.wait, abs=SLACK)


def test_a_burst_goes_at_once_after_a_quiet_spell(flow: Flow) -> None:
    bursty = _with(flow, burst=4)
    waits = [bursty.admit(f"t{i}").wait for i in range(5)]  # type: ignore[union-attr]
    assert waits[:4] == pytest.approx([0, 0, 0, 0], abs=SLACK)
    assert waits[4] == pytest.approx(0.1, abs=SLACK)


def test_refusals_of_calls_sent_at_the_old_pace_do_not_cut_it_again(flow: Flow) -> None:
    for i in range(5):
        flow.admit(f"t{i}")  # slots reserved up to 0.4 s ahead at 10/s
    flow.record(Signal.THROTTLED, token="a")
    time.sleep(POLICY.decrease_hold + 0.05)
    assert flow.record(Signal.THROTTLED, token="b").rate == pytest.approx(5.0)
    time.sleep(0.5)
    assert flow.record(Signal.THROTTLED, token="c").rate == pytest.approx(2.5)


def test_throttling_lowers_the_shared_pace_once_per_hold(flow: Flow) -> None:
    first = flow.record(Signal.THROTTLED, token="a")
    second = flow.record(Signal.THROTTLED, token="b")
    assert first.rate == pytest.approx(5.0)
    assert second.rate == pytest.approx(5.0), "answers to one pace count once"
    assert flow.snapshot()["rate"] == pytest.approx(5.0)
    # the slower pace is what the next callers get
    assert [flow.admit(f"t{i}").wait for i in range(3)] == pytest.approx(  # type: ignore[union-attr]
        [0, 0.2, 0.4], abs=SLACK
    )


def test_a_large_share_of_refusals_cuts_the_pace_to_what_the_quota_let_through(
    flow: Flow,
) -> None:
    gentle = _with(flow, decrease=0.9)
    for _ in range(20):
        gentle.record(Signal.ANSWERED, token="a")
    assert gentle.record(Signal.THROTTLED, token="a").rate == pytest.approx(9.0), "one step"
    for _ in range(12):
        gentle.record(Signal.ANSWERED, token="a")
    for _ in range(8):
        gentle.record(Signal.THROTTLED, token="a")  # within the hold: counted, no cut
    time.sleep(POLICY.decrease_hold + 0.05)
    # 9 of 21 refused at the pace of 10/s: the quota is about 10 * 12 / 21
    assert gentle.record(Signal.THROTTLED, token="a").rate == pytest.approx(10 * 12 / 21)


def test_throttling_never_lowers_the_pace_below_the_floor(flow: Flow) -> None:
    for _ in range(5):
        verdict = flow.record(Signal.THROTTLED, token="a")
        time.sleep(POLICY.decrease_hold + 0.01)
    assert verdict.rate == POLICY.rate_floor


def test_sustained_success_raises_the_pace_back_to_the_limit_and_no_further(
    flow: Flow,
) -> None:
    flow.record(Signal.THROTTLED, token="a")
    rates = []
    for _ in range(4):
        time.sleep(0.3)
        rates.append(flow.record(Signal.ANSWERED, token="a").rate)
    assert rates[0] > 5.0
    assert rates == sorted(rates)
    assert rates[-1] == POLICY.rate_limit


def test_lowering_the_limit_setting_caps_the_shared_pace_at_once(flow: Flow) -> None:
    flow.record(Signal.ANSWERED, token="a")
    assert _with(flow, rate_limit=2.0).snapshot()["rate"] == 2.0


def test_the_circuit_opens_after_a_run_of_failures_and_a_success_resets_the_run(
    flow: Flow,
) -> None:
    for i in range(POLICY.failure_threshold - 1):
        assert not _fail(flow, f"call-{i}").circuit_open
    flow.record(Signal.ANSWERED, token="t", call_id="call-x")
    shown = flow.snapshot()
    assert shown["failures_in_a_row"] == shown["failing_calls_in_a_row"] == 0
    verdicts = [_fail(flow, f"call-{i}") for i in range(POLICY.failure_threshold)]
    assert [v.transition for v in verdicts] == ["", "", "opened"]
    assert verdicts[-1].circuit_open and verdicts[-1].kind == "transient"
    assert verdicts[-1].wait == pytest.approx(POLICY.cooldown, abs=SLACK)


def test_one_call_failing_again_and_again_never_opens_the_circuit(flow: Flow) -> None:
    verdicts = [_fail(flow, "call-bad") for _ in range(5 * POLICY.failure_threshold)]
    assert not any(v.circuit_open or v.transition for v in verdicts)
    assert isinstance(flow.admit("next"), Go)
    shown = flow.snapshot()
    assert shown["circuit"] == "closed"
    assert (shown["failures_in_a_row"], shown["failing_calls_in_a_row"]) == (15, 1)


def test_a_run_of_failures_opens_the_circuit_once_it_spans_enough_calls(flow: Flow) -> None:
    alone = [_fail(flow, "call-bad") for _ in range(POLICY.failure_threshold)]
    other = _fail(flow, "call-other")
    assert not any(v.circuit_open for v in alone)
    assert other.transition == "opened" and other.kind == "transient"
    assert flow.snapshot()["failing_calls_in_a_row"] == 0, "an opening starts a new run"


def test_an_answer_forgets_the_calls_of_the_run_it_ends(flow: Flow) -> None:
    _fail(flow, "call-a")
    flow.record(Signal.ANSWERED, token="t", call_id="call-b")
    verdicts = [_fail(flow, "call-c") for _ in range(POLICY.failure_threshold)]
    assert not any(v.circuit_open for v in verdicts), "call-a's failure was before the answer"
    assert _fail(flow, "call-a").transition == "opened"


def test_the_circuit_remembers_no_more_calls_than_it_takes_to_open(
    flow: Flow, redis_client: redis.Redis
) -> None:
    patient = _with(flow, failure_threshold=50, min_calls=3)
    for i in range(20):
        assert not _fail(patient, f"call-{i}").circuit_open
    assert patient.snapshot()["failing_calls_in_a_row"] == 3
    assert len(redis_client.hget(flow._keys.circuit, "calls")) == 3 * 8


def test_an_open_circuit_holds_every_caller_and_says_why(flow: Flow) -> None:
    _open(flow)
    held = flow.admit("t")
    assert isinstance(held, Hold) and held.circuit_open
    assert held.cause == "InternalError: boom"
    assert 0 < held.wait <= POLICY.cooldown
    assert flow.blocked()


def test_after_the_cooldown_one_probe_goes_and_its_answer_closes_the_circuit(
    flow: Flow,
) -> None:
    flow = _with(flow, probe_timeout=5.0)
    _open(flow)
    time.sleep(POLICY.cooldown + 0.05)
    assert not flow.blocked(), "workers take messages again so that a probe can go"
    probe = flow.admit("probe")
    other = flow.admit("other")
    assert probe == Go(wait=0.0, probe=True)
    assert isinstance(other, Hold) and other.circuit_open
    assert other.wait <= 1.0, "the probe's answer is soon: others look again soon too"
    assert flow.blocked(), "while the probe is out nobody else calls"
    closed = flow.record(Signal.ANSWERED, token="probe")
    assert closed.transition == "closed" and not closed.circuit_open
    assert isinstance(flow.admit("next"), Go)
    assert flow.snapshot()["circuit"] == "closed"


def test_a_failed_probe_reopens_the_circuit_for_another_cooldown(flow: Flow) -> None:
    _open(flow)
    time.sleep(POLICY.cooldown + 0.05)
    flow.admit("probe")
    reopened = flow.record(Signal.FAILED, token="probe", code="Network.ConnectError")
    assert reopened.transition == "reopened" and reopened.circuit_open
    assert isinstance(flow.admit("other"), Hold)


def test_a_probe_that_never_reports_back_is_replaced_after_its_timeout(flow: Flow) -> None:
    _open(flow)
    time.sleep(POLICY.cooldown + 0.05)
    flow.admit("vanished")
    assert isinstance(flow.admit("other"), Hold)
    time.sleep(POLICY.probe_timeout + 0.05)
    assert flow.admit("other") == Go(wait=0.0, probe=True)


def test_an_answer_to_a_call_sent_before_the_circuit_opened_does_not_close_it(
    flow: Flow,
) -> None:
    _open(flow)
    late = flow.record(Signal.ANSWERED, token="straggler")
    assert late.transition == "" and late.circuit_open


def test_a_systemic_failure_opens_the_circuit_at_once_and_is_reported_once(
    flow: Flow,
) -> None:
    first = flow.record(
        Signal.SYSTEMIC, token="a", call_id="call-a", code="InvalidAccessKeyId.NotFound"
    )
    others = [flow.record(Signal.SYSTEMIC, token=f"b{i}") for i in range(5)]
    assert first.transition == "opened" and first.kind == "systemic"
    assert first.wait == pytest.approx(POLICY.systemic_cooldown, abs=SLACK)
    assert {v.transition for v in others} == {""}
    assert flow.snapshot()["circuit_cause"].startswith("InvalidAccessKeyId.NotFound")


def test_a_systemic_failure_lengthens_a_circuit_opened_by_an_outage(flow: Flow) -> None:
    _open(flow)
    verdict = flow.record(Signal.SYSTEMIC, token="a", code="SignatureDoesNotMatch")
    assert verdict.transition == "opened" and verdict.kind == "systemic"
    assert verdict.wait == pytest.approx(POLICY.systemic_cooldown, abs=SLACK)


def test_throttling_proves_the_api_is_up_and_closes_a_half_open_circuit(flow: Flow) -> None:
    _open(flow)
    time.sleep(POLICY.cooldown + 0.05)
    flow.admit("probe")
    assert flow.record(Signal.THROTTLED, token="probe").transition == "closed"


CALL_IDS = ("call-1", "call-2", "call-3", "call-4", "通话-5", "")


class CircuitModel(RuleBasedStateMachine):
    """The circuit against a model of it: a run of transient failures opens it once it holds
    `threshold` failures from `min_calls` distinct calls, an answer or a throttling ends the
    run, a systemic failure opens it at once. The cool-downs outlast a run: no probe goes."""

    def __init__(self) -> None:
        super().__init__()
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.keys = Keys(f"tw-circuit-model-{uuid.uuid4().hex[:10]}")
        self.flow = Flow(self.redis, self.keys, POLICY)
        self.kind = ""
        """'' while closed, else what opened it."""
        self.failures = 0
        self.calls: set[str] = set()

    @initialize(threshold=st.integers(1, 6), min_calls=st.integers(1, 4))
    def policy(self, threshold: int, min_calls: int) -> None:
        self.flow = _with(
            self.flow,
            failure_threshold=threshold,
            min_calls=min_calls,
            cooldown=600.0,
            systemic_cooldown=600.0,
        )

    @rule(call_id=st.sampled_from(CALL_IDS))
    def transient_failure(self, call_id: str) -> None:
        verdict = _fail(self.flow, call_id)
        opens = False
        if not self.kind:
            self.failures += 1
            self.calls.add(call_id)
            p = self.flow.policy
            opens = self.failures >= p.failure_threshold and len(self.calls) >= p.min_calls
            if opens:
                self._open("transient")
        self._check(verdict, opened=opens)

    @rule(
        call_id=st.sampled_from(CALL_IDS),
        signal=st.sampled_from([Signal.ANSWERED, Signal.THROTTLED]),
    )
    def answer(self, call_id: str, signal: Signal) -> None:
        verdict = self.flow.record(signal, token="t", call_id=call_id)
        if not self.kind:
            self.failures, self.calls = 0, set()
        self._check(verdict, opened=False)

    @rule(call_id=st.sampled_from(CALL_IDS))
    def systemic_failure(self, call_id: str) -> None:
        verdict = self.flow.record(Signal.SYSTEMIC, token="t", call_id=call_id, code="Clock")
        opens = self.kind != "systemic"
        if opens:
            self._open("systemic")
        self._check(verdict, opened=opens)

    @invariant()
    def the_run_is_shown_and_only_its_needed_calls_kept(self) -> None:
        shown = self.flow.snapshot()
        assert shown["circuit"] == ("open" if self.kind else "closed")
        assert shown["failures_in_a_row"] == self.failures
        assert shown["failing_calls_in_a_row"] == min(len(self.calls), self.flow.policy.min_calls)

    def _open(self, kind: str) -> None:
        self.kind, self.failures, self.calls = kind, 0, set()

    def _check(self, verdict: Verdict, *, opened: bool) -> None:
        assert verdict.transition == ("opened" if opened else "")
        assert verdict.circuit_open == bool(self.kind)
        assert verdict.kind == self.kind

    def teardown(self) -> None:
        self.redis.delete(self.keys.circuit, self.keys.limiter)
        self.redis.close()


@pytest.mark.usefixtures("redis_client")
def test_the_circuit_opens_only_on_a_run_across_calls_or_a_systemic_failure() -> None:
    run_state_machine_as_test(
        CircuitModel,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _failure(kind: FailureKind) -> ApiFailure:
    return ApiFailure(kind, "Code", "message", 500, None, 0.01)


@pytest.mark.parametrize(
    ("result", "signal"),
    [
        (ApiSuccess(request_id="r", duration=0.01), Signal.ANSWERED),
        (_failure(FailureKind.PERMANENT), Signal.ANSWERED),
        (_failure(FailureKind.THROTTLED), Signal.THROTTLED),
        (_failure(FailureKind.TRANSIENT), Signal.FAILED),
        (_failure(FailureKind.SYSTEMIC), Signal.SYSTEMIC),
    ],
)
def test_what_a_result_says_about_the_api(result: ApiSuccess | ApiFailure, signal: Signal) -> None:
    assert signal_of(result) is signal


CLOSED = Verdict(transition="", circuit_open=False, wait=0.0, rate=10.0, kind="")
OPEN = Verdict(transition="opened", circuit_open=True, wait=30.0, rate=10.0, kind="transient")


@pytest.mark.parametrize(
    ("kind", "verdict", "used"),
    [
        (FailureKind.TRANSIENT, CLOSED, True),
        (FailureKind.TRANSIENT, OPEN, False),
        (FailureKind.THROTTLED, CLOSED, False),
        (FailureKind.SYSTEMIC, OPEN, False),
        (FailureKind.PERMANENT, CLOSED, True),
    ],
)
def test_only_the_events_own_bad_luck_uses_up_its_attempts(
    kind: FailureKind, verdict: Verdict, used: bool
) -> None:
    assert uses_attempt(kind, verdict) is used
