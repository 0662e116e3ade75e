#!/usr/bin/env bash
# The whole test suite, from a fresh clone: bootstrap (venv, Redis), lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
TAGGING_BOOTSTRAP_TEST_TOOLS=1 bash scripts/bootstrap.sh
.venv/bin/ruff check .
# Test files run side by side, one file per process (its tests share fixtures and order), as
# many processes as cores up to four: most of the suite waits on workers, Redis and timers.
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile "$@"
