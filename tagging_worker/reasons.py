"""Why an event was dead-lettered: one closed list, part of the public contract.

A reason is a record's `reason`, what `dead list --reason` filters on, and the `reason` label of
`tagging_dead_letters_total`; operators write alerts and replays against these values, so one
is added here, never spelled out elsewhere. Stored and shown as the value (`.value`).
"""

from __future__ import annotations

from enum import Enum


class DeadReason(str, Enum):
    INVALID_EVENT = "invalid_event"
    """A body or arguments of the wrong shape, or an event that fails validation."""
    PERMANENT_ERROR = "permanent_error"
    """The API refused the event for good."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """Every attempt failed (TAGGING_RETRY_MAX_ATTEMPTS)."""
    EXPIRED = "expired"
    """Its maximum age passed, or its `expires` before a worker took it."""
    REVOKED = "revoked"
    """`celery control revoke` named it."""
    UNKNOWN_TASK = "unknown_task"
    """Another task's message on this queue."""
    UNDECODABLE_MESSAGE = "undecodable_message"
    """Not a message Celery can read (not JSON, a header of the wrong type, too large, ...)."""
    UNSUPPORTED_OPTION = "unsupported_option"
    """A Celery option this task cannot honour (callbacks, chains, a far `eta`)."""
    POISON_MESSAGE = "poison_message"
    """The workers holding it kept dying (TAGGING_POISON_AFTER_CRASHES)."""
    INTERNAL_ERROR = "internal_error"
    """A bug: something failed on the way to, or in, a task run."""
