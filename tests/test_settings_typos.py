"""A typo in a setting stops every command and the worker with one line naming the setting and
exit 2: a broker URL redis-py or kombu could not use, a variable a letter off a setting's name."""

from __future__ import annotations

import pytest

from tagging_worker.errors import SettingsError
from tagging_worker.settings import broker_url_problem, load_settings
from tests.conftest import run_cli

BAD_URLS = {
    "redsi://127.0.0.1:6379/0": "must start with redis://, rediss:// or sentinel://",
    "127.0.0.1:6379": "must start with redis://, rediss:// or sentinel://",
    "amqp://guest:guest@127.0.0.1:5672//": "must start with redis://, rediss:// or sentinel://",
    "redis://127.0.0.1:6379/notadb": "its database 'notadb' is not a number",
    "redis://:hunter2@127.0.0.1:99999/0": "its port is not a number from 0 to 65535",
    "redis:///0": "names no host",
    "sentinel://127.0.0.1:26379;redis://127.0.0.1:6379": "only sentinel:// URLs can be listed",
}
COMMANDS = {
    "worker": ("worker",),
    "status": ("status", "--json"),
    "publish": ("publish", "--call-id", "c1", "--clear"),
    "dead list": ("dead", "list"),
}


@pytest.mark.parametrize(("url", "says"), BAD_URLS.items())
def test_a_broker_url_redis_or_kombu_cannot_use_is_named(url: str, says: str) -> None:
    problem = broker_url_problem(url)
    assert problem is not None and problem.startswith(says)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example:6380/2?ssl_cert_reqs=required",
        "redis://localhost",
        "sentinel://:pw@10.0.0.1:26379/0;sentinel://10.0.0.2:26379",
    ],
)
def test_the_broker_urls_redis_and_kombu_read_are_accepted(url: str) -> None:
    assert broker_url_problem(url) is None


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("url", ["redsi://127.0.0.1:6379/0", "redis://:hunter2@127.0.0.1:99999/0"])
def test_every_command_stops_on_a_bad_broker_url_with_one_line_and_exit_2(
    worker_env: dict[str, str], command: str, url: str
) -> None:
    result = run_cli({**worker_env, "TAGGING_BROKER_URL": url}, *COMMANDS[command])

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("tagging-worker: bad setting TAGGING_BROKER_URL: ")
    assert result.stderr.count("\n") == 1
    assert "hunter2" not in result.stderr + result.stdout


def test_doctor_fails_a_bad_broker_url_as_bad_settings(worker_env: dict[str, str]) -> None:
    result = run_cli({**worker_env, "TAGGING_BROKER_URL": "127.0.0.1:6379"}, "doctor")

    assert result.returncode == 2
    assert (
        "FAIL settings: bad setting TAGGING_BROKER_URL: must start with redis://" in result.stdout
    )


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("TAGGING_QUEU", "TAGGING_QUEUE"),
        ("TAGGING_LOGLEVEL", "TAGGING_LOG_LEVEL"),
        ("TAGGING_WORKER_CONCURENCY", "TAGGING_WORKER_CONCURRENCY"),
    ],
)
def test_a_variable_a_letter_off_a_settings_name_is_refused_naming_it(
    worker_env: dict[str, str], variable: str, meant: str
) -> None:
    result = run_cli({**worker_env, variable: "x"}, "status", "--json")

    assert result.returncode == 2
    assert result.stderr == f"tagging-worker: {variable} is not a setting: did you mean {meant}?\n"


def test_other_tools_variables_under_the_prefix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TAGGING_TEST_REDIS_URL", "TAGGING_BENCH_REDIS_URL", "TAGGING_FAILPOINTS"):
        monkeypatch.setenv(name, "x")

    assert load_settings().queue


def test_load_settings_refuses_a_misspelled_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGING_QUEU", "typo")

    with pytest.raises(SettingsError, match="did you mean TAGGING_QUEUE"):
        load_settings()
