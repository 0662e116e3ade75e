"""Sentry, when `SENTRY_DSN` is set: one issue per cause, never a secret.

Dead letters are grouped by reason and error code (10,000 events dead for one cause are one
issue, with a count), a circuit that opens is one issue per cause, and transient trouble is
kept as breadcrumbs. Log records become breadcrumbs too, never events of their own.
Everything sent is scrubbed of the access key, its secret and the security token, by value
wherever they appear and by key name.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from tagging_worker.settings import Settings

FILTERED = "[Filtered]"
SECRET_ENV = (
    "ACCESS_KEY_ID",
    "ACCESS_KEY_SECRET",
    "TAGGING_ACCESS_KEY_ID",
    "TAGGING_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
)
SECRET_KEY = re.compile(r"secret|access_?key|token|password|signature|authorization|dsn", re.I)


def init(settings: Settings) -> bool:
    """Returns whether Sentry is on."""
    if settings.sentry_dsn is None:
        return False
    secrets = _secret_values(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        send_default_pii=False,
        integrations=[
            CeleryIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=None),
        ],
        before_send=lambda event, hint: _scrub(event, secrets),
        before_breadcrumb=lambda crumb, hint: _scrub(crumb, secrets),
    )
    return True


def dead_letter(record_id: str, call_id: object, reason: str, code: str, detail: str) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["dead-letter", reason, code]
        scope.set_tag("reason", reason)
        scope.set_tag("error_code", code)
        scope.set_extra("dead_letter_id", record_id)
        scope.set_extra("call_id", call_id)
        scope.set_extra("detail", detail)
        sentry_sdk.capture_message(f"dead letter: {reason} ({code})", level="error")


def repair_failed(call_id: str, code: str, message: str) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["repair-failed", code]
        scope.set_tag("error_code", code)
        scope.set_extra("call_id", call_id)
        scope.set_extra("detail", message)
        sentry_sdk.capture_message(f"repair refused: {code}", level="error")


def circuit_opened(kind: str, code: str, message: str) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["circuit-open", kind, code]
        scope.set_tag("circuit_kind", kind)
        scope.set_tag("error_code", code)
        sentry_sdk.capture_message(f"API calls stopped ({kind}): {code}: {message}", level="error")


def breadcrumb(message: str, **data: Any) -> None:
    sentry_sdk.add_breadcrumb(category="tagging", message=message, level="warning", data=data)


def _secret_values(settings: Settings) -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    for secret in (settings.access_key_id, settings.access_key_secret):
        if secret is not None:
            values.append(secret.get_secret_value())
    # Short values would blank out ordinary words; real keys are long.
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {
            k: FILTERED if isinstance(k, str) and SECRET_KEY.search(k) else _scrub(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secrets) for v in value]
    return value
