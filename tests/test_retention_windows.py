"""How long Redis remembers a call's versions and its events' fates: as long as a copy of an event
can still arrive, no longer (`bench/redis_footprint.py` measures what that costs)."""

from __future__ import annotations

import pytest

from tagging_worker.errors import SettingsError
from tagging_worker.settings import load_settings

DAY = 86_400


def test_versions_and_fates_are_kept_as_long_as_a_copy_can_arrive_not_a_week() -> None:
    settings = load_settings()

    assert settings.arrival_window_seconds == DAY + 60 + 300  # max age + settle + visibility
    assert settings.version_ttl == settings.fate_ttl == settings.arrival_window_seconds


def test_the_windows_follow_a_longer_max_age_instead_of_refusing_it() -> None:
    settings = load_settings(event_max_age_seconds=3 * DAY)

    assert settings.version_ttl == settings.fate_ttl == 3 * DAY + 360


def test_a_window_set_shorter_than_a_copy_can_arrive_is_refused_naming_the_floor() -> None:
    with pytest.raises(SettingsError, match=r"TAGGING_FATE_TTL_SECONDS \(3600\).*86760"):
        load_settings(fate_ttl_seconds=3600)


def test_a_longer_window_set_on_purpose_is_kept() -> None:
    assert load_settings(version_ttl_seconds=7 * DAY).version_ttl == 7 * DAY
