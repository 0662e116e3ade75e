"""`tagging-worker doctor`: each check says in plain words what is wrong and what to do."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from rich.console import Console
from rich.markup import escape

from tagging_worker.alibaba.api import (
    ACTION,
    CREDENTIALS_MISSING,
    Checked,
    SetupProblem,
    TagsApi,
)
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.errors import SettingsError, TaggingWorkerError
from tagging_worker.settings import Settings, load_settings
from tagging_worker.state.connection import connect

Check = Callable[[Settings], str]
"""Returns what it found; raises `CheckFailed` with advice when something is wrong."""


class CheckFailed(TaggingWorkerError):
    """What a check found wrong, with advice: one line of the report, named by `part` when
    that says better than the check's name what to fix."""

    def __init__(self, advice: str, *, part: str | None = None) -> None:
        super().__init__(advice)
        self.part = part


def run_doctor(out: Console) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        out.print(f"[red]FAIL[/] settings: {exc}", highlight=False, soft_wrap=True)
        return 2
    out.print("[green]ok[/]   settings: loaded", highlight=False)
    failures = 0
    for name, check in CHECKS:
        try:
            found = check(settings)
        except CheckFailed as exc:
            failures += 1
            line = f"[red]FAIL[/] {exc.part or name}: {escape(str(exc))}"
        else:
            line = f"[green]ok[/]   {name}: {escape(found)}"
        out.print(line, highlight=False, soft_wrap=True)
    return 1 if failures else 0


def _redis(url: str, what: str, sentinel_master: str | None) -> str:
    client = connect(
        url, sentinel_master=sentinel_master, socket_connect_timeout=3, socket_timeout=3
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CheckFailed(
            f"cannot reach {what} at {_without_password(url)} ({exc}); is Redis running, "
            "and is the URL (host, port, password, db) right?"
        ) from None
    finally:
        client.close()
    return f"{_without_password(url)} answers"


def check_broker(settings: Settings) -> str:
    return _redis(
        settings.broker_url, "the broker (TAGGING_BROKER_URL)", settings.redis_sentinel_master
    )


def check_credentials(settings: Settings) -> str:
    if settings.access_key_id and settings.access_key_secret:
        return "access key from ACCESS_KEY_ID/ACCESS_KEY_SECRET (or TAGGING_ variants)"
    if settings.access_key_id or settings.access_key_secret:
        raise CheckFailed("only one of ACCESS_KEY_ID / ACCESS_KEY_SECRET is set; set both")
    if os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID") and os.environ.get(
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    ):
        return "access key from ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET (default chain)"
    for variable in (
        "ALIBABA_CLOUD_ROLE_ARN",
        "ALIBABA_CLOUD_ECS_METADATA",
        "ALIBABA_CLOUD_CREDENTIALS_FILE",
        "ALIBABA_CLOUD_PROFILE",
    ):
        if os.environ.get(variable):
            return f"Alibaba Cloud default chain ({variable} is set)"
    raise CheckFailed(
        "no credentials found: set ACCESS_KEY_ID and ACCESS_KEY_SECRET (or "
        "ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET), or configure a RAM role (ALIBABA_CLOUD_ROLE_ARN, "
        "ALIBABA_CLOUD_ECS_METADATA)"
    )


def check_api(settings: Settings) -> str:
    """A signed request the API must refuse on its merits (`TagsApi.check`): so refused, the
    endpoint, the key and secret, their RAM permission and the clock are right; refused
    before its merits, the refusal says which is not."""
    checked = TagsApi(settings.api_config()).check()
    if checked.answered:
        return (
            f"{_url(settings)} answered a signed request on its merits ({describe(checked)}): "
            "endpoint, access key, RAM permission and clock are right"
        )
    if _unsigned(checked):
        _connect(settings)  # nothing was sent: whether the endpoint is reachable is still news
    raise explain(settings, checked)


def explain(settings: Settings, checked: Checked) -> CheckFailed:
    """A check not answered on its merits, as one line naming what to fix, with advice."""
    said = describe(checked)
    match checked.problem:
        case SetupProblem.SIGNATURE if _unsigned(checked):
            return CheckFailed(
                f"no credentials to sign the request with ({said}); set ACCESS_KEY_ID and "
                "ACCESS_KEY_SECRET, or configure Alibaba Cloud's default chain",
                part="signature",
            )
        case SetupProblem.UNREACHABLE:
            return _unreachable(settings, said)
        case SetupProblem.NOT_THE_API:
            return CheckFailed(
                f"{_url(settings)} answered, but not as the Alibaba Cloud API does ({said}); "
                "check TAGGING_API_ENDPOINT (the API is thirdswaicall.aliyuncs.com) and "
                "TAGGING_API_PROTOCOL",
                part="API endpoint",
            )
        case SetupProblem.SIGNATURE:
            return CheckFailed(
                f"the API refused the request's signature ({said}); the access key id or "
                "secret is wrong: check ACCESS_KEY_ID and ACCESS_KEY_SECRET (or the default "
                "chain's ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET, security token or role)",
                part="signature",
            )
        case SetupProblem.PERMISSION:
            return CheckFailed(
                f"the API refused the access key ({said}); give its RAM user or role "
                f"permission to call {ACTION}",
                part="permission",
            )
        case SetupProblem.CLOCK:
            return CheckFailed(
                f"the API says the request's time is off ({said}); set this host's clock "
                "right (NTP: chrony, or `timedatectl set-ntp true`)",
                part="clock",
            )
        case SetupProblem.ACCOUNT:
            return CheckFailed(
                f"the API refused the account ({said}); check its balance and status in the "
                "Alibaba Cloud console",
                part="account",
            )
    return CheckFailed(
        f"the API did not judge the request ({said}), so nothing is proven: try again in a "
        "moment; if it stays so, check that TAGGING_API_ENDPOINT and TAGGING_API_PROTOCOL name "
        "the API",
        part="API",
    )


def _unsigned(checked: Checked) -> bool:
    """Nothing was sent: there were no credentials to sign the request with."""
    return isinstance(checked.result, ApiFailure) and checked.result.code == CREDENTIALS_MISSING


def describe(checked: Checked) -> str:
    """What the API said, with the RequestId support asks for."""
    result = checked.result
    said = f"{result.code}: {result.message}" if isinstance(result, ApiFailure) else "success"
    return f"{said}; RequestId {result.request_id}" if result.request_id else said


def _url(settings: Settings) -> str:
    return f"{settings.api_protocol.value}://{settings.api_endpoint}"


def _connect(settings: Settings) -> None:
    """A plain TCP connection to the endpoint: all that can be tried without credentials."""
    split = urlsplit(f"//{settings.api_endpoint}")
    port = split.port or (443 if settings.api_protocol.value == "https" else 80)
    try:
        with socket.create_connection(
            (split.hostname, port), timeout=settings.api_connect_timeout_ms / 1000
        ):
            pass
    except OSError as exc:
        raise _unreachable(settings, str(exc)) from None


def _unreachable(settings: Settings, said: str) -> CheckFailed:
    return CheckFailed(
        f"cannot connect to {settings.api_endpoint} over {settings.api_protocol.value} ({said}); "
        "check TAGGING_API_ENDPOINT, TAGGING_API_PROTOCOL, DNS and any firewall or proxy",
        part="API endpoint",
    )


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"


CHECKS: list[tuple[str, Check]] = [
    ("broker", check_broker),
    ("credentials", check_credentials),
    ("API endpoint", check_api),
]
