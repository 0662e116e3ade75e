"""What the task runs with, built in one visible place, once per process.

`create_app` makes one `PerProcess(Services)` and hands it to the task, the consumer and the
housekeeping; nothing looks its collaborators up. A prefork child builds its own on first use
instead of sharing its parent's sockets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.settings import Settings
from tagging_worker.state.stores import Stores

T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    settings: Settings
    stores: Stores
    api: TagsApi

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(settings, Stores.connect(settings), TagsApi(settings.api_config()))


class PerProcess(Generic[T]):
    """One `T` per process, built on first use. Forgotten in a forked child, lock included (a
    fork can happen while another thread holds it)."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._made: T | None = None

    def get(self) -> T:
        with self._lock:
            if self._made is None:
                self._made = self._build()
            return self._made
