"""Logging set-up: one JSON object per line for log collectors, readable lines in a terminal.

Every record goes through structlog's formatter, Celery's own included, so a collector never
has to parse two formats. Fields given to a log call (`extra=`) become JSON keys.

At INFO an event is one line, its outcome (`ops.reports`): Celery's "received", "succeeded",
"retry" and expected-failure (dead-lettered) lines for each task are demoted to DEBUG, and
Alibaba Cloud's credential chain (and its once-a-minute scheduler) speaks only to warn. A
loop that fails on every turn logs through `Repeats`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_RETRY, LOG_SUCCESS

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
    debug = root.isEnabledFor(logging.DEBUG)
    for name in CELERY_PER_TASK_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, DemoteCeleryPerTaskLines)]:
            logger.removeFilter(old)
        logger.addFilter(DemoteCeleryPerTaskLines(logger))
    kombu = logging.getLogger(KOMBU_REDIS_LOGGER)
    for old in [f for f in kombu.filters if isinstance(f, OncePerInterval)]:
        kombu.removeFilter(old)
    kombu.addFilter(OncePerInterval())
    credentials, scheduler = map(logging.getLogger, CREDENTIAL_CHAIN_LOGGERS)
    credentials.handlers.clear()
    # Never below INFO: its DEBUG lines print the credentials it fetched.
    credentials.setLevel(logging.INFO if debug else logging.WARNING)
    scheduler.setLevel(logging.NOTSET if debug else logging.WARNING)


CREDENTIAL_CHAIN_LOGGERS = ("credentials", "apscheduler")
"""Alibaba Cloud's credential chain logs to `credentials`, which it gives handlers of its own
(each record would come out again, unformatted, on stderr); the scheduler of its ECS RAM role
provider (APScheduler) logs two INFO lines a minute."""

KOMBU_REDIS_LOGGER = "kombu.transport.redis"
"""kombu's Redis transport warns, with a traceback, on every turn of a loop that fails (its
binding refresh, once a second while Redis refuses writes)."""

CELERY_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
"""Where Celery logs "Task ... received" and "Task ... succeeded in ..." for every task."""

CELERY_PER_TASK_LINES = (LOG_RECEIVED, LOG_SUCCESS, LOG_RETRY, LOG_FAILURE.strip())
"""At INFO, the last two are a retry and an expected failure (`DeadLettered`): our own
records say the same, with the event's fields. An unexpected failure is ERROR and stays."""


class DemoteCeleryPerTaskLines(logging.Filter):
    """Celery's per-task INFO lines say again what the event's own line says: they become
    DEBUG records, shown only when DEBUG is. Its warnings and errors (an unexpected failure,
    a rejection) keep their level."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.msg not in CELERY_PER_TASK_LINES:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._logger.isEnabledFor(logging.DEBUG)


class OncePerInterval(logging.Filter):
    """Lets a record through once per `interval` seconds for each message template of its
    logger: for a library's loop that logs each turn, where `Repeats` cannot be used."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, record.msg), self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last[key] = now
        return True


@dataclass
class _Streak:
    first_at: float
    reported_at: float
    failures: int = 1
    unreported: int = 0


class Repeats:
    """The log of a loop that retries what fails (Redis down, say), every turn: a failure is
    logged the first time, its repeats as one summary line at most every `interval` seconds,
    and the loop's next success as one line saying it works again. An outage of minutes is a
    handful of lines, not one per turn.

    Failures of the same kind share a message template; `failed` takes one like a log call.
    Thread-safe, so one `Repeats` can serve a loop run by several threads."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._streaks: dict[str, _Streak] = {}

    def failed(
        self, msg: str, *args: Any, level: int = logging.WARNING, exc_info: bool = False
    ) -> None:
        now = self._clock()
        with self._lock:
            streak = self._streaks.get(msg)
            if streak is None:
                self._streaks[msg] = _Streak(first_at=now, reported_at=now)
            else:
                streak.failures += 1
                streak.unreported += 1
                since = now - streak.reported_at
                if since < self._interval:
                    return
                repeated, streak.unreported, streak.reported_at = streak.unreported, 0, now
        if streak is None:
            self._logger.log(level, msg, *args, exc_info=exc_info)
            return
        self._logger.log(
            level,
            f"{msg} (repeated %d times in the last %.0f s)",
            *args,
            repeated,
            since,
            extra={"repeated": repeated},
        )

    def succeeded(self) -> None:
        """Called after each turn that worked: cheap while nothing was failing."""
        if not self._streaks:
            return
        now = self._clock()
        with self._lock:
            streaks, self._streaks = self._streaks, {}
        if not streaks:
            return
        since = min(s.first_at for s in streaks.values())
        failures = sum(s.failures for s in streaks.values())
        self._logger.info(
            "%s works again after %.0f s and %d failure(s)",
            self._what,
            now - since,
            failures,
            extra={"failures": failures},
        )
