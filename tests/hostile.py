"""Hostile input: queue items and task messages a careless or broken producer can send.

Each is built from a well-formed task message and changed in one way, so that a failure
names what the worker could not take. Shared by the end-to-end suite (a real worker must give
each one exactly one fate and keep consuming) and the Hypothesis strategies.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from tagging_worker.messages import build_task_message

GOOD_EVENT = {"call_id": "call-hostile", "tags": ["ok"]}
DEEP = 10_000


def nested(depth: int, leaf: Any = 0) -> str:
    """JSON text `depth` arrays deep, without building it recursively."""
    return "[" * depth + json.dumps(leaf) + "]" * depth


def envelope(queue: str, event: Any = None) -> dict[str, Any]:
    message = json.loads(build_task_message(event or GOOD_EVENT, queue=queue))
    assert isinstance(message, dict)
    return message


def encode_body(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def with_body_text(queue: str, text: str | bytes) -> bytes:
    message = envelope(queue)
    message["body"] = encode_body(text)
    return json.dumps(message).encode()


def with_body(queue: str, args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    body = [args, {} if kwargs is None else kwargs, embed or {}]
    return with_body_text(queue, json.dumps(body))


def with_event_json(queue: str, event_json: str) -> bytes:
    """An event given as JSON text, for what json.dumps would not write (lone surrogates)."""
    return with_body_text(queue, f"[[{event_json}], {{}}, {{}}]")


def with_headers(queue: str, **changes: Any) -> bytes:
    return _changed(queue, "headers", changes)


def with_properties(queue: str, **changes: Any) -> bytes:
    return _changed(queue, "properties", changes)


def with_envelope(queue: str, **changes: Any) -> bytes:
    """`content_type=` and `content_encoding=` change the envelope's hyphenated keys."""
    named = {(k.replace("_", "-") if k.startswith("content") else k): v for k, v in changes.items()}
    return _changed(queue, "", named)


def _changed(queue: str, part: str, changes: dict[str, Any]) -> bytes:
    """A good message with `changes` made to one part of it (`_DROP` removes a key)."""
    message = envelope(queue)
    target = message[part] if part else message
    for name, value in changes.items():
        if value is _DROP:
            target.pop(name, None)
        else:
            target[name] = value
    return json.dumps(message).encode()


_DROP = object()


def _iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat()


def catalogue(queue: str) -> dict[str, bytes]:
    """Every kind of hostile queue item, by what is wrong with it."""
    q = queue
    deep_envelope = envelope(q)
    deep_envelope["headers"]["nested"] = "__DEEP__"
    return {
        "item nested 10,000 deep": nested(DEEP).encode(),
        "envelope with a header nested 10,000 deep": json.dumps(deep_envelope)
        .replace('"__DEEP__"', nested(DEEP))
        .encode(),
        "body nested 10,000 deep": with_body_text(q, nested(DEEP)),
        "tags nested 10,000 deep": with_event_json(
            q, '{"call_id": "c", "tags": ' + nested(DEEP, "x") + "}"
        ),
        "extra field nested 500 deep": with_event_json(
            q, '{"call_id": "c", "tags": [], "crm": ' + nested(500) + "}"
        ),
        "body of base64 garbage": with_body_text(q, bytes(range(256)) * 4),
        "body not UTF-8": with_body_text(q, b'[[{"call_id": "\xff\xfe"}], {}, {}]'),
        "body is a JSON string": with_body_text(q, '"just a string"'),
        "body is a dict with args": with_body_text(q, '{"args": [], "kwargs": {}}'),
        "body with kombu-typed value": with_event_json(
            q, '{"call_id": "c", "tags": [], "x": {"__type__": "uuid", "__value__": "zz"}}'
        ),
        "headers a string": with_envelope(q, headers="task=tagging_worker.update_call_tags"),
        "headers a list": with_envelope(q, headers=[1, 2]),
        "headers missing": with_envelope(q, headers=_DROP),
        "header id an object": with_headers(q, id={"a": 1}),
        "header id missing": with_headers(q, id=_DROP),
        "header id null": with_headers(q, id=None),
        "header id empty": with_headers(q, id=""),
        "header id huge": with_headers(q, id="i" * 100_000),
        "header task a list": with_headers(q, task=["tagging_worker.update_call_tags"]),
        "header task missing": with_headers(q, task=_DROP),
        "header retries a string": with_headers(q, retries="many"),
        "header timelimit a string": with_headers(q, timelimit="soon"),
        "header timelimit negative": with_headers(q, timelimit=[-1, -1]),
        "header eta garbage": with_headers(q, eta="not a date"),
        "header eta a number": with_headers(q, eta=12345),
        "header eta in a year": with_headers(q, eta=_iso(timedelta(days=365))),
        "header expires in the past": with_headers(q, expires=_iso(timedelta(days=-1))),
        "header expires garbage": with_headers(q, expires="later"),
        "header expires an object": with_headers(q, expires={"when": 1}),
        "header root_id an object": with_headers(q, root_id={"x": 1}),
        "header parent_id a list": with_headers(q, parent_id=[1]),
        "header group an object": with_headers(q, group={"x": 1}),
        "header shadow an object": with_headers(q, shadow={"x": 1}),
        "header argsrepr a list": with_headers(q, argsrepr=[1, 2]),
        "header origin a number": with_headers(q, origin=7),
        "header stamps garbage": with_headers(q, stamped_headers="x", stamps=5),
        "header replaced_task_nesting a string": with_headers(q, replaced_task_nesting="x"),
        "header lang not py": with_headers(q, lang="js", task=_DROP),
        "properties a string": with_envelope(q, properties="p"),
        "no delivery tag": with_properties(q, delivery_tag=_DROP),
        "delivery tag an object": with_properties(q, delivery_tag={"x": 1}),
        "delivery_info a string": with_properties(q, delivery_info="x"),
        "priority a string": with_properties(q, priority="high"),
        "body encoding unknown": with_properties(q, body_encoding="rot13"),
        "content encoding unknown": with_envelope(q, content_encoding="klingon"),
        "content type with charset": with_envelope(
            q, content_type="application/json; charset=utf-8"
        ),
        "content type missing": with_envelope(q, content_type=_DROP),
        "body missing": with_envelope(q, body=_DROP),
        "body empty": with_envelope(q, body=""),
        "body a number": with_envelope(q, body=5),
        "lone surrogate in call_id": with_event_json(q, '{"call_id": "c\\ud800", "tags": []}'),
        "lone surrogate in a tag": with_event_json(q, '{"call_id": "c", "tags": ["\\udfff"]}'),
        "lone surrogate in an extra key": with_event_json(
            q, '{"call_id": "c", "tags": [], "\\ud801": 1}'
        ),
        "lone surrogate in kwargs": with_body_text(
            q, '[[{"call_id": "c", "tags": []}], {"\\ud800": 1}, {}]'
        ),
        "retry_state a string": with_body(q, [GOOD_EVENT], {"retry_state": "x"}),
        "retry_state a list": with_body(q, [GOOD_EVENT], {"retry_state": [1, 2]}),
        "retry_state with bad fields": with_body(
            q,
            [GOOD_EVENT],
            {"retry_state": {"attempts": "x", "first_seen": "y", "received": {"a": [1]}}},
        ),
        "retry_state with attempts of ints": with_body(
            q, [GOOD_EVENT], {"retry_state": {"attempts": [1, 2, 3], "attempts_made": -5}}
        ),
        "settle not a string": with_body(q, [], {"settle": {"call": 1}}),
        "settle huge": with_body(q, [], {"settle": "s" * 100_000}),
        "settle with args": with_body(q, [GOOD_EVENT], {"settle": "c"}),
        "callbacks set": with_body(
            q, [GOOD_EVENT], {}, {"callbacks": [{"task": "celery.ping"}], "chain": None}
        ),
        "chain set": with_body(q, [GOOD_EVENT], {}, {"chain": [{"task": "celery.ping"}]}),
        "embed a string": with_body_text(q, json.dumps([[GOOD_EVENT], {}, "embed"])),
        "args a dict": with_body_text(q, json.dumps([{"a": 1}, {}, {}])),
        "kwargs a list": with_body_text(q, json.dumps([[GOOD_EVENT], [], {}])),
        "event a list": with_body(q, [[1, 2, 3]]),
        "event null": with_body(q, [None]),
        "event with a float version": with_body(q, [{"call_id": "c", "tags": [], "version": 1.5}]),
        "event with version NaN": with_event_json(
            q, '{"call_id": "c", "tags": [], "version": NaN}'
        ),
        "event with version 1e400": with_event_json(
            q, '{"call_id": "c", "tags": [], "version": 1e400}'
        ),
        "event with a huge integer version": with_event_json(
            q, '{"call_id": "c", "tags": [], "version": ' + "9" * 5000 + "}"
        ),
        "item of 5 MB": with_body(q, [{"call_id": "c", "tags": ["x" * 5_000_000]}]),
        "item of NUL bytes": b"\x00" * 1000,
        "item of invalid UTF-8 JSON": b'{"body": "\xff", "properties": {}}',
        "item an empty string": b"",
        "item whitespace": b"   \n ",
        "item a JSON null": b"null",
    }


def send_task_cases() -> dict[str, dict[str, Any]]:
    """Deliveries through Celery's own `send_task`: arguments and options a producer can set."""
    return {
        "send_task lone surrogate in call_id": {"args": [{"call_id": "\ud800", "tags": []}]},
        "send_task lone surrogate in a tag": {"args": [{"call_id": "c", "tags": ["\udc00"]}]},
        "send_task retry_state a string": {
            "args": [GOOD_EVENT],
            "kwargs": {"retry_state": "nope"},
        },
        "send_task unknown keyword": {"args": [GOOD_EVENT], "kwargs": {"force": True}},
        "send_task expires in the past": {"args": [GOOD_EVENT], "expires": -3600},
        "send_task countdown of a year": {"args": [GOOD_EVENT], "countdown": 365 * 86400},
        "send_task with a link": {"args": [GOOD_EVENT], "link_name": "celery.ping"},
        "send_task custom headers": {"args": [GOOD_EVENT], "headers": {"x": {"deep": [1]}}},
        "send_task no args": {"args": []},
    }


_DEEP_MARK = "__nested_10000_deep__"


def _json_values() -> st.SearchStrategy[Any]:
    """JSON values, with what breaks careless readers made common: lone surrogates, numbers
    past 64 bits, kombu's typed objects, dates, and a marker that becomes 10,000 levels."""
    text = st.text(alphabet=st.characters(), max_size=20)
    lone = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    nasty = st.sampled_from(
        [
            _DEEP_MARK,
            2**70,
            -1,
            "",
            "2026-13-45T99:99:99",
            {"__type__": "uuid", "__value__": "zz"},
            {"__type__": "bytes", "__value__": "aGk="},
        ]
    )
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | text | lone | nasty
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True).replace(f'"{_DEEP_MARK}"', nested(DEEP))


@st.composite
def hostile_items(draw: st.DrawFn, queue: str) -> bytes:
    """A task message with arbitrary values where the event, kwargs, headers, properties or
    envelope fields go, or arbitrary bytes: whatever it is, the worker must give it one fate."""
    value = _json_values()
    kinds = ["event", "kwargs", "header", "property", "envelope", "body", "bytes"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "body":
        return with_body_text(queue, draw(st.binary(max_size=200)))
    message = envelope(queue)
    if kind == "event":
        event = draw(st.dictionaries(st.sampled_from([*GOOD_EVENT, "version", "x"]), value))
        message["body"] = encode_body(_dumps([[event], {}, {}]))
    elif kind == "kwargs":
        kwargs = draw(st.dictionaries(st.sampled_from(["retry_state", "settle", "x"]), value))
        message["body"] = encode_body(_dumps([[GOOD_EVENT], kwargs, {}]))
    else:
        part = {"header": message["headers"], "property": message["properties"]}.get(kind, message)
        part[draw(st.sampled_from(sorted(part)))] = draw(value)
    return _dumps(message).encode()
