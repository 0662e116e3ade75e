"""The README's Python examples, run as written, so they cannot drift from the code.

Every ```python block runs in order in one namespace, with the settings of the test's own
keys; the names the README leaves to the reader's code (`crm_row`, `crm_rows`) are given here.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import redis

from tagging_worker.state.stores import Stores
from tests.conftest import queued_events

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_examples_publish_what_they_say(
    stores: Stores, redis_client: redis.Redis, namespace: str
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    rows = [
        SimpleNamespace(call_id="call-readme-1", tags=["已成交"], updated_at_ms=1_700_000_000_001),
        SimpleNamespace(call_id="call-readme-2", tags=[], updated_at_ms=1_700_000_000_002),
    ]
    scope = {"crm_row": SimpleNamespace(updated_at_ms=1_700_000_000_000), "crm_rows": rows}

    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), scope)

    queued = queued_events(redis_client, namespace)
    assert [(e["call_id"], e["tags"], e["version"], e["source"]) for e in queued] == [
        ("call-abc123def456", ["有意向", "需跟进"], 1_700_000_000_000, "crm"),
        ("call-readme-1", ["已成交"], 1_700_000_000_001, "crm"),
        ("call-readme-2", [], 1_700_000_000_002, "crm"),
    ]
    assert scope["event_ids"] == [e["event_id"] for e in queued[1:]]
