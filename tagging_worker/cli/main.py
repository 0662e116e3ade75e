"""The `tagging-worker` console command.

Exit codes scripts can trust: 0 done, 1 something was not there or did not work, 2 bad
input or settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.live import Live
from rich.table import Table

from tagging_worker.alibaba.fake_server import run
from tagging_worker.cli.circuit import circuit
from tagging_worker.cli.dead import dead
from tagging_worker.cli.demo import command_line, run_demo, stop_demo
from tagging_worker.cli.support import (
    JsonFlag,
    bad_input,
    bad_path,
    err,
    out,
    read_text_or_exit,
    settings_or_exit,
    stores_or_exit,
)
from tagging_worker.errors import InvalidEvent
from tagging_worker.ops.doctor import run_doctor
from tagging_worker.ops.status import gather, live_workers
from tagging_worker.produce.publish import Publisher
from tagging_worker.settings import Pool
from tagging_worker.state.connection import (
    WritesNotReplicated,
    WritesRefused,
    write_refusal_cause,
)

cli = typer.Typer(
    help="Apply tag-update events to Alibaba Cloud UpdateOutboundCallTags.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
cli.add_typer(dead, name="dead")
cli.add_typer(circuit, name="circuit")


def main() -> None:
    try:
        cli()
    except (WritesRefused, WritesNotReplicated) as exc:
        err.print(f"tagging-worker: {exc}", markup=False)
        raise SystemExit(1) from None
    except redis.RedisError as exc:
        cause = write_refusal_cause(exc)
        said = f"Redis refuses writes: {cause}" if cause else f"Redis is unreachable: {exc}"
        err.print(f"tagging-worker: {said}", markup=False)
        raise SystemExit(1) from None


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Default: TAGGING_WORKER_CONCURRENCY.")
    ] = None,
    pool: Annotated[Pool | None, typer.Option(help="Default: TAGGING_WORKER_POOL.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="Default: TAGGING_LOG_LEVEL.")] = None,
    hostname: Annotated[
        str | None, typer.Option(help="Celery node name. Default: tagging-PID@HOST.")
    ] = None,
) -> None:
    """Run a Celery worker on TAGGING_QUEUE."""
    from tagging_worker.cli.celery_app import worker_app  # lazy: loads Celery's worker

    settings = settings_or_exit()
    chosen = {"worker_pool": pool, "worker_concurrency": concurrency}
    # Celery takes `--pool=prefork` for its default and lets the configured pool win, so
    # the choice goes into the settings the app is configured from, not only into argv.
    settings = settings.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    argv = [
        "worker",
        f"--concurrency={settings.worker_concurrency}",
        f"--pool={settings.worker_pool.value}",
    ]
    # Queue, and log level and node name unless given here, are chosen where they are for
    # `celery -A tagging_worker worker` too (`worker/start_options.py`).
    if loglevel:
        argv.append(f"--loglevel={loglevel}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    # Celery's `worker_main` drops the exit code its command returns: an "Unrecoverable
    # error" would end the process with 0, and a supervisor would leave it down.
    raise typer.Exit(worker_app(settings).start(argv) or 0)


@cli.command()
def publish(
    call_id: Annotated[str | None, typer.Option(help="The call to tag.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag; repeat for several.")] = None,
    tags_json: Annotated[
        str | None, typer.Option(help='Tags as a JSON array: \'["a","b"]\'.')
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove every tag of the call (no --tag given).")
    ] = False,
    version: Annotated[int | None, typer.Option(help="Ordering key; default: now in ms.")] = None,
    event_id: Annotated[str | None, typer.Option(help="Idempotency key; default: a UUID.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Where the event comes from (dead letters filter on it).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option(help="JSON event, or JSON lines of events; '-' for stdin.")
    ] = None,
) -> None:
    """Publish tag-update events; prints one event_id per line.

    The API replaces a call's whole tag list, so an event with no tags clears them: that takes
    --clear, never a forgotten --tag."""
    one_event = {
        "--call-id": call_id,
        "--tag": tag,
        "--tags-json": tags_json,
        "--clear": clear or None,
        "--version": version,
        "--event-id": event_id,
        "--source": source,
    }
    if file is not None:
        given = [name for name, value in one_event.items() if value is not None]
        if given:
            bad_input(f"--file holds whole events: give it without {', '.join(given)}")
        events = _read_events(file)
    elif call_id is not None:
        event: dict[str, Any] = {"call_id": call_id, "tags": _tags(tag, tags_json, clear)}
        extra = {"version": version, "event_id": event_id, "source": source}
        event.update({k: v for k, v in extra.items() if v is not None})
        events = [event]
    else:
        bad_input("give --call-id (with --tag, --tags-json or --clear) or --file")
    publisher = Publisher.from_settings(settings_or_exit())
    try:
        ids = publisher.publish_many(events)
    except InvalidEvent as exc:
        bad_input(f"invalid event, nothing published: {exc}")
    for published in ids:
        out.print(published, markup=False)
    if out.is_terminal:  # a person reads the ids; a script parsing stdout sees only them
        tw = command_line()
        dead = f"dead show {ids[0]}" if len(ids) == 1 else "dead list"
        hint = (
            f"what became of it: {tw} status (applied, retried, dead)\n"
            f"if the API refused it for good: {tw} {dead}   (every command: {tw} --help)"
        )
        err.print(hint, markup=False, highlight=False, soft_wrap=True)  # unwrapped: pastes


def _tags(tag: list[str] | None, tags_json: str | None, clear: bool) -> Any:
    """The event's tags from exactly one of the three ways to give them."""
    given = [
        name for name, on in (("--tag", tag), ("--tags-json", tags_json), ("--clear", clear)) if on
    ]
    if len(given) != 1:
        bad_input(
            f"give one of --tag, --tags-json or --clear, not {' and '.join(given)}"
            if given
            else "no tags given: add --tag (repeat for several), --tags-json, or --clear to "
            "remove every tag of the call"
        )
    return tags_json if tags_json is not None else (tag or [])


def _read_events(file: Path) -> list[Any]:
    """A JSON array, one object, or JSON lines (split on `\n` only: U+2028 or U+0085 inside
    an event's text is no line break); a line that is not JSON is named by its number."""
    text = read_text_or_exit(file)
    stripped = text.strip()
    if not stripped:
        bad_path(file, "no events in it")
    try:
        if stripped.startswith("["):
            return list(json.loads(stripped))
        if stripped.startswith("{") and "\n" not in stripped:
            return [json.loads(stripped)]
    except json.JSONDecodeError as exc:
        bad_path(file, f"not JSON: {exc}")
    except RecursionError:
        bad_path(file, "JSON nested too deeply to read")
    events = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            bad_path(file, f"line {number}: not JSON: {exc}")
        except RecursionError:
            bad_path(file, f"line {number}: JSON nested too deeply to read")
    return events


@cli.command()
def status(
    as_json: JsonFlag = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Refresh until Ctrl-C: in place in a terminal; elsewhere (a pipe, a file) a "
            "snapshot each interval, with --json one JSON object per line.",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes.")] = 2.0,
    workers: Annotated[
        bool, typer.Option(help="Ask the workers over the broker (about a second).")
    ] = True,
) -> None:
    """Queue, retries, dead letters, outcomes and rates, the API's pace and circuit, workers."""
    stores = stores_or_exit()

    def snapshot() -> dict[str, Any]:
        found = gather(stores)
        if workers:
            found["workers"] = live_workers(stores)
        return found

    if not watch:
        if as_json:
            out.print_json(data=snapshot())
        else:
            out.print(_status_table(snapshot()))
        return
    if as_json or not out.is_terminal:
        # Live draws only in a terminal. Each snapshot here is whole, and rich flushes every
        # print (and leaves quietly when the reader of a pipe has gone).
        try:
            while True:
                if as_json:
                    out.out(json.dumps(snapshot()), highlight=False)
                else:
                    out.print(_status_table(snapshot()))
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
        return
    with Live(_status_table(snapshot()), console=out, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_table(snapshot()))
        except KeyboardInterrupt:
            pass


def _status_table(snapshot: dict[str, Any]) -> Table:
    api = snapshot["api"]
    table = Table(title=f"tagging-worker status (queue {snapshot['queue']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if snapshot["redis_refuses_writes"]:
        table.add_row("REDIS", f"refuses writes: {snapshot['redis_refuses_writes']}")
    table.add_row("queued", str(snapshot["queued"]))
    table.add_row("delayed retries", str(snapshot["delayed_retries"]))
    table.add_row("unfinished events", str(snapshot["unfinished_events"]))
    by_reason = ", ".join(f"{r} {n}" for r, n in snapshot["dead_letters_by_reason"].items())
    dead = str(snapshot["dead_letters"]) + (f" ({by_reason})" if by_reason else "")
    table.add_row("dead letters", dead)
    if snapshot["dead_letters_by_code"]:
        by_code = ", ".join(f"{c} {n}" for c, n in snapshot["dead_letters_by_code"].items())
        table.add_row("  by error code", by_code)
    table.add_row("outcomes", ", ".join(f"{k} {v}" for k, v in snapshot["outcomes"].items()))
    for window, rates in snapshot["rates_per_second"].items():
        shown = ", ".join(f"{k} {v:g}/s" for k, v in rates.items() if v) or "-"
        table.add_row(f"rates, {window.replace('_', ' ')}", shown if rates else "(no history yet)")
    table.add_row("API pace", f"{api['rate']:g}/s of {api['rate_limit']:g}/s")
    circuit = api["circuit"]
    if circuit != "closed":
        retry = api["circuit_retry_in"]
        circuit += f" ({api['circuit_kind']}; {api['circuit_cause']}; probe in {retry:.0f} s)"
    table.add_row("API circuit", circuit)
    if "workers" in snapshot:
        listed = [
            f"{w['name']} ({w['active_tasks']} running{'' if w['consuming'] else ', paused'})"
            for w in snapshot["workers"]
        ]
        table.add_row("workers", "\n".join(listed) or "none answered")
    return table


@cli.command("fake-api")
def fake_api(
    host: Annotated[str, typer.Option(help="Loopback unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8080,
    access_key_id: Annotated[
        str, typer.Option(envvar="FAKE_API_ACCESS_KEY_ID", help="The key it accepts.")
    ] = "fake-access-key-id",
    access_key_secret: Annotated[
        str,
        typer.Option(
            envvar="FAKE_API_ACCESS_KEY_SECRET",
            show_default=False,
            help="Its secret (default: fake-access-key-secret).",
        ),
    ] = "fake-access-key-secret",
    latency_ms: Annotated[float, typer.Option(help="Added to every answer.")] = 0.0,
    clock_check: Annotated[bool, typer.Option(help="Reject stale x-acs-date.")] = True,
    verbose: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the bundled fake Alibaba Cloud API (signature checks, fault injection)."""
    run(host, port, access_key_id, access_key_secret, latency_ms, clock_check, verbose)


@cli.command()
def demo(
    events: Annotated[int, typer.Option(min=1, max=10_000, help="Sample events.")] = 6,
    namespace: Annotated[
        str,
        typer.Option(help="Key prefix and queue of the demo's keys, removed when it starts."),
    ] = "tagging-demo",
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Leave the fake API, the worker and a dead letter running, and print the "
            "commands to try on them.",
        ),
    ] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop what a --keep demo left running.")
    ] = False,
) -> None:
    """Run the whole pipeline locally: Redis, the fake API, a worker, sample events."""
    if stop:
        if keep:
            bad_input("--stop ends a kept demo: give it without --keep")
        raise SystemExit(stop_demo(out, namespace=namespace))
    raise SystemExit(run_demo(out, sample_count=events, namespace=namespace, keep=keep))


@cli.command()
def doctor() -> None:
    """Check settings, Redis, credentials and the API endpoint; say what is wrong."""
    raise SystemExit(run_doctor(out))
