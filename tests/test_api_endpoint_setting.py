"""TAGGING_API_ENDPOINT written as a URL (`http://127.0.0.1:18931`) is taken apart the way the
SDK needs it: the scheme is the protocol, the rest the endpoint. One it cannot use stops every
command with one line naming the setting and exit 2."""

from __future__ import annotations

import pytest

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.alibaba.results import ApiSuccess
from tagging_worker.errors import SettingsError
from tagging_worker.settings import Protocol, load_settings
from tests.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET, run_cli


@pytest.mark.parametrize(
    ("given", "endpoint", "protocol"),
    [
        ("http://127.0.0.1:18931", "127.0.0.1:18931", Protocol.HTTP),
        ("HTTPS://thirdswaicall.aliyuncs.com/", "thirdswaicall.aliyuncs.com", Protocol.HTTPS),
        ("http://[::1]:8080", "[::1]:8080", Protocol.HTTP),
        ("fake-api:8080", "fake-api:8080", Protocol.HTTPS),
    ],
)
def test_an_endpoint_url_gives_the_protocol_and_leaves_host_and_port(
    given: str, endpoint: str, protocol: Protocol
) -> None:
    settings = load_settings(api_endpoint=given)

    assert (settings.api_endpoint, settings.api_protocol) == (endpoint, protocol)
    assert settings.api_config().protocol == protocol.value.upper()


def test_an_endpoint_url_reaches_the_api_it_names(fake_api: FakeAlibabaApi) -> None:
    api = TagsApi(
        load_settings(
            api_endpoint=f"http://{fake_api.endpoint}",
            access_key_id=ACCESS_KEY_ID,
            access_key_secret=ACCESS_KEY_SECRET,
        ).api_config()
    )

    assert isinstance(api.update_tags("call-url", '["有意向"]'), ApiSuccess)
    assert fake_api.tags_of("call-url") == ["有意向"]


def test_an_endpoint_url_may_repeat_the_protocol_it_names() -> None:
    settings = load_settings(api_endpoint="http://127.0.0.1:1", api_protocol="http")

    assert (settings.api_endpoint, settings.api_protocol) == ("127.0.0.1:1", Protocol.HTTP)


def test_an_endpoint_url_that_contradicts_the_protocol_is_refused() -> None:
    with pytest.raises(SettingsError, match="TAGGING_API_ENDPOINT is an http:// URL but "):
        load_settings(api_endpoint="http://127.0.0.1:1", api_protocol="https")


BAD_ENDPOINTS = {
    "ftp://127.0.0.1:21": "must be a host with an optional :port, or an http:// or https:// URL",
    "http://127.0.0.1:99999": "its port is not a number from 0 to 65535",
    "127.0.0.1:port": "its port is not a number from 0 to 65535",
    "http://127.0.0.1:18931/api": "must name a host and an optional :port only",
    "http://": "names no host",
}


@pytest.mark.parametrize(("endpoint", "says"), BAD_ENDPOINTS.items())
@pytest.mark.parametrize("command", [("status", "--json"), ("doctor",)])
def test_an_endpoint_the_sdk_cannot_use_stops_a_command_with_one_line_and_exit_2(
    worker_env: dict[str, str], endpoint: str, says: str, command: tuple[str, ...]
) -> None:
    env = {k: v for k, v in worker_env.items() if k != "TAGGING_API_PROTOCOL"}

    result = run_cli({**env, "TAGGING_API_ENDPOINT": endpoint, "COLUMNS": "80"}, *command)

    assert result.returncode == 2
    line = f"bad setting TAGGING_API_ENDPOINT: {says}"
    if command == ("doctor",):
        assert result.stdout.startswith(f"FAIL settings: {line}")
        assert result.stdout.count("\n") == 1
    else:
        assert result.stderr.startswith(f"tagging-worker: {line}")
        assert result.stderr.count("\n") == 1
