"""One typed settings object, read from the environment and `.env`.

Everything an operator can tune lives here, so a bad value is caught once, at start-up,
with a message that names the variable instead of failing later inside a task.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import cached_property
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tagging_worker.classify import FailureKind, parse_overrides
from tagging_worker.event import EventLimits

ENV_PREFIX = "TAGGING_"


class SettingsError(Exception):
    """A setting is missing or wrong; `str()` is one line that names it."""


class Protocol(str, Enum):
    HTTP = "http"
    HTTPS = "https"


class Pool(str, Enum):
    PREFORK = "prefork"
    THREADS = "threads"
    SOLO = "solo"


class Settings(BaseSettings):
    """The worker's configuration; field `x` is read from `TAGGING_X`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    broker_url: str = Field(
        default="redis://localhost:6379/0",
        description="Also where the worker keeps its state: moving a message between the queue "
        "and the retry or dead-letter sets is one Lua script, so they share one Redis.",
    )
    key_prefix: str = Field(default="tagging", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    queue: str = Field(default="tagging", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")

    api_endpoint: str = Field(default="thirdswaicall.aliyuncs.com", min_length=1)
    api_protocol: Protocol = Protocol.HTTPS
    api_connect_timeout_ms: int = Field(default=5_000, ge=1, le=120_000)
    api_read_timeout_ms: int = Field(default=10_000, ge=1, le=600_000)
    access_key_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TAGGING_ACCESS_KEY_ID", "ACCESS_KEY_ID")
    )
    access_key_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TAGGING_ACCESS_KEY_SECRET", "ACCESS_KEY_SECRET"),
    )

    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    worker_pool: Pool = Pool.THREADS
    log_level: str = Field(default="INFO", pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    max_call_id_length: int = Field(default=128, ge=1, le=4096)
    max_tags: int = Field(default=100, ge=1, le=10_000)
    max_tag_length: int = Field(default=64, ge=1, le=4096)

    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_cap_seconds: float = Field(default=300.0, gt=0)
    retry_max_attempts: int = Field(default=8, ge=1, le=1000)
    event_max_age_seconds: float = Field(default=86_400.0, gt=0)
    error_codes: Annotated[dict[str, FailureKind], NoDecode] = Field(
        default_factory=dict,
        description='Extra Alibaba error codes: JSON such as {"Custom.Busy": "transient"}.',
    )

    dead_letter_max_records: int = Field(default=1_000_000, ge=1)
    dead_letter_max_raw_bytes: int = Field(
        default=65_536,
        ge=256,
        description="Events and raw message bodies are kept in dead letters up to this size.",
    )
    version_ttl_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long a call's applied version is remembered."
    )
    fate_ttl_seconds: int = Field(
        default=7 * 86_400,
        ge=60,
        description="How long an event's outcome is remembered to recognise redeliveries.",
    )
    visibility_timeout_seconds: int = Field(
        default=300,
        ge=5,
        description="A message a worker took and never acknowledged (the worker died) is "
        "delivered again after this; it must exceed the longest task.",
    )
    scheduler_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    recover_after_seconds: float = Field(
        default=60.0,
        ge=1,
        description="A message of an unfinished event that is on neither the queue nor a "
        "worker is sent again after this margin (for clock skew between hosts).",
    )

    @field_validator("error_codes", mode="before")
    @classmethod
    def _parse_error_codes(cls, value: Any) -> dict[str, FailureKind]:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object such as {"Code.Name": "transient"}')
        return parse_overrides(value)

    @cached_property
    def event_limits(self) -> EventLimits:
        return EventLimits(
            max_call_id_length=self.max_call_id_length,
            max_tags=self.max_tags,
            max_tag_length=self.max_tag_length,
        )


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's report into one line per the first bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


_SECRET_WORDS = ("ACCESS_KEY", "SECRET", "TOKEN", "PASSWORD", "DSN")


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"
    shown = "" if any(word in name for word in _SECRET_WORDS) else f" (got {error.get('input')!r})"
    more = len(exc.errors()) - 1
    tail = f"; and {more} more" if more else ""
    return f"bad setting {name}: {error['msg']}{shown}{tail}"
