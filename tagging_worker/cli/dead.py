"""`tagging-worker dead ...`: see what died and why, fix it, and replay it in one command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import click
import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from tagging_worker.cli.support import (
    JsonFlag,
    bad_input,
    bad_path,
    complain,
    err,
    out,
    read_text_or_exit,
    stores_or_exit,
)
from tagging_worker.errors import InvalidEvent, ReplayRefused
from tagging_worker.event import UNPRINTABLE, validate_event
from tagging_worker.produce.replay import known_version, replay_dead_letter, winning_version
from tagging_worker.state.dead_filter import DeadFilter, parse_when
from tagging_worker.state.dead_letters import (
    DamagedRecord,
    DeadLetter,
    DeadLetterStore,
    Restored,
    export_line,
    import_lines,
    unsendable,
)
from tagging_worker.state.stores import Stores

dead = typer.Typer(
    help="Inspect, fix and replay dead-lettered events.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

Reason = Annotated[str | None, typer.Option(help="Only this reason, e.g. permanent_error.")]
Code = Annotated[str | None, typer.Option(help="Only this error code (of the last attempt).")]
CallId = Annotated[str | None, typer.Option(help="Only this call.")]
Source = Annotated[str | None, typer.Option(help="Only events from this source.")]
Since = Annotated[
    str | None, typer.Option(help="Died at or after: ISO-8601, or an age like 30m, 2h, 7d.")
]
Until = Annotated[str | None, typer.Option(help="Died before: ISO-8601, or an age.")]


def _where(
    reason: str | None,
    code: str | None,
    call_id: str | None,
    source: str | None,
    since: str | None,
    until: str | None,
) -> DeadFilter:
    now = time.time()
    try:
        return DeadFilter(
            reason=reason,
            code=code,
            call_id=call_id,
            source=source,
            since=parse_when(since, now=now) if since else None,
            until=parse_when(until, now=now) if until else None,
        )
    except ValueError as exc:
        bad_input(str(exc))


@dead.command("list")
def dead_list(
    reason: Reason = None,
    code: Code = None,
    call_id: CallId = None,
    source: Source = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many matches (paging).")] = 0,
    as_json: JsonFlag = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON record per line.")] = False,
) -> None:
    """List dead letters, newest first (a record that breaks the schema as damaged)."""
    store = stores_or_exit().dead_letters
    where = _where(reason, code, call_id, source, since, until)
    records = store.list(where, limit=limit, offset=offset)
    if as_json:
        _print_json([r.as_dict() for r in records])
        return
    if jsonl:
        _write_lines(records, _stdout())
        return
    matching = store.count(where)
    title = f"dead letters: {matching} matching ({where.describe()})"
    if len(records) < matching:
        title += f", showing {offset + 1}-{offset + len(records)}"
    short = store.short_ids(r.id for r in records)
    rows = [_list_row(r, short[r.id]) for r in records]
    if out.width < WIDE_TABLE:
        # Narrow (80 columns, a pipe): two lines a record, never broken by us (a terminal
        # wraps them on screen), so `grep` finds a record's id on the line it matched.
        out.print(_shown(title), soft_wrap=True)
        for short_id, died, reason, code, call_id, made, detail in rows:
            line = f"{short_id}  {died}  {reason}  #{made}  {call_id}"
            told = detail if code == "-" or detail.startswith(code) else f"{code}: {detail}"
            out.print(_shown(line), soft_wrap=True)
            out.print(_shown(f"    {told}"), soft_wrap=True)
        return
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("id", "died (UTC)"):
        table.add_column(column, no_wrap=True)
    for column in ("reason", "code", "call_id", "#", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_shown(cell) for cell in row))
    out.print(table)


WIDE_TABLE = 120
"""Columns from which `dead list` is a table; narrower, each record takes two lines."""

PIPE_WIDTH = 400
"""The widest a table printed into a pipe may grow (it takes only what its cells need)."""


def _list_row(record: DeadLetter | DamagedRecord, short_id: str) -> tuple[str, ...]:
    """A record as `dead list` shows it: its short id, then what an operator scans for."""
    match record:
        case DamagedRecord():
            reason, code, made, detail = "damaged", "-", "-", record.problem
        case DeadLetter():
            reason, code = record.reason.value, record.code or "-"
            made, detail = str(record.attempts_made), record.detail
    died = _when(record.died_at, short=True)
    return short_id, died, reason, code, record.call_id or "-", made, detail


@dead.command("show")
def dead_show(
    record_id: Annotated[str, typer.Argument(help="Its id, or its start as `dead list` shows it.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one dead letter with its whole attempt history (or why it is damaged)."""
    store = stores_or_exit().dead_letters
    record = store.get(_full_id(store, record_id))
    if record is None:
        complain(f"tagging-worker: no dead letter {record_id}")
        raise SystemExit(1)
    if as_json:
        _print_json(record.as_dict())
        return
    if isinstance(record, DamagedRecord):
        out.print(_shown(f"{record.id} damaged: {record.problem}"))
        out.print(
            _shown(
                f"indexed as reason {record.reason}, call {record.call_id}, died "
                f"{_when(record.died_at)}; `dead delete` removes it, nothing replays it"
            )
        )
        return
    out.print(
        Text.assemble(
            (_clean(record.id), "bold"), _clean(f" {record.reason.value}: {record.detail}")
        )
    )
    known = [
        f"{name} {value}"
        for name, value in (
            ("call", record.call_id),
            ("version", record.version),
            ("source", record.source),
        )
        if value is not None
    ]
    seen = f"first seen {_when(record.first_seen)}, died {_when(record.died_at)}"
    out.print(_shown("; ".join([", ".join(known), seen] if known else [seen])))
    out.print("event as received:")
    _print_json(record.event)
    table = Table(title="attempts")
    for column in ("#", "at", "kind", "counted", "code", "http", "request_id", "message"):
        table.add_column(column, overflow="fold")
    elided = record.attempts_made - len(record.attempts)
    for n, a in enumerate(record.attempts, 1):
        if n == 2 and elided > 0:
            table.add_row("…", "", "", "", "", "", "", f"{elided} attempts in between not kept")
        table.add_row(
            str(n if n == 1 or elided <= 0 else n + elided),
            _when(a.at),
            _shown(a.kind),
            "no" if a.charged is False else "yes",
            _shown(a.code),
            _shown(a.http_status),
            _shown(a.request_id),
            _shown(a.message),
        )
    # A pipe has no width: the table takes what its cells need rather than 80 columns.
    (out if out.is_terminal else Console(file=out.file, width=PIPE_WIDTH)).print(table)


@dead.command("replay")
def dead_replay(
    record_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Ids to replay, or their starts as `dead list` shows them."),
    ] = None,
    all_matching: Annotated[
        bool, typer.Option("--all", help="Every record matching the filters.")
    ] = False,
    reason: Reason = None,
    code: Code = None,
    call_id: CallId = None,
    source: Source = None,
    since: Since = None,
    until: Until = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what, move nothing.")] = False,
    rate: Annotated[
        float, typer.Option(min=0.1, help="Records per second, so a bulk replay paces itself.")
    ] = 100.0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Give an event older than what its call has applied a version "
            "that wins (otherwise it ends as stale).",
        ),
    ] = False,
    edit: Annotated[
        bool, typer.Option("--edit", help="Fix the event in $EDITOR first (one id).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Put dead letters back on the queue with a fresh attempt budget, each in one step: a
    replay stopped half way leaves every record either replayed or still dead. A damaged
    record, or one that names another queue, is refused and stays."""
    stores = stores_or_exit()
    store = stores.dead_letters
    where = _where(reason, code, call_id, source, since, until)
    if edit:
        if not record_ids or len(record_ids) != 1 or all_matching or not where.empty:
            bad_input("--edit takes exactly one id")
        record_id = _full_id(store, record_ids[0])
        raise SystemExit(_replay_edited(stores, store, record_id, dry_run=dry_run))
    ids = _select(store, record_ids, all_matching, where)
    if dry_run:
        found = [r for r in (store.get(i) for i in ids) if r is not None]
        refusals = {r.id: _refusal(r) for r in found}
        sent = [r for r in found if isinstance(r, DeadLetter) and refusals[r.id] is None]
        refused = [{"id": i, "why": why} for i, why in refusals.items() if why is not None]
        if as_json:
            _print_json({"would_replay": [r.id for r in sent], "refused": refused})
            return
        for r in sent:
            out.print(_shown(f"would replay {r.id} ({r.reason.value}, call {r.call_id})"))
        for d in refused:
            out.print(_shown(f"would refuse {d['id']}: {d['why']}"))
        also = f", {len(refused)} would be refused" if refused else ""
        out.print(f"dry run: {len(sent)} would be replayed{also}, nothing moved")
        return
    done = _replay_paced(stores, store, ids, rate=rate, force=force, where=where)
    if as_json:
        _print_json(
            {
                "replayed": done.replayed,
                "not_found": done.missing,
                "forced": done.forced,
                "refused": done.refused,
            }
        )
    else:
        for f in done.forced:
            out.print(
                _shown(
                    f"forced {f['id']}: version {f['from']} -> {f['to']} "
                    f"(applied was {f['applied']})"
                )
            )
        for record_id in done.missing:
            complain(f"not replayed (gone or changed meanwhile): {record_id}")
        for d in done.refused:
            complain(f"not replayed ({d['why']}): {d['id']}")
        refused = f", refused {len(done.refused)}" if done.refused else ""
        out.print(
            f"replayed {len(done.replayed)}, not found {len(done.missing)}{refused}, "
            f"forced {len(done.forced)}"
        )
    raise SystemExit(1 if done.missing or done.refused else 0)


def _refusal(record: DeadLetter | DamagedRecord) -> str | None:
    """Why a replay would refuse the record, as `DeadLetterStore.replay` decides it."""
    if isinstance(record, DamagedRecord):
        return f"damaged: {record.problem}"
    return unsendable(record.replay_event())


@dataclass
class _Replayed:
    replayed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    forced: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)


def _replay_paced(
    stores: Stores,
    store: DeadLetterStore,
    ids: Iterable[str],
    *,
    rate: float,
    force: bool,
    where: DeadFilter,
) -> _Replayed:
    done = _Replayed()

    def win(record: DeadLetter) -> Any:
        event = record.replay_event()
        if not isinstance(event, dict) or not isinstance(event.get("version"), int):
            return event
        applied = known_version(stores, record)
        version = winning_version(event["version"], applied)
        if version is None:
            return event
        done.forced.append(
            {"id": record.id, "from": event["version"], "to": version, "applied": applied}
        )
        return {**event, "version": version}

    bulk = not isinstance(ids, list)
    total = store.count(where) if bulk else len(ids)
    started = time.monotonic()
    with Progress(console=err, transient=True, disable=not (bulk and err.is_terminal)) as progress:
        task = progress.add_task("replaying", total=total)
        for n, record_id in enumerate(ids):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            try:
                moved = replay_dead_letter(stores, record_id, revise=win if force else None)
            except ReplayRefused as exc:
                done.refused.append({"id": record_id, "why": exc.why})
            else:
                (done.replayed if moved else done.missing).append(record_id)
            progress.advance(task)
    return done


def _replay_edited(stores: Stores, store: DeadLetterStore, record_id: str, *, dry_run: bool) -> int:
    record = store.get(record_id)
    if record is None:
        complain(f"tagging-worker: no dead letter {record_id}")
        return 1
    if isinstance(record, DamagedRecord):
        complain(
            f"tagging-worker: dead letter {record_id} is damaged ({record.problem}); "
            "nothing replayed"
        )
        return 1
    before = _json_text(record.replay_event(), indent=2)
    text = click.edit(before + "\n", extension=".json")
    if text is None or text.strip() == before.strip():
        err.print("tagging-worker: the event was not changed; nothing replayed")
        return 2
    try:
        update = validate_event(
            json.loads(text),
            limits=stores.settings.event_limits,
            default_version=int(time.time() * 1000),
            default_event_id=record.event_id or record_id,
        )
    except json.JSONDecodeError as exc:
        err.print(f"tagging-worker: not JSON ({exc}); nothing replayed", markup=False)
        return 2
    except InvalidEvent as exc:
        err.print(f"tagging-worker: invalid event ({exc}); nothing replayed", markup=False)
        return 2
    fixed = update.as_event()
    if dry_run:
        _print_json(fixed)
        out.print("dry run: nothing moved")
        return 0
    try:
        moved = replay_dead_letter(stores, record_id, revise=lambda _: fixed)
    except ReplayRefused as exc:
        complain(f"not replayed ({exc.why}): {record_id}")
        return 1
    if not moved:
        complain(f"not replayed (gone or changed meanwhile): {record_id}")
        return 1
    out.print(f"replayed {record_id} as edited", markup=False)
    return 0


@dead.command("delete")
def dead_delete(
    record_ids: Annotated[
        list[str], typer.Argument(help="Ids to delete, or their starts as `dead list` shows them.")
    ],
) -> None:
    """Delete dead letters by id."""
    store = stores_or_exit().dead_letters
    record_ids = [_full_id(store, given) for given in record_ids]
    missing = [rid for rid in record_ids if not store.delete(rid)]
    for rid in missing:
        err.print(f"no dead letter {rid}", markup=False)
    out.print(f"deleted {len(record_ids) - len(missing)}")
    raise SystemExit(1 if missing else 0)


@dead.command("purge")
def dead_purge(
    reason: Reason = None,
    code: Code = None,
    call_id: CallId = None,
    source: Source = None,
    since: Since = None,
    until: Until = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete every dead letter matching the filters (all of them without filters)."""
    store = stores_or_exit().dead_letters
    where = _where(reason, code, call_id, source, since, until)
    if not yes:
        what = f"the {store.count(where)} dead letters matching {where.describe()}"
        typer.confirm(f"Delete {what if not where.empty else 'ALL dead letters'}?", abort=True)
    deleted = sum(store.delete(rid) for rid in store.iter_ids(where))
    out.print(f"deleted {deleted}")


@dead.command("export")
def dead_export(
    reason: Reason = None,
    code: Code = None,
    call_id: CallId = None,
    source: Source = None,
    since: Since = None,
    until: Until = None,
    output: Annotated[Path, typer.Option(help="JSON lines file; '-' for stdout.")] = Path("-"),
) -> None:
    """Write matching dead letters as JSON lines, whole, oldest first (nothing is removed).
    A damaged record is not written: each is named on stderr, and the exit code is 1."""
    store = stores_or_exit().dead_letters
    where = _where(reason, code, call_id, source, since, until)
    damaged: list[DamagedRecord] = []

    def whole() -> Iterator[DeadLetter]:
        for record in store.iter_records(where):
            if isinstance(record, DamagedRecord):
                damaged.append(record)
            else:
                yield record

    if str(output) == "-":
        count = _write_lines(whole(), _stdout())
    else:
        try:
            with output.open("wb") as stream:
                count = _write_lines(whole(), stream)
        except OSError as exc:
            bad_path(output, f"cannot write it ({exc.strerror or exc})")
    for record in damaged:
        complain(f"not exported: {record.id} damaged: {record.problem}")
    err.print(f"exported {count}" + (f", left out {len(damaged)} damaged" if damaged else ""))
    raise SystemExit(1 if damaged else 0)


@dead.command("import")
def dead_import(
    file: Annotated[Path, typer.Argument(help="JSON lines from `dead export`; '-' for stdin.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite records whose id is already here.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Store exported dead letters here (same ids and times), e.g. from another environment.
    Each line must be a record as this deployment writes them; the others are named on
    stderr with their line number and reason, and the exit code is 2."""
    store = stores_or_exit().dead_letters
    imported = skipped = settled = 0
    bad: list[str] = []
    for number, record, problem in import_lines(read_text_or_exit(file), store.rules):
        if record is None:
            bad.append(f"line {number}: {problem}")
            continue
        answer = store.restore(record, replace=replace)
        imported += answer is Restored.STORED
        skipped += answer is Restored.EXISTS
        settled += answer is Restored.SETTLED
    if as_json:
        out.print_json(
            data={
                "imported": imported,
                "skipped": skipped,
                "settled": settled,
                "bad_lines": bad,
            }
        )
    else:
        for refusal in bad:
            complain(f"not imported: {refusal}")
        out.print(
            f"imported {imported}, skipped {skipped} already here, {settled} finished since "
            f"(replayed and settled), bad lines {len(bad)}"
        )
    raise SystemExit(2 if bad else 0)


def _select(
    store: DeadLetterStore, ids: list[str] | None, all_matching: bool, where: DeadFilter
) -> list[str] | Iterator[str]:
    if ids and (all_matching or not where.empty):
        bad_input("give ids, or --all with filters, not both")
    if ids:
        return [_full_id(store, given) for given in ids]
    if not (all_matching or not where.empty):
        bad_input("give ids, or --all (with filters to narrow it)")
    return store.iter_ids(where)


def _full_id(store: DeadLetterStore, given: str) -> str:
    """An id as given, or the one stored id it starts (a short id from `dead list`); the start
    of several ids is refused."""
    if store.has(given):
        return given
    found = store.ids_starting(given)
    if len(found) > 1:
        bad_input(f"{given!r} starts more than one dead letter's id: give more of it")
    return found[0] if found else given


def _stdout() -> BinaryIO:
    """Standard output for bytes, after what the console already wrote to it."""
    sys.stdout.flush()
    return sys.stdout.buffer


def _write_lines(records: Iterable[DeadLetter | DamagedRecord], stream: BinaryIO) -> int:
    """JSON lines as `dead import` reads them: UTF-8, each ending at its only \\n."""
    count = 0
    for record in records:
        stream.write(export_line(record).encode("utf-8"))
        count += 1
    stream.flush()
    return count


def _print_json(value: Any) -> None:
    out.print_json(json.dumps(value), ensure_ascii=not _fit_as_is(value))


def _json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON for a person: non-ASCII as it is, unless the value holds text `_clean` escapes (a
    lone surrogate cannot even be written as UTF-8)."""
    return json.dumps(value, ensure_ascii=not _fit_as_is(value), indent=indent)


def _fit_as_is(value: Any) -> bool:
    text = json.dumps(value, ensure_ascii=False)
    return _clean(text) == text


def _clean(text: str) -> str:
    """Stored text fit for one terminal line: control characters, line separators and lone
    surrogates (which no terminal should get, and UTF-8 cannot carry) escaped."""
    return UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _shown(value: Any) -> Text:
    """A value from a record as a table cell or line: never markup, always printable."""
    return Text(_clean(str(value)))


def _when(ts: float | None, *, short: bool = False) -> str:
    """A time as a date; a carried time may be none a date can show, a damaged record none."""
    if ts is None:
        return "?"
    try:
        moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return moment.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%SZ")
