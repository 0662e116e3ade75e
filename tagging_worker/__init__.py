"""tagging_worker: keeps the tags of Alibaba Cloud AI outbound calls right.

`celery -A tagging_worker worker` finds the app through `app` below, built on first use so
that importing the package never reads settings by accident.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "publish_tag_update"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tagging_worker.cli.support import app_or_exit

        return app_or_exit()
    if name == "publish_tag_update":
        from tagging_worker.produce.publish import publish_tag_update

        return publish_tag_update
    raise AttributeError(name)
