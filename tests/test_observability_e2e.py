"""What operators and their tools see of real workers: /metrics, /livez and /readyz, Sentry."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.state.stores import Stores
from tests.conftest import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    OwnRedis,
    WorkerProcess,
    free_port,
    run_cli,
    settled,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _publish_mixed(stores: Stores, fake_api: FakeAlibabaApi) -> None:
    """Four events applied (one after a throttling answer) and one dead-lettered."""
    fake_api.add_fault("throttle", call_id="call-m-1", times=1)
    fake_api.add_fault(
        "error", call_id="call-m-4", code="InvalidParameter.Tags", http_status=400, times=1
    )
    Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": f"call-m-{i}", "tags": ["x"], "version": 1} for i in range(5)]
    )


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_metrics_count_what_every_worker_process_did_and_show_the_shared_state(
    pool: str,
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    start_worker(pool, 2, TAGGING_METRICS_PORT=str(port), TAGGING_METRICS_HOST="127.0.0.1")
    _publish_mixed(stores, fake_api)
    wait_for(settled(stores, 5), what="five events settled")

    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    m = _samples(text)
    assert m[("tagging_events_total", (("outcome", "applied"),))] == 4
    assert m[("tagging_events_total", (("outcome", "dead"),))] == 1
    assert m[("tagging_events_total", (("outcome", "retried"),))] == 1
    assert m[("tagging_api_calls_total", (("code", "OK"), ("result", "ok")))] == 4
    throttled = (("code", "Throttling.User"), ("result", "throttled"))
    assert m[("tagging_api_calls_total", throttled)] == 1
    refused = (("code", "InvalidParameter.Tags"), ("result", "permanent"))
    assert m[("tagging_api_calls_total", refused)] == 1
    assert m[("tagging_api_call_duration_seconds_count", ())] == 6
    assert m[("tagging_dead_letters_total", (("reason", "permanent_error"),))] == 1
    assert m[("tagging_dead_letters_stored", (("reason", "permanent_error"),))] == 1
    assert m[("tagging_queue_depth", ())] == 0
    assert m[("tagging_delayed_retries", ())] == 0
    assert m[("tagging_api_circuit_state", ())] == 0
    assert m[("tagging_api_rate_limit", ())] == stores.settings.api_rate_limit
    assert m[("tagging_redis_up", ())] == 1
    assert m[("tagging_rate_limiter_wait_seconds_count", ())] == 6


def test_readiness_fails_while_redis_is_unreachable_and_liveness_does_not(
    own_redis: OwnRedis,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    start_worker(
        TAGGING_BROKER_URL=own_redis.url,
        TAGGING_METRICS_PORT=str(port),
        TAGGING_METRICS_HOST="127.0.0.1",
        TAGGING_SCHEDULER_INTERVAL_SECONDS="0.1",  # ready within 5 s of the last answer
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200, what="the worker ready")

    own_redis.stop()

    def unready_for_redis() -> bool:
        status, body = _get(f"{base}/readyz")
        return status == 503 and "Redis is not answering" in json.loads(body)["problems"]

    wait_for(unready_for_redis, what="readiness to fail, naming Redis")
    assert _get(f"{base}/livez")[0] == 200

    own_redis.start()
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200, timeout=60, what="ready again")


def test_a_worker_whose_metrics_port_is_taken_still_applies_events_and_says_why(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        worker = start_worker(TAGGING_METRICS_PORT=str(port), TAGGING_METRICS_HOST="127.0.0.1")
        Publisher.from_settings(stores.settings).publish({"call_id": "call-p", "tags": ["a"]})
        wait_for(settled(stores, 1), what="the event settled")

    assert stores.outcomes.snapshot()["applied"] == 1
    refusals = [r for r in worker.records() if "TAGGING_METRICS_PORT" in r["message"]]
    assert len(refusals) == 1 and refusals[0]["level"] == "error", refusals
    assert worker.proc.poll() is None


def test_a_worker_serves_metrics_and_health_on_loopback_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    monkeypatch.delenv("TAGGING_METRICS_HOST", raising=False)
    port = free_port()
    worker = start_worker(TAGGING_METRICS_PORT=str(port))

    wait_for(lambda: _get(f"http://127.0.0.1:{port}/livez")[0] == 200, what="the worker live")
    served = [r["message"] for r in worker.records() if r["message"].startswith("serving /")]
    assert served == [f"serving /metrics, /livez and /readyz on 127.0.0.1:{port}"]


class SentryRecorder:
    """A local stand-in for Sentry's ingest endpoint: keeps every envelope it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                recorder.bodies.append(raw)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self._server.server_address[1]}/1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        """The error events among the envelopes (each envelope: header line, then items)."""
        found = []
        for body in self.bodies:
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def sentry_recorder() -> Iterator[SentryRecorder]:
    recorder = SentryRecorder()
    yield recorder
    recorder.close()


def test_dead_letters_reach_sentry_grouped_by_cause_and_scrubbed_of_secrets(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    sentry_recorder: SentryRecorder,
) -> None:
    # An API answer that quotes the credentials back: they must still never reach Sentry.
    leaky = f"Tags rejected for key {ACCESS_KEY_ID} signed with {ACCESS_KEY_SECRET}"
    fake_api.add_fault("error", code="InvalidParameter.Tags", http_status=400, message=leaky)
    Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": f"call-sentry-{i}", "tags": ["x"], "version": 1} for i in range(3)]
    )
    start_worker(SENTRY_DSN=sentry_recorder.dsn)

    wait_for(settled(stores, 3), what="three events dead-lettered")
    events = wait_for(
        lambda: len(e := sentry_recorder.events()) >= 3 and e, what="three Sentry events"
    )

    assert len(events) == 3, "one event per dead letter, no more (logs are breadcrumbs)"
    assert {tuple(e["fingerprint"]) for e in events} == {
        ("dead-letter", "permanent_error", "InvalidParameter.Tags")
    }
    assert {e["tags"]["reason"] for e in events} == {"permanent_error"}
    raw = b"".join(sentry_recorder.bodies).decode("utf-8", "replace")
    assert ACCESS_KEY_ID not in raw and ACCESS_KEY_SECRET not in raw
    assert "[Filtered]" in raw, "the leaky detail was sent, scrubbed"


def test_a_broken_key_is_one_sentry_issue_not_one_per_event(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    sentry_recorder: SentryRecorder,
) -> None:
    fake_api.set_credentials({ACCESS_KEY_ID: "the-rotated-secret"})
    Publisher.from_settings(stores.settings).publish_many(
        [{"call_id": f"call-key-{i}", "tags": ["x"], "version": 1} for i in range(20)]
    )
    start_worker(SENTRY_DSN=sentry_recorder.dsn, TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS="0.5")
    wait_for(lambda: fake_api.counters().get("SignatureDoesNotMatch", 0) >= 3, what="3 probes")
    fake_api.set_credentials({ACCESS_KEY_ID: ACCESS_KEY_SECRET})
    wait_for(settled(stores, 20), what="every event applied after the fix")

    events = sentry_recorder.events()
    assert [tuple(e["fingerprint"]) for e in events] == [
        ("circuit-open", "systemic", "SignatureDoesNotMatch")
    ]
    assert stores.dead_letters.count() == 0


def test_status_shows_the_live_workers_outcomes_and_recent_rates(
    stores: Stores,
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    start_worker(concurrency=2)
    _publish_mixed(stores, fake_api)
    wait_for(settled(stores, 5), what="five events settled")

    shown = run_cli(worker_env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert [(w["consuming"], w["active_tasks"]) for w in status["workers"]] == [(True, 0)]
    assert status["outcomes"]["applied"] == 4 and status["outcomes"]["dead"] == 1
    assert status["dead_letters_by_reason"] == {"permanent_error": 1}
    assert status["dead_letters_by_code"] == {"InvalidParameter.Tags": 1}
    assert status["queued"] == 0 and status["unfinished_events"] == 0
    assert status["rates_per_second"]["last_minute"]["applied"] > 0
    assert status["api"]["circuit"] == "closed"
