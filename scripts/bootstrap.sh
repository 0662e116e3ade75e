#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian machine with Python 3.10+:
# a virtualenv in .venv with the project installed, and a Redis answering on
# TAGGING_TEST_REDIS_URL's host and port (127.0.0.1:6379 by default), installed with
# apt-get and started (loopback only, no persistence) if none answers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    echo "bootstrap: installing python3-venv" >&2
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# The tests' Redis: TAGGING_TEST_REDIS_URL (redis://127.0.0.1:6379/0 by default).
redis_url=${TAGGING_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
read -r redis_host redis_port < <(.venv/bin/python -c '
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)' "$redis_url")

redis_answers() {
  .venv/bin/python - "$redis_host" "$redis_port" <<'PY'
import sys, redis
try:
    redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), socket_connect_timeout=1).ping()
except redis.RedisError:
    sys.exit(1)
PY
}

if ! redis_answers; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server" >&2
    apt_install redis-server
  fi
  echo "bootstrap: starting redis-server on $redis_host:$redis_port" >&2
  redis-server --daemonize yes --bind "$redis_host" --port "$redis_port" \
    --save "" --appendonly no --dir /tmp --logfile "/tmp/tagging-worker-redis-$redis_port.log"
  for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "bootstrap: Redis did not start; see /tmp/tagging-worker-redis-$redis_port.log" >&2; exit 1; }
fi

# What the tests use besides Python and Redis (scripts/test.sh asks for it): Debian's
# docker-compose parses the compose files without a Docker engine, Node.js runs the non-Python
# producer, openssl makes the TLS test's certificate, curl runs the README's "Try it locally".
if [ "${TAGGING_BOOTSTRAP_TEST_TOOLS:-}" = 1 ]; then
  missing=()
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]} (for the tests)" >&2
    apt_install "${missing[@]}"
  fi
fi
