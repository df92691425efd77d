#!/usr/bin/env bash
# Installs redis-server, which the shared-token tests (crates/tokenwarden-redis/tests,
# tests/replicas.rs) and examples/replicas.rs start on a loopback port of their own; the tests
# run it themselves when redis-server is missing. Does nothing if a redis-server is already on
# PATH. Uses the system's package manager: apt-get
# (Debian, Ubuntu) or brew (macOS); elsewhere it says what to install.
set -euo pipefail
if command -v redis-server >/dev/null; then
  redis-server --version
  exit 0
fi
# One installer at a time (test processes may call this together).
exec 9>"${TMPDIR:-/tmp}/tokenwarden-install-redis.lock"
flock 9
if command -v redis-server >/dev/null; then
  redis-server --version
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
if command -v apt-get >/dev/null; then
  $sudo apt-get update
  $sudo apt-get install -y redis-server
  # The package starts a system-wide server on port 6379; the tests do not use it.
elif command -v brew >/dev/null; then
  brew install redis
else
  echo "redis-server is needed (Redis 6.2+ or Valkey): install it with your package manager and put it on PATH" >&2
  exit 1
fi
redis-server --version
