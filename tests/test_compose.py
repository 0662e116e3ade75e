"""The container image and compose files, checked with real tools where the machine has them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _config(compose_file: Path, **env: str) -> dict:
    """The file as docker-compose resolves it: this parses and checks it without an engine."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is needed to check compose files; scripts/test.sh installs it")
    done = subprocess.run(
        ["docker-compose", "-f", str(compose_file), "config"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_the_local_stack_has_persistent_password_protected_redis_and_every_service() -> None:
    config = _config(ROOT / "docker-compose.yml", REDIS_PASSWORD="s3cret")
    services = config["services"]
    assert set(services) == {"redis", "fake-api", "worker", "flower", "demo-producer"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--requirepass") + 1] == "s3cret"
    worker = services["worker"]
    assert worker["environment"]["TAGGING_BROKER_URL"] == "redis://:s3cret@redis:6379/0"
    assert worker["environment"]["TAGGING_API_ENDPOINT"] == "fake-api:8080"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["demo-producer"]["command"][0] == "publish"
    assert services["flower"]["environment"]["CELERY_BROKER_URL"].startswith("redis://:s3cret@")


def test_the_local_worker_opens_its_metrics_to_the_published_port() -> None:
    """The default is loopback inside the container, which a published port cannot reach."""
    services = _config(ROOT / "docker-compose.yml", REDIS_PASSWORD="s3cret")["services"]
    worker = services["worker"]
    assert "9808" in str(worker["ports"])
    assert worker["environment"]["TAGGING_METRICS_HOST"] == "0.0.0.0"
    assert worker["environment"]["TAGGING_API_ENDPOINT"] == "fake-api:8080"
    assert "TAGGING_METRICS_HOST" not in services["demo-producer"]["environment"]


def test_the_real_endpoint_stack_reads_credentials_from_an_env_file(tmp_path: Path) -> None:
    copy = tmp_path / "deploy" / "compose"
    copy.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "compose" / "docker-compose.real.yml", copy)
    (copy / "tagging-worker.env").write_text("ACCESS_KEY_ID=id\nACCESS_KEY_SECRET=secret\n")
    config = _config(copy / "docker-compose.real.yml", REDIS_PASSWORD="s3cret")
    worker = config["services"]["worker"]
    assert worker["environment"]["ACCESS_KEY_ID"] == "id"
    assert worker["environment"]["TAGGING_BROKER_URL"] == "redis://:s3cret@redis:6379/0"
    assert "fake-api" not in config["services"]


def test_the_real_endpoint_worker_opens_its_metrics_whatever_the_env_file_says(
    tmp_path: Path,
) -> None:
    """The env file starts as a copy of the example, which keeps the loopback default."""
    copy = tmp_path / "deploy" / "compose"
    copy.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "compose" / "docker-compose.real.yml", copy)
    shutil.copy(ROOT / "deploy" / "tagging-worker.env.example", copy / "tagging-worker.env")
    worker = _config(copy / "docker-compose.real.yml", REDIS_PASSWORD="s3cret")["services"][
        "worker"
    ]
    assert worker["environment"]["TAGGING_METRICS_HOST"] == "0.0.0.0"
    assert "9808" in str(worker["ports"])


def test_the_real_endpoint_stack_refuses_to_start_without_a_redis_password(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "compose"
    copy.mkdir()
    shutil.copy(ROOT / "deploy" / "compose" / "docker-compose.real.yml", copy)
    (copy / "tagging-worker.env").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    done = subprocess.run(
        ["docker-compose", "-f", str(copy / "docker-compose.real.yml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr


def test_the_image_is_slim_non_root_and_has_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and all("-slim" in line for line in stages)
    final = text.split(stages[1], 1)[1]
    assert "USER 10001" in final and "HEALTHCHECK" in final
    assert 'ENTRYPOINT ["tagging-worker"]' in final
    assert "apt-get" not in final and "gcc" not in final


def test_the_image_builds_where_a_docker_engine_runs() -> None:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode
    ):
        pytest.skip("no Docker engine on this machine: the image build was not tried here")
    done = subprocess.run(
        ["docker", "build", "-q", "-t", "tagging-worker:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    ran = subprocess.run(
        ["docker", "run", "--rm", "tagging-worker:test", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and "worker" in ran.stdout
