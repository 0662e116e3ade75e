"""Which dead letters an operator means (pure): the filters of `dead list/replay/purge/export`.

It reads a record by the attributes a `DeadLetter` and a `DamagedRecord` share, so it names
those types in annotations only: the store that defines them imports this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tagging_worker.state.dead_letters import DamagedRecord, DeadLetter

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: float) -> float:
    """A point in time as Unix seconds: ISO-8601 (no zone means UTC), or an age such as
    `30m`, `2h`, `7d` meaning that long before `now`."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time nor an age like 30m, 2h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class DeadFilter:
    reason: str | None = None
    code: str | None = None
    call_id: str | None = None
    source: str | None = None
    since: float | None = None
    """Died at or after (Unix seconds)."""
    until: float | None = None
    """Died before (Unix seconds)."""

    @property
    def empty(self) -> bool:
        return all(value is None for value in vars(self).values())

    def matches(self, record: DeadLetter | DamagedRecord) -> bool:
        """A damaged record is known by its indexes only: it matches no filter on code or
        source, and no time filter when its time of death is unknown."""
        died = record.died_at
        return (
            (self.reason is None or record.reason == self.reason)
            and (self.code is None or record.code == self.code)
            and (self.call_id is None or record.call_id == self.call_id)
            and (self.source is None or record.source == self.source)
            and (self.since is None or (died is not None and died >= self.since))
            and (self.until is None or (died is not None and died < self.until))
        )

    def describe(self) -> str:
        """The filter as an operator gave it, times as UTC dates."""
        parts = [
            f"{name}={_utc(value) if name in ('since', 'until') else value}"
            for name, value in vars(self).items()
            if value is not None
        ]
        return ", ".join(parts) or "all"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
