"""`tagging-worker demo`: the whole pipeline on one machine, with no Alibaba Cloud account.

Local Redis (started if none answers), the fake API and one real worker, each a process of
its own, sample events, one of them throttled and one rejected, then the operator's fix: the
dead letter is replayed and applied. It uses its own queue and key prefix. With `keep` the fake
API, the worker and the dead letter stay, for the reader to try the commands on; their pids and
logs live in a state directory named after the namespace, which `stop_demo` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from tagging_worker.produce.publish import Publisher
from tagging_worker.produce.replay import replay_dead_letter
from tagging_worker.settings import load_settings
from tagging_worker.state.dead_letters import DeadLetter
from tagging_worker.state.stores import Stores

NAMESPACE = "tagging-demo"
DEMO_KEY_ID, DEMO_KEY_SECRET = "demo-access-key-id", "demo-access-key-secret"
SAMPLE_TAGS = [["有意向"], ["有意向", "需跟进"], ["无人接听"], [], ["已成交", "VIP"], ["需跟进"]]
THROTTLED, BROKEN = "call-demo-0002", "call-demo-0005"
ROLES = ("worker", "fake-api")
"""The demo's background processes, in the order they are stopped: the worker first, so it
does not meet a vanished API on its way out."""


def command_line() -> str:
    """This `tagging-worker` as a command the user can paste into the shell they ran it from,
    whether or not the virtualenv is on PATH."""
    script = Path(sys.executable).with_name("tagging-worker")
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m tagging_worker"
    if shutil.which("tagging-worker") == str(script):
        return "tagging-worker"
    if script.is_relative_to(Path.cwd()):
        return shlex.quote(str(script.relative_to(Path.cwd())))
    return shlex.quote(str(script))


def state_dir(namespace: str) -> Path:
    """Per user as well: two users' demos on one machine must not share pid files."""
    return Path(tempfile.gettempdir()) / f"{namespace}.{os.getuid()}"


def run_demo(out: Console, *, sample_count: int, namespace: str, keep: bool) -> int:
    broker = os.environ.get("TAGGING_BROKER_URL", "redis://127.0.0.1:6379/0")
    if not _ensure_redis(broker, out):
        return 1
    state = state_dir(namespace)
    _stop_processes(out, state)  # a demo kept earlier would work on the keys removed below
    stores = Stores.connect(load_settings(broker_url=broker, queue=namespace, key_prefix=namespace))
    _forget_previous_run(stores)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = False
    try:
        api = _FakeApi.start(state)
        if api is None:  # its log goes with the state directory: shown here
            log = (state / "fake-api.log").read_text(errors="replace")
            out.print(f"the fake API did not start:\n{log}", markup=False, highlight=False)
            return 1
        env = _worker_env(broker, api.endpoint, namespace)
        _spawn(state, "worker", ["worker", "--concurrency=4"], env)
        out.rule("tagging-worker demo")
        out.print(f"fake Alibaba Cloud API on http://{api.endpoint}; Redis at {broker}")
        events = _sample_events(sample_count)
        dead = _first_pass(out, stores, api, events)
        if dead is None:
            return 1
        if dead:
            out.print("the operator fixes the cause (the API now accepts the tag)")
            api.clear_faults()
        if keep:
            _print_next_steps(out, stores, state, env, namespace, dead)
            kept = True
            return 0
        return _replay(out, stores, api, events, dead) if dead else 0
    finally:
        if not kept:
            _stop_processes(out, state, quiet=True)


def stop_demo(out: Console, *, namespace: str) -> int:
    """Ends what `run_demo(keep=True)` left running; its keys stay until the next demo."""
    state = state_dir(namespace)
    if not state.exists():
        out.print(f"no demo kept under {namespace}: nothing to stop")
        return 0
    _stop_processes(out, state)
    return 0


def _sample_events(count: int) -> list[dict[str, Any]]:
    return [
        {
            "call_id": f"call-demo-{n:04d}",
            "tags": SAMPLE_TAGS[n % len(SAMPLE_TAGS)],
            "version": 1,
            "source": "demo",
        }
        for n in range(1, count + 1)
    ]


def _first_pass(
    out: Console, stores: Stores, api: _FakeApi, events: list[dict[str, Any]]
) -> list[DeadLetter] | None:
    """The sample events through the worker; the dead letters they left, or None on a hang."""
    api.add_fault("throttle", call_id=THROTTLED, times=1, retry_after_ms=300)
    api.add_fault(
        "error",
        call_id=BROKEN,
        code="InvalidParameter.Tags",
        http_status=400,
        message="The specified tag is not allowed for this call.",
    )
    Publisher(stores.ordering, limits=stores.settings.event_limits).publish_many(events)
    out.print(
        f"published {len(events)} events; {THROTTLED} will be throttled once, "
        f"{BROKEN} rejected as invalid by the API"
    )
    if not _wait(stores, lambda c: c["applied"] + c["dead"] >= len(events)):
        out.print("[red]the worker did not finish in time[/]")
        return None
    _show_calls(out, api, events, "after the first pass")
    # The demo's worker wrote these moments ago under the demo's own prefix: none is damaged.
    dead = [r for r in stores.dead_letters.list() if isinstance(r, DeadLetter)]
    for record in dead:
        last = record.attempts[-1] if record.attempts else None
        out.print(
            f"[yellow]dead letter[/] {record.id}: {record.reason.value} "
            f"call_id={record.call_id} code={record.code} "
            f"request_id={None if last is None else last.request_id}",
            highlight=False,
        )
    return dead


def _replay(
    out: Console,
    stores: Stores,
    api: _FakeApi,
    events: list[dict[str, Any]],
    dead: list[DeadLetter],
) -> int:
    out.print("and replays the dead letters")
    for record in dead:
        replay_dead_letter(stores, record.id)
    applied_before = stores.outcomes.snapshot()["applied"]
    if not _wait(stores, lambda c: c["applied"] >= applied_before + len(dead)):
        out.print("[red]the replay did not finish in time[/]")
        return 1
    _show_calls(out, api, events, "after the replay")
    counts = stores.outcomes.snapshot()
    out.print(f"outcomes: {counts}; dead letters left: {stores.dead_letters.count()}")
    held = api.tags()
    ok = all(held.get(e["call_id"]) == e["tags"] for e in events)
    out.print("[green]every call holds its tags[/]" if ok else "[red]some calls differ[/]")
    return 0 if ok else 1


def _print_next_steps(
    out: Console,
    stores: Stores,
    state: Path,
    env: dict[str, str],
    namespace: str,
    dead: list[DeadLetter],
) -> None:
    """Commands that work when pasted: the exports point a shell at the demo's keys and API."""
    tw = command_line()
    names = [
        ("TAGGING_BROKER_URL", "TAGGING_KEY_PREFIX", "TAGGING_QUEUE"),
        ("TAGGING_API_ENDPOINT", "TAGGING_API_PROTOCOL"),
        ("ACCESS_KEY_ID", "ACCESS_KEY_SECRET"),
    ]
    exports = [
        "export " + " ".join(f"{name}={shlex.quote(env[name])}" for name in line) for line in names
    ]
    (state / "env").write_text("".join(f"{line}\n" for line in exports))
    api = f"http://{env['TAGGING_API_ENDPOINT']}"
    short = stores.dead_letters.short_ids(r.id for r in dead)
    example = short[dead[0].id] if dead else "ID"
    call_id = dead[0].call_id if dead else BROKEN
    stop = f"{tw} demo --stop" + ("" if namespace == NAMESPACE else f" --namespace {namespace}")
    commented = [
        (f"{tw} dead list", "what the API refused for good"),
        (f"{tw} dead show {example}", "one dead letter, attempts and all"),
        (f"{tw} dead replay {example}", "the API takes the tag now: it is applied"),
        (f"curl -s {api}/_fake/calls/{call_id}", "what the fake API holds for that call"),
        (f"{tw} status", "queue, outcomes, dead letters, workers"),
        (
            f'curl -s -X POST {api}/_fake/faults -d \'{{"kind": "throttle", "times": 2}}\'',
            "the next two API calls are throttled",
        ),
        (f"curl -s {api}/_fake/faults", "the faults still queued"),
        (f"{tw} publish --call-id call-demo-0001 --tag 已成交", "then status: retried, applied"),
    ]
    width = max(cell_len(command) for command, _ in commented)  # 已成交 takes 6 columns
    commands = [
        f"{command}{' ' * (width - cell_len(command))}  # {why}" for command, why in commented
    ]
    pids = {role: (state / f"{role}.pid").read_text().split()[0] for role in ROLES}
    lines = [
        f"the demo keeps running in the background (pids and logs in {state}):",
        f"  fake API on {api}, pid {pids['fake-api']}, log {state / 'fake-api.log'}",
        f"  worker, pid {pids['worker']}, log {state / 'worker.log'}",
        f"point a shell at it (or: source {state / 'env'}):",
        *(f"  {line}" for line in exports),
        "then try:",
        *(f"  {line}" for line in commands),
        f"stop it: {stop}",
    ]
    out.rule("kept running")
    for line in lines:  # as plain lines: a wrapped or highlighted command would not paste
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _show_calls(out: Console, api: _FakeApi, events: list[dict], title: str) -> None:
    held, log = api.tags(), api.log()
    table = Table(title=f"what the API holds, {title}")
    for column in ("call_id", "tags sent", "API holds", "API answers"):
        table.add_column(column)
    for event in events:
        tags = held.get(event["call_id"])
        answers = [c["answer"] for c in log if c["call_id"] == event["call_id"]]
        table.add_row(
            event["call_id"],
            str(event["tags"]),
            "—" if tags is None else str(tags),
            " → ".join(answers),
        )
    out.print(table)


def _wait(stores: Stores, done: Callable[[dict[str, int]], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(stores.outcomes.snapshot()):
            return True
        time.sleep(0.1)
    return False


class _FakeApi:
    """The fake API in a process of its own, so that it can outlive the demo, driven over its
    `/_fake/` control endpoints."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @classmethod
    def start(cls, state: Path) -> _FakeApi | None:
        """None if it exits or does not answer within 30 s (its log says why)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        proc = _spawn(
            state,
            "fake-api",
            ["fake-api", "--port", str(port), "--access-key-id", DEMO_KEY_ID],
            {"FAKE_API_ACCESS_KEY_SECRET": DEMO_KEY_SECRET},
        )
        api = cls(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                api.tags()
                return api
            except OSError:  # not listening yet
                time.sleep(0.1)
        return None

    def add_fault(self, kind: str, **options: Any) -> None:
        self._ask("POST", "faults", {"kind": kind, **options})

    def clear_faults(self) -> None:
        self._ask("DELETE", "faults")

    def tags(self) -> dict[str, list[str]]:
        return dict(self._ask("GET", "state")["tags"])

    def log(self) -> list[dict[str, Any]]:
        return list(self._ask("GET", "log"))

    def _ask(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.endpoint}/_fake/{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


def _spawn(state: Path, role: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A `tagging-worker` process in a session of its own: Ctrl-C on the demo does not reach
    it, and it lives on after the demo when kept. Its pid and start time go to a pid file."""
    with (state / f"{role}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tagging_worker", *args],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state / f"{role}.pid").write_text(f"{proc.pid} {_started(proc.pid)}\n")
    return proc


def _stop_processes(out: Console, state: Path, *, quiet: bool = False) -> None:
    """SIGTERM to each process's group (a prefork worker's children too), SIGKILL after 30
    s; then the state directory goes. A pid whose start time differs is another program's."""
    for role in ROLES:
        try:
            pid_text, started = (state / f"{role}.pid").read_text().split()
        except (OSError, ValueError):
            continue
        pid = int(pid_text)
        if _started(pid) != started:
            continue
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _started(pid) == started and time.monotonic() < deadline:
            time.sleep(0.1)
        if _started(pid) == started:
            _signal_group(pid, signal.SIGKILL)
        if not quiet:
            out.print(f"stopped the demo's {role} (pid {pid})")
    shutil.rmtree(state, ignore_errors=True)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(pid, signum)


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), or None
    once it is gone or a zombie: with the pid, it names one process for good."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _worker_env(broker: str, endpoint: str, namespace: str) -> dict[str, str]:
    return {
        "TAGGING_BROKER_URL": broker,
        "TAGGING_QUEUE": namespace,
        "TAGGING_KEY_PREFIX": namespace,
        "TAGGING_API_ENDPOINT": endpoint,
        "TAGGING_API_PROTOCOL": "http",
        "TAGGING_RETRY_BASE_SECONDS": "0.2",
        "TAGGING_RETRY_CAP_SECONDS": "1",
        "TAGGING_SCHEDULER_INTERVAL_SECONDS": "0.1",
        "TAGGING_METRICS_PORT": "0",  # a story on this machine, not a service to scrape
        "ACCESS_KEY_ID": DEMO_KEY_ID,
        "ACCESS_KEY_SECRET": DEMO_KEY_SECRET,
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }


def _forget_previous_run(stores: Stores) -> None:
    """Only the demo's own keys: its prefix and its queue."""
    doomed = [*stores.redis.scan_iter(f"{stores.settings.key_prefix}*", count=1000)]
    if doomed:
        stores.redis.delete(*doomed)


def _ensure_redis(url: str, out: Console) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        pass
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost") or shutil.which("redis-server") is None:
        out.print(
            f"[red]Redis does not answer at {url}[/]; `bash scripts/demo.sh` installs and "
            "starts one, or set TAGGING_BROKER_URL"
        )
        return False
    out.print(f"starting redis-server on 127.0.0.1:{port}")
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.gettempdir(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        try:
            redis.Redis(host="127.0.0.1", port=port).ping()
            return True
        except redis.RedisError:
            time.sleep(0.1)
    return False
