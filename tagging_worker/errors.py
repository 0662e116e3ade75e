"""The errors a caller may catch, under one base.

`except TaggingWorkerError` catches every refusal this package makes on purpose (bad settings,
a bad event, a replay that cannot go ahead, a request the fake API refuses); anything else
that escapes is a bug or an outage (`redis.RedisError`). Each message is one line naming
what is wrong.
"""

from __future__ import annotations


class TaggingWorkerError(Exception):
    """Base of every error this package raises on purpose."""


class SettingsError(TaggingWorkerError):
    """A setting is missing or wrong; `str()` is one line that names it."""


class InvalidEvent(TaggingWorkerError, ValueError):
    """The event cannot be applied; the message names the field and the problem."""


class ReplayRefused(TaggingWorkerError):
    """The record stays where it is: it is damaged (or names another queue), or its event
    cannot be sent."""

    def __init__(self, record_id: str, why: str) -> None:
        super().__init__(f"{record_id}: {why}")
        self.record_id = record_id
        self.why = why


class ReplayConflict(TaggingWorkerError):
    """The record changed between reading it and replaying it; nothing was moved."""


class SignatureError(TaggingWorkerError):
    """A refusal as Alibaba Cloud's gateway words it: code, message and HTTP status."""

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
