#!/usr/bin/env bash
# The demo on the embedded defaults: local Redis, the bundled fake API, one worker,
# sample events, one of them dead-lettered and replayed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/tagging-worker demo "$@"
