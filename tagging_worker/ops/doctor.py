"""`tagging-worker doctor`: each check says in plain words what is wrong and what to do."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import redis
from rich.console import Console

from tagging_worker.errors import SettingsError, TaggingWorkerError
from tagging_worker.settings import Settings, load_settings
from tagging_worker.state.connection import connect

Check = Callable[[Settings], str]
"""Returns what it found; raises `CheckFailed` with advice when something is wrong."""


class CheckFailed(TaggingWorkerError):
    """What a check found wrong, with advice: one line of the report."""


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
            out.print(f"[red]FAIL[/] {name}: {exc}", highlight=False)
        else:
            out.print(f"[green]ok[/]   {name}: {found}", highlight=False)
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


def check_endpoint(settings: Settings) -> str:
    host, _, port_text = settings.api_endpoint.partition(":")
    port = (
        int(port_text)
        if port_text.isdigit()
        else (443 if settings.api_protocol.value == "https" else 80)
    )
    try:
        with socket.create_connection((host, port), timeout=settings.api_connect_timeout_ms / 1000):
            pass
    except OSError as exc:
        raise CheckFailed(
            f"cannot connect to {host}:{port} ({exc}); check TAGGING_API_ENDPOINT, "
            "TAGGING_API_PROTOCOL, DNS and any firewall or proxy"
        ) from None
    return f"{settings.api_protocol.value}://{host}:{port} accepts connections"


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"


CHECKS: list[tuple[str, Check]] = [
    ("broker", check_broker),
    ("credentials", check_credentials),
    ("API endpoint", check_endpoint),
]
