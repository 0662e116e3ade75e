"""The one walk that tells plain, bounded JSON from anything else, without recursing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tagging_worker.plain_json import LONE_SURROGATE, problem


def test_a_value_nested_10000_deep_is_named_at_the_first_level_too_deep() -> None:
    value: Any = 0
    for _ in range(10_000):
        value = [value]

    assert problem(value, max_depth=3) == "'[0][0][0][0]' nests deeper than 3 levels"


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ({"a": ["ok", "\ud800"]}, f"'a[1]' {LONE_SURROGATE}"),
        ({"\udfff": 1}, f"name '\\udfff' {LONE_SURROGATE}"),
        ({"a": {1: "x"}}, "'a' has a key that is int, not a string"),
        ({1: "x"}, "name 1 is int, not a string"),
        ({"when": datetime(2026, 1, 1)}, "'when' is datetime, not a JSON value"),
        ([float("nan")], "'[0]' is nan, not a JSON number"),
        ("\ud800", f"the value {LONE_SURROGATE}"),
        ({"a": {"b": [1, 2.5, None, True, "ü🙂"]}}, None),
    ],
)
def test_the_first_thing_that_is_not_plain_json_is_named_by_its_path(
    value: Any, found: str | None
) -> None:
    assert problem(value, max_depth=8) == found
