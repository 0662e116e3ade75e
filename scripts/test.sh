#!/usr/bin/env bash
# The whole test suite, from a fresh clone: bootstrap (venv, Redis), lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
TAGGING_BOOTSTRAP_TEST_TOOLS=1 bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
