"""tagging_worker: keeps the tags of Alibaba Cloud AI outbound calls right.

The package is built in wings, lowest first; a module imports its own wing and those below
it, never one above (`python -m tests.architecture` draws the graph, `tests/test_architecture.py`
holds it):

0. the contract: `event.py` (what an event is and how it is checked), `messages.py` (its
   Celery task message, the reference for producers in other languages), `reasons.py` (why
   an event is dead-lettered), `errors.py` (what a caller may catch), `plain_json.py`;
1. `alibaba/`: the API client, its error codes, and the fake API;
2. `settings.py`: every tunable, checked once;
3. `state/`: everything that owns Redis keys, each step one Lua script;
4. `ops/` (reports, logs, metrics, Sentry, health, status, doctor) and `produce/` (the
   publisher and replays);
5. `worker/`: the Celery app, the task, and what guards the way to it;
6. `cli/`: the `tagging-worker` command.

`celery -A tagging_worker worker` finds the app through `app`, and Python producers call
`publish_tag_update`; both are loaded on first use, so that importing any module of the
package never reads settings or loads Celery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "publish_tag_update"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tagging_worker.cli.celery_app import app_or_exit  # lazy: loads Celery

        return app_or_exit()
    if name == "publish_tag_update":
        from tagging_worker.produce.publish import publish_tag_update  # lazy: loads Redis

        return publish_tag_update
    raise AttributeError(name)
