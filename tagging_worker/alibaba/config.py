"""Where and how to call the API, apart from the client so that reading settings does not
load the SDK (a publisher or the CLI never calls the API)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tagging_worker.alibaba.classify import FailureKind


@dataclass(frozen=True)
class ApiConfig:
    """Where and how to call the API. Built by `Settings.api_config`: this wing never reads the
    settings, so the settings may know its error kinds."""

    endpoint: str
    """host[:port], as the SDK takes it: the protocol goes apart (`Settings` splits a URL)."""
    protocol: str
    """`HTTPS` or `HTTP`."""
    connect_timeout_ms: int
    read_timeout_ms: int
    access_key_id: str | None = field(default=None, repr=False)
    access_key_secret: str | None = field(default=None, repr=False)
    """Both or neither: without them, Alibaba's default credential chain."""
    error_codes: Mapping[str, FailureKind] = field(default_factory=dict)
    """Operator overrides of how error codes are classified."""
