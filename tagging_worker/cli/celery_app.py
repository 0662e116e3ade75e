"""The Celery app that `celery -A tagging_worker worker` (and Flower, `celery inspect`) find.

Built once from the settings; bad settings are one line and exit 2, as for every command.
A module of its own so that only what starts a worker loads Celery's worker machinery.
"""

from __future__ import annotations

import functools

from celery import Celery

from tagging_worker.cli.support import settings_or_exit
from tagging_worker.settings import Settings
from tagging_worker.worker import start_options
from tagging_worker.worker.app import create_app


@functools.cache
def app_or_exit() -> Celery:
    return worker_app(settings_or_exit())


def worker_app(settings: Settings) -> Celery:
    """The app both `tagging-worker worker` and `celery -A tagging_worker worker` run, taking
    queue, log level and node name the same way (`worker/start_options.py`)."""
    app = create_app(settings)
    start_options.install(app, settings)
    return app
