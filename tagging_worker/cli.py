"""The `tagging-worker` console command.

Exit codes scripts can trust: 0 done, 1 something was not there or did not work, 2 bad
input or settings.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from tagging_worker.cli_support import app_or_exit, settings_or_exit
from tagging_worker.event import InvalidEvent
from tagging_worker.publish import Publisher
from tagging_worker.replay import replay_dead_letter
from tagging_worker.runtime import Runtime

cli = typer.Typer(
    help="Apply tag-update events to Alibaba Cloud UpdateOutboundCallTags.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dead = typer.Typer(help="Inspect, fix and replay dead-lettered events.", no_args_is_help=True)
cli.add_typer(dead, name="dead")
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def main() -> None:
    try:
        cli()
    except redis.RedisError as exc:
        err.print(f"tagging-worker: Redis is unreachable: {exc}", markup=False)
        raise SystemExit(1) from None


def _runtime() -> Runtime:
    return Runtime(settings_or_exit())


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Default: TAGGING_WORKER_CONCURRENCY.")
    ] = None,
    pool: Annotated[str | None, typer.Option(help="Default: TAGGING_WORKER_POOL.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="Default: TAGGING_LOG_LEVEL.")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """Run a Celery worker on the tagging queue."""
    settings = settings_or_exit()
    argv = [
        "worker",
        f"--queues={settings.queue}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool or settings.worker_pool.value}",
        f"--loglevel={loglevel or settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app_or_exit().worker_main(argv)


@cli.command()
def publish(
    call_id: Annotated[str | None, typer.Option(help="The call to tag.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag; repeat for several.")] = None,
    tags_json: Annotated[
        str | None, typer.Option(help='Tags as a JSON array: \'["a","b"]\'.')
    ] = None,
    version: Annotated[int | None, typer.Option(help="Ordering key; default: now in ms.")] = None,
    event_id: Annotated[str | None, typer.Option(help="Idempotency key; default: a UUID.")] = None,
    source: Annotated[str | None, typer.Option()] = None,
    file: Annotated[
        Path | None, typer.Option(help="JSON event, or JSON lines of events; '-' for stdin.")
    ] = None,
) -> None:
    """Publish tag-update events; prints one event_id per line."""
    if file is not None:
        events = _read_events(file)
    elif call_id is not None:
        event: dict[str, Any] = {
            "call_id": call_id,
            "tags": tags_json if tags_json else (tag or []),
        }
        extra = {"version": version, "event_id": event_id, "source": source}
        event.update({k: v for k, v in extra.items() if v is not None})
        events = [event]
    else:
        err.print("tagging-worker: give --call-id (with --tag/--tags-json) or --file")
        raise SystemExit(2)
    publisher = Publisher.from_settings(settings_or_exit())
    try:
        ids = publisher.publish_many(events)
    except InvalidEvent as exc:
        err.print(f"tagging-worker: invalid event, nothing published: {exc}", markup=False)
        raise SystemExit(2) from None
    for published in ids:
        out.print(published, markup=False)


def _read_events(file: Path) -> list[dict[str, Any]]:
    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    try:
        stripped = text.strip()
        if stripped.startswith("["):
            return list(json.loads(stripped))
        if stripped.startswith("{") and "\n" not in stripped:
            return [json.loads(stripped)]
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        err.print(f"tagging-worker: {file}: not JSON: {exc}", markup=False)
        raise SystemExit(2) from None


@dead.command("list")
def dead_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    call_id: Annotated[str | None, typer.Option(help="Only this call.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List dead letters, newest first."""
    store = _runtime().dead_letters
    records = store.list(reason=reason, call_id=call_id, limit=limit, offset=offset)
    if as_json:
        out.print_json(json.dumps(records, ensure_ascii=False))
        return
    table = Table(title=f"dead letters ({store.count()} in all)")
    for column in ("id", "died", "reason", "call_id", "version", "attempts", "detail"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r["id"],
            _when(r["died_at"]),
            r["reason"],
            str(r["call_id"]),
            str(r["version"]),
            str(len(r["attempts"])),
            r["detail"],
        )
    out.print(table)


@dead.command("show")
def dead_show(record_id: str, as_json: JsonFlag = False) -> None:
    """Show one dead letter with its whole attempt history."""
    record = _runtime().dead_letters.get(record_id)
    if record is None:
        err.print(f"tagging-worker: no dead letter {record_id}", markup=False)
        raise SystemExit(1)
    if as_json:
        out.print_json(json.dumps(record, ensure_ascii=False))
        return
    out.print(f"[bold]{record['id']}[/] {record['reason']}: {record['detail']}", highlight=False)
    out.print(f"died {_when(record['died_at'])}, first seen {_when(record['first_seen'])}")
    out.print("event as received:")
    out.print_json(json.dumps(record["event"], ensure_ascii=False))
    table = Table(title="attempts")
    for column in ("#", "at", "kind", "code", "http", "request_id", "message"):
        table.add_column(column, overflow="fold")
    for n, a in enumerate(record["attempts"], 1):
        table.add_row(
            str(n),
            _when(a["at"]),
            a["kind"],
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
    reason: Annotated[str | None, typer.Option()] = None,
    call_id: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Put dead letters back on the queue with a fresh attempt budget (atomically)."""
    rt = _runtime()
    replayed = missing = 0
    for record_id in _select(rt, record_ids, all_matching, reason, call_id):
        if replay_dead_letter(rt, record_id):
            replayed += 1
        else:
            missing += 1
            err.print(f"not replayed (gone or changed meanwhile): {record_id}", markup=False)
    out.print(f"replayed {replayed}, not found {missing}")
    raise SystemExit(1 if missing else 0)


@dead.command("delete")
def dead_delete(record_ids: list[str]) -> None:
    """Delete dead letters by id."""
    store = _runtime().dead_letters
    missing = [rid for rid in record_ids if not store.delete(rid)]
    for rid in missing:
        err.print(f"no dead letter {rid}", markup=False)
    out.print(f"deleted {len(record_ids) - len(missing)}")
    raise SystemExit(1 if missing else 0)


@dead.command("purge")
def dead_purge(
    reason: Annotated[str | None, typer.Option()] = None,
    call_id: Annotated[str | None, typer.Option()] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete every dead letter matching the filters (all of them without filters)."""
    rt = _runtime()
    store = rt.dead_letters
    if not yes:
        what = "matching" if reason or call_id else "ALL"
        typer.confirm(f"Delete {what} dead letters?", abort=True)
    deleted = sum(store.delete(rid) for rid in store.iter_ids(reason=reason, call_id=call_id))
    out.print(f"deleted {deleted}")


def _select(
    rt: Runtime, ids: list[str] | None, all_matching: bool, reason: str | None, call_id: str | None
) -> Any:
    if ids and (all_matching or reason or call_id):
        err.print("tagging-worker: give ids, or --all with filters, not both")
        raise SystemExit(2)
    if ids:
        return ids
    if not (all_matching or reason or call_id):
        err.print("tagging-worker: give ids, or --all (with --reason/--call-id to narrow it)")
        raise SystemExit(2)
    return rt.dead_letters.iter_ids(reason=reason, call_id=call_id)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@cli.command("fake-api")
def fake_api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    access_key_id: Annotated[
        str, typer.Option(envvar="FAKE_API_ACCESS_KEY_ID")
    ] = "fake-access-key-id",
    access_key_secret: Annotated[
        str, typer.Option(envvar="FAKE_API_ACCESS_KEY_SECRET", show_default=False)
    ] = "fake-access-key-secret",
    latency_ms: Annotated[float, typer.Option(help="Added to every answer.")] = 0.0,
    clock_check: Annotated[bool, typer.Option(help="Reject stale x-acs-date.")] = True,
    verbose: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the bundled fake Alibaba Cloud API (signature checks, fault injection)."""
    from tagging_worker.fake_api.server import run

    run(host, port, access_key_id, access_key_secret, latency_ms, clock_check, verbose)


@cli.command()
def demo(
    events: Annotated[int, typer.Option(min=1, max=10_000, help="Sample events.")] = 6,
) -> None:
    """Run the whole pipeline locally: Redis, the fake API, a worker, sample events."""
    from tagging_worker.demo import run_demo

    raise SystemExit(run_demo(out, sample_count=events))


@cli.command()
def doctor() -> None:
    """Check settings, Redis, credentials and the API endpoint; say what is wrong."""
    from tagging_worker.doctor import run_doctor

    raise SystemExit(run_doctor(out))
