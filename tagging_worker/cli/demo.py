"""`tagging-worker demo`: the whole pipeline on one machine, with no Alibaba Cloud account.

Local Redis (started if none answers), the fake API in this process, one real worker
process, sample events, one of them throttled and one rejected, then the operator's fix:
the dead letter is replayed and applied. It uses its own queue and key prefix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import redis
from rich.console import Console
from rich.table import Table

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.produce.replay import replay_dead_letter
from tagging_worker.settings import load_settings
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores

NAMESPACE = "tagging-demo"
DEMO_KEY_ID, DEMO_KEY_SECRET = "demo-access-key-id", "demo-access-key-secret"
SAMPLE_TAGS = [["有意向"], ["有意向", "需跟进"], ["无人接听"], [], ["已成交", "VIP"], ["需跟进"]]
THROTTLED, BROKEN = "call-demo-0002", "call-demo-0005"


def run_demo(out: Console, *, sample_count: int, namespace: str = NAMESPACE) -> int:
    broker = os.environ.get("TAGGING_BROKER_URL", "redis://127.0.0.1:6379/0")
    if not _ensure_redis(broker, out):
        return 1
    with FakeAlibabaApi(credentials={DEMO_KEY_ID: DEMO_KEY_SECRET}) as api:
        env = _worker_env(broker, api.endpoint, namespace)
        stores = Stores.connect(
            load_settings(broker_url=broker, queue=namespace, key_prefix=namespace)
        )
        _forget_previous_run(stores)
        out.rule("tagging-worker demo")
        out.print(f"fake Alibaba Cloud API on http://{api.endpoint}; Redis at {broker}")
        with tempfile.TemporaryDirectory() as scratch:
            worker = _start_worker(env, Path(scratch) / "worker.log")
            try:
                return _story(out, stores, api, sample_count)
            finally:
                worker.terminate()
                worker.wait(30)


def _story(out: Console, stores: Stores, api: FakeAlibabaApi, sample_count: int) -> int:
    api.add_fault("throttle", call_id=THROTTLED, times=1, retry_after_ms=300)
    api.add_fault(
        "error",
        call_id=BROKEN,
        code="InvalidParameter.Tags",
        http_status=400,
        message="The specified tag is not allowed for this call.",
    )
    events = [
        {
            "call_id": f"call-demo-{n:04d}",
            "tags": SAMPLE_TAGS[n % len(SAMPLE_TAGS)],
            "version": 1,
            "source": "demo",
        }
        for n in range(1, sample_count + 1)
    ]
    publisher = Publisher(stores.ordering, limits=stores.settings.event_limits)
    publisher.publish_many(events)
    out.print(
        f"published {len(events)} events; {THROTTLED} will be throttled once, "
        f"{BROKEN} rejected as invalid by the API"
    )
    if not _wait(stores, lambda c: c["applied"] + c["dead"] >= len(events)):
        out.print("[red]the worker did not finish in time[/]")
        return 1
    _show_calls(out, api, events, "after the first pass")
    # The demo's worker wrote these moments ago under the demo's own prefix: none is damaged.
    dead = [r for r in stores.dead_letters.list() if isinstance(r, DeadLetter)]
    for record in dead:
        last = record.attempts[-1] if record.attempts else None
        out.print(
            f"[yellow]dead letter[/] {record.id}: {record.reason.value} "
            f"call_id={record.call_id} code={record.code} "
            f"request_id={None if last is None else last.request_id}",
            highlight=False,
        )
    if not dead:
        return 0
    out.print("the operator fixes the cause (the API now accepts the tag) and replays:")
    api.clear_faults()
    for record in dead:
        replay_dead_letter(stores, record.id)
    applied_before = stores.outcomes.snapshot()["applied"]
    if not _wait(stores, lambda c: c["applied"] >= applied_before + len(dead)):
        out.print("[red]the replay did not finish in time[/]")
        return 1
    _show_calls(out, api, events, "after the replay")
    counts = stores.outcomes.snapshot()
    out.print(f"outcomes: {counts}; dead letters left: {stores.dead_letters.count()}")
    ok = all(api.tags_of(e["call_id"]) == e["tags"] for e in events)
    out.print("[green]every call holds its tags[/]" if ok else "[red]some calls differ[/]")
    return 0 if ok else 1


def _show_calls(out: Console, api: FakeAlibabaApi, events: list[dict], title: str) -> None:
    table = Table(title=f"what the API holds, {title}")
    for column in ("call_id", "tags sent", "API holds", "API answers"):
        table.add_column(column)
    for event in events:
        held = api.tags_of(event["call_id"])
        answers = [c.answer for c in api.calls() if c.call_id == event["call_id"]]
        table.add_row(
            event["call_id"],
            str(event["tags"]),
            "—" if held is None else str(held),
            " → ".join(answers),
        )
    out.print(table)


def _wait(stores: Stores, done: Callable[[dict[str, int]], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(stores.outcomes.snapshot()):
            return True
        time.sleep(0.1)
    return False


def _worker_env(broker: str, endpoint: str, namespace: str) -> dict[str, str]:
    return {
        "TAGGING_BROKER_URL": broker,
        "TAGGING_QUEUE": namespace,
        "TAGGING_KEY_PREFIX": namespace,
        "TAGGING_API_ENDPOINT": endpoint,
        "TAGGING_API_PROTOCOL": "http",
        "TAGGING_RETRY_BASE_SECONDS": "0.2",
        "TAGGING_RETRY_CAP_SECONDS": "1",
        "TAGGING_SCHEDULER_INTERVAL_SECONDS": "0.1",
        "TAGGING_METRICS_PORT": "0",  # a story on this machine, not a service to scrape
        "ACCESS_KEY_ID": DEMO_KEY_ID,
        "ACCESS_KEY_SECRET": DEMO_KEY_SECRET,
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tagging_worker", "worker", "--concurrency=4"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _forget_previous_run(stores: Stores) -> None:
    """Only the demo's own keys: its prefix and its queue."""
    doomed = [*stores.redis.scan_iter(f"{stores.settings.key_prefix}*", count=1000)]
    if doomed:
        stores.redis.delete(*doomed)


def _ensure_redis(url: str, out: Console) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        pass
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost") or shutil.which("redis-server") is None:
        out.print(
            f"[red]Redis does not answer at {url}[/]; `bash scripts/demo.sh` installs and "
            "starts one, or set TAGGING_BROKER_URL"
        )
        return False
    out.print(f"starting redis-server on 127.0.0.1:{port}")
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.gettempdir(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        try:
            redis.Redis(host="127.0.0.1", port=port).ping()
            return True
        except redis.RedisError:
            time.sleep(0.1)
    return False
