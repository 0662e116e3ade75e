"""Every key a script touches arrives in KEYS; keys only the script can find out it asks for.

The ask protocol (`told_keys` in tagging_worker/state/lua/library.lua, `call_asking` in
Python): a script that needs keys it was not told replies `{'need', kind, name, ...}` before
writing anything, and is called again with them. These tests watch each such script's calls
(what it was given, what it answered, and that a `need` answer changed nothing in Redis), and
run again with every script behind a check, made by Redis itself (COMMAND GETKEYS), that each
key a `redis.call` touches is one of its KEYS. A static check covers every Lua file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from tagging_worker.messages import build_task_message
from tagging_worker.reasons import DeadReason
from tagging_worker.state import scripts
from tagging_worker.state.dead_letters import DeadLetter, DeadLetterStore, DeadRecord, Restored
from tagging_worker.state.keys import Keys
from tagging_worker.state.ordering import Begin, Death, Ordering, Recorded, Repair, Settle
from tagging_worker.state.outcomes import Outcome, OutcomeCounters
from tagging_worker.state.scripts import ScriptKeptAsking, call_asking
from tests.conftest import queued_event_ids

LUA = Path(__file__).resolve().parent.parent / "tagging_worker"

# Put in front of a script: `redis` becomes a stand-in whose call and pcall first ask Redis
# which of their arguments are keys, and fail on one that is not in KEYS.
KEYS_CHECK = """
local redis = (function(real)
  local declared = {}
  for _, key in ipairs(KEYS) do declared[key] = true end
  local function check(...)
    local ok, keys = pcall(real.call, 'COMMAND', 'GETKEYS', ...)
    if not ok then return end -- a command without keys (TIME)
    for _, key in ipairs(keys) do
      if not declared[key] then error('a key not in KEYS: ' .. key) end
    end
  end
  return setmetatable({
    call = function(...) check(...) return real.call(...) end,
    pcall = function(...) check(...) return real.pcall(...) end,
  }, {__index = real})
end)(redis)
"""


@pytest.fixture(params=["plain", "keys_checked"])
def checked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test runs as is and with every script it loads behind `KEYS_CHECK`."""
    if request.param == "keys_checked":
        plain = scripts.source
        monkeypatch.setattr(scripts, "source", lambda name: KEYS_CHECK + plain(name))
    return request.param == "keys_checked"


@pytest.fixture
def ordering(redis_client: redis.Redis, namespace: str, checked: bool) -> Ordering:
    return Ordering(redis_client, Keys(namespace), queue=namespace, version_ttl=600, fate_ttl=600)


def _store(ordering: Ordering, max_records: int = 100) -> DeadLetterStore:
    return DeadLetterStore(ordering.client, ordering.keys, max_records=max_records)


def _whole(store: DeadLetterStore, record_id: str) -> DeadLetter:
    record = store.get(record_id)
    assert isinstance(record, DeadLetter), record
    return record


def _snapshot(client: redis.Redis, namespace: str) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key of the test, its value and whether it expires."""
    return {
        key: (client.dump(key), client.pttl(key) >= 0)
        for key in client.scan_iter(f"{namespace}*", count=1000)
    }


def _is_need(reply: Any) -> bool:
    return isinstance(reply, list) and bool(reply) and reply[0] == b"need"


class Watched:
    """Stands in for a script: records each call's KEYS and reply, and fails the test if a
    `need` reply came with any change in Redis. `before_first` runs before the first call
    (another client's write between the caller's read and the script)."""

    def __init__(
        self,
        script: Any,
        client: redis.Redis,
        namespace: str,
        before_first: Callable[[], None] | None = None,
    ) -> None:
        self.script = script
        self.client = client
        self.namespace = namespace
        self.before_first = before_first
        self.calls: list[tuple[list[Any], Any]] = []

    def __call__(self, keys: Any = (), args: Any = (), client: Any = None) -> Any:
        if self.before_first is not None and not self.calls:
            self.before_first()
        before = _snapshot(self.client, self.namespace)
        reply = self.script(keys=keys, args=args, client=client)
        self.calls.append((list(keys), reply))
        if _is_need(reply):
            assert _snapshot(self.client, self.namespace) == before, "wrote before asking"
        return reply

    @property
    def replies(self) -> list[Any]:
        return [reply for _, reply in self.calls]


def watch(owner: Ordering | DeadLetterStore, name: str, namespace: str, **kw: Any) -> Watched:
    """Puts a `Watched` in place of the script `owner.<name>`."""
    client = owner.client if isinstance(owner, Ordering) else owner._redis
    watched = Watched(getattr(owner, name), client, namespace, **kw)
    setattr(owner, name, watched)
    return watched


def _message(event_id: str) -> str:
    return build_task_message({"call_id": "call-1", "event_id": event_id}, queue="q")


def _begin(ordering: Ordering, version: int, event_id: str, token: str = "t") -> Begin:
    return ordering.begin(
        "call-1", version, event_id, _message(event_id), token=token, lease_ms=10_000
    )


def _record(ordering: Ordering, event_id: str, *, code: str = "InvalidParameter") -> DeadRecord:
    return _store(ordering).prepare(
        record_id=event_id,
        reason=DeadReason.PERMANENT_ERROR,
        detail=f"{code}: no",
        event={"call_id": "call-1", "tags": ["x"], "event_id": event_id},
        normalized=None,
        attempts=[{"at": 1.0, "code": code, "message": "no"}],
        first_seen=0.0,
        task_id="t",
    )


# -- ordering -------------------------------------------------------------------------------


def test_a_success_supersedes_a_parked_event_in_one_call_its_fate_with_the_calls_keys(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    ordering.publish("call-1", 9, "e9", _message("e9"))
    assert _begin(ordering, 4, "e4") is Begin.PARKED
    assert _begin(ordering, 9, "e9") is Begin.GO
    applied = watch(ordering, "_applied", namespace)

    assert ordering.applied("call-1", 9, "e9", '["v9"]', token="t") == Recorded(
        Outcome.APPLIED, repair=False
    )

    assert applied.replies == [[b"applied", 0]]
    assert ordering.keys.fates("call-1", "e4") in applied.calls[0][0]
    assert ordering.fate("call-1", "e4") == "superseded"
    assert OutcomeCounters(redis_client, ordering.keys).snapshot()["superseded"] == 1
    assert redis_client.zcard(ordering.keys.parked("call-1")) == 0


def test_with_nothing_parked_or_in_doubt_each_step_is_one_call(
    ordering: Ordering, namespace: str
) -> None:
    begin = watch(ordering, "_begin", namespace)
    applied = watch(ordering, "_applied", namespace)
    assert _begin(ordering, 1, "e1") is Begin.GO
    assert ordering.applied("call-1", 1, "e1", '["v1"]', token="t").fate is Outcome.APPLIED
    assert _begin(ordering, 2, "e2") is Begin.GO
    assert ordering.applied("call-1", 2, "e2", '["v2"]', token="t").fate is Outcome.APPLIED
    assert len(begin.calls) == 2 and len(applied.calls) == 2
    assert not any(_is_need(r) for r in begin.replies + applied.replies)


def test_an_older_event_is_parked_behind_a_newer_in_doubt_write_in_one_call(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    """e5's worker died right after sending it: whether e3 may go depends on e5's fate."""
    assert _begin(ordering, 5, "e5", token="dead-worker") is Begin.GO
    redis_client.delete(ordering.keys.lease("call-1"))
    begin = watch(ordering, "_begin", namespace)

    assert _begin(ordering, 3, "e3", token="b") is Begin.PARKED

    assert begin.replies == [b"parked"]
    assert _begin(ordering, 5, "e5", token="again") is Begin.GO
    assert ordering.dead("call-1", "e5", _record(ordering, "e5"), token="again") is (
        Death.RESURRECTED
    )
    assert queued_event_ids(redis_client, namespace) == ["e3"]


def test_settle_and_repaired_are_one_call_each_with_a_finished_in_doubt_event(
    ordering: Ordering, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [int(time.time() * 1000)]
    monkeypatch.setattr("tagging_worker.state.ordering._now_ms", lambda: clock[0])
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    ordering.release("call-1", token="a")  # the request stays in doubt
    assert _begin(ordering, 2, "e2", token="b") is Begin.GO
    assert ordering.applied("call-1", 2, "e2", '["v2"]', token="b").fate is Outcome.APPLIED
    assert _begin(ordering, 1, "e1", token="a2") is Begin.STALE
    clock[0] += 10_000 + 60_000 + 1
    settle = watch(ordering, "_settle", namespace)
    repaired = watch(ordering, "_repaired", namespace)

    step, repair = ordering.settle("call-1", token="c", lease_ms=1000)
    assert (step, repair) == (Settle.GO, Repair(version=2, tags_json='["v2"]'))
    assert len(settle.calls) == 1
    ordering.repaired("call-1", repair, checked_ms=clock[0], token="c")
    assert repaired.replies == [1]
    assert ordering.client.zcard(ordering.keys.unsettled("call-1")) == 0


def test_a_success_of_an_event_dead_lettered_meanwhile_asks_nothing(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    assert _begin(ordering, 5, "e5", token="b") is Begin.GO
    redis_client.delete(ordering.keys.lease("call-1"))
    assert _begin(ordering, 5, "e5", token="c") is Begin.GO
    assert ordering.dead("call-1", "e5", _record(ordering, "e5"), token="c") is Death.DEAD
    applied = watch(ordering, "_applied", namespace)
    assert ordering.applied("call-1", 5, "e5", '["v5"]', token="b") == Recorded(None, True)
    assert len(applied.calls) == 1


def test_death_is_a_str_enum_its_callers_can_compare_with_text(ordering: Ordering) -> None:
    assert _begin(ordering, 1, "e1", token="x") is Begin.GO
    fate = ordering.dead("call-1", "e1", _record(ordering, "e1"), token="x")
    assert fate is Death.DEAD and fate == "dead"
    again = ordering.dead("call-1", "e1", _record(ordering, "e1"), token="x")
    assert again is Death.DUPLICATE and again == "duplicate"


def test_every_other_ordering_script_runs_within_its_keys(
    ordering: Ordering, redis_client: redis.Redis, namespace: str, checked: bool
) -> None:
    """The scripts that never ask, once each (behind the key check in its run)."""
    first, second = ordering.default_versions(["call-1", "call-1"])
    assert second > first
    assert ordering.version_at_receipt("call-1", "e0") > second
    assert ordering.finish("e-broken", Outcome.DEAD, _record(ordering, "e-broken"))
    assert _begin(ordering, 1, "e1", token="a") is Begin.GO
    ordering.release("call-1", token="a", version=1, event_id="e1")
    redis_client.zadd(ordering.keys.settle_index, {"call-1": 0})
    assert ordering.queue_due_settles() == 1
    assert _store(ordering).count() == 1


# -- dead letters ---------------------------------------------------------------------------


def _dead_letters(ordering: Ordering, *ids: str, code: str = "InvalidParameter") -> None:
    """Dead letters stored with their fates, none trimmed."""
    for n, event_id in enumerate(ids):
        assert ordering.finish(event_id, Outcome.DEAD, _record(ordering, event_id, code=code))
        ordering.client.zadd(ordering.keys.dead_all, {event_id: 1_000 + n})  # oldest first


def test_trim_asks_for_the_records_it_drops_then_for_their_indexes(
    ordering: Ordering, namespace: str
) -> None:
    _dead_letters(ordering, "r1", "r2", "r3")
    store = _store(ordering, max_records=1)
    trim = watch(store, "_trim", namespace)

    assert store.trim() == 2

    records, indexes, done = trim.replies
    assert records == [b"need", b"rec", b"r1", b"rec", b"r2"]
    assert indexes[0] == b"need"
    assert set(zip(indexes[1::2], indexes[2::2], strict=True)) == {
        (b"reason", b"permanent_error"),
        (b"call", b"call-1"),
        (b"code", b"InvalidParameter"),
    }
    assert done == 2
    k = ordering.keys
    for index in (
        k.dead_all,
        k.dead_by_reason("permanent_error"),
        k.dead_by_call("call-1"),
        k.dead_by_code("InvalidParameter"),
    ):
        assert ordering.client.zrange(index, 0, -1) == [b"r3"]
    assert not ordering.client.exists(k.dead_record("r1"), k.dead_record("r2"))


def test_under_the_limit_store_trim_and_delete_are_one_call_each(
    ordering: Ordering, namespace: str
) -> None:
    store = _store(ordering)
    add, trim, take = (watch(store, n, namespace) for n in ("_add", "_trim", "_take"))
    assert store.add(**_fields("r1")) == 0
    assert store.trim() == 0
    assert store.delete("r1")
    assert (len(add.calls), len(trim.calls), len(take.calls)) == (1, 1, 1)
    assert store.count() == 0


def _fields(record_id: str) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "reason": DeadReason.PERMANENT_ERROR,
        "detail": "no",
        "event": {"call_id": "call-1", "event_id": record_id},
        "normalized": None,
        "attempts": [],
        "first_seen": 0.0,
        "task_id": "t",
    }


def test_replacing_a_record_asks_for_the_indexes_of_the_one_it_replaces(
    ordering: Ordering, namespace: str
) -> None:
    _dead_letters(ordering, "r1", code="Throttling")
    store = _store(ordering)
    add = watch(store, "_add", namespace)
    moved = replace(_whole(store, "r1"), reason=DeadReason.EXPIRED, call_id="call-2", attempts=())

    assert store.restore(moved, replace=True) is Restored.STORED

    assert add.replies[0][0] == b"need"
    assert sorted(zip(add.replies[0][1::2], add.replies[0][2::2], strict=True)) == [
        (b"call", b"call-1"),
        (b"code", b"Throttling"),
        (b"reason", b"permanent_error"),
    ]
    assert add.replies[1] == [b"stored", 0]
    k = ordering.keys
    assert store.count_by_reason() == {"expired": 1}
    assert store.count_by_code() == {}
    assert ordering.client.zcard(k.dead_by_call("call-1")) == 0
    assert ordering.client.zrange(k.dead_by_call("call-2"), 0, -1) == [b"r1"]


def test_a_store_beyond_the_limit_asks_for_what_it_trims_even_the_record_it_stores(
    ordering: Ordering, namespace: str
) -> None:
    _dead_letters(ordering, "r1", "r2")
    store = _store(ordering, max_records=2)
    add = watch(store, "_add", namespace)
    oldest = replace(_whole(store, "r2"), id="r0", died_at=0.5)  # older than every other

    assert store.restore(oldest, replace=False) is Restored.STORED

    # Trimming drops r0 or r1: r1 is asked for (its indexes are r0's, which the script holds)
    assert add.replies == [[b"need", b"rec", b"r1"], [b"stored", 1]]
    assert sorted(i.id for i in store.list()) == ["r1", "r2"]  # r0 went at once
    assert ordering.client.zrange(ordering.keys.dead_by_reason("permanent_error"), 0, -1) == [
        b"r1",
        b"r2",
    ]


def test_a_delete_of_a_record_changed_since_it_was_read_asks_for_its_new_indexes(
    ordering: Ordering, namespace: str
) -> None:
    _dead_letters(ordering, "r1")
    store = _store(ordering)
    moved = replace(_whole(store, "r1"), reason=DeadReason.EXPIRED)

    def another_client_replaces_it() -> None:
        _store(ordering).restore(moved, replace=True)

    take = watch(store, "_take", namespace, before_first=another_client_replaces_it)

    assert store.delete("r1")

    assert take.replies == [[b"need", b"reason", b"expired"], b"taken"]
    assert store.count() == 0 and store.count_by_reason() == {}


def test_a_replay_takes_the_record_and_queues_it_in_one_call(
    ordering: Ordering, redis_client: redis.Redis, namespace: str
) -> None:
    _dead_letters(ordering, "r1")
    store = _store(ordering)
    take = watch(store, "_take", namespace)
    assert store.replay("r1", queue=namespace, build_message=lambda e: _message("r1"))
    assert take.replies == [b"taken"]
    assert queued_event_ids(redis_client, namespace) == ["r1"]
    assert store.count() == 0 and store.count_by_code() == {}


# -- the helper -----------------------------------------------------------------------------


def test_a_script_that_keeps_asking_is_given_up_on(namespace: str) -> None:
    keys = Keys(namespace)
    asked = iter(range(100))

    def greedy(keys: Any = (), args: Any = (), client: Any = None) -> Any:
        return [b"need", b"rec", str(next(asked)).encode()]

    with pytest.raises(ScriptKeptAsking, match="after 3 calls"):
        call_asking(greedy, keys, fixed_keys=[], args=[], tries=3)  # type: ignore[arg-type]

    def forgetful(keys: Any = (), args: Any = (), client: Any = None) -> Any:
        return [b"need", b"rec", b"e1"]

    with pytest.raises(ScriptKeptAsking, match="asked again"):
        call_asking(forgetful, keys, fixed_keys=[], args=[])  # type: ignore[arg-type]


def test_the_keys_check_catches_a_key_not_in_keys(
    redis_client: redis.Redis, namespace: str
) -> None:
    """The check the `keys_checked` runs rely on does catch a script that builds a key."""
    sneaky = redis_client.register_script(KEYS_CHECK + "return redis.call('GET', ARGV[1])")
    assert sneaky(keys=[f"{namespace}:a"], args=[f"{namespace}:a"]) is None
    with pytest.raises(redis.ResponseError, match="a key not in KEYS"):
        sneaky(keys=[f"{namespace}:a"], args=[f"{namespace}:b"])


# -- every Lua file -------------------------------------------------------------------------


def _lua_files() -> Iterator[Path]:
    yield from sorted(LUA.rglob("*.lua"))


def _calls(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, arguments) of each redis.call / redis.pcall, split at top-level commas."""
    for match in re.finditer(r"\bredis\.p?call\(", text):
        args, depth, quote, i, current = [], 0, "", match.end(), ""
        while True:
            c = text[i]
            if quote:
                current += c
                if c == "\\":
                    current += text[i + 1]
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
                current += c
            elif c in "([{":
                depth += 1
                current += c
            elif c in ")]}" and depth:
                depth -= 1
                current += c
            elif c == ")":
                args.append(current.strip())
                break
            elif c == "," and not depth:
                args.append(current.strip())
                current = ""
            else:
                current += c
            i += 1
        yield text.count("\n", 0, match.start()) + 1, args


def _bound_by_concatenation(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\s*=[^=\n][^\n]*\.\.", text) is not None


def test_no_lua_script_builds_a_key():
    """The first key of every redis.call is KEYS[...] or a name (a parameter or local), and
    no such name is bound to a concatenation in its file or the library. A heuristic; the
    `keys_checked` runs above check what the scripts really touch."""
    library = (LUA / "state" / "lua" / "library.lua").read_text(encoding="utf-8")
    found = []
    for path in _lua_files():
        text = path.read_text(encoding="utf-8")
        for line, args in _calls(text):
            if len(args) < 2:
                continue  # no key (TIME)
            key = args[1]
            if re.fullmatch(r"KEYS\[[^\]]+\]", key):
                continue
            plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
            if plain and not any(_bound_by_concatenation(t, key) for t in (text, library)):
                continue
            found.append(f"{path.relative_to(LUA.parent)}:{line}: {key}")
    assert found == []
