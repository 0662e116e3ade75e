"""Whether a decoded value is plain, bounded JSON text (pure, no I/O).

Events, retry states and dead letters travel through Redis as UTF-8 JSON, and Celery, kombu and
json handle them with recursive code. So a value from outside is walked once, with a stack of
its own (no nesting, not even a value that contains itself, can exhaust Python's), before
anything recursive touches it.
"""

from __future__ import annotations

import math
import re
from typing import Any

LONE_SURROGATE = "contains a lone surrogate (not valid Unicode text)"
SURROGATE = re.compile(r"[\ud800-\udfff]")
"""What JSON's `"\\ud800"` escape decodes to and no encoder can write as UTF-8."""


def problem(value: Any, *, max_depth: int) -> str | None:
    """The first thing in `value` that is not plain JSON, said of the path that leads to it
    (`'crm.note[1]' contains a lone surrogate ...`), or None. Arrays and objects may nest
    `max_depth` levels below `value`; members are walked in order, so the first bad one is
    the one named. Checks text with one C-speed scan per string."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return f"{shown(path)} {LONE_SURROGATE}"
        elif item is None or isinstance(item, int):  # bool is an int
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{shown(path)} is {item!r}, not a JSON number"
        elif isinstance(item, (list, dict)):
            if depth > max_depth:
                return f"{shown(path)} nests deeper than {max_depth} levels"
            members = _members(path, item, depth + 1)
            if isinstance(members, str):
                return members
            stack.extend(reversed(members))
        else:
            return f"{shown(path)} is {type(item).__name__}, not a JSON value"
    return None


def _members(path: str, value: list[Any] | dict[Any, Any], depth: int) -> Any:
    """The (path, value, depth) of each item of an array or object, or what is wrong with one
    of its keys."""
    if isinstance(value, list):
        return [(f"{path}[{index}]", item, depth) for index, item in enumerate(value)]
    members: list[tuple[str, object, int]] = []
    for key, item in value.items():
        if not isinstance(key, str):
            kind = type(key).__name__
            if not path:
                return f"name {key!r} is {kind}, not a string"
            return f"{shown(path)} has a key that is {kind}, not a string"
        name = f"{path}.{key}" if path else key
        if SURROGATE.search(key):
            return f"name {shown(name)} {LONE_SURROGATE}"
        members.append((name, item, depth))
    return members


def shown(path: str) -> str:
    """A path as a reason can carry it: quoted, unprintable characters escaped (so a reason is
    one line of valid text), and short; the value itself when the path is empty."""
    if not path:
        return "the value"
    return repr(path if len(path) <= 80 else path[:77] + "...")
