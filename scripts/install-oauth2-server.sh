#!/usr/bin/env bash
# Installs the OAuth 2.0 server that the interop tests and examples/oauth2_client.rs run on
# loopback: oauth2-mock-server, pinned by interop/oauth2-server/package-lock.json. Does nothing
# if the pinned version is already there (pass --force to reinstall). Safe to run from several
# processes at once.
set -euo pipefail
cd "$(dirname "$0")/../interop/oauth2-server"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js and npm are needed: Node.js 20.19+, 22.12+ or 24 (https://nodejs.org, or \`npm install -g node@22\` where an older npm exists)" >&2
  exit 1
fi
# The engines oauth2-mock-server 8.2 states: ^20.19 || ^22.12 || ^24.
if ! node -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a === 24 ? 0 : 1);
'; then
  echo "Node.js $(node --version) does not run oauth2-mock-server 8.2: 20.19+, 22.12+ or 24 is needed (\`npm install -g node@22\` installs one)" >&2
  exit 1
fi
exec 9>.install.lock
flock 9
installed=$(node -e 'try { console.log(require("./node_modules/oauth2-mock-server/package.json").version) } catch { console.log("") }')
pinned=$(node -e 'console.log(require("./package-lock.json").packages["node_modules/oauth2-mock-server"].version)')
if [ "${1:-}" != "--force" ] && [ "$installed" = "$pinned" ]; then
  echo "oauth2-mock-server $installed is installed"
  exit 0
fi
npm ci --no-audit --no-fund
