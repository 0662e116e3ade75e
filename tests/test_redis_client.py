"""Reading the broker URL the way kombu does, for the worker's own connection (pure)."""

from __future__ import annotations

import pytest

from tagging_worker.state.connection import connect, is_sentinel, sentinel_nodes


def test_a_sentinel_url_names_every_sentinel_and_the_masters_password_and_db() -> None:
    url = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"
    nodes, master = sentinel_nodes(url)
    assert nodes == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert master == {"password": "s3cret", "db": 2}


def test_an_acl_user_in_a_sentinel_url_is_kept() -> None:
    _, master = sentinel_nodes("sentinel://tagging:p%40ss@h:26379/0")
    assert master == {"username": "tagging", "password": "p@ss", "db": 0}


def test_only_sentinel_urls_go_through_the_sentinels() -> None:
    assert is_sentinel("sentinel://h:26379")
    assert not is_sentinel("rediss://h:6380/0?ssl_cert_reqs=required")


def test_a_sentinel_url_without_a_master_name_is_refused() -> None:
    with pytest.raises(ValueError, match="TAGGING_REDIS_SENTINEL_MASTER"):
        connect("sentinel://h:26379", sentinel_master=None)
