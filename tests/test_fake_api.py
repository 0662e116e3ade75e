"""The fake API's own behaviour: control endpoints, quota, nonce replay, fault bookkeeping."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from alibabacloud_tea_openapi import utils

from tagging_worker.api import ApiFailure, ApiSuccess, TagsApi
from tagging_worker.fake_api.server import FakeAlibabaApi
from tagging_worker.settings import load_settings
from tests.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET


def _client(fake_api: FakeAlibabaApi) -> TagsApi:
    return TagsApi(
        load_settings(
            api_endpoint=fake_api.endpoint,
            api_protocol="http",
            access_key_id=ACCESS_KEY_ID,
            access_key_secret=ACCESS_KEY_SECRET,
        )
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
