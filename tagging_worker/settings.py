"""One typed settings object, read from the environment and `.env`.

Everything an operator can tune lives here, so a bad value is caught once, at start-up,
with a message that names the variable instead of failing later inside a task.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from enum import Enum
from functools import cached_property
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tagging_worker.alibaba.classify import FailureKind, parse_overrides
from tagging_worker.alibaba.config import ApiConfig
from tagging_worker.errors import SettingsError
from tagging_worker.event import MAX_CALL_ID_LENGTH, EventLimits

ENV_PREFIX = "TAGGING_"


class LogFormat(str, Enum):
    AUTO = "auto"
    """Text when writing to a terminal, JSON otherwise."""
    JSON = "json"
    TEXT = "text"


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
    redis_sentinel_master: str | None = Field(
        default=None,
        description="With a sentinel:// broker URL: the name of the master the sentinels watch.",
    )
    redis_publish_replicas: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="A publish returns only once this many replicas have the events (Redis "
        "WAIT), so a failover cannot lose what a producer was told is queued. Default: 1 "
        "with a sentinel:// broker URL, 0 (no wait) otherwise.",
    )
    redis_publish_replica_timeout_ms: int = Field(
        default=2000,
        ge=1,
        le=60_000,
        description="How long a publish waits for the replicas before it fails, saying the "
        "events may be lost and can be published again (duplicates are recognised).",
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

    api_rate_limit: float = Field(
        default=50.0,
        gt=0,
        le=100_000,
        description="Requests/s to the API, shared by every worker on every host: set it to "
        "the account's quota. Throttling answers lower the pace below it for a while.",
    )
    api_rate_burst: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Requests that may go at once after a quiet spell. 1 keeps to an even "
        "pace, which a per-second quota counts most kindly.",
    )
    api_rate_floor: float = Field(
        default=1.0, gt=0, description="Throttling never lowers the pace below this (requests/s)."
    )
    api_rate_decrease: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="On a throttling answer the shared pace is multiplied by this, or cut to "
        "what the share of refused calls says the quota is when that is lower (at most by half).",
    )
    api_rate_increase: float = Field(
        default=0.02,
        gt=0,
        le=1,
        description="While calls succeed the pace grows back by this share of "
        "TAGGING_API_RATE_LIMIT per second.",
    )
    api_rate_max_wait_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="A worker waits at most this long for its turn; an event that would wait "
        "longer goes back to the retry schedule (no attempt used) and frees the worker.",
    )
    circuit_failure_threshold: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Transient failures in a row (connection errors, 5xx, timeouts) that "
        "open the circuit: no worker calls the API until the cool-down ends.",
    )
    circuit_min_calls: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Distinct calls (call ids) a run of transient failures must span to open the "
        "circuit: one call the API keeps failing uses up its own attempts and stops no other "
        "call. 1: any run does.",
    )
    circuit_cooldown_seconds: float = Field(default=30.0, gt=0, le=86_400)
    circuit_systemic_cooldown_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="Cool-down after a credentials, permission, clock or balance failure: "
        "one probe call per cool-down until the set-up is fixed.",
    )

    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    worker_pool: Pool = Pool.THREADS
    task_events: bool = Field(
        default=True,
        description="Send Celery's task events (what Flower and `celery events` show: each "
        "task received, started, retried, failed or succeeded). Off saves a Redis publish "
        "per state change; see bench/README.md for the cost.",
    )
    log_level: str = Field(default="INFO", pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: LogFormat = Field(
        default=LogFormat.AUTO,
        description="json (one object per line), text, or auto: text in a terminal, else json.",
    )
    metrics_port: int = Field(
        default=9808,
        ge=0,
        le=65535,
        description="Each worker serves /metrics, /livez and /readyz here; 0 turns it off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Where /metrics, /livez and /readyz listen: loopback keeps them off the "
        "network. Set 0.0.0.0 where Prometheus or a probe connects from outside: a Kubernetes "
        "pod, a container with a published port, a host scraped from another machine.",
    )
    sentry_dsn: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TAGGING_SENTRY_DSN", "SENTRY_DSN")
    )
    sentry_environment: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TAGGING_SENTRY_ENVIRONMENT", "SENTRY_ENVIRONMENT"),
    )

    max_call_id_length: int = Field(default=128, ge=1, le=MAX_CALL_ID_LENGTH)
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
        default=0,
        ge=0,
        description="How long a call's applied version is remembered after its last event; "
        "0: as long as a copy of an event can still arrive (max age + settle + visibility "
        "timeout), the least that is safe.",
    )
    fate_ttl_seconds: int = Field(
        default=0,
        ge=0,
        description="How long the outcomes of a call's events are remembered after its last "
        "one, to recognise redeliveries and duplicates; 0: the least that is safe, as above.",
    )
    settle_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How long after a request whose outcome is unknown (a timeout, a dropped "
        "connection, a gateway error) the API may still apply it. When that has passed and a "
        "newer version was applied meanwhile, the newer tags are written again.",
    )
    visibility_timeout_seconds: int = Field(
        default=300,
        ge=5,
        description="A message a worker took and never acknowledged (the worker died) is "
        "delivered again after this; it must exceed the longest task.",
    )
    fetch_heartbeat_ttl_seconds: float = Field(
        default=20.0,
        ge=5,
        le=300,
        description="A worker that has not renewed its deadline for this long is taken for "
        "dead, and any live worker puts the messages it held back on the queue: a crashed "
        "worker's messages are delivered again within about 1.25 times this.",
    )
    poison_after_crashes: int = Field(
        default=3,
        ge=2,
        le=100,
        description="A message held by a worker that died (or by a process that was lost) "
        "this many times is dead-lettered as poison_message instead of delivered again, so one "
        "message that kills workers cannot keep them down.",
    )
    scheduler_interval_seconds: float = Field(default=0.5, gt=0, le=60)

    @field_validator("broker_url")
    @classmethod
    def _broker_url_is_one_redis_and_kombu_read(cls, url: str) -> str:
        if problem := broker_url_problem(url):
            raise ValueError(problem)
        return url

    @model_validator(mode="before")
    @classmethod
    def _endpoint_url_gives_the_protocol(cls, data: Any) -> Any:
        """`http://127.0.0.1:18931` is how an address is usually written, but the SDK takes the
        protocol apart from host[:port]: the scheme becomes TAGGING_API_PROTOCOL, which must
        agree if it is given too. An endpoint that does not read is left to its own check."""
        endpoint = data.get("api_endpoint") if isinstance(data, dict) else None
        if not isinstance(endpoint, str):
            return data
        try:
            protocol, host = split_api_endpoint(endpoint)
        except ValueError:
            return data
        if protocol is None:
            return data
        given = data.get("api_protocol", protocol)
        named = str(getattr(given, "value", given))
        if named.lower() != protocol.value:
            raise ValueError(
                f"TAGGING_API_ENDPOINT is an {protocol.value}:// URL but TAGGING_API_PROTOCOL "
                f"is {named!r}: give the protocol once"
            )
        return {**data, "api_endpoint": host, "api_protocol": given}

    @field_validator("api_endpoint")
    @classmethod
    def _endpoint_is_a_host_and_port(cls, endpoint: str) -> str:
        split_api_endpoint(endpoint)
        return endpoint

    @model_validator(mode="after")
    def _sentinel_has_a_master(self) -> Settings:
        if self.broker_url.startswith("sentinel://") and not self.redis_sentinel_master:
            raise ValueError(
                "TAGGING_BROKER_URL is a sentinel:// URL: set TAGGING_REDIS_SENTINEL_MASTER "
                "to the name of the master"
            )
        return self

    @property
    def publish_replicas(self) -> int:
        """TAGGING_REDIS_PUBLISH_REPLICAS, or its default for the broker URL."""
        if self.redis_publish_replicas is not None:
            return self.redis_publish_replicas
        return 1 if self.broker_url.startswith("sentinel://") else 0

    @property
    def arrival_window_seconds(self) -> int:
        """How long after an event was first seen a copy of it can still arrive: its retries
        end by its max age, a request of unknown outcome can land until the settle time after
        it, and a message a dead worker held comes back within the visibility timeout."""
        return math.ceil(
            self.event_max_age_seconds + self.settle_seconds + self.visibility_timeout_seconds
        )

    @property
    def version_ttl(self) -> int:
        """TAGGING_VERSION_TTL_SECONDS, or the arrival window for 0 (s)."""
        return self.version_ttl_seconds or self.arrival_window_seconds

    @property
    def fate_ttl(self) -> int:
        """TAGGING_FATE_TTL_SECONDS, or the arrival window for 0 (s)."""
        return self.fate_ttl_seconds or self.arrival_window_seconds

    @model_validator(mode="after")
    def _versions_outlive_events(self) -> Settings:
        """A version or a fate forgotten while a copy of its event can still arrive would let
        that copy regress the call or count twice; remembered any longer, they only take
        memory (a week at 50 events/s was 8.7 GiB of Redis, `bench/redis_footprint.py`)."""
        floor = self.arrival_window_seconds
        for name, value in (
            ("TAGGING_VERSION_TTL_SECONDS", self.version_ttl),
            ("TAGGING_FATE_TTL_SECONDS", self.fate_ttl),
        ):
            if value < floor:
                raise ValueError(
                    f"{name} ({value}) must be at least TAGGING_EVENT_MAX_AGE_SECONDS + "
                    "TAGGING_SETTLE_SECONDS + TAGGING_VISIBILITY_TIMEOUT_SECONDS "
                    f"({floor:.0f}): an event can arrive again until then"
                )
        return self

    @model_validator(mode="after")
    def _floor_below_limit(self) -> Settings:
        if self.api_rate_floor > self.api_rate_limit:
            raise ValueError(
                f"TAGGING_API_RATE_FLOOR ({self.api_rate_floor}) is above "
                f"TAGGING_API_RATE_LIMIT ({self.api_rate_limit})"
            )
        return self

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

    def api_config(self) -> ApiConfig:
        return ApiConfig(
            endpoint=self.api_endpoint,
            protocol=self.api_protocol.value.upper(),
            connect_timeout_ms=self.api_connect_timeout_ms,
            read_timeout_ms=self.api_read_timeout_ms,
            access_key_id=_secret(self.access_key_id),
            access_key_secret=_secret(self.access_key_secret),
            error_codes=self.error_codes,
        )

    @cached_property
    def event_limits(self) -> EventLimits:
        return EventLimits(
            max_call_id_length=self.max_call_id_length,
            max_tags=self.max_tags,
            max_tag_length=self.max_tag_length,
        )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


ENV_EXAMPLE_HEADER = """\
# Every tagging-worker setting with its default. Copy to .env (or an env file / ConfigMap).
# Credentials: ACCESS_KEY_ID / ACCESS_KEY_SECRET, or Alibaba Cloud's default chain
# (ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET / ALIBABA_CLOUD_SECURITY_TOKEN,
# RAM role, OIDC, ECS role). Keep them in a secret store, not in this file.
# Sentry, optional: SENTRY_DSN=... and SENTRY_ENVIRONMENT=production.
# Redis through Sentinel: TAGGING_BROKER_URL=sentinel://host1:26379;sentinel://host2:26379
# and TAGGING_REDIS_SENTINEL_MASTER=<master name>.
# Publishes wait for TAGGING_REDIS_PUBLISH_REPLICAS replicas to have the events (Redis WAIT):
# 1 by default under Sentinel, 0 (no wait) otherwise.
"""


def env_example() -> str:
    """`deploy/tagging-worker.env.example`, from the settings themselves so it cannot drift."""
    lines = [ENV_EXAMPLE_HEADER.rstrip("\n")]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:  # credentials and Sentry: named in the header
            continue
        if field.description:
            lines.append(f"# {field.description}")
        value = (
            json.dumps(default)
            if isinstance(default, (dict, bool))
            else getattr(default, "value", default)
        )
        lines.append(f"{ENV_PREFIX}{name.upper()}={value}")
    return "\n".join(lines) + "\n"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's report into one line per the first bad field."""
    _refuse_misspelled(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def broker_url_problem(url: str) -> str | None:
    """Why redis-py (the worker's state) or kombu (the queue) could not use `url`, or None.
    Caught here, a typo is one line naming the setting, not a traceback from the first
    command that connects, nor a worker that logs "Unrecoverable error" and exits."""
    parts = [part.strip() for part in url.split(";")]
    if len(parts) > 1 and any(not part.startswith("sentinel://") for part in parts):
        return "only sentinel:// URLs can be listed with ';'"
    for part in parts:
        split = urlsplit(part)
        if split.scheme not in ("redis", "rediss", "sentinel"):
            return "must start with redis://, rediss:// or sentinel://"
        try:
            split.port  # noqa: B018  (parsing it is the check)
        except ValueError:
            return "its port is not a number from 0 to 65535"
        if not split.hostname:
            return "names no host"
        db = split.path.lstrip("/")
        if db and not db.isdigit():
            return f"its database {db!r} is not a number"
    return None


def split_api_endpoint(endpoint: str) -> tuple[Protocol | None, str]:
    """The protocol an endpoint names (None for a bare host) and its host[:port], apart as the
    SDK takes them. ValueError says what is wrong: caught here, a typo is one line naming the
    setting, not "cannot connect to http:80" from the first call."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        rest = endpoint
    elif scheme.lower() not in ("http", "https"):
        raise ValueError("must be a host with an optional :port, or an http:// or https:// URL")
    try:
        split = urlsplit(f"//{rest}")
    except ValueError as exc:
        raise ValueError(f"is not a host with an optional :port ({exc})") from None
    if split.path.strip("/") or split.query or split.fragment or "@" in split.netloc:
        raise ValueError("must name a host and an optional :port only, no path, query or user")
    try:
        split.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None
    if not split.hostname:
        raise ValueError("names no host")
    return (Protocol(scheme.lower()) if sep else None), split.netloc


def _refuse_misspelled(environ: Mapping[str, str]) -> None:
    """A variable a letter or two off a setting's name is a typo that would leave the default
    in force without a word. Others under the prefix (tools' own, like TAGGING_TEST_REDIS_URL)
    are left alone."""
    known = _env_names()
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                raise SettingsError(f"{name} is not a setting: did you mean {close[0]}?")


def _env_names() -> list[str]:
    names = []
    for field, info in Settings.model_fields.items():
        names.append(f"{ENV_PREFIX}{field.upper()}")
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str)]
    return names


_SECRET_WORDS = ("ACCESS_KEY", "SECRET", "TOKEN", "PASSWORD", "DSN")


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    more = len(exc.errors()) - 1
    tail = f"; and {more} more" if more else ""
    if not error["loc"]:  # a rule across fields: its message names them
        return f"bad settings: {error['msg'].removeprefix('Value error, ')}{tail}"
    field = str(error["loc"][0])
    name = field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"
    given = error.get("input")
    if name == f"{ENV_PREFIX}BROKER_URL" and isinstance(given, str):
        given = re.sub(r"(//[^/@;]*?:)[^/@;]*@", r"\1***@", given)
    shown = "" if any(word in name for word in _SECRET_WORDS) else f" (got {given!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"bad setting {name}: {message}{shown}{tail}"
