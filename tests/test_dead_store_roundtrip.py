"""Every record the worker can write, stored as the worker stores it, exported and imported
into another environment, comes back unchanged, and is stored there byte for byte as it was
here (against a real Redis)."""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagging_worker.state.dead_letters import (
    DeadLetterStore,
    DeadRecord,
    Restored,
    export_line,
    import_lines,
)
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Ordering
from tagging_worker.state.outcomes import Outcome
from tests.test_dead_store_schema import worker_records


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(worker_records(), min_size=1, max_size=3, unique_by=lambda r: r.id))
def test_stored_exported_and_imported_records_come_back_unchanged(
    redis_client: redis.Redis, namespace: str, records: list[DeadRecord]
) -> None:
    run = f"{namespace}:{uuid.uuid4().hex[:8]}"  # each example in keys of its own
    here = DeadLetterStore(redis_client, Keys(run), max_records=100)
    there_keys = Keys(f"{run}-there")
    there = DeadLetterStore(redis_client, there_keys, max_records=100)
    ordering = Ordering(redis_client, Keys(run), queue=namespace, version_ttl=60, fate_ttl=60)
    for record in records:
        assert ordering.finish(record.id, Outcome.DEAD, record)

    exported = "".join(export_line(r) for r in here.iter_records()).encode("utf-8")
    for _, record, problem in import_lines(exported.decode("utf-8"), there.rules):
        assert problem is None
        assert there.restore(record, replace=False) is Restored.STORED

    assert {r.id: r for r in there.iter_records()} == {r.id: r.letter for r in records}
    stored = {r.id: redis_client.hget(there_keys.dead_record(r.id), "json") for r in records}
    assert stored == {r.id: r.json.encode() for r in records}
