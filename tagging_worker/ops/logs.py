"""Logging set-up: one JSON object per line for log collectors, readable lines in a terminal.

Every record goes through structlog's formatter, Celery's own included, so a collector never
has to parse two formats. Fields given to a log call (`extra=`) become JSON keys.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from tagging_worker.settings import LogFormat


def configure(level: str | int, fmt: LogFormat, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not stream.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[structlog.types.Processor]
    if as_json:
        render = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        render = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
