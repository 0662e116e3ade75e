"""Named places where a test can kill the worker process, to aim crashes at the windows
between two steps instead of hoping a random kill finds them.

Off unless `TAGGING_FAILPOINTS` names them: `name` or `name:probability`, comma-separated
(`after_api_success:0.02,after_park`). A hit logs one line naming the failpoint, then the
process dies by SIGKILL, as it would in a crash: nothing is cleaned up.
"""

from __future__ import annotations

import logging
import os
import random
import signal

log = logging.getLogger(__name__)

BEFORE_BEGIN = "before_begin"
"""The event is valid; nothing about it is recorded yet (armed at 1, every delivery of every
event dies here: a message that kills whoever takes it)."""
AFTER_PARK = "after_park"
"""The event was parked (held back for a newer one); its message is not acknowledged yet."""
AFTER_API_SUCCESS = "after_api_success"
"""The API applied the write; nothing about it is recorded yet."""
AFTER_API_UNKNOWN = "after_api_unknown"
"""A write of unknown outcome; nothing about it is recorded yet."""
BEFORE_ACK = "before_ack"
"""The event's fate is recorded; its message is not acknowledged yet."""
NAMES = (BEFORE_BEGIN, AFTER_PARK, AFTER_API_SUCCESS, AFTER_API_UNKNOWN, BEFORE_ACK)


def parse(text: str) -> dict[str, float]:
    """`name[:probability]` items; an unknown name or a bad probability is an error, so a typo
    in a test's set-up does not silently test nothing."""
    armed: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, chance = item.partition(":")
        if name not in NAMES:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(NAMES)}")
        probability = float(chance) if chance else 1.0
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"failpoint {name}: probability must be in (0, 1], got {chance}")
        armed[name] = probability
    return armed


_ARMED = parse(os.environ.get("TAGGING_FAILPOINTS", ""))


def hit(name: str) -> None:
    probability = _ARMED.get(name)
    if probability is None or random.random() >= probability:
        return
    log.warning("failpoint %s: killing this process", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
