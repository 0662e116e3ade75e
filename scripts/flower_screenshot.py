"""Takes docs/flower-dead-letter.png: Flower's page for a dead-lettered event.

Runs everything on loopback under a namespace of its own (keys and queue removed at the end):
the fake API refusing every tag with a permanent error, Flower, a worker, one published
event; then headless Chromium (Debian's `chromium` package) shoots Flower's task page.

    .venv/bin/python scripts/flower_screenshot.py [--out docs/flower-dead-letter.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "flower-dead-letter.png")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    browser = shutil.which("chromium") or sys.exit("needs chromium: apt-get install chromium")
    namespace = f"tw-flower-shot-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TAGGING_BROKER_URL": args.redis,
        "TAGGING_KEY_PREFIX": namespace,
        "TAGGING_QUEUE": namespace,
        "TAGGING_API_ENDPOINT": "127.0.0.1:18935",
        "TAGGING_API_PROTOCOL": "http",
        "ACCESS_KEY_ID": "fake-access-key-id",
        "ACCESS_KEY_SECRET": "fake-access-key-secret",
        "TAGGING_METRICS_PORT": "0",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        # Flower 2 answers its JSON API only with this (or with auth configured).
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> None:
        started.append(
            subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )

    try:
        start(str(BIN / "tagging-worker"), "fake-api", "--port", "18935")
        _wait(lambda: _listening(18935))
        fault = {
            "kind": "error",
            "code": "InvalidParameter.Tags",
            "http_status": 400,
            "message": "Tag vip is not defined for this instance.",
        }
        _post("http://127.0.0.1:18935/_fake/faults", fault)
        start(
            str(BIN / "celery"), "-A", "tagging_worker", "flower",
            "--address=127.0.0.1", "--port=15555",
        )  # fmt: skip
        _wait(lambda: _get("http://127.0.0.1:15555/api/workers") is not None)
        start(str(BIN / "tagging-worker"), "worker", "--concurrency=2")
        time.sleep(3)  # the worker's first task events must find Flower listening
        subprocess.run(
            [str(BIN / "tagging-worker"), "publish", "--call-id", "call-0042", "--tag", "vip"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        task_id = _wait(lambda: _failed_task("http://127.0.0.1:15555/api/tasks"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,900",
                f"--screenshot={args.out}",
                f"http://127.0.0.1:15555/task/{task_id}",
            ],
            check=True,
            capture_output=True,
        )
        print(f"{args.out} (task {task_id})")
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in started:
            proc.wait(15)
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)


def _failed_task(url: str) -> str | None:
    tasks = _get(url) or {}
    return next((tid for tid, t in tasks.items() if t.get("state") == "FAILURE"), None)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=5).close()


def _wait(found: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.3)
    sys.exit("timed out: see that Redis runs and the ports 18935 and 15555 are free")


if __name__ == "__main__":
    main()
