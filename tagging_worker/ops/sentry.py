"""Sentry, when `SENTRY_DSN` is set: one issue per cause, never a secret.

Reports reach it through the hook `send_report` (`reports.py`). Dead letters are grouped by
reason and error code (10,000 events dead for one cause are one issue, with a count), a
circuit that opens is one issue per cause, and transient trouble is kept as breadcrumbs. Log
records become breadcrumbs too, never events of their own. Everything sent is scrubbed of the
access key, its secret and the security token, by value wherever they appear and by key name.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.ops.reports import CircuitChanged, Dead, RepairFailed, Report, Retrying
from tagging_worker.settings import Settings
from tagging_worker.state.flow import Transition

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
        # Sentry 3 collects user info, bodies and query data unless told not to.
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "cookies": {"mode": "off"},
            "url_query_params": {"mode": "off"},
            "database_query_data": False,
        },
        integrations=[
            CeleryIntegration(),
            LoggingIntegration(level=None, event_level=None, breadcrumb_level=logging.INFO),
        ],
        before_send=lambda event, hint: _scrub(event, secrets),
        before_breadcrumb=lambda crumb, hint: _scrub(crumb, secrets),
    )
    return True


def send_report(record: Report) -> None:
    """The Sentry hook: an issue for what an operator must act on, a breadcrumb for a retry."""
    match record:
        case Dead():
            reason, code = record.reason.value, record.code or record.reason.value
            _capture(
                f"dead letter: {reason} ({code})",
                ["dead-letter", reason, code],
                tags={"reason": reason, "error_code": code},
                extras={
                    "dead_letter_id": record.event_id,
                    "call_id": record.call_id,
                    "detail": record.detail,
                },
            )
        case RepairFailed(failure=failure):
            _capture(
                f"repair refused: {failure.code}",
                ["repair-failed", failure.code],
                tags={"error_code": failure.code},
                extras={"call_id": record.call_id, "detail": failure.message},
            )
        case CircuitChanged(result=ApiFailure() as failure) if (
            record.verdict.transition is Transition.OPENED
        ):
            kind = record.verdict.kind
            _capture(
                f"API calls stopped ({kind}): {failure.code}: {failure.message}",
                ["circuit-open", kind, failure.code],
                tags={"circuit_kind": kind, "error_code": failure.code},
            )
        case Retrying(failure=failure):
            sentry_sdk.add_breadcrumb(
                category="tagging",
                message=f"retrying {record.event_id}: {failure.code}",
                level="warning",
                data={"call_id": record.call_id, "request_id": failure.request_id},
            )


def _capture(
    message: str,
    fingerprint: list[str],
    *,
    tags: dict[str, str],
    extras: dict[str, Any] | None = None,
) -> None:
    """One error event, grouped by `fingerprint` rather than by where it was raised."""
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = fingerprint
        for key, value in tags.items():
            scope.set_tag(key, value)
        for key, value in (extras or {}).items():
            scope.set_extra(key, value)
        sentry_sdk.capture_message(message, level="error")


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
