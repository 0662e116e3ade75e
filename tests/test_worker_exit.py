"""A worker that stops because of an error exits non-zero, so its supervisor restarts it
(systemd's `Restart=on-failure`, Kubernetes' restart policy)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from tagging_worker.cli import celery_app
from tagging_worker.cli.main import cli
from tests.conftest import REDIS_URL


class _StoppedWorker:
    """Celery's app as `celery worker` leaves it after "Unrecoverable error": `start`
    returns the worker's exit code instead of exiting."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.argv: list[str] = []

    def start(self, argv: list[str]) -> int:
        self.argv = argv
        return self.code


@pytest.mark.parametrize("code", [1, 70])
def test_the_worker_command_exits_with_the_code_celerys_worker_stopped_with(
    code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = _StoppedWorker(code)

    def worker_app(settings: Any) -> _StoppedWorker:
        return stopped

    monkeypatch.setenv("TAGGING_BROKER_URL", REDIS_URL)
    monkeypatch.setattr(celery_app, "worker_app", worker_app)

    result = CliRunner().invoke(cli, ["worker"])

    assert result.exit_code == code
    assert stopped.argv[0] == "worker"
