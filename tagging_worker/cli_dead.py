"""`tagging-worker dead ...`: see what died and why, fix it, and replay it in one command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich import box
from rich.progress import Progress
from rich.table import Table

from tagging_worker.cli_support import JsonFlag, err, out, runtime_or_exit
from tagging_worker.dead_filter import DeadFilter, last_code, parse_when
from tagging_worker.dead_letters import Restored, replay_event
from tagging_worker.event import InvalidEvent, validate_event
from tagging_worker.replay import known_version, replay_dead_letter, winning_version
from tagging_worker.runtime import Runtime

dead = typer.Typer(help="Inspect, fix and replay dead-lettered events.", no_args_is_help=True)

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
        err.print(f"tagging-worker: {exc}", markup=False)
        raise SystemExit(2) from None


@dead.command("list")
def dead_list(
    reason: Reason = None,
    code: Code = None,
    call_id: CallId = None,
    source: Source = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many matches (paging).")] = 0,
    as_json: JsonFlag = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON record per line.")] = False,
) -> None:
    """List dead letters, newest first."""
    store = runtime_or_exit().dead_letters
    where = _where(reason, code, call_id, source, since, until)
    records = store.list(where, limit=limit, offset=offset)
    if as_json:
        out.print_json(json.dumps(records, ensure_ascii=False))
        return
    if jsonl:
        _write_lines(records, sys.stdout)
        return
    matching = store.count(where)
    title = f"dead letters: {matching} matching ({where.describe()})"
    if len(records) < matching:
        title += f", showing {offset + 1}-{offset + len(records)}"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("id", "died (UTC)", "reason", "code", "call_id", "#"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    table.add_column("detail")
    for r in records:
        table.add_row(
            r["id"],
            _when(r["died_at"], short=True),
            r["reason"],
            last_code(r) or "-",
            str(r["call_id"]),
            str(_attempts_made(r)),
            r["detail"],
        )
    out.print(table)


@dead.command("show")
def dead_show(record_id: str, as_json: JsonFlag = False) -> None:
    """Show one dead letter with its whole attempt history."""
    record = runtime_or_exit().dead_letters.get(record_id)
    if record is None:
        err.print(f"tagging-worker: no dead letter {record_id}", markup=False)
        raise SystemExit(1)
    if as_json:
        out.print_json(json.dumps(record, ensure_ascii=False))
        return
    out.print(f"[bold]{record['id']}[/] {record['reason']}: {record['detail']}", highlight=False)
    out.print(
        f"call {record['call_id']}, version {record['version']}, source {record['source']}; "
        f"first seen {_when(record['first_seen'])}, died {_when(record['died_at'])}",
        highlight=False,
    )
    out.print("event as received:")
    out.print_json(json.dumps(record["event"], ensure_ascii=False))
    table = Table(title="attempts")
    for column in ("#", "at", "kind", "counted", "code", "http", "request_id", "message"):
        table.add_column(column, overflow="fold")
    kept = record["attempts"]
    elided = _attempts_made(record) - len(kept)
    for n, a in enumerate(kept, 1):
        if n == 2 and elided > 0:
            table.add_row("…", "", "", "", "", "", "", f"{elided} attempts in between not kept")
        table.add_row(
            str(n if n == 1 or elided <= 0 else n + elided),
            _when(a["at"]),
            a["kind"],
            "yes" if a.get("charged", True) else "no",
            a["code"],
            str(a["http_status"]),
            str(a["request_id"]),
            a["message"],
        )
    out.print(table)


@dead.command("replay")
def dead_replay(
    record_ids: Annotated[list[str] | None, typer.Argument(help="Ids to replay.")] = None,
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
    replay stopped half way leaves every record either replayed or still dead."""
    rt = runtime_or_exit()
    where = _where(reason, code, call_id, source, since, until)
    if edit:
        if not record_ids or len(record_ids) != 1 or all_matching or not where.empty:
            err.print("tagging-worker: --edit takes exactly one id")
            raise SystemExit(2)
        raise SystemExit(_replay_edited(rt, record_ids[0], dry_run=dry_run))
    ids = _select(rt, record_ids, all_matching, where)
    if dry_run:
        records = [r for r in (rt.dead_letters.get(i) for i in ids) if r is not None]
        if as_json:
            out.print_json(json.dumps({"would_replay": [r["id"] for r in records]}))
        else:
            for r in records:
                out.print(f"would replay {r['id']} ({r['reason']}, call {r['call_id']})")
            out.print(f"dry run: {len(records)} would be replayed, nothing moved")
        return
    replayed, missing, forced = _replay_paced(rt, ids, rate=rate, force=force, where=where)
    if as_json:
        out.print_json(data={"replayed": replayed, "not_found": missing, "forced": forced})
    else:
        for f in forced:
            out.print(
                f"forced {f['id']}: version {f['from']} -> {f['to']} (applied was {f['applied']})",
                highlight=False,
            )
        for record_id in missing:
            err.print(f"not replayed (gone or changed meanwhile): {record_id}", markup=False)
        out.print(f"replayed {len(replayed)}, not found {len(missing)}, forced {len(forced)}")
    raise SystemExit(1 if missing else 0)


def _replay_paced(
    rt: Runtime, ids: Iterable[str], *, rate: float, force: bool, where: DeadFilter
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    replayed: list[str] = []
    missing: list[str] = []
    forced: list[dict[str, Any]] = []

    def win(record: dict[str, Any]) -> Any:
        event = replay_event(record)
        if not isinstance(event, dict) or not isinstance(event.get("version"), int):
            return event
        applied = known_version(rt, record)
        version = winning_version(event["version"], applied)
        if version is None:
            return event
        forced.append(
            {"id": record["id"], "from": event["version"], "to": version, "applied": applied}
        )
        return {**event, "version": version}

    bulk = not isinstance(ids, list)
    total = rt.dead_letters.count(where) if bulk else len(ids)
    started = time.monotonic()
    with Progress(console=err, transient=True, disable=not (bulk and err.is_terminal)) as progress:
        task = progress.add_task("replaying", total=total)
        for n, record_id in enumerate(ids):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            if replay_dead_letter(rt, record_id, revise=win if force else None):
                replayed.append(record_id)
            else:
                missing.append(record_id)
            progress.advance(task)
    return replayed, missing, forced


def _replay_edited(rt: Runtime, record_id: str, *, dry_run: bool) -> int:
    record = rt.dead_letters.get(record_id)
    if record is None:
        err.print(f"tagging-worker: no dead letter {record_id}", markup=False)
        return 1
    before = json.dumps(replay_event(record), ensure_ascii=False, indent=2)
    text = click.edit(before + "\n", extension=".json")
    if text is None or text.strip() == before.strip():
        err.print("tagging-worker: the event was not changed; nothing replayed")
        return 2
    try:
        update = validate_event(
            json.loads(text),
            limits=rt.settings.event_limits,
            default_version=int(time.time() * 1000),
            default_event_id=str(record.get("event_id") or record_id),
        )
    except json.JSONDecodeError as exc:
        err.print(f"tagging-worker: not JSON ({exc}); nothing replayed", markup=False)
        return 2
    except InvalidEvent as exc:
        err.print(f"tagging-worker: invalid event ({exc}); nothing replayed", markup=False)
        return 2
    fixed = update.as_event()
    if dry_run:
        out.print_json(json.dumps(fixed, ensure_ascii=False))
        out.print("dry run: nothing moved")
        return 0
    if not replay_dead_letter(rt, record_id, revise=lambda _: fixed):
        err.print(f"not replayed (gone or changed meanwhile): {record_id}", markup=False)
        return 1
    out.print(f"replayed {record_id} as edited", markup=False)
    return 0


@dead.command("delete")
def dead_delete(record_ids: list[str]) -> None:
    """Delete dead letters by id."""
    store = runtime_or_exit().dead_letters
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
    store = runtime_or_exit().dead_letters
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
    """Write matching dead letters as JSON lines, whole, oldest first (nothing is removed)."""
    store = runtime_or_exit().dead_letters
    records = store.iter_records(_where(reason, code, call_id, source, since, until))
    if str(output) == "-":
        count = _write_lines(records, sys.stdout)
    else:
        with output.open("w", encoding="utf-8") as stream:
            count = _write_lines(records, stream)
    err.print(f"exported {count}")


@dead.command("import")
def dead_import(
    file: Annotated[Path, typer.Argument(help="JSON lines from `dead export`; '-' for stdin.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite records whose id is already here.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Store exported dead letters here (same ids and times), e.g. from another environment."""
    store = runtime_or_exit().dead_letters
    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    imported = skipped = settled = 0
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            answer = store.restore(record, replace=replace)
            imported += answer is Restored.STORED
            skipped += answer is Restored.EXISTS
            settled += answer is Restored.SETTLED
        except ValueError as exc:  # JSONDecodeError is one
            bad.append(f"line {number}: {exc}")
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
        for problem in bad:
            err.print(f"not imported: {problem}", markup=False)
        out.print(
            f"imported {imported}, skipped {skipped} already here, {settled} finished since "
            f"(replayed and settled), bad lines {len(bad)}"
        )
    raise SystemExit(2 if bad else 0)


def _select(
    rt: Runtime, ids: list[str] | None, all_matching: bool, where: DeadFilter
) -> list[str] | Iterator[str]:
    if ids and (all_matching or not where.empty):
        err.print("tagging-worker: give ids, or --all with filters, not both")
        raise SystemExit(2)
    if ids:
        return ids
    if not (all_matching or not where.empty):
        err.print("tagging-worker: give ids, or --all (with filters to narrow it)")
        raise SystemExit(2)
    return rt.dead_letters.iter_ids(where)


def _write_lines(records: Iterable[dict[str, Any]], stream: Any) -> int:
    count = 0
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    stream.flush()
    return count


def _attempts_made(record: dict[str, Any]) -> int:
    """All attempts the event made; a record keeps only the first and the latest ones."""
    counts = record.get("attempt_counts")
    made = counts.get("attempts_made") if isinstance(counts, dict) else None
    return made if isinstance(made, int) else len(record["attempts"])


def _when(ts: float, *, short: bool = False) -> str:
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%SZ")
