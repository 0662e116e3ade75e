"""Start-up helpers shared by the console command and `celery -A tagging_worker`."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from celery import Celery
from rich.console import Console

from tagging_worker.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from tagging_worker.runtime import Runtime

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def settings_or_exit() -> Settings:
    """Bad settings stop start-up with one clear line, never a stack trace."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"tagging-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def runtime_or_exit() -> Runtime:
    from tagging_worker.runtime import Runtime

    return Runtime(settings_or_exit())


@functools.cache
def app_or_exit() -> Celery:
    from tagging_worker.celery_app import create_app

    return create_app(settings_or_exit())


def complain(line: str) -> None:
    """One line on stderr, as it is: rich would wrap a long one and read markup in a record's
    text, and a script reading refusals counts on one line each."""
    print(line, file=sys.stderr)
