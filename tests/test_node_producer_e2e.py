"""A producer in another language: Node.js with celery-node, the way a CRM integration might."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.state.stores import Stores
from tests.conftest import REDIS_URL, WorkerProcess, settled, wait_for

pytestmark = pytest.mark.e2e

PRODUCER = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The producer with celery-node installed from the lock file, outside the source tree."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("this test needs Node.js and npm (Debian: apt-get install nodejs npm)")
    where = tmp_path_factory.mktemp("node-producer")
    for name in ("package.json", "package-lock.json", "producer.js"):
        shutil.copy(PRODUCER / name, where)
    subprocess.run(
        ["npm", "ci", "--silent", "--no-audit", "--no-fund"],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return where


def test_an_event_published_by_celery_node_is_applied(
    node_producer: Path,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    event = {
        "call_id": "call-from-node",
        "tags": ["有意向", "需跟进"],
        "version": 7,
        "source": "js",
    }
    sent = subprocess.run(
        ["node", "producer.js", REDIS_URL, stores.settings.queue, json.dumps(event)],
        cwd=node_producer,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    start_worker()

    wait_for(settled(stores, 1), what="the event applied")
    assert fake_api.tags_of("call-from-node") == ["有意向", "需跟进"]
    assert stores.outcomes.snapshot()["applied"] == 1
    assert stores.ordering.applied_version("call-from-node") == 7
    assert stores.dead_letters.count() == 0
