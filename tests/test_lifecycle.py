"""What a worker runs beside Celery's consumer (`worker/lifecycle.py`), one turn at a time,
against real Redis: housekeeping moves due retries and reads the circuit, and the gate stops
and resumes consumption on what housekeeping saw. (Real workers pausing on an open circuit:
tests/test_flow_e2e.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from tagging_worker.messages import build_task_message
from tagging_worker.state.flow import Go, Signal
from tagging_worker.worker.inline import InlineWorker
from tagging_worker.worker.lifecycle import Lifecycle
from tagging_worker.worker.wiring import PerProcess
from tests.conftest import wait_for


@dataclass
class Consumer:
    """The two calls of Celery's consumer the gate makes, recorded."""

    task_consumer: object = object()
    calls: list[tuple[str, str]] = field(default_factory=list)

    def cancel_task_queue(self, queue: str) -> None:
        self.calls.append(("cancel", queue))

    def add_task_queue(self, queue: str) -> None:
        self.calls.append(("add", queue))


def _lifecycle(inline: InlineWorker) -> Lifecycle:
    services = inline.services
    return Lifecycle(services.settings, PerProcess(lambda: services))


def test_housekeeping_moves_due_retries_to_the_queue_and_leaves_heartbeats(
    inline: InlineWorker,
) -> None:
    life = _lifecycle(inline)
    stores, queue = inline.services.stores, inline.services.settings.queue
    stores.retries.schedule(build_task_message({"call_id": "c"}, queue=queue), delay=0)

    life.housekeeping_tick()

    assert stores.retries.pending() == 0
    assert stores.redis.llen(queue) == 1
    beats = life.heartbeats
    assert beats.housekeeping_at is not None and beats.redis_ok_at is not None
    assert life.health().live


def test_the_gate_stops_taking_messages_while_the_circuit_is_open_and_takes_them_again(
    inline: InlineWorker,
) -> None:
    life = _lifecycle(inline)
    flow, queue = inline.services.stores.flow, inline.services.settings.queue
    consumer = Consumer()

    life.housekeeping_tick()
    life.check_gate(consumer)
    assert consumer.calls == []

    flow.record(Signal.SYSTEMIC, token="t", code="InvalidAccessKeyId.NotFound")
    life.housekeeping_tick()
    life.check_gate(consumer)
    life.check_gate(consumer)
    assert consumer.calls == [("cancel", queue)]
    assert life.heartbeats.paused

    wait_for(lambda: isinstance(flow.admit("probe"), Go), what="the probe's turn")
    flow.record(Signal.ANSWERED, token="probe")
    life.housekeeping_tick()
    life.check_gate(consumer)
    assert consumer.calls == [("cancel", queue), ("add", queue)]
    assert not life.heartbeats.paused
