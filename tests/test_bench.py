"""Every benchmark still runs, at a size that proves the script works (the numbers in
bench/README.md come from full runs, which are not part of the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent

SMALL_RUNS = {
    "throughput.py": [
        "--concurrency",
        "2",
        "--pools",
        "threads",
        "--seconds",
        "1",
        "--rounds",
        "1",
    ],
    "latency.py": ["--loads", "0.5", "--seconds", "1", "--calibrate", "300", "--concurrency", "4"],
    "memory.py": ["--queued", "200", "--retries", "20", "--settle", "1", "--concurrency", "2"],
    "publish_rate.py": ["--single", "50", "--bulk", "500", "--chunk", "100"],
    "coalescing.py": ["--bursts", "2", "--updates", "10", "--concurrency", "4", "--gap-ms", "1"],
    "cpu_per_event.py": ["--pool", "threads", "--concurrency", "4", "--seconds", "1"],
    "flow_control.py": [
        *("--quota", "100", "--workers", "1", "--warmup", "1", "--steady", "2"),
        *("--backlog", "100", "--outage", "1"),
    ],
    "fake_api_speed.py": ["--seconds", "0.5"],
    "redis_footprint.py": [
        *("--events", "400", "--calls", "100", "--queued", "100", "--retries", "20"),
        *("--dead", "20", "--pool", "threads", "--concurrency", "4"),
    ],
}


def test_every_benchmark_script_is_exercised() -> None:
    assert {p.name for p in (ROOT / "bench").glob("*.py")} - {"benchkit.py"} == set(SMALL_RUNS)


@pytest.mark.parametrize("script", sorted(SMALL_RUNS))
def test_the_benchmark_runs_and_prints_its_table(script: str) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *SMALL_RUNS[script]],
        cwd=ROOT,
        env={
            **os.environ,
            "TAGGING_BENCH_REDIS_URL": REDIS_URL,
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "|---|" in run.stdout or "calls/s" in run.stdout, run.stdout
