"""Production Redis set-ups on real servers the tests start: an ACL user, Sentinel and TLS."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import load_settings
from tagging_worker.state.stores import Stores
from tests.conftest import OwnRedis, WorkerProcess, free_port, run_cli, settled, wait_for

pytestmark = pytest.mark.e2e


def _publish_and_settle(
    env: dict[str, str],
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
    **overrides: str,
) -> None:
    settings = load_settings(
        **{k.removeprefix("TAGGING_").lower(): v for k, v in overrides.items()},
        key_prefix=env["TAGGING_KEY_PREFIX"],
        queue=env["TAGGING_QUEUE"],
    )
    Publisher.from_settings(settings).publish({"call_id": "call-r", "tags": ["ok"], "version": 1})
    start_worker(**overrides)
    wait_for(settled(Stores.connect(settings), 1), what="the event applied")
    assert fake_api.tags_of("call-r") == ["ok"]


def test_the_worker_runs_as_a_redis_acl_user(
    own_redis: OwnRedis,
    worker_env: dict[str, str],
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.execute_command(
        "ACL", "SETUSER", "tagging", "on", ">tagging-pw", "~*", "&*", "+@all", "-@dangerous"
    )
    admin.execute_command("ACL", "SETUSER", "default", "off")  # only the ACL user gets in
    url = f"redis://tagging:tagging-pw@127.0.0.1:{own_redis.port}/0"

    _publish_and_settle(worker_env, fake_api, start_worker, TAGGING_BROKER_URL=url)


@pytest.fixture
def sentinel(own_redis: OwnRedis, tmp_path: Path) -> Iterator[str]:
    """A Sentinel watching the test's own Redis as master `tw-master`; yields the broker URL."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor tw-master 127.0.0.1 {own_redis.port} 1\n"
        "sentinel down-after-milliseconds tw-master 5000\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(config), "--sentinel", "--logfile", str(tmp_path / "sentinel.log")]
    )
    probe = redis.Redis(port=port)

    def knows_the_master() -> bool:
        try:
            return bool(probe.execute_command("SENTINEL", "get-master-addr-by-name", "tw-master"))
        except redis.RedisError:
            return False

    wait_for(knows_the_master, timeout=15, what="the sentinel to watch the master")
    yield f"sentinel://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(15)


def test_the_worker_finds_its_redis_through_sentinel_and_status_finds_the_worker(
    sentinel: str,
    worker_env: dict[str, str],
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    through_sentinel = {
        "TAGGING_BROKER_URL": sentinel,
        "TAGGING_REDIS_SENTINEL_MASTER": "tw-master",
        "TAGGING_REDIS_PUBLISH_REPLICAS": "0",  # this sentinel watches a master without replicas
    }
    _publish_and_settle(worker_env, fake_api, start_worker, **through_sentinel)

    shown = run_cli({**worker_env, **through_sentinel}, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["outcomes"]["applied"] == 1
    assert [w["consuming"] for w in found["workers"]] == [True]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis that speaks only TLS, with a certificate made for it; yields the broker URL."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--save", "", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")),
        ]
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    wait_for(answers, timeout=15, what="the TLS Redis to start")
    yield url
    proc.terminate()
    proc.wait(15)


def test_the_worker_talks_to_redis_over_tls(
    tls_redis: str,
    worker_env: dict[str, str],
    fake_api: FakeAlibabaApi,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    _publish_and_settle(worker_env, fake_api, start_worker, TAGGING_BROKER_URL=tls_redis)
