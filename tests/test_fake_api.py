"""The fake API's own behaviour: control endpoints, quota, nonce replay, fault bookkeeping,
late applies."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from alibabacloud_tea_openapi import utils

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
from tagging_worker.settings import load_settings
from tests.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET


def _client(fake_api: FakeAlibabaApi, read_timeout_ms: int = 10_000) -> TagsApi:
    return TagsApi(
        load_settings(
            api_endpoint=fake_api.endpoint,
            api_protocol="http",
            access_key_id=ACCESS_KEY_ID,
            access_key_secret=ACCESS_KEY_SECRET,
            api_read_timeout_ms=read_timeout_ms,
        ).api_config()
    )


def _control(fake_api: FakeAlibabaApi, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{fake_api.endpoint}/_fake/{path}", data=data, method=method
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_faults_set_over_http_apply_and_state_is_readable_over_http(
    fake_api: FakeAlibabaApi,
) -> None:
    _control(
        fake_api,
        "POST",
        "faults",
        {"kind": "error", "code": "InternalError", "http_status": 500, "times": 1, "call_id": "c1"},
    )
    client = _client(fake_api)

    assert isinstance(client.update_tags("c1", '["a"]'), ApiFailure)
    assert isinstance(client.update_tags("c1", '["b"]'), ApiSuccess)
    assert _control(fake_api, "GET", "calls/c1") == {"call_id": "c1", "tags": ["b"]}
    assert [c["answer"] for c in _control(fake_api, "GET", "log")] == ["InternalError", "OK"]
    state = _control(fake_api, "GET", "state")
    assert state["counters"]["total"] == 2 and state["tags"] == {"c1": ["b"]}
    _control(fake_api, "POST", "reset", {})
    assert _control(fake_api, "GET", "state") == {"tags": {}, "counters": {}}


def test_a_fault_for_one_call_leaves_other_calls_alone(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault("throttle", call_id="c1")
    client = _client(fake_api)

    assert isinstance(client.update_tags("c2", '["a"]'), ApiSuccess)
    assert isinstance(client.update_tags("c1", '["a"]'), ApiFailure)


def test_probability_faults_hit_about_that_share_of_calls(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault("error", code="InternalError", http_status=500, probability=0.3)
    client = _client(fake_api)

    failures = sum(isinstance(client.update_tags("c", "[]"), ApiFailure) for _ in range(400))

    assert 70 < failures < 170


def test_sticky_faults_give_the_same_request_the_same_answer(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault(
        "error", code="InvalidParameter", http_status=400, probability=0.5, sticky=True
    )
    client = _client(fake_api)

    first = [isinstance(client.update_tags(f"c{n}", '["a"]'), ApiFailure) for n in range(40)]
    again = [isinstance(client.update_tags(f"c{n}", '["a"]'), ApiFailure) for n in range(40)]

    assert first == again and 5 < sum(first) < 35


def test_quota_answers_throttling_above_the_rate(fake_api: FakeAlibabaApi) -> None:
    fake_api.set_quota(5)
    client = _client(fake_api)

    results = [client.update_tags("c", "[]") for _ in range(8)]

    assert sum(isinstance(r, ApiSuccess) for r in results) == 5
    assert {r.code for r in results if isinstance(r, ApiFailure)} == {"Throttling.User"}


def test_a_stall_without_seconds_holds_until_released(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault("stall", times=1)
    client = _client(fake_api)
    results: list[Any] = []
    caller = threading.Thread(target=lambda: results.append(client.update_tags("c", '["a"]')))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive()

    fake_api.release_stalls()
    caller.join(5)
    assert isinstance(results[0], ApiSuccess)


def test_a_replayed_nonce_is_refused(
    fake_api: FakeAlibabaApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(utils.Utils, "get_nonce", staticmethod(lambda: "fixed-nonce"))
    client = _client(fake_api)

    first, second = client.update_tags("c", "[]"), client.update_tags("c", "[]")

    assert isinstance(first, ApiSuccess)
    assert isinstance(second, ApiFailure) and second.code == "SignatureNonceUsed"


def test_rotated_credentials_make_the_old_key_fail(fake_api: FakeAlibabaApi) -> None:
    fake_api.set_credentials({"new-key": "new-secret"})

    result = _client(fake_api).update_tags("c", "[]")

    assert isinstance(result, ApiFailure) and result.code == "InvalidAccessKeyId.NotFound"


@pytest.mark.parametrize("answer", ["hang", "504", "close"])
def test_a_late_apply_fails_at_the_client_and_lands_when_released(
    fake_api: FakeAlibabaApi, answer: str
) -> None:
    fake_api.add_fault("late_apply", answer=answer, times=1)

    result = _client(fake_api, read_timeout_ms=300).update_tags("c1", '["late"]')

    assert isinstance(result, ApiFailure)
    assert fake_api.tags_of("c1") is None and fake_api.calls() == []
    fake_api.release_stalls()
    assert fake_api.wait_late_applies(5)
    assert fake_api.tags_of("c1") == ["late"]
    assert [c.answer for c in fake_api.calls()] == ["OK-LATE"]
    assert fake_api.counters()["OK-LATE"] == 1


def test_a_timed_late_apply_lands_by_itself_no_sooner_than_its_seconds(
    fake_api: FakeAlibabaApi,
) -> None:
    fake_api.add_fault("late_apply", answer="504", seconds=0.5)
    sent = time.time()

    result = _client(fake_api).update_tags("c1", '["late"]')

    assert isinstance(result, ApiFailure) and result.http_status == 504
    assert fake_api.wait_late_applies(5)
    [late] = fake_api.calls()
    assert (late.answer, late.tags) == ("OK-LATE", ["late"])
    assert late.at - sent >= 0.45


def test_a_late_write_lands_over_a_newer_one_and_the_log_shows_that_order(
    fake_api: FakeAlibabaApi,
) -> None:
    fake_api.add_fault("late_apply", answer="close", times=1)
    client = _client(fake_api)

    assert isinstance(client.update_tags("c1", '["old"]'), ApiFailure)
    assert isinstance(client.update_tags("c1", '["new"]'), ApiSuccess)
    fake_api.release_stalls()

    assert fake_api.wait_late_applies(5)
    assert fake_api.tags_of("c1") == ["old"]
    assert [(c.answer, c.tags) for c in fake_api.calls()] == [
        ("OK", ["new"]),
        ("OK-LATE", ["old"]),
    ]


def test_reset_drops_pending_late_applies_timed_or_waiting_for_release(
    fake_api: FakeAlibabaApi,
) -> None:
    fake_api.add_fault("late_apply", answer="504", seconds=60, call_id="timed")
    fake_api.add_fault("late_apply", answer="504", call_id="released")
    client = _client(fake_api)
    assert isinstance(client.update_tags("timed", '["a"]'), ApiFailure)
    assert isinstance(client.update_tags("released", '["a"]'), ApiFailure)

    fake_api.reset()

    assert fake_api.wait_late_applies(5)
    assert fake_api.all_tags() == {} and fake_api.calls() == []


def test_stop_neither_waits_for_a_held_connection_nor_lets_its_write_land() -> None:
    api = FakeAlibabaApi(credentials={ACCESS_KEY_ID: ACCESS_KEY_SECRET}).start()
    api.add_fault("late_apply", answer="hang", seconds=60)
    assert isinstance(_client(api, read_timeout_ms=300).update_tags("c1", '["a"]'), ApiFailure)

    stopping = threading.Thread(target=api.stop)
    stopping.start()
    stopping.join(5)

    assert not stopping.is_alive()
    assert api.wait_late_applies(5)
    assert api.tags_of("c1") is None


def test_a_late_apply_set_over_http_lands_when_faults_are_cleared_over_http(
    fake_api: FakeAlibabaApi,
) -> None:
    _control(fake_api, "POST", "faults", {"kind": "late_apply", "answer": "504", "call_id": "c1"})

    result = _client(fake_api).update_tags("c1", '["late"]')

    assert isinstance(result, ApiFailure) and result.code == "GatewayTimeout"
    assert _control(fake_api, "GET", "state")["tags"] == {}
    _control(fake_api, "DELETE", "faults")
    assert fake_api.wait_late_applies(5)
    assert _control(fake_api, "GET", "calls/c1") == {"call_id": "c1", "tags": ["late"]}
    assert [c["answer"] for c in _control(fake_api, "GET", "log")] == ["OK-LATE"]


def test_a_late_apply_with_an_unknown_answer_is_refused_over_http(
    fake_api: FakeAlibabaApi,
) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        _control(fake_api, "POST", "faults", {"kind": "late_apply", "answer": "sometimes"})

    assert refused.value.code == 400
    assert "answer must be one of" in json.loads(refused.value.read())["error"]


def _refusal(fake_api: FakeAlibabaApi, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    """A control request with a raw body, answered with an error status."""
    request = urllib.request.Request(
        f"http://{fake_api.endpoint}/_fake/{path}", data=raw, method=method
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    return refused.value.code, json.loads(refused.value.read())


def test_a_fault_that_is_not_json_is_a_400_naming_the_problem(fake_api: FakeAlibabaApi) -> None:
    status, body = _refusal(fake_api, "POST", "faults", b'{"kind": "throttle",')

    assert status == 400
    assert body["error"].startswith("the body is not JSON: ")
    assert fake_api.calls() == [] and _control(fake_api, "GET", "faults") == []


def test_a_fault_that_is_not_an_object_is_a_400(fake_api: FakeAlibabaApi) -> None:
    status, body = _refusal(fake_api, "POST", "faults", b'["throttle"]')

    assert status == 400 and "a fault is a JSON object" in body["error"]


def test_an_unknown_fault_kind_is_a_400_naming_the_kinds(fake_api: FakeAlibabaApi) -> None:
    status, body = _refusal(fake_api, "POST", "faults", b'{"kind": "explode"}')

    assert status == 400
    assert "'explode'" in body["error"] and "throttle" in body["error"]
    assert _control(fake_api, "GET", "faults") == []


def test_get_faults_lists_the_faults_still_queued(fake_api: FakeAlibabaApi) -> None:
    _control(fake_api, "POST", "faults", {"kind": "throttle", "call_id": "c1", "times": 1})
    _control(fake_api, "POST", "faults", {"kind": "error", "call_id": "c2", "times": 2})

    _client(fake_api).update_tags("c1", '["a"]')  # uses up the throttle
    _client(fake_api).update_tags("c2", '["a"]')  # one of the two errors

    listed = _control(fake_api, "GET", "faults")
    assert [(f["id"], f["kind"], f["call_id"], f["times"]) for f in listed] == [
        (2, "error", "c2", 1)
    ]
    _control(fake_api, "DELETE", "faults")
    assert _control(fake_api, "GET", "faults") == []
