"""Loading the Lua scripts that make each Redis step atomic.

Every script lives in `lua/<name>.lua` beside this module, with a header naming its KEYS, its
ARGV and its reply; every key it touches arrives in KEYS (a script that must find out which
keys it needs asks for them in its reply instead of building them). Functions more than one
script uses live in `lua/library.lua`, which is put in front of every script: Redis gives a
script no way to include another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import redis
from redis.commands.core import Script

from tagging_worker.state.keys import Keys

_LUA = files(__package__).joinpath("lua")


@cache
def source(name: str) -> str:
    """A script's text with the library in front, read once per process."""
    return _read("library") + "\n" + _read(name)


@cache
def _read(name: str) -> str:
    return _LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    """The script bound to `client`; redis-py sends it by its SHA-1 and loads it on a miss."""
    return client.register_script(source(name))


class ScriptKeptAsking(RuntimeError):
    """A script still asked for keys after several calls: what it looks at kept changing."""


_TOLD: dict[str, Callable[[Keys, str], str]] = {
    "rec": Keys.dead_record,
    "reason": Keys.dead_by_reason,
    "call": Keys.dead_by_call,
    "code": Keys.dead_by_code,
}
"""The keys a script of the ask protocol can be told, by the kind it names them with."""


def call_asking(
    script: Script,
    keys: Keys,
    *,
    fixed_keys: Sequence[str],
    args: Sequence[str | int],
    told: Iterable[tuple[str, str | bytes]] = (),
    tries: int = 10,
) -> Any:
    """The reply of a script that asks for the keys it finds out it needs (the ask protocol:
    `told_keys` in lua/library.lua). `fixed_keys` and `args` are its own KEYS and ARGV; after
    them go the keys told, their count and each one's kind and name: first those in `told`
    (kind, name: keys the caller knows it may want), then each one a reply `{'need', kind,
    name, ...}` asked for. A script asks before it writes anything, so calling it again is
    safe; what it asks for can change between calls, hence a few `tries`. A script that
    needs nothing it was not told answers the first call."""
    extra: dict[tuple[str, bytes], bytes] = {}
    for kind, name in told:
        _tell(extra, keys, kind, name)
    for _ in range(tries):
        reply = script(
            keys=[*fixed_keys, *extra.values()],
            args=[*args, len(extra), *(part for pair in extra for part in pair)],
        )
        if not (isinstance(reply, list) and reply and reply[0] == b"need"):
            return reply
        asked = list(zip(reply[1::2], reply[2::2], strict=True))
        if not any([_tell(extra, keys, kind.decode(), name) for kind, name in asked]):
            raise ScriptKeptAsking(f"a script asked again for keys it was told: {asked!r}")
    raise ScriptKeptAsking(f"a script still asked for keys after {tries} calls")


def _tell(extra: dict[tuple[str, bytes], bytes], keys: Keys, kind: str, name: str | bytes) -> bool:
    """Adds the key of `kind` and `name` to those told; False if it was there. A name is bytes
    as Redis holds it: one that is not UTF-8 (a record's field written by hand) names its key
    byte for byte, as the scripts did when they built the keys themselves."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    if (kind, raw) in extra:
        return False
    text = raw.decode("utf-8", "surrogateescape")
    extra[kind, raw] = _TOLD[kind](keys, text).encode("utf-8", "surrogateescape")
    return True
