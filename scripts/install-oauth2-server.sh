#!/usr/bin/env bash
# Installs the OAuth 2.0 server that the interop tests and examples/oauth2_client.rs run on
# loopback: oauth2-mock-server, pinned by interop/oauth2-server/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/../interop/oauth2-server"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js and npm are needed (>= 20.19): on Debian, sudo apt-get install nodejs npm" >&2
  exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old for oauth2-mock-server: 20.19 or later is needed" >&2
  exit 1
fi
npm ci --no-audit --no-fund
