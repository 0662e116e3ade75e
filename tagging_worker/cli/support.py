"""What every command needs: settings and stores or one line and exit 2, and the consoles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from tagging_worker.errors import SettingsError
from tagging_worker.settings import Settings, load_settings
from tagging_worker.state.stores import Stores

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def settings_or_exit() -> Settings:
    """Bad settings stop start-up with one clear line, never a stack trace."""
    try:
        return load_settings()
    except SettingsError as exc:
        bad_input(str(exc))


def stores_or_exit() -> Stores:
    return Stores.connect(settings_or_exit())


def complain(line: str) -> None:
    """One line on stderr, as it is: rich would wrap a long one and read markup in a record's
    text, and a script reading refusals counts on one line each."""
    print(line, file=sys.stderr)


def bad_input(reason: str) -> NoReturn:
    """Bad input or bad settings: one plain line and exit 2, never a stack trace."""
    complain(f"tagging-worker: {reason}")
    raise SystemExit(2)


def bad_path(path: Path, problem: str) -> NoReturn:
    bad_input(f"{'stdin' if str(path) == '-' else path}: {problem}")


def read_text_or_exit(path: Path) -> str:
    """A file (`-`: stdin) as strict UTF-8 whatever the locale, so bytes that are not text are
    named as such instead of turning into lone surrogates; one that cannot be read or is not
    UTF-8 is one line and exit 2."""
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        bad_path(path, f"cannot read it ({exc.strerror or exc})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_path(path, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")
